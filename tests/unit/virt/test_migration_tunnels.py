"""The orchestration with real tunnel processes and the real broker.

secmig_nova/virt/migration.py drives two real ``secmig-tunnel`` processes
(TLS 1.3, checkpoints, signed receipts) between two hosts of cloud-a, with
grants from cloud-a's real broker on an in-process ``fake://`` transport
(hosts reach it with signed envelopes through HostClient; Keystone is a
dict). "QEMU" on each side is a UNIX socket peer from the tunnel tests'
harness: the source writes a known stream into the source tunnel's socket,
the destination one listens where the destination QEMU would. Each host has
its own socket directory, as two machines would.
"""

import os
import shutil
import tempfile
import uuid

import testtools

from secmig_nova.virt import migration
from tests.fixtures import brokers
from tests.fixtures import pki as pki_fixture
from tests.functional import tunnel_harness

INSTANCE = '6a1f5d7e-0000-4000-8000-0000000000cc'
MIB = 1 << 20


class TestRealTunnels(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.dir = tempfile.mkdtemp(prefix='smvt-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.keystone = brokers.FakeKeystone()
        self.keystone.grant('op', 'proj-1', 'migration_operator')
        self.broker = brokers.Cloud('virt', self.pki.a, 'broker-a',
                                    'fake:///', self.keystone, self.dir)
        self.broker.start({})
        self.addCleanup(self.broker.stop)
        self.src = self.host('host-a')
        self.dst = self.host('host-a2')
        self.mid = str(uuid.uuid4())

    def host(self, name):
        sockets = os.path.join(self.dir, name)
        os.mkdir(sockets)
        cert, key = self.pki.a.hosts[name]
        settings = migration.Settings(
            cloud_id='cloud-a', cert_file=cert, key_file=key,
            ca_file=self.pki.a.ca.ca_file, socket_dir=sockets,
            tunnel_port_min=52400, tunnel_port_max=52999,
            checkpoint_bytes=256 * 1024, tunnel_ready_timeout=90.0,
            tunnel_result_timeout=90.0)
        identity = migration.HostIdentity.load(settings, name)
        client = self.broker.host(name)
        return migration.SecureMigration(settings, identity, client)

    def test_migration_through_real_tunnels(self):
        streams = {'memory': 2}
        incoming = self.dst.prepare_destination(self.mid, INSTANCE, streams)
        self.addCleanup(incoming.abort, 'test cleanup')
        qemu_dst = tunnel_harness.FakeDestinationQemu(
            migration.socket_path(self.dst.settings.socket_dir, self.mid),
            reply=b'return path', connections=2)
        self.addCleanup(qemu_dst.close)
        outgoing = self.src.start_source(self.mid, INSTANCE, 'host-a2',
                                         streams, user_id='op',
                                         project_id='proj-1')
        self.addCleanup(outgoing.abort, 'test cleanup')
        path = migration.socket_path(self.src.settings.socket_dir, self.mid)
        self.assertEqual('unix://' + path, outgoing.migrate_uri)
        self.assertTrue(os.path.exists(path))
        data = os.urandom(3 * MIB)
        senders = [tunnel_harness.FakeSourceQemu(path, data)
                   for _ in range(2)]
        for sender in senders:
            sender.wait()
        qemu_dst.wait()

        src_result = outgoing.finish(True)
        self.assertTrue(src_result.ok, src_result)
        self.assertEqual(2, len(src_result.connections))
        for conn in src_result.connections:
            self.assertEqual(len(data), conn['src_to_dst']['bytes'])
            self.assertEqual(len(b'return path'),
                             conn['dst_to_src']['bytes'])
        self.assertFalse(os.path.exists(path))
        dst_result = incoming.finish(True)
        self.assertTrue(dst_result.ok, dst_result)
        records = self.broker.db.find_migration(self.mid)
        self.assertEqual('completed', records['source']['state'])
        self.assertEqual(4, len(self.broker.db.receipts(self.mid)))

    def test_abort_stops_both_real_tunnels(self):
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        outgoing = self.src.start_source(self.mid, INSTANCE, 'host-a2',
                                         {'memory': 1}, user_id='op',
                                         project_id='proj-1')
        path = migration.socket_path(self.src.settings.socket_dir, self.mid)
        self.assertTrue(os.path.exists(path))
        src_result = outgoing.finish(False, 'the libvirt job was cancelled')
        dst_result = incoming.finish(False, 'rolled back')
        self.assertEqual(('aborted', 'aborted'),
                         (src_result.status, dst_result.status))
        for tunnel in (outgoing.tunnel, incoming.tunnel):
            self.assertIsNotNone(tunnel.process.proc.poll())
        self.assertFalse(os.path.exists(path))
        records = self.broker.db.find_migration(self.mid)
        self.assertEqual('aborted', records['source']['state'])
        self.assertEqual('aborted', records['destination']['state'])

    def test_refused_ticket_starts_no_source_tunnel(self):
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        self.addCleanup(incoming.abort, 'test cleanup')
        e = self.assertRaises(
            migration.SecureMigrationError, self.src.start_source, self.mid,
            INSTANCE, 'host-a2', {'memory': 1}, user_id='intruder',
            project_id='proj-1')
        self.assertEqual('missing_role', e.reason)
        self.assertEqual([], os.listdir(self.src.settings.socket_dir))
