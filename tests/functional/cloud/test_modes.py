"""Enforcement modes with a destination that lacks secmig.

lab-cmp-b's nova-compute is restarted as a host "without secmig" (no
tunnel, no CUSTOM_SECMIG_TUNNEL trait), then restored, in the two ways
the admin guide names: ``SecureLibvirtDriver`` with ``[secmig]
enforcement = disabled``, and nova's own ``libvirt.LibvirtDriver`` (taken
off secmig the way the guide says: ``disabled`` first, which removes the
traits, then the driver). What doc/source/admin/nova.rst promises, with
real nova services:

* a server whose flavor says ``secmig:enforcement=preferred`` migrates
  plainly: the migration completes, the guest keeps running on lab-cmp-b,
  and no broker heard of it (no ticket, no grant, no receipts);
* a server of the ``required`` flavor is refused in nova's pre-checks.
  ``openstack server migrate --live-migration --host`` sends microversion
  2.30, where nova-api waits for the conductor: the command itself fails
  with nova's HTTP 400 "No valid host was found" (the conductor drops the
  refusing host and none is left), the migration ends ``error``, the
  server's event ``compute_check_can_live_migrate_destination`` (or
  ``..._source``, when the destination runs nova's driver, which checks
  nothing) carries secmig's reason, the server stays ACTIVE on lab-cmp-a
  with its guest running, and no broker heard of it either.
"""

import configparser
import os
import subprocess
import sys
import time
import uuid

from tests.functional.cloud import base

WAIT = 240


class ModesTest(base.CloudTestCase):

    def restart_compute(self, host, enforcement=None, driver=None):
        name = host[len('lab-'):]
        res = subprocess.run(
            [sys.executable, os.path.join(base.ROOT, 'tools', 'cloud',
                                          'cloud.py'),
             'restart-compute', name] +
            (['--secmig-enforcement', enforcement] if enforcement else []) +
            (['--compute-driver', driver] if driver else []),
            capture_output=True, text=True, timeout=600,
            env=dict(os.environ, SECMIG_CLOUD_DIR=self.cloud[
                'SECMIG_CLOUD_DIR']))
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)

    def conf_of(self, host):
        """(compute_driver, [secmig] enforcement) of ``host``."""
        parser = configparser.RawConfigParser(strict=False)
        parser.read(os.path.join(self.cloud['SECMIG_CLOUD_DIR'], 'etc',
                                 'nova-cpu-%s.conf' % host[len('lab-'):]))
        return (parser.get('DEFAULT', 'compute_driver'),
                parser.get('secmig', 'enforcement', fallback='required'))

    def flavor(self, mode):
        name = 'm1.secmig-%s-%s' % (mode, uuid.uuid4().hex[:6])
        self.osc('flavor', 'create', '--ram', '256', '--disk', '1',
                 '--vcpus', '1', '--property',
                 'secmig:enforcement=%s' % mode, name, api='2.86')
        self.addCleanup(self.osc, 'flavor', 'delete', name, check=False,
                        fmt=None)
        return name

    def migrate(self, server_id, dest):
        self.osc('server', 'migrate', '--live-migration', '--host', dest,
                 '--wait', server_id, api='2.latest',
                 user=self.operator, project=self.project, fmt=None)

    def final_migration(self, server_id):
        deadline = time.monotonic() + WAIT
        migrations = []
        while time.monotonic() < deadline:
            migrations = self.osc('server', 'migration', 'list', '--server',
                                  server_id, api='2.latest',
                                  project=self.project)
            if migrations and migrations[0]['Status'] in (
                    'completed', 'error', 'failed'):
                server = self.server(server_id)
                if server['OS-EXT-STS:task_state'] is None:
                    return max(migrations, key=lambda m: m['Id'])
            time.sleep(1)
        self.fail('no final migration of %s within %d s: %s'
                  % (server_id, WAIT, migrations))

    def test_destination_in_disabled_mode(self):
        a, b = self.hosts
        driver, enforcement = self.conf_of(b)
        self.restart_compute(b, 'disabled')
        self.addCleanup(self.restart_compute, b, enforcement)
        self.check_modes(a, b, 'compute_check_can_live_migrate_destination')

    def test_destination_on_nova_libvirt_driver(self):
        a, b = self.hosts
        driver, enforcement = self.conf_of(b)
        self.restart_compute(b, 'disabled')
        self.addCleanup(self.restart_compute, b, enforcement, driver)
        self.restart_compute(b, driver='libvirt.LibvirtDriver')
        self.check_modes(a, b, 'compute_check_can_live_migrate_source')

    def check_modes(self, a, b, refusing_check):
        """preferred goes plainly from a to b, required is refused."""
        preferred = self.create_server('mode-preferred', a,
                                       flavor=self.flavor('preferred'))
        required = self.create_server('mode-required', a)
        beat = self.wait_heartbeat(preferred)

        # preferred: plain, and it works.
        self.migrate(preferred, b)
        self.assertEndedOn(preferred, 'completed', b, beat)
        # ...and the source says so, for the security reviewer.
        with open(self.log_file('nova-compute-%s' % a[len('lab-'):])) as f:
            warned = [line for line in f if 'is NOT encrypted' in line
                      and preferred in line]
        self.assertEqual(1, len(warned), warned)
        self.assertIn('%s does not offer secure live migration' % b,
                      warned[0])

        # required: refused before anything starts.
        beat = self.wait_heartbeat(required)
        res = self.osc('server', 'migrate', '--live-migration', '--host', b,
                       required, api='2.latest', user=self.operator,
                       project=self.project, fmt=None, check=False)
        self.assertEqual(1, res.returncode, res.stdout)
        self.assertIn('No valid host was found', res.stderr)
        self.assertEndedOn(required, 'error', a, beat)
        self.assertIn('%s does not offer secure live migration' % b,
                      self.precheck_refusal(required, refusing_check))

    def assertEndedOn(self, server_id, status, host, beat):
        """The migration ended ``status``; the server runs on ``host``.

        ACTIVE there, its guest's heartbeat past ``beat``, and no broker
        heard of it.
        """
        migration = self.final_migration(server_id)
        self.assertEqual(status, migration['Status'], migration)
        server = self.server(server_id)
        self.assertEqual(('ACTIVE', host), (server['status'],
                                            server['OS-EXT-SRV-ATTR:host']))
        self.wait_heartbeat(server_id, above=beat)
        self.assertEqual([], self.brokers_heard_of(server_id))

    def precheck_refusal(self, server_id, check_event):
        """The details of the failed pre-check event ``check_event``."""
        actions = self.osc('server', 'event', 'list', server_id,
                           api='2.84')
        request = [a['Request ID'] for a in actions
                   if a['Action'] == 'live-migration'][0]
        action = self.osc('server', 'event', 'show', server_id, request,
                          api='2.84')
        events = {e['event']: e for e in action['events']}
        check = events[check_event]
        self.assertEqual('Error', check['result'], check)
        return check['details']
