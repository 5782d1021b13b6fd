"""``openstack server create`` and ``server migrate --live-migration``.

The server's flavor requires secmig; its hosts are in different trust
clouds (lab-cmp-a in cloud-a, lab-cmp-b in cloud-b), so every live
migration goes through the tunnel with a grant from the other cloud's
broker.
"""

import os
import subprocess

from tests.functional.cloud import base


class LiveMigrationTest(base.CloudTestCase):

    def assertOn(self, server_id, host):
        server = self.server(server_id)
        self.assertEqual(('ACTIVE', host),
                         (server['status'],
                          server['OS-EXT-SRV-ATTR:host']))

    def migrate(self, server_id, dest):
        """Live-migrate as the operator; the migration record."""
        self.osc('server', 'migrate', '--live-migration', '--host', dest,
                 '--wait', server_id, api='2.latest', user=self.operator,
                 project=self.project, fmt=None)
        migrations = self.osc('server', 'migration', 'list', '--server',
                              server_id, api='2.latest',
                              project=self.project)
        return max(migrations, key=lambda m: m['Id'])

    def assertBrokersRecorded(self, migration_id, state, src, dst):
        for db, side in (('secmig_%s' % src.replace('-', '_'), 'source'),
                         ('secmig_%s' % dst.replace('-', '_'),
                          'destination')):
            rows = self.sql(db, "SELECT state, src_cloud, dst_cloud FROM "
                                "secmig_migrations WHERE id='%s' AND "
                                "side='%s'" % (migration_id, side))
            self.assertEqual([[state, src, dst]], rows, '%s %s' % (db, side))

    def assertReceiptsVerify(self, migration_id, dst_cloud):
        """Both receipts of every connection verify offline."""
        state = self.cloud['SECMIG_CLOUD_DIR']
        cas = []
        for cloud in ('cloud-a', 'cloud-b'):
            cas += ['--ca', '%s=%s' % (cloud, os.path.join(
                state, 'secmig', cloud, 'ca', 'ca.crt'))]
        res = subprocess.run(
            [os.path.join(self.venv_bin, 'secmig-nova-manage'), 'receipts',
             'verify', '--config-file', os.path.join(
                 state, 'secmig', dst_cloud, 'broker.conf')] + cas +
            [migration_id], capture_output=True, text=True, timeout=120)
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)

    def cloud_of(self, host):
        return self.cloud['SECMIG_CLOUD_TRUST_%s' % host.replace('-', '_')]

    def test_server_active_with_heartbeat(self):
        a = self.hosts[0]
        server_id = self.create_server('smoke-boot', a)
        self.assertOn(server_id, a)
        first = self.wait_heartbeat(server_id)
        self.wait_heartbeat(server_id, above=first)

    def test_live_migration_there_and_back(self):
        a, b = self.hosts
        server_id = self.create_server('smoke-migrate', a)
        beat = self.wait_heartbeat(server_id)
        for src, dst in ((a, b), (b, a)):
            migration = self.migrate(server_id, dst)
            self.assertEqual(('completed', src, dst),
                             (migration['Status'], migration['Source Node'],
                              migration['Dest Node']), migration)
            self.assertOn(server_id, dst)
            # The same guest, still counting (a reboot starts at 1).
            beat = self.wait_heartbeat(server_id, above=beat)
            self.assertFalse(os.path.exists(self.instance_dir(src,
                                                              server_id)))
            self.assertBrokersRecorded(migration['UUID'], 'completed',
                                       self.cloud_of(src),
                                       self.cloud_of(dst))
            self.assertReceiptsVerify(migration['UUID'], self.cloud_of(dst))

    def test_user_without_the_role_refused(self):
        """A member of the project without migration_operator: 403."""
        a, b = self.hosts
        server_id = self.create_server('smoke-refused', a)
        res = self.osc('server', 'migrate', '--live-migration', '--host', b,
                       server_id, api='2.latest',
                       user=self.cloud['SECMIG_CLOUD_MEMBER'],
                       project=self.project, check=False, fmt=None)
        self.assertNotEqual(0, res.returncode, res.stdout)
        # With --host, nova checks migrate_live:host (the plugin's policy
        # gives both rules the keystone_role: check).
        self.assertIn('ForbiddenException: 403', res.stderr)
        self.assertIn("Policy doesn't allow os_compute_api:os-migrate-server"
                      ":migrate_live:host to be performed", res.stderr)
        self.assertOn(server_id, a)
        self.assertEqual([], self.osc('server', 'migration', 'list',
                                      '--server', server_id,
                                      api='2.latest', project=self.project))
        # No broker heard of it: no ticket, no grant, no tunnel.
        self.assertEqual([], self.brokers_heard_of(server_id))
