"""Stale destination QEMU sockets after a failed migration.

QEMU (7.2) removes its incoming migration socket only on success; after a
failure the destination side removes it, but only a socket nobody accepts
on any more, and never a file of another type. Tested with real UNIX
sockets, and through IncomingMigration with the fake tunnels of
tests/unit/virt/fakes.py.
"""

import os
import shutil
import socket
import tempfile
from unittest import mock

import testtools

from secmig_nova.broker import rpcapi
from secmig_nova.virt import migration
from tests.unit.virt import test_migration

INSTANCE = test_migration.INSTANCE


class SocketsTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        # Short: UNIX socket paths are limited to 107 bytes.
        self.dir = tempfile.mkdtemp(prefix='sms-')
        self.addCleanup(shutil.rmtree, self.dir, True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def stale(self, name='stale.sock'):
        """A socket file a process bound, listened on and closed."""
        path = self.path(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(1)
        sock.close()
        return path

    def listening(self, name='live.sock'):
        path = self.path(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        sock.listen(1)
        return path

    def regular(self, name='plain.sock'):
        path = self.path(name)
        with open(path, 'w') as f:
            f.write('not a socket')
        return path


class TestAccepting(SocketsTestCase):

    def test_listening_socket(self):
        self.assertTrue(migration.accepting(self.listening()))

    def test_stale_socket(self):
        path = self.stale()
        self.assertTrue(os.path.exists(path))
        self.assertFalse(migration.accepting(path))

    def test_not_a_socket(self):
        self.assertFalse(migration.accepting(self.regular()))
        self.assertFalse(migration.accepting(self.path('absent.sock')))


class TestRemoveStaleSockets(SocketsTestCase):

    def test_stale_socket_is_removed(self):
        path = self.stale()
        self.assertEqual([path], migration.remove_stale_sockets([path]))
        self.assertFalse(os.path.lexists(path))

    def test_listening_socket_is_kept(self):
        path = self.listening()
        self.assertEqual([], migration.remove_stale_sockets([path]))
        self.assertTrue(os.path.exists(path))
        # Still usable: nothing was done to it.
        self.assertTrue(migration.accepting(path))

    def test_regular_file_is_never_removed(self):
        path = self.regular()
        self.assertEqual([], migration.remove_stale_sockets([path]))
        with open(path) as f:
            self.assertEqual('not a socket', f.read())

    def test_directory_and_symlink_are_never_removed(self):
        directory = self.path('dir.sock')
        os.mkdir(directory)
        target = self.stale('target.sock')
        link = self.path('link.sock')
        os.symlink(target, link)
        self.assertEqual([], migration.remove_stale_sockets([directory,
                                                             link]))
        self.assertTrue(os.path.isdir(directory))
        self.assertTrue(os.path.islink(link))
        self.assertTrue(os.path.lexists(target))

    def test_missing_paths_are_skipped(self):
        self.assertEqual([], migration.remove_stale_sockets(
            [self.path('absent.sock')]))

    def test_mixed(self):
        stale, live = self.stale(), self.listening()
        plain, stale2 = self.regular(), self.stale('stale2.sock')
        removed = migration.remove_stale_sockets(
            [stale, live, plain, self.path('absent.sock'), stale2])
        self.assertEqual([stale, stale2], removed)
        self.assertFalse(os.path.lexists(stale))
        self.assertFalse(os.path.lexists(stale2))
        self.assertTrue(os.path.exists(live))
        self.assertTrue(os.path.isfile(plain))


class TestIncomingMigration(test_migration.MigrationTestCase):
    """The destination host-a2 cleans its own socket directory."""

    def setUp(self):
        super().setUp()
        # Source and destination are different hosts: separate socket
        # directories (the fake source tunnel binds its sockets).
        self.dst_dir = tempfile.mkdtemp(prefix='smsd-')
        self.addCleanup(shutil.rmtree, self.dst_dir, True)
        self.cleaner = mock.Mock(return_value=[])
        self.dst = self.destination(socket_cleaner=self.cleaner)

    def destination(self, **kwargs):
        settings = test_migration.make_settings(
            self.pki, self.pki.a, 'host-a2', socket_dir=self.dst_dir)
        identity = migration.HostIdentity.load(settings, 'host-a2')
        client = mock.Mock(spec=rpcapi.HostClient)
        client.record_receipt.return_value = {'receipts_stored': 1}
        return migration.SecureMigration(settings, identity, client,
                                         tunnel_factory=self.tunnels,
                                         **kwargs)

    def qemu_sockets(self, streams):
        return sorted(migration.socket_path(self.dst_dir, self.mid, kind)
                      for kind in streams)

    def test_failed_migration_cleans_the_qemu_sockets(self):
        streams = {'memory': 2, 'disk': 1}
        incoming = self.dst.prepare_destination(self.mid, INSTANCE, streams)
        result = incoming.finish(False, 'libvirt job failed')
        self.assertFalse(result.ok)
        self.cleaner.assert_called_once_with(mock.ANY)
        self.assertEqual(self.qemu_sockets(streams),
                         sorted(self.cleaner.call_args[0][0]))
        # Once: a second finish returns the same result.
        self.assertIs(result, incoming.finish(False, 'again'))
        self.assertEqual(1, self.cleaner.call_count)

    def test_abort_cleans_the_qemu_sockets(self):
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        incoming.abort('rolled back')
        self.assertEqual([mock.call(self.qemu_sockets({'memory': 1}))],
                         self.cleaner.call_args_list)

    def test_verified_migration_leaves_them(self):
        _incoming, result = self.complete_same_cloud()
        self.assertEqual(1, len(result.connections))
        self.cleaner.assert_not_called()

    def test_completed_but_unverified_cleans_them(self):
        # libvirt says completed, but there are no receipts: not ok.
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        result = incoming.finish(True)
        self.assertEqual('failed', result.status)
        self.cleaner.assert_called_once_with(
            self.qemu_sockets({'memory': 1}))

    def test_cleaner_error_does_not_mask_the_result(self):
        self.cleaner.side_effect = OSError('ssh: connection refused')
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        result = incoming.finish(False, 'libvirt job failed')
        self.assertEqual('aborted', result.status)
        self.assertEqual('libvirt job failed', result.message)
        self.assertTrue(incoming.wait_done(0))
        self.dst.host_client.record_receipt.assert_called_once_with(
            self.mid, 'aborted', connections=(), reason='libvirt job failed')
        self.cleaner.assert_called_once()

    def test_default_cleaner_removes_only_stale_sockets(self):
        dst = self.destination()
        self.assertIs(migration.remove_stale_sockets, dst.socket_cleaner)
        memory = migration.socket_path(self.dst_dir, self.mid)
        disk = migration.socket_path(self.dst_dir, self.mid, 'disk')
        # A failed QEMU's memory socket; something still serves the disk
        # one (it is not ours to remove).
        for path in (memory, disk):
            self.assertTrue(path.startswith(self.dst_dir))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(memory)
        sock.close()
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(disk)
        live.listen(1)
        incoming = dst.prepare_destination(self.mid, INSTANCE,
                                           {'memory': 1, 'disk': 1})
        incoming.finish(False, 'libvirt job failed')
        self.assertFalse(os.path.lexists(memory))
        self.assertTrue(os.path.exists(disk))
