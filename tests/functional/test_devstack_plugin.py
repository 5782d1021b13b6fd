"""The devstack plugin, sourced against a stand-in for devstack.

Full devstack cannot run here; the plugin is sourced through its stack,
unstack and clean phases with small stand-ins for devstack's functions
(``iniset`` writes real ini files; process and Keystone helpers log their
calls), while the real ``secmig-nova-manage`` issues the CA and syncs the
broker database. shellcheck must accept the scripts.
"""

import configparser
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import testtools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPTS = ['devstack/settings', 'devstack/lib/secmig', 'devstack/plugin.sh',
           'tools/cloud/cloud.sh', 'tools/cloud/install.sh',
           'tools/cloud/configure-secmig.sh', 'tools/cloud/run-tests.sh']

STUBS = r'''
LOG="$TMP/calls.log"
log_call() { echo "$*" >> "$LOG"; }
enable_service() { log_call enable_service "$@"; }
is_service_enabled() { return 0; }
echo_summary() { log_call echo_summary "$@"; }
setup_develop() { log_call setup_develop "$@"; }
get_python_exec_prefix() { echo "$VENV_BIN"; }
sudo() { "$@"; }
hostname() { echo compute-1; }
get_transport_url() { echo "rabbit://stackrabbit:secret@127.0.0.1:5672/"; }
get_or_create_role() { log_call get_or_create_role "$@"; }
create_service_user() { log_call create_service_user "$@"; }
get_or_add_user_project_role() { log_call get_or_add_user_project_role "$@"; }
openstack() { log_call openstack "$@"; }
run_process() { log_call run_process "$@"; }
stop_process() { log_call stop_process "$@"; }
iniget() {
    "$VENV_BIN/python" - "$@" <<'PY'
import configparser, sys
path, section, key = sys.argv[1:4]
cp = configparser.RawConfigParser()
cp.optionxform = str
cp.read(path)
print(cp.get(section, key, fallback=''))
PY
}
iniset() {
    "$VENV_BIN/python" - "$@" <<'PY'
import configparser, os, sys
path, section, key, value = sys.argv[1:5]
cp = configparser.RawConfigParser()
cp.optionxform = str
if os.path.exists(path):
    cp.read(path)
if section != 'DEFAULT' and not cp.has_section(section):
    cp.add_section(section)
cp.set(section, key, value)
with open(path, 'w') as f:
    cp.write(f)
PY
}
'''


class TestDevstackPlugin(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix='smds-')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.dest = os.path.join(self.tmp, 'opt')
        os.makedirs(self.dest)
        os.symlink(ROOT, os.path.join(self.dest, 'secmig-nova'))
        self.nova_dir = os.path.join(self.tmp, 'nova')
        os.makedirs(self.nova_dir)
        self.conf_dir = os.path.join(self.tmp, 'secmig')
        with open(os.path.join(self.tmp, 'stubs.sh'), 'w') as f:
            f.write(STUBS)
        self.env = dict(os.environ, TMP=self.tmp, DEST=self.dest,
                        DATA_DIR=os.path.join(self.tmp, 'data'),
                        NOVA_CONF_DIR=self.nova_dir,
                        NOVA_CONF=os.path.join(self.nova_dir, 'nova.conf'),
                        NOVA_CPU_CONF=os.path.join(self.nova_dir,
                                                   'nova-cpu.conf'),
                        SECMIG_CONF_DIR=self.conf_dir,
                        SECMIG_SOCKET_DIR=os.path.join(self.tmp, 'run'),
                        STACK_USER='root', HOST_IP='192.0.2.10',
                        KEYSTONE_SERVICE_URI='http://192.0.2.10/identity',
                        SERVICE_PASSWORD='secret',
                        ENABLE_DEBUG_LOG_LEVEL='True',
                        VENV_BIN=os.path.dirname(sys.executable))

    def phase(self, *args):
        script = ('set -e; source "$TMP/stubs.sh"; '
                  'source "$DEST/secmig-nova/devstack/settings"; '
                  'source "$DEST/secmig-nova/devstack/plugin.sh" %s'
                  % ' '.join(args))
        res = subprocess.run(['bash', '-c', script], env=self.env,
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)
        return res

    def calls(self):
        with open(os.path.join(self.tmp, 'calls.log')) as f:
            return f.read().splitlines()

    def ini(self, path):
        cp = configparser.RawConfigParser()
        cp.read(path)
        return cp

    def test_stack_unstack_clean(self):
        for phase in ('install', 'post-config', 'extra'):
            self.phase('stack', phase)
        calls = self.calls()
        self.assertIn('setup_develop %s/secmig-nova' % self.dest, calls)
        self.assertIn('get_or_create_role migration_operator', calls)
        self.assertIn('get_or_create_role cross_cloud_operator', calls)
        self.assertIn('create_service_user secmig reader', calls)
        broker_conf = os.path.join(self.conf_dir, 'broker.conf')
        self.assertIn('run_process secmig-broker %s/secmig-broker '
                      '--config-file %s' % (self.env['VENV_BIN'],
                                            broker_conf), calls)
        for name in ('nova.conf', 'nova-cpu.conf'):
            nova = self.ini(os.path.join(self.nova_dir, name))
            self.assertEqual('secmig.SecureLibvirtDriver',
                             nova.get('DEFAULT', 'compute_driver'))
            self.assertEqual('devstack', nova.get('secmig', 'cloud_id'))
            self.assertEqual('False', nova.get('libvirt',
                                               'live_migration_tunnelled'))
            self.assertTrue(os.path.exists(nova.get('secmig', 'cert_file')))
            key = nova.get('secmig', 'key_file')
            self.assertEqual(0o600, stat.S_IMODE(os.stat(key).st_mode))
            self.assertEqual('secmig', nova.get('secmig_keystone',
                                                'username'))
        with open(os.path.join(self.nova_dir, 'policy.yaml')) as f:
            self.assertIn('keystone_role:migration_operator', f.read())
        broker = self.ini(broker_conf)
        url = broker.get('secmig_broker', 'database_connection')
        from secmig_nova.broker.db import migration
        self.assertEqual('0003', migration.version(url))
        res = subprocess.run(
            [os.path.join(self.env['VENV_BIN'], 'secmig-nova-manage'), 'ca',
             'show', broker.get('secmig_broker', 'cert_file'), '--ca-file',
             broker.get('secmig', 'ca_file')],
            capture_output=True, text=True)
        self.assertEqual(0, res.returncode, res.stderr)
        self.assertIn('urn:secmig:devstack:broker:broker', res.stdout)
        # A second stack is idempotent (same CA, same policy line).
        ca = open(os.path.join(self.conf_dir, 'ca', 'ca.crt')).read()
        self.phase('stack', 'post-config')
        self.assertEqual(ca, open(os.path.join(self.conf_dir, 'ca',
                                               'ca.crt')).read())
        with open(os.path.join(self.nova_dir, 'policy.yaml')) as f:
            policy = f.read()
        self.assertEqual(2, policy.count('keystone_role:'))
        for rule in ('migrate_live', 'migrate_live:host'):
            self.assertEqual(1, policy.count(
                '"os_compute_api:os-migrate-server:%s":' % rule))
        self.phase('unstack')
        self.assertIn('stop_process secmig-broker', self.calls())
        self.phase('clean')
        self.assertFalse(os.path.exists(self.conf_dir))

    def test_peer_clouds(self):
        """SECMIG_PEERS: broker peers, compute hosts' peer CA bundles."""
        peer_ca = os.path.join(self.tmp, 'peer-ca.crt')
        self.env.update(
            SECMIG_PEERS='cloud-b|rabbit://u:p@192.0.2.20:5672/b|%s '
                         'cloud-c|rabbit://u:p@192.0.2.30:5672/c|/c.crt'
                         % peer_ca,
            SECMIG_BROKER_TRANSPORT_URL='rabbit://u:p@192.0.2.10:5672/a')
        for phase in ('install', 'post-config'):
            self.phase('stack', phase)
        broker = self.ini(os.path.join(self.conf_dir, 'broker.conf'))
        self.assertEqual('cloud-b,cloud-c',
                         broker.get('secmig_broker', 'peers'))
        self.assertEqual('rabbit://u:p@192.0.2.20:5672/b',
                         broker.get('secmig_peer_cloud-b', 'transport_url'))
        self.assertEqual(peer_ca,
                         broker.get('secmig_peer_cloud-b', 'ca_file'))
        self.assertEqual('*', broker.get('secmig_peer_cloud-c',
                                         'allowed_projects'))
        nova = self.ini(os.path.join(self.nova_dir, 'nova-cpu.conf'))
        self.assertEqual('cloud-b:%s,cloud-c:/c.crt' % peer_ca,
                         nova.get('secmig', 'peer_ca_files'))
        self.assertEqual('rabbit://u:p@192.0.2.10:5672/a',
                         nova.get('secmig', 'broker_transport_url'))
        # A second stack does not list a peer twice.
        self.phase('stack', 'post-config')
        broker = self.ini(os.path.join(self.conf_dir, 'broker.conf'))
        self.assertEqual('cloud-b,cloud-c',
                         broker.get('secmig_broker', 'peers'))

    def test_shellcheck(self):
        if shutil.which('shellcheck') is None:
            self.fail('shellcheck is not installed (tools/install-deps.sh '
                      'installs it)')
        res = subprocess.run(['shellcheck', '-x', '-s', 'bash'] + SCRIPTS,
                             cwd=ROOT, capture_output=True, text=True)
        self.assertEqual(0, res.returncode, res.stdout)
