"""Secure live migration through nova's API, in nova's functional framework.

Every test sends ``POST /servers/{id}/action`` with ``os-migrateLive`` and a
destination host, the request ``openstack server migrate --live-migration
--host <dest> <server>`` sends, to compute services that load the driver as
operators configure it (``compute_driver = secmig.SecureLibvirtDriver``).
The broker is cloud-a's real broker on an in-process ``fake://`` transport
(only Keystone is faked); tunnel processes are fakes that record their
parameters (tests/functional/nova/secmig_world.py). fakelibvirt cannot
stream, so these tests prove the wiring, not the encryption.
"""

import threading

import fixtures
# First: nova's test package sets up the process before anything else
# imports threading-sensitive modules.
from nova.tests import functional  # noqa: F401
from nova.tests.functional import integrated_helpers
from nova.tests.functional.libvirt import base

from secmig_nova.authz import tokens
from secmig_nova.virt import driver
from secmig_nova.virt import migration
from tests.functional.nova import secmig_world

fakelibvirt = base.fakelibvirt
# Upper bound (s) of the waits for the compute services' threads to finish a
# migration: they end at the event, and run late on a busy machine.
WAIT_TIMEOUT = 60


class SecmigTestBase(base.LibvirtMigrationMixin, base.ServersTestBase,
                     integrated_helpers.InstanceHelperMixin):
    """Two compute hosts, ``src`` and ``dest``, and a server on ``src``."""

    ADMIN_API = True
    microversion = 'latest'
    secmig_mode = 'required'
    # Compute hosts of cloud-b (the others are cloud-a's).
    cloud_b_hosts = ()
    # [libvirt] options of every compute host of the test.
    libvirt_flags = {}

    def setUp(self):
        self.secmig = self.useFixture(
            secmig_world.SecmigWorld(mode=self.secmig_mode,
                                     cloud_b_hosts=self.cloud_b_hosts))
        self.results = []
        real_conclude = migration._Side._conclude

        def conclude(side, *args):
            result = real_conclude(side, *args)
            self.results.append(result)
            return result
        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.virt.migration._Side._conclude', conclude))
        super().setUp()
        if self.libvirt_flags:
            self.flags(group='libvirt', **self.libvirt_flags)
        self.migrate_calls = []
        self.src = self.start(self.start_compute(hostname='src'))
        self.dest = self.start(self.start_compute(hostname='dest'))
        self.server = self._create_server(host='src', networks='none')

    def _setup_compute_service(self):
        # What operators put in nova.conf; nova loads the driver through
        # the nova/virt/secmig re-export.
        self.flags(compute_driver='secmig.SecureLibvirtDriver')

    def start(self, hostname):
        return self.computes[hostname]

    def _migrate_stub(self, domain, destination, params, flags):
        self.migrate_calls.append((destination, dict(params), flags))
        super()._migrate_stub(domain, destination, params, flags)

    def live_migrate(self, host='dest', expected='completed'):
        """``openstack server migrate --live-migration --host <host>``."""
        self.api.post_server_action(self.server['id'], {
            'os-migrateLive': {'host': host, 'block_migration': 'auto'}})
        migration_record = self._wait_for_migration_status(self.server,
                                                           [expected])
        self._wait_for_state_change(self.server, 'ACTIVE')
        return migration_record

    def host_of_server(self):
        return self.api.get_server(self.server['id'])[
            'OS-EXT-SRV-ATTR:host']

    def events(self, name=None):
        """Events of the server's live-migration action."""
        actions = [a for a in self.api.get_instance_actions(self.server['id'])
                   if a['action'] == 'live-migration']
        self.assertEqual(1, len(actions))
        details = self.api.get_instance_action_details(
            self.server['id'], actions[0]['request_id'])
        events = details['events']
        return [e for e in events if name is None or e['event'] == name]

    def secmig_event(self, timeout=WAIT_TIMEOUT):
        for _ in range(int(timeout * 10)):
            found = self.events(driver.EVENT)
            if found and found[0]['finish_time']:
                return found[0]
            self._wait(0.1)
        self.fail('no finished %s event' % driver.EVENT)

    def _wait(self, seconds):
        threading.Event().wait(seconds)

    def wait_concluded(self, count, timeout=WAIT_TIMEOUT):
        """Wait until ``count`` sides recorded their end at the broker."""
        for _ in range(int(timeout * 10)):
            if len(self.results) >= count:
                return self.results
            self._wait(0.1)
        self.fail('%d of %d sides concluded' % (len(self.results), count))

    def assertTunnelsGone(self, timeout=WAIT_TIMEOUT):
        """Every tunnel stopped (the destination's may take a watch)."""
        for _ in range(int(timeout * 10)):
            if all(t.outcome is not None
                   for t in self.secmig.tunnels.started):
                break
            self._wait(0.1)
        for tunnel in self.secmig.tunnels.started:
            self.assertIsNotNone(tunnel.outcome, tunnel.side)
            self.assertEqual([], tunnel.sockets_left())


class TestSecureLiveMigration(SecmigTestBase):

    def test_migrate_uri_is_the_tunnel_socket(self):
        record = self.live_migrate()
        mid = record['uuid']
        self.assertEqual('dest', self.host_of_server())
        [(dest_uri, params, _flags)] = self.migrate_calls
        sock = '%s/%s.sock' % (self.secmig.socket_dir, mid)
        self.assertEqual('unix://' + sock, params['migrate_uri'])
        self.assertIn('destination_xml', params)
        self.assertIn('dest', dest_uri)

        [src] = self.secmig.tunnels.of('source', mid)
        [dst] = self.secmig.tunnels.of('destination', mid)
        self.assertEqual({'memory': sock}, src.params['sockets'])
        self.assertEqual({'memory': sock}, dst.params['sockets'])
        grant = tokens.verify_grant(src.params['grant'], self.secmig.broker
                                    .store)
        self.assertEqual((mid, self.server['id'], 'src', 'dest'),
                         (grant.migration_id, grant.instance_uuid,
                          grant.src_host, grant.dst_host))
        self.assertEqual({'memory': 1}, grant.streams)
        self.assertEqual(grant.streams, src.params['expect_connections'])
        self.assertEqual(self.secmig.host_files('src')[0],
                         src.params['cert_file'])
        self.assertEqual(self.secmig.host_files('dest')[0],
                         dst.params['cert_file'])
        # Source tunnel ended by itself; destination stopped after it.
        self.assertEqual([], src.signals)
        self.assertEqual(['SIGTERM'], dst.signals)
        self.assertTunnelsGone()

        self.wait_concluded(2)
        records = self.secmig.records(mid)
        self.assertEqual('completed', records['source']['state'])
        self.assertEqual(self.server['id'],
                         records['source']['instance_uuid'])
        self.assertEqual({'memory': 1}, records['destination']['streams'])
        self.assertEqual(['destination', 'source'], sorted(
            r['role'] for r in self.secmig.receipts(mid)))
        # Both hosts verified both receipts of the connection.
        self.assertEqual([('source', 'completed'),
                          ('destination', 'completed')],
                         [(r.side, r.status) for r in self.results])
        self.assertEqual('Success', self.secmig_event()['result'])

    def test_refused_ticket_keeps_the_server_on_its_source(self):
        self.secmig.keystone.deny_all = True
        record = self.live_migrate(expected='failed')
        self.assertEqual('src', self.host_of_server())
        self.assertEqual([], self.migrate_calls)
        self.assertEqual([], self.secmig.tunnels.of('source'))
        # The destination tunnel ran and was stopped after the rollback.
        self.assertTunnelsGone()
        [dst] = self.secmig.tunnels.of('destination', record['uuid'])
        self.assertEqual(['SIGTERM'], dst.signals)
        event = self.secmig_event()
        self.assertEqual('Error', event['result'])
        self.assertIn('missing_role', event['details'])
        self.assertIn('refused to authorize', event['details'])
        self.wait_concluded(1)
        records = self.secmig.records(record['uuid'])
        self.assertNotIn('source', records)
        self.assertEqual('aborted', records['destination']['state'])

    def test_refused_grant_keeps_the_server_on_its_source(self):
        def refuse(ctxt, envelope_token):
            return {'error': 'over_rate_limit',
                    'message': 'project started too many migrations (test)'}
        self.secmig.broker.manager.forward_grant = refuse
        record = self.live_migrate(expected='failed')
        self.assertEqual('src', self.host_of_server())
        self.assertEqual([], self.migrate_calls)
        self.assertEqual([], self.secmig.tunnels.of('source'))
        self.assertTunnelsGone()
        event = self.secmig_event()
        self.assertEqual('Error', event['result'])
        self.assertIn('over_rate_limit', event['details'])
        self.wait_concluded(1)
        records = self.secmig.records(record['uuid'])
        self.assertEqual('failed', records['source']['state'])
        self.assertEqual('aborted', records['destination']['state'])

    def test_tunnel_failure_keeps_the_server_on_its_source(self):
        self.secmig.tunnels.fail['source'] = (
            'checkpoint_mismatch', 'peer acknowledged another SHA-256')

        def stream_breaks(domain, destination, params, flags):
            # What libvirt reports when the tunnel closes QEMU's socket.
            self.migrate_calls.append((destination, dict(params), flags))
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError,
                'operation failed: migration out: Unable to write',
                error_code=fakelibvirt.VIR_ERR_OPERATION_FAILED,
                error_domain=fakelibvirt.VIR_FROM_QEMU)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3',
            stream_breaks))
        record = self.live_migrate(expected='failed')
        self.assertEqual('src', self.host_of_server())
        self.assertEqual(1, len(self.migrate_calls))
        self.assertTunnelsGone()
        event = self.secmig_event()
        self.assertEqual('Error', event['result'])
        self.assertIn('checkpoint_mismatch', event['details'])
        self.wait_concluded(2)
        records = self.secmig.records(record['uuid'])
        self.assertEqual('failed', records['source']['state'])
        self.assertEqual('aborted', records['destination']['state'])

    def test_tunnel_gone_without_a_verdict_keeps_the_server_active(self):
        # The source tunnel is SIGKILLed mid-stream: no outcome, libvirt
        # only says it could not write. nova must roll back, not put the
        # server in ERROR (what the real cloud did before the fix).
        self.secmig.tunnels.vanish.add('source')

        def stream_breaks(domain, destination, params, flags):
            self.migrate_calls.append((destination, dict(params), flags))
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError,
                "operation failed: job 'migration out' failed: Unable to "
                "write to socket: Bad file descriptor",
                error_code=fakelibvirt.VIR_ERR_OPERATION_FAILED,
                error_domain=fakelibvirt.VIR_FROM_QEMU)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3',
            stream_breaks))
        record = self.live_migrate(expected='failed')
        server = self.api.get_server(self.server['id'])
        self.assertEqual(('ACTIVE', None),
                         (server['status'], server['OS-EXT-STS:task_state']))
        self.assertEqual('src', self.host_of_server())
        [src] = self.secmig.tunnels.of('source', record['uuid'])
        [dst] = self.secmig.tunnels.of('destination', record['uuid'])
        self.assertTrue(src.killed)
        self.assertIsNone(src.outcome)
        for _ in range(int(WAIT_TIMEOUT * 10)):
            if dst.outcome is not None:
                break
            self._wait(0.1)
        self.assertIsNotNone(dst.outcome, 'destination tunnel still runs')
        event = self.secmig_event()
        self.assertEqual('Error', event['result'])
        self.assertIn('Unable to write to socket', event['details'])
        self.wait_concluded(2)
        records = self.secmig.records(record['uuid'])
        self.assertEqual('failed', records['source']['state'])

    def abort_running_migration(self, on_abort):
        """Start a live migration, abort it while it runs (DELETE).

        The migrate call blocks until ``on_abort(domain)`` (nova's
        abortJob) has run, then raises what real libvirt raises once the
        job is cancelled (the cloud showed it; nova 34 then re-raises it
        after its monitor rolled back, unless the driver keeps it).
        :returns: the migration as it was while running.
        """
        started = threading.Event()
        aborted = threading.Event()

        def slow_stream(domain, destination, params, flags):
            self.migrate_calls.append((destination, dict(params), flags))
            started.set()
            if not aborted.wait(30):
                raise AssertionError('never aborted')
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError,
                "operation aborted: job 'migration out' canceled by client",
                error_code=driver.VIR_ERR_OPERATION_ABORTED,
                error_domain=fakelibvirt.VIR_FROM_QEMU)

        def abort_job(domain):
            on_abort(domain)
            aborted.set()

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3', slow_stream))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.abortJob', abort_job))
        self.api.post_server_action(self.server['id'], {
            'os-migrateLive': {'host': 'dest', 'block_migration': 'auto'}})
        self.assertTrue(started.wait(30))
        [running] = self.api.api_get('/servers/%s/migrations' % self.server[
            'id']).body['migrations']
        self.api.delete_migration(self.server['id'], running['id'])
        return running

    def test_abort_cleans_up_both_tunnels(self):
        def cancel(domain):
            # libvirt cancels the job; the migrate call then raises. The
            # source tunnel runs on until the driver stops it.
            domain._job_type = fakelibvirt.VIR_DOMAIN_JOB_CANCELLED
            self.secmig.tunnels.keep_running.add('source')

        running = self.abort_running_migration(cancel)
        self.assertEqual('running', running['status'])
        record = self._wait_for_migration_status(self.server, ['cancelled'])
        server = self._wait_for_state_change(self.server, 'ACTIVE')
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        self.assertEqual('src', self.host_of_server())
        mid = record['uuid']
        self.assertTunnelsGone()
        [src] = self.secmig.tunnels.of('source', mid)
        [dst] = self.secmig.tunnels.of('destination', mid)
        self.assertEqual(['SIGTERM'], src.signals)
        self.assertEqual(['SIGTERM'], dst.signals)
        self.wait_concluded(2)
        records = self.secmig.records(mid)
        self.assertEqual('aborted', records['source']['state'])
        self.assertEqual('aborted', records['destination']['state'])
        self.assertEqual([], self.secmig.receipts(mid))

    def test_abort_is_cancelled_when_the_monitor_missed_the_job_state(
            self):
        # On a busy host nova's monitor (a poll every 0.5 s) can miss the
        # moment libvirt reports the job CANCELLED: it then only sees no
        # job and the guest running here, and upstream calls that a
        # failure (the real cloud's CI did). libvirt's migrate call said
        # "canceled by client", so the migration is cancelled.
        def cancel(domain):
            # The job state stays NONE: the monitor never sees CANCELLED.
            # QEMU closed its socket: the source tunnel fails on its own,
            # as the real one does (local_endpoint_unavailable).
            self.secmig.tunnels.fail['source'] = (
                'local_endpoint_unavailable',
                'local QEMU closed its migration socket')

        self.abort_running_migration(cancel)
        record = self._wait_for_migration_status(self.server, ['cancelled'])
        server = self._wait_for_state_change(self.server, 'ACTIVE')
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        self.assertEqual('src', self.host_of_server())
        self.assertTunnelsGone()
        event = self.secmig_event()
        self.assertEqual('Error', event['result'])
        self.assertIn('the migration was cancelled', event['details'])
        self.wait_concluded(2)
        records = self.secmig.records(record['uuid'])
        self.assertEqual('aborted', records['source']['state'])
        self.assertEqual([], self.secmig.receipts(record['uuid']))

    def test_destination_tunnel_refused_keeps_the_server_on_its_source(
            self):
        self.secmig.tunnels.refuse_start['destination'] = (
            'config_invalid', 'no free port in 49400..49499 on 127.0.0.1')
        self.live_migrate(expected='failed')
        self.assertEqual('src', self.host_of_server())
        self.assertEqual([], self.migrate_calls)
        self.assertEqual([], self.secmig.tunnels.of('source'))
        [pre] = self.events('compute_pre_live_migration')
        self.assertEqual('Error', pre['result'])
        self.assertIn('no free port in 49400..49499', pre['details'])
        self.assertTunnelsGone()


class TestCrossCloud(SecmigTestBase):
    """``src`` in cloud-a, ``dest`` in cloud-b: two brokers, two CAs.

    Each host has the other cloud in ``[secmig] peer_ca_files`` and learns
    the other host's cloud from its ``CUSTOM_SECMIG_CLOUD_*`` trait.
    """

    cloud_b_hosts = ('dest',)

    def test_grant_of_the_destination_cloud(self):
        # The destination registered with cloud-b's broker: a source that
        # asked its own broker only would fail with not_registered.
        record = self.live_migrate()
        mid = record['uuid']
        self.assertEqual('dest', self.host_of_server())
        pki = self.secmig.pki
        [src] = self.secmig.tunnels.of('source', mid)
        [dst] = self.secmig.tunnels.of('destination', mid)
        self.assertEqual({'cloud_id': 'cloud-b', 'ca_file': pki.b.ca.ca_file,
                          'crl_file': None}, src.params['peer'])
        self.assertEqual({'cloud_id': 'cloud-a', 'ca_file': pki.a.ca.ca_file,
                          'crl_file': None}, dst.params['peer'])
        self.assertEqual(self.secmig.host_files('dest')[0],
                         dst.params['cert_file'])
        grant = tokens.verify_grant(src.params['grant'],
                                    self.secmig.broker_b.store)
        self.assertEqual((mid, 'src', 'dest', 'cloud-a', 'cloud-b'),
                         (grant.migration_id, grant.src_host, grant.dst_host,
                          grant.src_cloud, grant.dst_cloud))
        self.assertEqual('Success', self.secmig_event()['result'])
        self.assertTunnelsGone()
        self.wait_concluded(2)
        self.assertEqual([('source', 'completed'),
                          ('destination', 'completed')],
                         [(r.side, r.status) for r in self.results])
        self.assertEqual('completed',
                         self.secmig.records(mid)['source']['state'])
        self.assertEqual('completed', self.secmig.broker_b.db.find_migration(
            mid)['destination']['state'])


class TestParallelConnections(SecmigTestBase):
    """nova's parallel connections (multifd): main channel plus two."""

    libvirt_flags = {'live_migration_parallel_connections': 2}

    def test_grant_and_libvirt_agree(self):
        record = self.live_migrate()
        self.assertEqual('dest', self.host_of_server())
        [(_uri, params, flags)] = self.migrate_calls
        self.assertEqual(2, params['parallel.connections'])
        self.assertTrue(flags & fakelibvirt.VIR_MIGRATE_PARALLEL)
        [src] = self.secmig.tunnels.of('source', record['uuid'])
        self.assertEqual({'memory': 3}, src.params['expect_connections'])
        [dst] = self.secmig.tunnels.of('destination', record['uuid'])
        self.assertEqual({'memory': 3},
                         self.secmig.records(record['uuid'])[
                             'destination']['streams'])
        self.wait_concluded(2)
        self.assertEqual(6, len(self.secmig.receipts(record['uuid'])))
        self.assertEqual('completed', self.secmig.records(record['uuid'])[
            'source']['state'])
        self.assertTunnelsGone()
        self.assertEqual(['SIGTERM'], dst.signals)


class TestRequiredRefusesInsecureDestination(SecmigTestBase):

    def test_plain_libvirt_destination_is_refused_before_anything_moves(
            self):
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.start_compute(hostname='plain')
        # Below microversion 2.34 nova-api calls the conductor, whose
        # NoValidHost (its only candidate failed the pre-checks) a real API
        # answers with 400 (the real cloud's test_modes); nova's
        # CastAsCallFixture brings it back here as a 500.
        self.api.api_post(
            '/servers/%s/action' % self.server['id'],
            {'os-migrateLive': {'host': 'plain', 'block_migration': 'auto'}},
            check_response_status=[500])
        record = self._wait_for_migration_status(self.server, ['error'])
        self._wait_for_state_change(self.server, 'ACTIVE')
        self.assertEqual('src', self.host_of_server())
        self.assertEqual([], self.migrate_calls)
        self.assertEqual([], self.secmig.tunnels.started)
        self.assertEqual({}, self.secmig.records(record['uuid']))
        [check] = self.events(
            'compute_check_can_live_migrate_destination')
        self.assertEqual('Error', check['result'])
        self.assertEqual('plain', check['host'])
        self.assertIn('but plain does not offer secure live migration',
                      check['details'])

    def test_preferred_falls_back_to_plain(self):
        self.flags(enforcement='preferred', group='secmig')
        self.restart_compute_service('src')
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.start_compute(hostname='plain')
        self.src = self.computes['src']
        self.dest = self.computes['plain']
        self.live_migrate(host='plain')
        self.assertEqual('plain', self.host_of_server())
        [(_uri, params, _flags)] = self.migrate_calls
        self.assertNotIn('migrate_uri', params)
        self.assertEqual([], self.secmig.tunnels.started)


class TestDisabledIsPlainLibvirt(SecmigTestBase):
    """``enforcement = disabled`` against the plain driver, side by side."""

    secmig_mode = 'disabled'

    def scenario(self):
        self.live_migrate()
        self.assertEqual('dest', self.host_of_server())
        [(uri, params, flags)] = self.migrate_calls
        return uri, params, flags

    def test_same_libvirt_call_as_the_plain_driver(self):
        self.assertIsInstance(self.src.driver, driver.SecureLibvirtDriver)
        secure = self.scenario()
        self.assertEqual([], self.secmig.tunnels.started)

        # The same migration with nova's own driver on two more hosts.
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.migrate_calls = []
        self.src = self.start(self.start_compute(hostname='src2'))
        self.dest = self.start(self.start_compute(hostname='dest2'))
        self.assertNotIsInstance(self.src.driver, driver.SecureLibvirtDriver)
        self.server = self._create_server(host='src2', networks='none')
        self.api.post_server_action(self.server['id'], {
            'os-migrateLive': {'host': 'dest2', 'block_migration': 'auto'}})
        self._wait_for_migration_status(self.server, ['completed'])
        [(uri, params, flags)] = self.migrate_calls
        plain = (uri.replace('dest2', 'dest'), params, flags)
        # Only the server (its uuid, name, MAC) differs in the guest XML.
        for call in (secure, plain):
            call[1].pop('destination_xml')
            call[1].pop('persistent_xml')
        self.assertEqual(plain, secure)
        self.assertEqual([], self.secmig.tunnels.started)
        self.assertEqual([], self.events(driver.EVENT))
