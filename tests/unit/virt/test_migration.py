"""Tests of secmig_nova/virt/migration.py: both sides of one migration.

The broker client is a mock (its answers are real signed grants from the
test PKI); tunnel processes are tests/unit/virt/fakes.py, which validate
their parameters with the real parser and sign real receipts.
"""

import logging
import os
import shutil
import stat
import tempfile
from unittest import mock
import uuid

import fixtures
from oslo_config import cfg
import testtools

from secmig_nova.authz import tokens
from secmig_nova.broker import rpcapi
from secmig_nova.conf import secmig as secmig_conf
from secmig_nova.trust import store as trust_store
from secmig_nova.virt import migration
from tests.fixtures import pki as pki_fixture
from tests.unit.virt import fakes

INSTANCE = '6a1f5d7e-0000-4000-8000-0000000000aa'


def make_settings(pki, cloud, host, socket_dir=None, **kwargs):
    cert, key = cloud.hosts[host]
    values = dict(cloud_id=cloud.cloud_id, cert_file=cert, key_file=key,
                  ca_file=cloud.ca.ca_file, socket_dir=socket_dir,
                  tunnel_ready_timeout=2.0, tunnel_result_timeout=2.0)
    values.update(kwargs)
    return migration.Settings(**values)


class MigrationTestCase(testtools.TestCase):
    """cloud-a's host-a migrates to host-a2 (same cloud) by default."""

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.dir = tempfile.mkdtemp(prefix='smv-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.tunnels = fakes.FakeTunnels()
        self.src = self.side('host-a')
        self.dst = self.side('host-a2')
        self.mid = str(uuid.uuid4())

    def side(self, host, cloud=None, **kwargs):
        cloud = cloud or self.pki.a
        settings = make_settings(self.pki, cloud, host, socket_dir=self.dir,
                                 **kwargs)
        identity = migration.HostIdentity.load(settings, host)
        client = mock.Mock(spec=rpcapi.HostClient)
        client.record_receipt.return_value = {'receipts_stored': 1}
        return migration.SecureMigration(settings, identity, client,
                                         tunnel_factory=self.tunnels)

    def grant(self, streams=None, dst_host='host-a2', broker='broker-a',
              cloud=None, **overrides):
        cloud = cloud or self.pki.a
        kwargs = dict(
            migration_id=self.mid, instance_uuid=INSTANCE,
            src_cloud='cloud-a', src_host='host-a',
            src_fingerprint=self.src.identity.fingerprint,
            dst_host=dst_host,
            dst_fingerprint=self.pki.fingerprint(cloud, dst_host),
            dst_endpoint='127.0.0.1:49400',
            streams=streams or {'memory': 1})
        kwargs.update(overrides)
        return tokens.issue_grant(cloud.credentials(broker), **kwargs)

    def answer(self, streams=None, **kwargs):
        client = self.src.host_client
        client.authorize_migration.return_value = {'ticket': 'T-1'}
        client.request_grant.return_value = {
            'grant': self.grant(streams, **kwargs),
            'dst_endpoint': '127.0.0.1:49400'}

    def start_same_cloud(self):
        """host-a1 -> host-a2, both sides started; (incoming, outgoing)."""
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        self.answer()
        outgoing = self.src.start_source(self.mid, INSTANCE, 'host-a2',
                                         {'memory': 1}, user_id='u',
                                         project_id='p')
        return incoming, outgoing

    def complete_same_cloud(self):
        """host-a1 -> host-a2, completed on both sides; (incoming, result)."""
        incoming, outgoing = self.start_same_cloud()
        self.assertTrue(outgoing.finish(True).ok)
        result = incoming.finish(True)
        self.assertTrue(result.ok, result)
        return incoming, result

    def assertError(self, reason, func, *args, **kwargs):
        e = self.assertRaises(migration.SecureMigrationError, func, *args,
                              **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e


class TestSetupPhases(MigrationTestCase):
    """Each side's setup steps, timed, in its INFO line (issue 14)."""

    def test_both_sides_log_their_setup_steps(self):
        logs = self.useFixture(fixtures.FakeLogger(
            name='secmig_nova.virt.migration', level=logging.INFO))
        _incoming, outgoing = self.start_same_cloud()
        self.assertEqual(['ticket', 'grant', 'tunnel ready'],
                         list(outgoing.setup.steps))
        self.assertTrue(all(v >= 0 for v in outgoing.setup.steps.values()))
        self.assertAlmostEqual(sum(outgoing.setup.steps.values()),
                               outgoing.setup.total, places=6)
        self.assertRegex(logs.output, r'registered with the broker; setup '
                         r'[0-9.]+ s \(tunnel ready [0-9.]+ s, registration '
                         r'[0-9.]+ s\)')
        self.assertRegex(logs.output, r'source tunnel listening on .*; setup '
                         r'[0-9.]+ s \(ticket [0-9.]+ s, grant [0-9.]+ s, '
                         r'tunnel ready [0-9.]+ s\)')
        outgoing.finish(False, 'test over')

    def test_next_spare_starts_after_each_tunnel_ends(self):
        incoming, outgoing = self.start_same_cloud()
        # Not while the migration runs: the CPU is the guest's then.
        self.assertEqual(0, self.tunnels.replenished)
        outgoing.finish(False, 'test over')
        self.assertEqual(1, self.tunnels.replenished)
        incoming.finish(False, 'test over')
        self.assertEqual(2, self.tunnels.replenished)

    def test_phases_add_up(self):
        now = [10.0]
        phases = migration._Phases(clock=lambda: now[0])
        now[0] = 10.25
        phases.done('ticket')
        now[0] = 10.75
        phases.done('grant')
        self.assertEqual({'ticket': 0.25, 'grant': 0.5}, phases.steps)
        self.assertEqual(0.75, phases.total)
        self.assertEqual('setup 0.750 s (ticket 0.250 s, grant 0.500 s)',
                         str(phases))


class TestSettingsAndIdentity(MigrationTestCase):

    def test_settings_from_conf(self):
        conf = cfg.ConfigOpts()
        secmig_conf.register_opts(conf)
        conf([])
        conf.set_override('socket_dir', '/x', 'secmig')
        conf.set_override('tunnel_port_min', 50000, 'secmig')
        s = migration.Settings.from_conf(conf)
        self.assertEqual('/x', s.socket_dir)
        self.assertEqual(50000, s.tunnel_port_min)
        self.assertEqual(60.0, s.tunnel_result_timeout)
        self.assertEqual('aes-256-gcm', s.tunables()['tls_cipher'])

    def test_identity(self):
        self.assertEqual('host-a', self.src.identity.name)
        self.assertEqual('cloud-a', self.src.identity.cloud_id)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a'),
                         self.src.identity.fingerprint)

    def load(self, host='host-a', **kwargs):
        kwargs.setdefault('socket_dir', self.dir)
        settings = make_settings(self.pki, self.pki.a, 'host-a', **kwargs)
        return migration.HostIdentity.load(settings, host)

    def test_certificate_must_name_nova_host(self):
        e = self.assertError('config_invalid', self.load, host='compute-7')
        self.assertIn('issue the host certificate for compute-7', str(e))

    def test_private_key_must_be_private(self):
        key = os.path.join(self.dir, 'open.key')
        shutil.copy(self.pki.a.hosts['host-a'][1], key)
        os.chmod(key, 0o644)
        e = self.assertError('config_invalid', self.load, key_file=key)
        self.assertIn('chmod 600', str(e))

    def test_missing_files(self):
        e = self.assertError('config_invalid', self.load,
                             cert_file=os.path.join(self.dir, 'none.crt'))
        self.assertIn('secmig-nova-manage ca issue host', str(e))

    def test_key_of_another_certificate(self):
        e = self.assertError('config_invalid', self.load,
                             key_file=self.pki.a.hosts['host-a2'][1])
        self.assertIn('cannot load', str(e))

    def test_broker_certificate_refused(self):
        cert, key = self.pki.a.hosts['broker-a']
        e = self.assertError('config_invalid', self.load, host='broker-a',
                             cert_file=cert, key_file=key)
        self.assertIn('host certificate', str(e))

    def test_wrong_cloud(self):
        e = self.assertError('config_invalid', self.load,
                             cloud_id='cloud-b')
        self.assertIn('[secmig] cloud_id', str(e))

    def test_untrusted_ca(self):
        e = self.assertError('config_invalid', self.load,
                             ca_file=self.pki.b.ca.ca_file)
        self.assertIn('not valid for cloud', str(e))

    def test_revoked_certificate(self):
        cert, key = self.pki.a.hosts['host-a-revoked']
        e = self.assertError('config_invalid', self.load,
                             host='host-a-revoked', cert_file=cert,
                             key_file=key, crl_file=self.pki.a.ca.crl_file)
        self.assertIn('crl_file', str(e))

    def test_socket_dir_must_exist(self):
        e = self.assertError('config_invalid', self.load,
                             socket_dir=os.path.join(self.dir, 'nope'))
        self.assertIn('create it', str(e))

    def test_port_range(self):
        e = self.assertError('config_invalid', self.load,
                             tunnel_port_min=50001, tunnel_port_max=50000)
        self.assertIn('tunnel_port_max', str(e))


class TestPeerStores(MigrationTestCase):
    """[secmig] peer_ca_files: the peer clouds' trust stores."""

    def conf(self, peer_ca_files=None, **overrides):
        conf = cfg.ConfigOpts()
        secmig_conf.register_opts(conf)
        conf([])
        cert, key = self.pki.a.hosts['host-a']
        values = dict(cloud_id='cloud-a', cert_file=cert, key_file=key,
                      ca_file=self.pki.a.ca.ca_file, socket_dir=self.dir)
        values.update(overrides)
        if peer_ca_files is not None:
            values['peer_ca_files'] = peer_ca_files
        for name, value in values.items():
            conf.set_override(name, value, 'secmig')
        return conf

    def test_none(self):
        self.assertEqual({}, migration.peer_stores_from_conf(self.conf()))

    def test_peer_cloud(self):
        stores = migration.peer_stores_from_conf(self.conf(
            {'cloud-b': self.pki.b.ca.ca_file}))
        self.assertEqual(['cloud-b'], list(stores))
        self.assertIsInstance(stores['cloud-b'], trust_store.TrustStore)
        self.assertEqual(('cloud-b', self.pki.b.ca.ca_file),
                         (stores['cloud-b'].cloud_id,
                          stores['cloud-b'].ca_file))

    def test_option_format(self):
        # What operators write: <cloud-id>:<CA bundle>, comma-separated.
        path = os.path.join(self.dir, 'secmig.conf')
        with open(path, 'w') as f:
            f.write('[secmig]\ncloud_id = cloud-a\npeer_ca_files = '
                    'cloud-b:%s, rogue:%s\n'
                    % (self.pki.b.ca.ca_file, self.pki.rogue.ca.ca_file))
        conf = cfg.ConfigOpts()
        secmig_conf.register_opts(conf)
        conf(['--config-file', path])
        stores = migration.peer_stores_from_conf(conf)
        self.assertEqual({'cloud-b': self.pki.b.ca.ca_file,
                          'rogue': self.pki.rogue.ca.ca_file},
                         {k: v.ca_file for k, v in stores.items()})

    def test_own_cloud_refused(self):
        # The own cloud's CA is [secmig] ca_file (and its CRL); as a peer
        # it would make a host of this cloud look like another cloud's.
        e = self.assertError('config_invalid',
                             migration.peer_stores_from_conf,
                             self.conf({'cloud-b': self.pki.b.ca.ca_file,
                                        'cloud-a': self.pki.a.ca.ca_file}))
        self.assertIn('peer_ca_files names this host\'s own cloud cloud-a',
                      str(e))

    def test_missing_ca_refused(self):
        missing = os.path.join(self.dir, 'none.crt')
        e = self.assertError('config_invalid',
                             migration.peer_stores_from_conf,
                             self.conf({'cloud-b': missing}))
        self.assertIn('cannot load the CA bundle %s of cloud cloud-b'
                      % missing, str(e))

    def test_not_a_ca_refused(self):
        garbage = os.path.join(self.dir, 'garbage.crt')
        with open(garbage, 'w') as f:
            f.write('not a certificate\n')
        for path in (garbage, self.pki.b.hosts['host-b'][1]):
            e = self.assertError('config_invalid',
                                 migration.peer_stores_from_conf,
                                 self.conf({'cloud-b': path}))
            self.assertIn('cannot load the CA bundle %s' % path, str(e))

    def from_conf(self, conf):
        with mock.patch.object(migration, 'host_client_from_conf') as hc:
            secure = migration.SecureMigration.from_conf(conf, host='host-a')
        self.assertIs(hc.return_value, secure.host_client)
        return secure

    def test_from_conf_sets_peer_stores(self):
        secure = self.from_conf(self.conf(
            {'cloud-b': self.pki.b.ca.ca_file}))
        self.assertEqual(['cloud-b'], list(secure.peer_stores))
        self.assertIs(secure.peer_stores['cloud-b'],
                      secure.trust_store('cloud-b'))
        self.assertIs(secure.identity.store, secure.trust_store('cloud-a'))
        self.assertError('unknown_cloud', secure.trust_store, 'rogue')

    def test_from_conf_without_peers(self):
        secure = self.from_conf(self.conf())
        self.assertEqual({}, secure.peer_stores)
        self.assertError('unknown_cloud', secure.trust_store, 'cloud-b')

    def test_from_conf_refuses_bad_peers(self):
        # nova-compute does not start (driver.init_host: config error).
        self.assertError('config_invalid', self.from_conf,
                         self.conf({'cloud-a': self.pki.a.ca.ca_file}))


class TestHelpers(testtools.TestCase):

    def test_socket_paths(self):
        self.assertEqual('/run/secmig/m-1.sock',
                         migration.socket_path('/run/secmig', 'm-1'))
        self.assertEqual('/run/secmig/m-1-disk.sock',
                         migration.socket_path('/run/secmig', 'm-1', 'disk'))
        self.assertEqual('unix:///run/secmig/m-1.sock',
                         migration.unix_uri('/run/secmig/m-1.sock'))
        for bad in ('', '../x', 'a/b', '.hidden'):
            self.assertRaises(migration.SecureMigrationError,
                              migration.socket_path, '/run/secmig', bad)

    def test_stream_counts(self):
        self.assertEqual({'memory': 1}, migration.stream_counts())
        self.assertEqual({'memory': 1}, migration.stream_counts(1))
        # multifd: the main channel plus the parallel ones.
        self.assertEqual({'memory': 5}, migration.stream_counts(4))
        self.assertEqual({'memory': 1, 'disk': 2},
                         migration.stream_counts(0, 2))
        self.assertRaises(migration.SecureMigrationError,
                          migration.stream_counts, 64)

    def test_libvirt_params(self):
        self.assertEqual({'migrate_uri': 'unix:///s/m.sock'},
                         migration.libvirt_params('unix:///s/m.sock'))
        params = migration.libvirt_params(
            'unix:///s/m.sock', disks_uri='unix:///s/m-disk.sock',
            destination_xml='<domain/>', migrate_disks=['vda'],
            bandwidth=100, parallel=4)
        self.assertEqual({'migrate_uri': 'unix:///s/m.sock',
                          'disks_uri': 'unix:///s/m-disk.sock',
                          'destination_xml': '<domain/>',
                          'persistent_xml': '<domain/>',
                          'migrate_disks': ['vda'], 'bandwidth': 100,
                          'parallel.connections': 4}, params)
        # No disks copied: no disks_uri.
        self.assertNotIn('disks_uri', migration.libvirt_params(
            'unix:///s/m.sock', disks_uri='unix:///s/m-disk.sock'))

    def test_remove_socket_leaves_other_files(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        plain = os.path.join(d, 'plain')
        open(plain, 'w').close()
        migration.remove_socket(plain)
        migration.remove_socket(os.path.join(d, 'missing'))
        self.assertTrue(os.path.exists(plain))


class TestDestination(MigrationTestCase):

    def test_prepare_registers_the_tunnel(self):
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 3, 'disk': 1})
        [tunnel] = self.tunnels.of('destination')
        p = tunnel.params
        self.assertEqual('destination', p['side'])
        self.assertEqual(self.mid, p['migration_id'])
        self.assertEqual({'memory': os.path.join(self.dir,
                                                 self.mid + '.sock'),
                          'disk': os.path.join(self.dir,
                                               self.mid + '-disk.sock')},
                         p['sockets'])
        self.assertEqual(self.pki.a.hosts['host-a2'][0], p['cert_file'])
        self.assertEqual({'cloud_id': 'cloud-a',
                          'ca_file': self.pki.a.ca.ca_file,
                          'crl_file': None}, p['peer'])
        self.assertEqual(('127.0.0.1', 49400, 49499),
                         (p['listen_host'], p['port_min'], p['port_max']))
        # The destination cannot know the grant: it runs until stopped.
        self.assertNotIn('expect_connections', p)
        self.assertIsNotNone(tunnel.parsed)
        self.dst.host_client.register_incoming.assert_called_once_with(
            self.mid, '127.0.0.1:49400', {'memory': 3, 'disk': 1}, INSTANCE)
        self.assertEqual('127.0.0.1:49400', incoming.endpoint)
        self.assertEqual([], tunnel.signals)

    def test_registration_refused_stops_the_tunnel(self):
        self.dst.host_client.register_incoming.side_effect = \
            rpcapi.BrokerRefused('duplicate_migration', 'already there')
        e = self.assertError('duplicate_migration',
                             self.dst.prepare_destination, self.mid,
                             INSTANCE, {'memory': 1})
        self.assertIn('did not register', str(e))
        [tunnel] = self.tunnels.of('destination')
        self.assertEqual(['SIGTERM'], tunnel.signals)

    def test_tunnel_that_does_not_start_is_not_registered(self):
        self.tunnels.refuse_start['destination'] = ('config_invalid',
                                                    'no free port')
        e = self.assertError('config_invalid', self.dst.prepare_destination,
                             self.mid, INSTANCE, {'memory': 1})
        self.assertIn('no free port', str(e))
        self.dst.host_client.register_incoming.assert_not_called()

    def test_bad_streams(self):
        self.assertError('bad_request', self.dst.prepare_destination,
                         self.mid, INSTANCE, {'cpu': 1})

    def test_finish_after_source_completed(self):
        incoming, result = self.complete_same_cloud()
        self.assertEqual(['SIGTERM'],
                         self.tunnels.of('destination')[0].signals)
        call = self.dst.host_client.record_receipt.call_args
        self.assertEqual((self.mid, 'completed'), call[0])
        self.assertEqual(1, len(call[1]['connections']))
        self.assertEqual(result.connections[0], call[1]['connections'][0])
        # Idempotent: a second finish (rollback after post) changes nothing.
        self.assertIs(result, incoming.finish(False, 'late'))
        self.assertEqual(1, self.dst.host_client.record_receipt.call_count)

    def test_finish_without_source_is_aborted(self):
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        result = incoming.finish(False, 'rolled back')
        self.assertEqual('aborted', result.status)
        self.dst.host_client.record_receipt.assert_called_once_with(
            self.mid, 'aborted', connections=(), reason='rolled back')

    def test_failed_tunnel_verdict_comes_first_in_the_record(self):
        # nova stops the destination because the migration is failed;
        # the record says why: the tunnel's own verdict (the real cloud's
        # byte-flip test found only "the migration is failed" there).
        self.tunnels.fail['destination'] = (
            'stream_tampered', 'a TLS record failed its integrity check')
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        result = incoming.finish(False, 'the migration is failed')
        self.assertEqual(('failed', 'stream_tampered'),
                         (result.status, result.reason))
        self.dst.host_client.record_receipt.assert_called_once_with(
            self.mid, 'failed', connections=(), reason=(
                'destination tunnel: stream_tampered: a TLS record failed '
                'its integrity check; the migration is failed'))

    def test_completed_without_connections_is_failed(self):
        incoming = self.dst.prepare_destination(self.mid, INSTANCE,
                                                {'memory': 1})
        result = incoming.finish(True)
        self.assertEqual('failed', result.status)
        self.assertEqual('terminated', result.reason)
        self.assertEqual('failed', self.dst.host_client.record_receipt
                         .call_args[0][1])


class TestSource(MigrationTestCase):

    def start(self, streams=None, **kwargs):
        return self.src.start_source(self.mid, INSTANCE, 'host-a2',
                                     streams or {'memory': 1},
                                     user_id='user-1', project_id='proj-1',
                                     **kwargs)

    def test_start(self):
        self.answer({'memory': 3, 'disk': 2})
        outgoing = self.start({'memory': 3, 'disk': 2})
        client = self.src.host_client
        client.authorize_migration.assert_called_once_with(
            self.mid, INSTANCE, 'host-a2', 'cloud-a', token=None,
            user_id='user-1', project_id='proj-1')
        client.request_grant.assert_called_once_with(
            self.mid, 'T-1', {'memory': 3, 'disk': 2})
        [tunnel] = self.tunnels.of('source')
        p = tunnel.params
        mem = os.path.join(self.dir, self.mid + '.sock')
        disk = os.path.join(self.dir, self.mid + '-disk.sock')
        self.assertEqual({'memory': mem, 'disk': disk}, p['sockets'])
        self.assertEqual({'memory': 3, 'disk': 2}, p['expect_connections'])
        self.assertEqual(outgoing.grant.token, p['grant'])
        self.assertIsNotNone(tunnel.parsed)
        self.assertEqual('unix://' + mem, outgoing.migrate_uri)
        self.assertEqual('unix://' + disk, outgoing.disks_uri)
        self.assertEqual({'memory': 3, 'disk': 2}, outgoing.streams)
        client.record_receipt.assert_not_called()

    def test_start_with_a_token(self):
        self.answer()
        self.src.start_source(self.mid, INSTANCE, 'host-a2', {'memory': 1},
                              token='keystone-token')
        self.src.host_client.authorize_migration.assert_called_once_with(
            self.mid, INSTANCE, 'host-a2', 'cloud-a', token='keystone-token',
            user_id=None, project_id=None)

    def test_authorization_refused(self):
        self.src.host_client.authorize_migration.side_effect = \
            rpcapi.BrokerRefused('missing_role', 'user-1 may not')
        e = self.assertError('missing_role', self.start)
        self.assertIn('refused to authorize', str(e))
        self.src.host_client.request_grant.assert_not_called()
        self.assertEqual([], self.tunnels.started)

    def test_grant_refused(self):
        client = self.src.host_client
        client.authorize_migration.return_value = {'ticket': 'T-1'}
        client.request_grant.side_effect = rpcapi.BrokerRefused(
            'not_registered', 'no destination tunnel')
        e = self.assertError('not_registered', self.start)
        self.assertIn('no grant', str(e))
        self.assertEqual([], self.tunnels.started)
        self.assertEqual((self.mid, 'failed'),
                         client.record_receipt.call_args[0])

    def test_grant_with_fewer_streams(self):
        self.answer({'memory': 1})
        e = self.assertError('stream_not_allowed', self.start,
                             {'memory': 3})
        self.assertIn('QEMU will open', str(e))
        self.assertEqual([], self.tunnels.started)

    def test_grant_from_an_untrusted_broker(self):
        # Signed by cloud-b's broker, checked against cloud-a's store.
        self.answer(broker='broker-b', cloud=self.pki.b, dst_host='host-b')
        e = self.src.start_source
        self.assertError('grant_invalid', e, self.mid, INSTANCE, 'host-b',
                         {'memory': 1}, user_id='u', project_id='p')

    def test_grant_for_another_migration(self):
        self.answer(migration_id='other')
        e = self.assertError('grant_invalid', self.start)
        self.assertIn('migration other', str(e))

    def test_grant_for_another_destination(self):
        self.answer(dst_host='host-a')
        e = self.assertError('grant_invalid', self.start)
        self.assertIn('destination host host-a', str(e))

    def test_tunnel_that_does_not_start(self):
        self.answer()
        self.tunnels.refuse_start['source'] = ('grant_invalid', 'expired')
        e = self.assertError('grant_invalid', self.start)
        self.assertIn('did not start', str(e))
        [tunnel] = self.tunnels.of('source')
        self.assertEqual([], tunnel.sockets_left())
        self.assertEqual('failed', self.src.host_client.record_receipt
                         .call_args[0][1])

    def test_finish_completed(self):
        self.dst.prepare_destination(self.mid, INSTANCE, {'memory': 2})
        self.answer({'memory': 2})
        outgoing = self.start({'memory': 2})
        [tunnel] = self.tunnels.of('source')
        self.assertEqual(1, len(tunnel.sockets_left()))
        result = outgoing.finish(True)
        self.assertTrue(result.ok, result)
        self.assertEqual(2, len(result.connections))
        self.assertEqual([], tunnel.signals)
        self.assertEqual([], tunnel.sockets_left())
        # One request per connection: an envelope holds one receipt pair.
        calls = self.src.host_client.record_receipt.call_args_list
        self.assertEqual([mock.call(self.mid, 'completed',
                                    connections=(conn,), reason=None)
                          for conn in result.connections], calls)
        self.assertTrue(result.recorded)
        self.assertTrue(outgoing.wait_done(0))

    def test_finish_not_completed_stops_the_tunnel(self):
        self.answer()
        outgoing = self.start()
        result = outgoing.finish(False, 'the libvirt job was cancelled')
        [tunnel] = self.tunnels.of('source')
        self.assertEqual(['SIGTERM'], tunnel.signals)
        self.assertEqual([], tunnel.sockets_left())
        self.assertEqual('aborted', result.status)
        self.src.host_client.record_receipt.assert_called_once_with(
            self.mid, 'aborted', connections=(),
            reason='the libvirt job was cancelled')

    def test_tunnel_failure(self):
        self.answer()
        outgoing = self.start()
        self.tunnels.fail['source'] = ('checkpoint_mismatch',
                                       'digest differs at 64 MiB')
        failure = outgoing.tunnel_failure()
        self.assertEqual('checkpoint_mismatch', failure['reason'])
        result = outgoing.finish(False, 'source tunnel failed')
        self.assertEqual('failed', result.status)
        self.assertEqual('checkpoint_mismatch', result.reason)

    def test_no_tunnel_failure_while_it_runs_well(self):
        self.dst.prepare_destination(self.mid, INSTANCE, {'memory': 1})
        self.answer()
        outgoing = self.start()
        self.assertIsNone(outgoing.tunnel_failure())

    def test_tampered_receipt_is_not_recorded_as_completed(self):
        self.dst.prepare_destination(self.mid, INSTANCE, {'memory': 1})
        self.answer()
        outgoing = self.start()

        def tamper(conn):
            conn['src_to_dst'] = {'bytes': 1, 'sha256': '00' * 32}
        self.tunnels.tamper = tamper
        result = outgoing.finish(True)
        self.assertEqual('failed', result.status)
        self.assertEqual('receipt_invalid', result.reason)
        self.assertEqual('failed', self.src.host_client.record_receipt
                         .call_args[0][1])

    def test_receipt_signed_by_another_host(self):
        self.answer()
        outgoing = self.start()
        # No destination tunnel here: host-b2 of cloud-b "signs".
        self.tunnels.destination_credentials = self.pki.b.credentials(
            'host-b2')
        result = outgoing.finish(True)
        self.assertEqual('receipt_invalid', result.reason)

    def test_result_timeout_stops_the_tunnel(self):
        self.answer()
        outgoing = self.start()
        [tunnel] = self.tunnels.of('source')
        with mock.patch.object(tunnel, 'wait', side_effect=[
                migration.process.TunnelProcessError('still running')]):
            result = outgoing.finish(True)
        self.assertEqual('failed', result.status)
        self.assertEqual(['SIGTERM'], tunnel.signals)
        self.assertEqual([], tunnel.sockets_left())

    def test_kill_when_sigterm_is_ignored(self):
        self.answer()
        outgoing = self.start()
        self.tunnels.ignore_sigterm = True
        outgoing.abort('nova-compute stopped')
        [tunnel] = self.tunnels.of('source')
        self.assertEqual(['SIGTERM', 'SIGKILL'], tunnel.signals)
        self.assertEqual([], tunnel.sockets_left())

    def test_broker_down_at_the_end_does_not_raise(self):
        self.dst.prepare_destination(self.mid, INSTANCE, {'memory': 1})
        self.answer()
        outgoing = self.start()
        self.src.host_client.record_receipt.side_effect = \
            rpcapi.BrokerRefused('broker_unavailable', 'down')
        result = outgoing.finish(True)
        self.assertTrue(result.ok)
        self.assertFalse(result.recorded)


class TestCrossCloud(MigrationTestCase):
    """host-a (cloud-a) to host-b (cloud-b): peer trust stores."""

    def test_source_and_destination(self):
        b_store = trust_store.TrustStore.load('cloud-b',
                                              self.pki.b.ca.ca_file)
        a_store = trust_store.TrustStore.load('cloud-a',
                                              self.pki.a.ca.ca_file)
        self.src.peer_stores = {'cloud-b': b_store}
        dst = self.side('host-b', cloud=self.pki.b)
        dst.peer_stores = {'cloud-a': a_store}
        incoming = dst.prepare_destination(self.mid, INSTANCE, {'memory': 1},
                                           src_cloud='cloud-a')
        self.answer(dst_host='host-b', broker='broker-b', cloud=self.pki.b)
        outgoing = self.src.start_source(self.mid, INSTANCE, 'host-b',
                                         {'memory': 1}, user_id='u',
                                         project_id='p', dst_cloud='cloud-b')
        self.assertEqual('cloud-b', self.tunnels.of('source')[0]
                         .params['peer']['cloud_id'])
        self.assertEqual('cloud-a', self.tunnels.of('destination')[0]
                         .params['peer']['cloud_id'])
        self.assertTrue(outgoing.finish(True).ok)
        self.assertTrue(incoming.finish(True).ok)

    def test_unknown_cloud(self):
        self.assertError('unknown_cloud', self.src.start_source, self.mid,
                         INSTANCE, 'host-b', {'memory': 1},
                         dst_cloud='cloud-z')


class TestVerifyConnections(MigrationTestCase):

    def completed(self, streams=None):
        self.dst.prepare_destination(self.mid, INSTANCE, streams or
                                     {'memory': 1})
        self.answer(streams)
        self.start_and_finish = self.src.start_source(
            self.mid, INSTANCE, 'host-a2', streams or {'memory': 1},
            user_id='u', project_id='p')
        _rc, outcome = self.tunnels.of('source')[0].wait()
        return outcome

    def verify(self, outcome, **kwargs):
        return migration.verify_connections(
            outcome, self.mid, self.src.identity.store,
            self.dst.identity.store, **kwargs)

    def test_ok(self):
        outcome = self.completed({'memory': 2})
        self.assertEqual(2, len(self.verify(outcome,
                                            expected_streams={'memory': 2})))

    def test_count_mismatch(self):
        outcome = self.completed({'memory': 2})
        outcome['connections'] = outcome['connections'][:1]
        e = self.assertError('receipt_invalid', self.verify, outcome,
                             expected_streams={'memory': 2})
        self.assertIn('grant allowed', str(e))

    def test_destination_receipt_must_reference_source_receipt(self):
        outcome = self.completed({'memory': 2})
        a, b = outcome['connections']
        a['destination_receipt'] = b['destination_receipt']
        self.assertError('receipt_invalid', self.verify, outcome)

    def test_swapped_roles(self):
        outcome = self.completed()
        conn = outcome['connections'][0]
        conn['source_receipt'], conn['destination_receipt'] = \
            conn['destination_receipt'], conn['source_receipt']
        self.assertError('receipt_invalid', self.verify, outcome)

    def test_failed_outcome(self):
        e = self.assertError('peer_aborted', self.verify, {
            'status': 'failed', 'reason': 'peer_aborted', 'side': 'source',
            'message': 'bye', 'connections': []})
        self.assertIn('ended failed', str(e))

    def test_no_outcome_and_no_connection(self):
        self.assertError('tunnel_failed', self.verify, None)
        self.assertError('receipt_invalid', self.verify,
                         {'status': 'completed', 'connections': []})

    def test_pinned_fingerprints(self):
        outcome = self.completed()
        self.assertError('receipt_invalid', self.verify, outcome,
                         src_fingerprint='0' * 64)

    def test_key_file_mode_is_checked_not_changed(self):
        mode = stat.S_IMODE(os.stat(self.pki.a.hosts['host-a'][1]).st_mode)
        self.assertEqual(0, mode & 0o077)
