"""The running cloud as the tests see it: env file, CLI, database, hosts."""

import json
import os
import re
import shlex
import subprocess
import time

import testtools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DEFAULT_ENV = os.path.join(ROOT, '.cloud', 'cloud.env')
HEARTBEAT = re.compile(r'SECMIG-HEARTBEAT (\d+) ')
CLI_TIMEOUT = 300


def read_env(path):
    """KEY='value' lines as written by tools/cloud/cloud.py."""
    env = {}
    with open(path) as f:
        for line in f:
            if '=' in line:
                key, value = line.rstrip('\n').split('=', 1)
                env[key] = shlex.split(value)[0] if value else ''
    return env


class CloudTestCase(testtools.TestCase):
    """Fails (never skips) when the cloud is not up."""

    cloud = None
    cloud_error = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        path = os.environ.get('SECMIG_CLOUD_ENV') or DEFAULT_ENV
        if not os.path.exists(path):
            cls.cloud_error = (
                'the cloud is not up: no env file %s (run "tools/cloud/'
                'cloud.sh up", which writes it)' % path)
            return
        cls.cloud = read_env(path)
        cls.venv_bin = os.path.join(cls.cloud['SECMIG_CLOUD_VENV'], 'bin')
        cls.hosts = cls.cloud['SECMIG_CLOUD_HOSTS'].split()
        res = cls._run_osc(['token', 'issue', '-f', 'value', '-c', 'id'],
                           'admin', 'admin', timeout=60)
        if res.returncode != 0:
            cls.cloud_error = (
                'the cloud of %s does not answer: Keystone %s refused a '
                'token (%s); is it up? tools/cloud/cloud.sh status'
                % (path, cls.cloud['OS_AUTH_URL'],
                   (res.stderr or res.stdout).strip()[-500:]))

    def setUp(self):
        super().setUp()
        if self.cloud_error:
            self.fail(self.cloud_error)

    @classmethod
    def _run_osc(cls, args, user, project, timeout=CLI_TIMEOUT):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith('OS_'):
                del env[key]
        env.update({k: v for k, v in cls.cloud.items()
                    if k.startswith('OS_')})
        env.update({'OS_USERNAME': user, 'OS_PROJECT_NAME': project})
        return subprocess.run([os.path.join(cls.venv_bin, 'openstack')] +
                              list(args), env=env, capture_output=True,
                              text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def osc(self, *args, user='admin', project='admin', api=None,
            check=True, fmt='json'):
        """``openstack ARGS`` as ``user``; parsed JSON with fmt='json'."""
        argv = list(args)
        if api:
            argv = ['--os-compute-api-version', api] + argv
        if fmt:
            argv += ['-f', fmt]
        t0 = time.monotonic()
        res = self._run_osc(argv, user, project)
        took = time.monotonic() - t0
        self.addDetail('openstack %s (%.1f s)' % (' '.join(args[:4]), took),
                       testtools.content.text_content(
                           'as %s/%s: openstack %s\nrc %d\n%s\n%s'
                           % (user, project, ' '.join(argv),
                              res.returncode, res.stdout, res.stderr)))
        if check and res.returncode != 0:
            self.fail('openstack %s failed (%d): %s'
                      % (' '.join(argv), res.returncode,
                         res.stderr.strip()[-2000:]))
        if fmt == 'json' and res.returncode == 0 and res.stdout.strip():
            return json.loads(res.stdout)
        return res

    # -- the cloud's parts ---------------------------------------------------

    @property
    def project(self):
        return self.cloud['SECMIG_CLOUD_PROJECT']

    @property
    def operator(self):
        return self.cloud['SECMIG_CLOUD_OPERATOR']

    def sql(self, db, query):
        sock = os.path.join(self.cloud['SECMIG_CLOUD_DIR'], 'data',
                            'mysql.sock')
        res = subprocess.run(['mariadb', '--no-defaults', '--socket=%s' % sock,
                              '-u', 'root', '-N', '-B', '-e', query, db],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(0, res.returncode, res.stderr)
        return [line.split('\t') for line in res.stdout.splitlines()]

    def brokers_heard_of(self, server_id):
        """Both brokers' records of ``server_id``: (id, side, state) rows."""
        return [row for cloud in ('cloud_a', 'cloud_b') for row in self.sql(
            'secmig_%s' % cloud, "SELECT id, side, state FROM "
            "secmig_migrations WHERE instance_uuid='%s'" % server_id)]

    def log_file(self, name):
        """A cloud service's log (e.g. ``nova-compute-cmp-a``)."""
        return os.path.join(self.cloud['SECMIG_CLOUD_DIR'], 'logs',
                            name + '.log')

    def instance_dir(self, host, server_id):
        """A server's directory inside lab host ``host`` (lab-<name>)."""
        name = host[len('lab-'):]
        return os.path.join(self.cloud['SECMIG_CLOUD_LAB_DIR'], 'hosts',
                            name, 'lib', 'nova-instances', server_id)

    # -- servers --------------------------------------------------------------

    def create_server(self, name, host, flavor=None):
        """A server of the secmig flavor (or ``flavor``) on ``host``, ACTIVE.

        Created by the admin in the demo project (only admins may name the
        host), so the demo project's operator can migrate it; deleted
        after the test.
        """
        server = self.osc('server', 'create', '--flavor',
                          flavor or self.cloud['SECMIG_CLOUD_FLAVOR'],
                          '--image',
                          self.cloud['SECMIG_CLOUD_IMAGE'], '--nic', 'none',
                          '--host', host, '--wait', name, api='2.74',
                          project=self.project)
        self.addCleanup(self.osc, 'server', 'delete', '--wait', server['id'],
                        project=self.project, check=False, fmt=None)
        return server['id']

    def server(self, server_id):
        return self.osc('server', 'show', server_id, project=self.project)

    def heartbeats(self, server_id):
        out = self.osc('console', 'log', 'show', server_id,
                       project=self.project, fmt=None).stdout
        return [int(n) for n in HEARTBEAT.findall(out)]

    def wait_heartbeat(self, server_id, above=0, timeout=60):
        """The newest heartbeat counter once it is above ``above``."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            seen = self.heartbeats(server_id)
            if seen and seen[-1] > above:
                return seen[-1]
            time.sleep(1)
        self.fail('server %s: no heartbeat above %d within %d s (last: %s)'
                  % (server_id, above, timeout, seen[-3:]))
