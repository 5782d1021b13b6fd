"""``secmig-nova-manage status``: each check's Success/Warning/Failure."""

import datetime
import os
import shutil
import subprocess
import sys
import tempfile

import testtools

from secmig_nova.trust import ca
from tests.fixtures import brokers
from tests.functional.fixtures import rabbitmq


def status(conf_file, *extra):
    return subprocess.run(
        [sys.executable, '-m', 'secmig_nova.cmd.manage', 'status',
         '--config-file', conf_file] + list(extra),
        capture_output=True, text=True, timeout=120)


class TestStatus(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='smst-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.ca = ca.CADirectory(os.path.join(self.dir, 'ca'))
        self.ca.init('lab')

    def conf(self, host='h1', extra='', **issue):
        cert, key = self.ca.issue('host', host, out_dir=self.dir, **issue)
        path = os.path.join(self.dir, 'nova.conf')
        with open(path, 'w') as f:
            f.write('[secmig]\ncloud_id = lab\ncert_file = %s\n'
                    'key_file = %s\nca_file = %s\ncrl_file = %s\n%s'
                    % (cert, key, self.ca.ca_file, self.ca.crl_file, extra))
        return path, key

    def test_healthy_host(self):
        path, _key = self.conf()
        res = status(path, '--skip-broker')
        self.assertEqual(0, res.returncode, res.stdout)
        self.assertNotIn('Failure', res.stdout)
        self.assertNotIn('Warning', res.stdout)

    def test_expired_certificate_is_a_failure(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        path, _key = self.conf(not_before=now - datetime.timedelta(days=9),
                               not_after=now - datetime.timedelta(days=1))
        res = status(path, '--skip-broker')
        self.assertEqual(2, res.returncode, res.stdout)
        self.assertIn('expired', res.stdout)

    def test_certificate_about_to_expire_is_a_warning(self):
        path, _key = self.conf(days=10)
        res = status(path, '--skip-broker')
        self.assertEqual(1, res.returncode, res.stdout)
        self.assertIn('renew it', res.stdout)

    def test_readable_key_is_a_failure(self):
        # secmig-tunnel refuses the key (key_file_insecure): status must
        # not call the host ready with a warning.
        path, key = self.conf()
        os.chmod(key, 0o640)
        res = status(path, '--skip-broker')
        self.assertEqual(2, res.returncode, res.stdout)
        self.assertIn('key_file_insecure', res.stdout)
        self.assertIn('chmod 600', res.stdout)

    def test_tunnelled_migration_is_a_failure(self):
        path, _key = self.conf(extra='[libvirt]\n'
                                     'live_migration_tunnelled = True\n')
        res = status(path, '--skip-broker')
        self.assertEqual(2, res.returncode, res.stdout)
        self.assertIn('live_migration_tunnelled', res.stdout)

    def test_broker_unreachable_then_reachable(self):
        rabbit = rabbitmq.get_server()
        url = rabbit.vhost('status-check')
        path, _key = self.conf(extra='[DEFAULT]\ntransport_url = %s\n'
                                     '[secmig_broker]\ntopic = st_broker\n'
                               % url)
        res = status(path, '--timeout', '2')
        self.assertEqual(2, res.returncode, res.stdout)
        self.assertIn('no broker answered on topic st_broker', res.stdout)
        cloud = brokers.Cloud('st', brokers.pki_fixture.get().b, 'broker-b',
                              url, brokers.FakeKeystone(), self.dir)
        cloud.conf.set_override('topic', 'st_broker', 'secmig_broker')
        cloud.start({})
        self.addCleanup(cloud.stop)
        res = status(path, '--timeout', '10')
        self.assertEqual(0, res.returncode, res.stdout)
        self.assertIn('broker answered', res.stdout)
