"""Tests of secmig_nova/cmd/migrate.py that need no libvirt.

The migration itself (libvirt, tunnel processes) is tested with real
libvirt elsewhere; here: the progress frames, the summary and exit status,
the host groups' configuration errors, the embedded brokers the command
starts, the digest comparison of both sides' receipts, the receipts file
and ``main()``'s configuration errors.
"""

import io
import json
import logging as std_logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from unittest import mock
import uuid

import fixtures
from oslo_config import cfg
from oslo_messaging import conffixture
from oslo_service import backend
import testtools

from secmig_nova.authz import tokens
from secmig_nova.broker import rpcapi
from secmig_nova.cmd import migrate
from secmig_nova.conf import migrate as migrate_conf
from secmig_nova.trust import store as trust_store
from secmig_nova.tunnel import receipts
from secmig_nova.virt import migration
from tests.fixtures import pki as pki_fixture

SRC = migrate_conf.SOURCE_GROUP
DST = migrate_conf.DESTINATION_GROUP
MIB = 1024 * 1024
INSTANCE = '6a1f5d7e-0000-4000-8000-000000000001'
OPS = ['migration_operator', 'cross_cloud_operator']


def digest(n):
    return {'bytes': 4096 * n, 'sha256': '%064x' % n}


def connection(kind='memory', index=0, up=1, down=2, **extra):
    conn = {'kind': kind, 'index': index, 'status': 'completed',
            'src_to_dst': digest(up), 'dst_to_src': digest(down),
            'tls_version': 'TLSv1.3', 'tls_cipher': 'TLS_AES_256_GCM_SHA384'}
    conn.update(extra)
    return conn


def result(side, connections, status='completed'):
    return migration.Result('mig-1', side, status,
                            connections=list(connections), recorded=True)


class ConfTestCase(testtools.TestCase):
    """A secmig-migrate configuration: host-a (cloud-a) to host-b."""

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.dir = tempfile.mkdtemp(prefix='smcm-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.state_dir = os.path.join(self.dir, 'state')
        self.role_file = os.path.join(self.dir, 'roles.json')
        with open(self.role_file, 'w') as f:
            json.dump({'users': {'op': {'projects': {'p1': OPS}}}}, f)
        os.chmod(self.role_file, 0o600)
        self.conf = cfg.ConfigOpts()
        # The embedded brokers' transport reads options oslo.messaging
        # registers on the global configuration only.
        self.useFixture(conffixture.ConfFixture(self.conf))
        migrate_conf.register_opts(self.conf)
        self.conf([])
        self.set(migrate_conf.GROUP_NAME, state_dir=self.state_dir,
                 role_file=self.role_file, user_id='op', project_id='p1')
        for group, cloud, host, broker in (
                (SRC, self.pki.a, 'host-a', 'broker-a'),
                (DST, self.pki.b, 'host-b', 'broker-b')):
            cert, key = cloud.hosts[host]
            broker_cert, broker_key = cloud.hosts[broker]
            self.set(group, libvirt_uri='qemu+tcp://%s/system' % host,
                     cloud_id=cloud.cloud_id, cert_file=cert, key_file=key,
                     ca_file=cloud.ca.ca_file, socket_dir=self.dir,
                     broker_cert_file=broker_cert,
                     broker_key_file=broker_key)

    def set(self, group, **values):
        for name, value in values.items():
            self.conf.set_override(name, value, group)

    def assertCommandError(self, code, func, *args, **kwargs):
        e = self.assertRaises(migrate.CommandError, func, *args, **kwargs)
        self.assertEqual(code, e.code, str(e))
        return e


# -- progress -----------------------------------------------------------------

class TestProgress(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.out = io.StringIO()
        self.progress = migrate.Progress(self.out, True)

    def frame(self, **stats):
        self.out.seek(0)
        self.out.truncate()
        self.progress.job(stats)
        return self.out.getvalue()

    def test_starting(self):
        line = self.frame(data_processed=0, data_remaining=100 * MIB,
                          memory_bps=0)
        self.assertTrue(line.startswith('\r[%s]   0%% starting '
                                        % (' ' * migrate.Progress.WIDTH)),
                        line)
        self.assertIn('ETA ?', line)
        self.assertTrue(line.endswith('\x1b[K'), line)

    def test_memory(self):
        line = self.frame(data_processed=3 * MIB, data_remaining=MIB,
                          memory_bps=MIB, memory_iteration=1)
        fill = migrate.Progress.WIDTH * 3 // 4
        self.assertIn('[%s%s]  75%% memory ' % (
            '=' * fill, ' ' * (migrate.Progress.WIDTH - fill)), line)
        self.assertIn('3.0 MiB', line)
        self.assertIn('1.0 MiB/s', line)
        self.assertIn('ETA 1.0s', line)

    def test_memory_passes(self):
        line = self.frame(data_processed=MIB, data_remaining=MIB,
                          memory_bps=MIB, memory_iteration=3)
        self.assertIn(' 50% memory pass 3 ', line)

    def test_post_copy(self):
        line = self.frame(data_processed=MIB, data_remaining=MIB,
                          memory_bps=MIB, memory_iteration=3,
                          memory_postcopy_requests=7)
        self.assertIn(' post-copy ', line)
        self.assertNotIn('memory pass', line)

    def test_unknown_remaining(self):
        line = self.frame(data_processed=2048, memory_bps=1024)
        self.assertIn('100% memory', line)
        self.assertIn('2.0 KiB', line)
        self.assertIn('ETA ?', line)

    def test_no_stats_no_frame(self):
        self.assertEqual('', self.frame())

    def test_step_clears_the_bar(self):
        self.progress.t0 = time.monotonic() - 1.5
        self.progress.job({'data_processed': MIB, 'data_remaining': MIB})
        self.out.seek(0)
        self.out.truncate()
        self.progress.step('destination tunnel listening')
        text = self.out.getvalue()
        self.assertTrue(text.startswith('\r\x1b[K['), repr(text))
        self.assertRegex(text[4:],
                         r'^\[ *1\.\d\ds\] destination tunnel listening\n$')
        # Cleared once: the next step has no escape sequence.
        self.out.seek(0)
        self.out.truncate()
        self.progress.step('next')
        self.assertRegex(self.out.getvalue(), r'^\[ *\d+\.\d\ds\] next\n$')

    def test_close_clears_a_drawn_bar(self):
        self.progress.close()
        self.assertEqual('', self.out.getvalue())
        self.progress.job({'data_processed': 1, 'data_remaining': 1})
        self.out.seek(0)
        self.out.truncate()
        self.progress.close()
        self.assertEqual('\r\x1b[K', self.out.getvalue())

    def test_disabled_writes_nothing(self):
        out = io.StringIO()
        progress = migrate.Progress(out, False)
        progress.step('hello')
        progress.job({'data_processed': MIB, 'data_remaining': MIB,
                      'memory_bps': MIB})
        progress.close()
        self.assertEqual('', out.getvalue())


# -- summary and exit status --------------------------------------------------

def end(cloud_id, ca_file):
    return types.SimpleNamespace(
        cloud_id=cloud_id, settings=types.SimpleNamespace(ca_file=ca_file))


SRC_END = end('cloud-a', '/etc/a/ca.crt')
DST_END = end('cloud-b', '/etc/b/ca.crt')

HEAD = {'migration_id': 'mig-1', 'domain': 'vm1',
        'source': 'cloud-a/host-a', 'destination': 'cloud-b/host-b'}


def side_result(status='completed', reason=None, recorded=True,
                verified=1):
    return {'status': status, 'reason': reason, 'recorded': recorded,
            'verified_connections': verified}


class TestRender(testtools.TestCase):

    def render(self, summary, src=SRC_END, dst=DST_END):
        return migrate.render(summary, src, dst).split('\n')

    def test_setup_steps(self):
        summary = dict(
            HEAD, status='completed', seconds=4.5, setup_seconds=0.5,
            libvirt_seconds=3.75, setup_steps={
                'source': {'ticket': 0.1, 'grant': 0.05,
                           'tunnel ready': 0.012},
                'destination': {'tunnel ready': 0.011,
                                'registration': 0.02}})
        self.assertIn('  setup steps    destination: tunnel ready 0.011 s, '
                      'registration 0.020 s; source: ticket 0.100 s, grant '
                      '0.050 s, tunnel ready 0.012 s', self.render(summary))

    def test_completed(self):
        summary = dict(
            HEAD, status='completed', seconds=4.5, setup_seconds=0.5,
            libvirt_seconds=3.75, downtime_ms=42,
            bytes_to_destination=MIB, bytes_to_source=512, connections=1,
            tls=['TLSv1.3 TLS_AES_256_GCM_SHA384'],
            results={'source': side_result(),
                     'destination': side_result(verified=1)},
            digests_agree=True, receipts_file='/s/receipts/mig-1.json')
        lines = self.render(summary)
        self.assertEqual('secmig-migrate: migration mig-1 of vm1: '
                         'cloud-a/host-a -> cloud-b/host-b: COMPLETED',
                         lines[0])
        self.assertNotIn('reason', '\n'.join(lines))
        self.assertNotIn('domain         ', '\n'.join(lines))
        self.assertEqual([
            '  time           4.50 s (setup 0.50 s, libvirt 3.75 s)',
            '  downtime       42 ms',
            '  bytes          1.0 MiB to the destination, 512 B back, '
            '1 connection(s)',
            '  TLS            TLSv1.3 TLS_AES_256_GCM_SHA384',
            '  source rcpts   verified (1 connection(s))',
            '  dest. rcpts    verified (1 connection(s))',
            '  digests        source and destination agree',
            '  receipts file  /s/receipts/mig-1.json',
            '  verify with    secmig-nova-manage receipts verify '
            '/s/receipts/mig-1.json --ca cloud-a=/etc/a/ca.crt '
            '--ca cloud-b=/etc/b/ca.crt'], lines[1:])

    def test_same_cloud_names_its_ca_once(self):
        summary = dict(HEAD, status='completed', receipts_file='/r.json')
        lines = self.render(summary, src=SRC_END,
                            dst=end('cloud-a', '/etc/a/ca.crt'))
        self.assertEqual('  verify with    secmig-nova-manage receipts '
                         'verify /r.json --ca cloud-a=/etc/a/ca.crt',
                         lines[-1])

    def test_refused(self):
        summary = dict(HEAD, status='refused', side='source',
                       reason='missing_role', message='op may not',
                       domain_running_on_source=True, seconds=0.25)
        lines = self.render(summary)
        self.assertTrue(lines[0].endswith(': REFUSED'), lines[0])
        self.assertEqual([
            '  reason         missing_role: op may not',
            '  domain         still running on the source',
            '  time           0.25 s (setup 0.00 s, libvirt 0.00 s)'],
            lines[1:])

    def test_failed(self):
        summary = dict(
            HEAD, status='failed', reason='checkpoint_mismatch',
            message='job failed (source tunnel: digest differs)',
            domain_running_on_source=False, seconds=9.0, setup_seconds=1.0,
            libvirt_seconds=8.0,
            results={'source': side_result('failed', 'checkpoint_mismatch'),
                     'destination': side_result('aborted', 'terminated')})
        text = '\n'.join(self.render(summary))
        self.assertIn(': FAILED', text)
        self.assertIn('  reason         checkpoint_mismatch: job failed '
                      '(source tunnel: digest differs)', text)
        self.assertIn('  domain         NOT running on the source', text)
        self.assertIn('  source rcpts   failed (checkpoint_mismatch)', text)
        self.assertIn('  dest. rcpts    aborted (terminated)', text)
        self.assertNotIn('receipts file', text)
        self.assertNotIn('digests', text)

    def test_unverified(self):
        summary = dict(
            HEAD, status='unverified', reason='receipt_invalid',
            message='source and destination digests differ', seconds=3.0,
            results={'source': side_result(recorded=False, verified=2),
                     'destination': side_result('failed', 'receipt_invalid')},
            digests_agree=False, receipts_file='/s/r.json')
        text = '\n'.join(self.render(summary))
        self.assertIn(': UNVERIFIED', text)
        self.assertIn('  reason         receipt_invalid: source and '
                      'destination digests differ', text)
        self.assertIn('  source rcpts   verified (2 connection(s)), NOT '
                      'recorded', text)
        self.assertIn('  dest. rcpts    failed (receipt_invalid)', text)
        self.assertIn('  digests        DIFFER', text)

    def test_no_status(self):
        self.assertEqual(['secmig-migrate: migration mig-1 of vm1: '
                          'cloud-a/host-a -> cloud-b/host-b: ?'],
                         self.render(dict(HEAD)))


class TestDetectedReason(testtools.TestCase):
    """The summary names the verdict of the side that detected it."""

    @staticmethod
    def results(dst_reason):
        return {'source': {'status': 'failed', 'reason': 'truncated'},
                'destination': {'status': 'failed', 'reason': dst_reason}}

    def test_cut_source_takes_the_destinations_verdict(self):
        self.assertEqual('stream_tampered', migrate.detected_reason(
            'truncated', self.results('stream_tampered')))
        self.assertEqual('checkpoint_mismatch', migrate.detected_reason(
            'truncated', self.results('checkpoint_mismatch')))

    def test_source_that_knows_keeps_its_reason(self):
        self.assertEqual('stream_tampered', migrate.detected_reason(
            'stream_tampered', self.results('truncated')))
        self.assertEqual('fingerprint_mismatch', migrate.detected_reason(
            'fingerprint_mismatch', self.results('grant_invalid')))

    def test_unspecific_destination_reason_is_not_a_verdict(self):
        for dst in ('truncated', 'terminated', 'migration_failed', None):
            self.assertEqual('truncated', migrate.detected_reason(
                'truncated', self.results(dst)), dst)
        self.assertEqual('truncated', migrate.detected_reason(
            'truncated', {}))


class TestExitCode(testtools.TestCase):

    def test_exit_codes(self):
        self.assertEqual(0, migrate.EXIT_OK)
        self.assertEqual(
            {'completed': 0, 'unverified': 3, 'refused': 1, 'failed': 1,
             'error': 1, None: 1},
            {status: migrate.exit_code({'status': status})
             for status in ('completed', 'unverified', 'refused', 'failed',
                            'error', None)})
        self.assertEqual(migrate.EXIT_FAILED, migrate.exit_code({}))


# -- host groups --------------------------------------------------------------

class TestHostEnd(ConfTestCase):

    def test_host_end(self):
        src = migrate.HostEnd(self.conf, SRC, 'source')
        self.assertEqual('source', src.side)
        self.assertEqual('host-a', src.name)
        self.assertEqual('cloud-a', src.cloud_id)
        self.assertEqual('qemu+tcp://host-a/system', src.libvirt_uri)
        self.assertEqual([], src.prefix)
        self.assertEqual(sys.executable, src.python)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a'),
                         src.identity.fingerprint)
        self.assertEqual(self.dir, src.settings.socket_dir)
        dst = migrate.HostEnd(self.conf, DST, 'destination')
        self.assertEqual(('host-b', 'cloud-b'), (dst.name, dst.cloud_id))

    def test_libvirt_uri_is_required(self):
        self.set(DST, libvirt_uri=None)
        e = self.assertCommandError(migrate.EXIT_CONFIG, migrate.HostEnd,
                                    self.conf, DST, 'destination')
        self.assertEqual('[secmig_migrate_destination] libvirt_uri is '
                         'required', str(e))

    def test_wrong_cloud_id(self):
        self.set(SRC, cloud_id='cloud-b')
        e = self.assertCommandError(migrate.EXIT_CONFIG, migrate.HostEnd,
                                    self.conf, SRC, 'source')
        # The error names the group the operator has to fix.
        self.assertIn('[secmig_migrate_source] cloud_id is cloud-b', str(e))
        self.assertNotIn('[secmig]', str(e))

    def test_unreadable_certificate(self):
        missing = os.path.join(self.dir, 'none.crt')
        self.set(SRC, cert_file=missing)
        e = self.assertCommandError(migrate.EXIT_CONFIG, migrate.HostEnd,
                                    self.conf, SRC, 'source')
        self.assertIn('[secmig_migrate_source] cert_file = %s is not a '
                      'readable file' % missing, str(e))

    def test_certificate_of_another_host(self):
        self.set(SRC, host='host-a2')
        e = self.assertCommandError(migrate.EXIT_CONFIG, migrate.HostEnd,
                                    self.conf, SRC, 'source')
        self.assertIn('names host host-a but this host is host-a2', str(e))

    def test_certificate_of_another_cloud(self):
        cert, key = self.pki.b.hosts['host-b']
        self.set(SRC, cert_file=cert, key_file=key)
        self.assertCommandError(migrate.EXIT_CONFIG, migrate.HostEnd,
                                self.conf, SRC, 'source')

    def test_socket_dir_checked_only_on_this_host(self):
        self.set(DST, socket_dir=os.path.join(self.dir, 'elsewhere'))
        e = self.assertCommandError(migrate.EXIT_CONFIG, migrate.HostEnd,
                                    self.conf, DST, 'destination')
        self.assertIn('create it', str(e))
        # With an exec_prefix the host is remote: its socket_dir is there.
        self.set(DST, exec_prefix=['ssh', 'root@host-b'], python='/py3')
        dst = migrate.HostEnd(self.conf, DST, 'destination')
        self.assertEqual(['ssh', 'root@host-b'], dst.prefix)
        self.assertEqual('/py3', dst.python)


class TestSocketCleaner(ConfTestCase):

    def stale(self, name):
        path = os.path.join(self.dir, name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.close()
        return path

    def listening(self, name):
        path = os.path.join(self.dir, name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        sock.listen(1)
        return path

    def test_here(self):
        end = migrate.HostEnd(self.conf, DST, 'destination')
        stale, live = self.stale('m.sock'), self.listening('l.sock')
        self.assertEqual([stale], end.socket_cleaner([stale, live]))
        self.assertFalse(os.path.lexists(stale))
        self.assertTrue(os.path.exists(live))

    def test_through_the_exec_prefix(self):
        # 'env' runs the cleaner in a child process, as ssh would there.
        self.set(DST, exec_prefix=['env'])
        end = migrate.HostEnd(self.conf, DST, 'destination')
        stale, live = self.stale('m.sock'), self.listening('l.sock')
        self.assertEqual([stale], end.socket_cleaner([stale, live]))
        self.assertFalse(os.path.lexists(stale))
        self.assertTrue(os.path.exists(live))

    def test_failing_prefix_raises(self):
        self.set(DST, exec_prefix=['false'])
        end = migrate.HostEnd(self.conf, DST, 'destination')
        self.assertRaises(subprocess.CalledProcessError, end.socket_cleaner,
                          [self.stale('m.sock')])


# -- the migration, without libvirt -------------------------------------------

class TestStreams(testtools.TestCase):

    def streams(self, out, inc):
        return migrate.Migrate._streams(result('source', out),
                                        result('destination', inc))

    def test_agree(self):
        conns = [connection(index=0, up=10, down=1),
                 connection(index=1, up=20, down=2),
                 connection('disk', 0, up=30, down=3)]
        summary = self.streams(conns, list(reversed(conns)))
        self.assertTrue(summary['digests_agree'])
        self.assertEqual(3, summary['connections'])
        self.assertEqual(4096 * 60, summary['bytes_to_destination'])
        self.assertEqual(4096 * 6, summary['bytes_to_source'])
        self.assertEqual(['TLSv1.3 TLS_AES_256_GCM_SHA384'], summary['tls'])

    def test_differing_sha256_to_destination(self):
        out = [connection(index=0), connection(index=1)]
        inc = [connection(index=0), connection(index=1)]
        inc[1]['src_to_dst'] = dict(inc[1]['src_to_dst'],
                                    sha256='ff' * 32)
        self.assertFalse(self.streams(out, inc)['digests_agree'])

    def test_differing_sha256_back_to_source(self):
        out = [connection()]
        inc = [connection()]
        inc[0]['dst_to_src'] = dict(inc[0]['dst_to_src'], sha256='00' * 32)
        self.assertFalse(self.streams(out, inc)['digests_agree'])

    def test_missing_connection(self):
        out = [connection(index=0), connection(index=1)]
        self.assertFalse(self.streams(out, out[:1])['digests_agree'])

    def test_other_connection_of_the_same_count(self):
        out = [connection(index=0), connection(index=1)]
        inc = [connection(index=0), connection(index=2)]
        self.assertFalse(self.streams(out, inc)['digests_agree'])

    def test_no_connections_do_not_agree(self):
        summary = self.streams([], [])
        self.assertFalse(summary['digests_agree'])
        self.assertEqual((0, 0, 0, []),
                         (summary['connections'],
                          summary['bytes_to_destination'],
                          summary['bytes_to_source'], summary['tls']))


class TestMigrate(ConfTestCase):

    def receipts(self, mid):
        """One connection's real receipt pair, host-a to host-b."""
        src = self.pki.a.credentials('host-a')
        dst = self.pki.b.credentials('host-b')
        now = time.time()
        claims = {
            'migration_id': mid, 'instance_uuid': INSTANCE,
            'grant_jti': str(uuid.uuid4()), 'stream_kind': 'memory',
            'connection_index': 0, 'src_to_dst': digest(5),
            'dst_to_src': digest(6), 'started_at': round(now - 1, 3),
            'ended_at': round(now, 3), 'src_fingerprint': src.fingerprint,
            'dst_fingerprint': dst.fingerprint, 'src_cloud': 'cloud-a',
            'dst_cloud': 'cloud-b', 'tls_version': 'TLSv1.3',
            'tls_cipher': 'TLS_AES_256_GCM_SHA384'}
        source = tokens.sign_receipt(src, dict(claims, role='source'))
        destination = tokens.sign_receipt(dst, dict(
            claims, role='destination',
            source_receipt_sha256=tokens.token_digest(source)))
        return connection(up=5, down=6, source_receipt=source,
                          destination_receipt=destination)

    def test_hosts_from_their_groups(self):
        m = migrate.Migrate(self.conf)
        self.assertEqual(('source', 'host-a', 'cloud-a'),
                         (m.src.side, m.src.name, m.src.cloud_id))
        self.assertEqual(('destination', 'host-b', 'cloud-b'),
                         (m.dst.side, m.dst.name, m.dst.cloud_id))
        self.assertFalse(m.progress.enabled)

    def test_save_receipts(self):
        m = migrate.Migrate(self.conf)
        mid = str(uuid.uuid4())
        conn = self.receipts(mid)
        path = m._save_receipts(mid, result('source', [conn]))
        self.assertEqual(os.path.join(self.state_dir, 'receipts',
                                      '%s.json' % mid), path)
        with open(path) as f:
            document = json.load(f)
        self.assertEqual(mid, document['migration_id'])
        pairs = receipts.pairs_from_document(document)
        self.assertEqual([(conn['source_receipt'],
                           conn['destination_receipt'])], pairs)
        # What "secmig-nova-manage receipts verify" then checks.
        stores = {
            'cloud-a': trust_store.TrustStore.load('cloud-a',
                                                   self.pki.a.ca.ca_file),
            'cloud-b': trust_store.TrustStore.load('cloud-b',
                                                   self.pki.b.ca.ca_file)}
        checked = receipts.verify_pair(*pairs[0], stores)
        self.assertTrue(checked.ok, checked.failed)

    def test_no_receipts_no_file(self):
        m = migrate.Migrate(self.conf)
        self.assertIsNone(m._save_receipts('mig-1', result('source', [])))
        self.assertFalse(os.path.exists(os.path.join(self.state_dir,
                                                     'receipts')))

    def test_embedded_brokers(self):
        out = io.StringIO()
        m = migrate.Migrate(self.conf, migrate.Progress(out, True))
        src_client, dst_client = m._clients()
        self.addCleanup(m.brokers.stop)
        self.assertIn('embedded brokers of cloud-a, cloud-b started (roles '
                      'from %s)' % self.role_file, out.getvalue())
        self.assertEqual(['cloud-a', 'cloud-b'], sorted(m.brokers.managers))
        mid = str(uuid.uuid4())
        dst_client.register_incoming(mid, '127.0.0.1:49400', {'memory': 1},
                                     INSTANCE)
        ticket = src_client.authorize_migration(
            mid, INSTANCE, 'host-b', 'cloud-b', user_id='op',
            project_id='p1')['ticket']
        grant = tokens.verify_grant(
            src_client.request_grant(mid, ticket, {'memory': 1})['grant'],
            m.dst.identity.store)
        self.assertEqual(m.dst.identity.fingerprint, grant.dst_fingerprint)
        e = self.assertRaises(
            rpcapi.BrokerRefused, src_client.authorize_migration,
            str(uuid.uuid4()), INSTANCE, 'host-b', 'cloud-b',
            user_id='intruder', project_id='p1')
        self.assertEqual('missing_role', e.reason)

    def test_engines(self):
        m = migrate.Migrate(self.conf)
        src_engine, dst_engine = m._engines()
        self.addCleanup(m.brokers.stop)
        self.assertEqual(m.src.socket_cleaner, src_engine.socket_cleaner)
        self.assertEqual(m.dst.socket_cleaner, dst_engine.socket_cleaner)
        self.assertEqual({'cloud-b': m.dst.identity.store},
                         src_engine.peer_stores)
        self.assertEqual({'cloud-a': m.src.identity.store},
                         dst_engine.peer_stores)

    def test_missing_role_file(self):
        self.set(migrate_conf.GROUP_NAME,
                 role_file=os.path.join(self.dir, 'absent.json'))
        m = migrate.Migrate(self.conf)
        e = self.assertCommandError(migrate.EXIT_CONFIG, m._clients)
        self.assertIn('cannot read role file', str(e))
        self.assertIsNone(m.brokers)

    def test_missing_broker_certificate(self):
        self.set(DST, broker_cert_file=None)
        m = migrate.Migrate(self.conf)
        e = self.assertCommandError(migrate.EXIT_CONFIG, m._clients)
        self.assertIn('embedded broker:', str(e))
        self.assertIn('broker_cert_file', str(e))

    def test_host_certificate_as_broker_certificate(self):
        cert, key = self.pki.b.hosts['host-b']
        self.set(DST, broker_cert_file=cert, broker_key_file=key)
        m = migrate.Migrate(self.conf)
        e = self.assertCommandError(migrate.EXIT_CONFIG, m._clients)
        self.assertIn('embedded broker:', str(e))


# -- main ---------------------------------------------------------------------

class TestMain(testtools.TestCase):
    """main() on a fresh global configuration (it parses cfg.CONF)."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='smcm-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.useFixture(fixtures.MockPatchObject(cfg, 'CONF',
                                                 cfg.ConfigOpts()))
        # Another module of this test process may have picked oslo.service's
        # backend already; the console script picks it first.
        self.init_backend = self.useFixture(fixtures.MockPatch(
            'oslo_service.backend.init_backend')).mock
        # No global logging changes from the tests.
        self.useFixture(fixtures.MockPatch('oslo_log.log.set_defaults'))
        self.useFixture(fixtures.MockPatch('oslo_log.log.setup'))
        logger = std_logging.getLogger('secmig_nova')
        self.addCleanup(logger.setLevel, logger.level)
        self.stdout = self.useFixture(fixtures.MockPatch(
            'sys.stdout', new_callable=io.StringIO)).mock
        self.stderr = self.useFixture(fixtures.MockPatch(
            'sys.stderr', new_callable=io.StringIO)).mock

    def main(self, *argv):
        try:
            return migrate.main(list(argv))
        except SystemExit as e:
            # argparse's own errors (a missing positional) exit directly.
            return e.code

    def config(self, text):
        path = os.path.join(self.dir, 'secmig-migrate.conf')
        with open(path, 'w') as f:
            f.write(text)
        return path

    def test_missing_domain(self):
        self.assertEqual(migrate.EXIT_CONFIG, self.main())
        self.assertIn('the following arguments are required: domain',
                      self.stderr.getvalue())
        self.init_backend.assert_called_once_with(
            backend.BackendType.THREADING)

    def test_config_file_not_found(self):
        missing = os.path.join(self.dir, 'absent.conf')
        self.assertEqual(migrate.EXIT_CONFIG,
                         self.main('--config-file', missing, 'vm1'))
        self.assertIn('secmig-migrate: Failed to find some config files: %s'
                      % missing, self.stderr.getvalue())

    def test_config_file_unparsable(self):
        path = self.config('[secmig_migrate\nbroker = embedded\n')
        self.assertEqual(migrate.EXIT_CONFIG,
                         self.main('--config-file', path, 'vm1'))
        self.assertIn(path, self.stderr.getvalue())

    def test_host_group_error(self):
        path = self.config('[secmig_migrate_source]\ncloud_id = cloud-a\n')
        self.assertEqual(migrate.EXIT_CONFIG,
                         self.main('--config-file', path, '--json', 'vm1'))
        answer = json.loads(self.stdout.getvalue())
        self.assertEqual('error', answer['status'])
        self.assertIn('[secmig_migrate_source] libvirt_uri is required',
                      answer['message'])

    def test_invalid_value_in_config_file(self):
        # oslo.config checks values when they are read: a value of the
        # wrong type surfaces in HostEnd (Settings.from_group), after
        # parsing, and must still be a configuration error (2).
        path = self.config('[secmig_migrate_source]\n'
                           'libvirt_uri = qemu:///system\n'
                           'tunnel_port_min = not-a-port\n')
        try:
            code = self.main('--config-file', path, 'vm1')
        except cfg.ConfigFileValueError as e:
            self.fail('main() raised %r instead of returning %d'
                      % (e, migrate.EXIT_CONFIG))
        self.assertEqual(migrate.EXIT_CONFIG, code)
        self.assertIn('tunnel_port_min', self.stderr.getvalue())


class TestConsoleScript(testtools.TestCase):
    """The exit status a shell sees."""

    def run_command(self, *argv):
        return subprocess.run(
            [sys.executable, '-m', 'secmig_nova.cmd.migrate'] + list(argv),
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PYTHONWARNINGS='ignore'))

    def test_missing_domain(self):
        proc = self.run_command()
        self.assertEqual(migrate.EXIT_CONFIG, proc.returncode, proc.stderr)
        self.assertIn('the following arguments are required: domain',
                      proc.stderr)

    def test_config_file_not_found(self):
        proc = self.run_command('--config-file', '/nonexistent/secmig.conf',
                                'vm1')
        self.assertEqual(migrate.EXIT_CONFIG, proc.returncode, proc.stderr)
        self.assertIn('Failed to find some config files', proc.stderr)


class _FakeDomain:
    """migrateToURI3 blocks until abortJob, as a running job does.

    ``finish_first``: the job completes when the abort arrives (libvirt
    finished just before it).
    """

    def __init__(self, finish_first=False):
        import libvirt
        self.libvirt = libvirt
        self.finish_first = finish_first
        self.aborted = threading.Event()
        self.calls = []
        self.threads = {}

    def migrateToURI3(self, uri, params, flags):
        self.calls.append('migrate')
        self.threads['migrate'] = signal.pthread_sigmask(signal.SIG_BLOCK,
                                                         set())
        self.aborted.wait(10)
        if not self.finish_first:
            raise self.libvirt.libvirtError('operation aborted: job aborted')

    def abortJob(self):
        self.calls.append('abort')
        self.aborted.set()

    def jobStats(self):
        self.threads['stats'] = signal.pthread_sigmask(signal.SIG_BLOCK,
                                                       set())
        return {}


class TestInterrupt(testtools.TestCase):

    def setUp(self):
        super().setUp()
        previous = signal.signal(signal.SIGTERM, migrate._interrupt)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)

    def engine(self):
        engine = migrate.Migrate.__new__(migrate.Migrate)
        engine.opts = mock.Mock(timeout=600)
        engine.progress = mock.Mock()
        engine.dst = mock.Mock(libvirt_uri='qemu:///dst')
        return engine

    def signal_soon(self):
        timer = threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        self.addCleanup(timer.cancel)

    def test_interrupt_aborts_the_job_and_waits(self):
        engine = self.engine()
        dom = _FakeDomain()
        self.signal_soon()
        self.assertRaises(migrate.Interrupted, engine._libvirt_migrate,
                          dom, {}, 0)
        self.assertEqual(['migrate', 'abort'], dom.calls)
        engine.progress.step.assert_any_call(
            'interrupted: aborting the libvirt job')

    def test_libvirt_calls_never_take_the_signal(self):
        # A signal landing in a thread waiting on libvirt breaks the call.
        engine = self.engine()
        dom = _FakeDomain()
        self.signal_soon()
        self.assertRaises(migrate.Interrupted, engine._libvirt_migrate,
                          dom, {}, 0)
        for name in ('migrate', 'stats'):
            self.assertTrue({signal.SIGINT, signal.SIGTERM}
                            <= dom.threads[name], name)

    def test_job_that_finished_first_is_reported(self):
        engine = self.engine()
        dom = _FakeDomain(finish_first=True)
        self.signal_soon()
        _seconds, error = engine._libvirt_migrate(dom, {}, 0)
        self.assertIsNone(error)
        self.assertEqual(['migrate', 'abort'], dom.calls)


class TestNotMoved(testtools.TestCase):
    """libvirt's success alone does not make a migration."""

    def check(self, on_source, on_destination):
        import libvirt
        dom = mock.Mock()
        dom.isActive.return_value = on_source
        dst_conn = mock.Mock()
        if on_destination is None:
            dst_conn.lookupByUUIDString.side_effect = libvirt.libvirtError(
                'no domain')
        else:
            dst_conn.lookupByUUIDString.return_value.isActive.return_value \
                = on_destination
        return migrate.Migrate._not_moved(dom, dst_conn, 'uuid-1')

    def test_moved(self):
        self.assertIsNone(self.check(False, True))

    def test_still_on_source(self):
        self.assertEqual('libvirt reported success, but the domain is '
                         'running on the source and not running on the '
                         'destination', self.check(True, None))

    def test_on_both(self):
        self.assertIn('is running on the source and running on the '
                      'destination', self.check(True, True))

    def test_nowhere(self):
        self.assertIn('not running on the source and not running',
                      self.check(False, False))
