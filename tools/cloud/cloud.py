#!/usr/bin/env python3
"""A real OpenStack on this machine, with two secmig trust clouds.

Brings up (``up``), reports on (``status``) and tears down (``down``) a
one-machine cloud of real services: MariaDB, RabbitMQ, Keystone, Placement,
Glance (file store), neutron-server (ML2 without agents), nova-api (uwsgi),
nova-conductor, nova-scheduler, cell0 + cell1, and one nova-compute with
``compute_driver = secmig.SecureLibvirtDriver`` inside each of two lab
libvirt hosts (tools/lab/hosts.sh): ``cmp-a`` in trust cloud ``cloud-a``
and ``cmp-b`` in ``cloud-b``, each cloud with its own CA and a real
``secmig-broker`` (audit database on MariaDB, RabbitMQ vhost per cloud).
nova and ``[secmig]`` are configured by the devstack plugin's functions
(tools/cloud/configure-secmig.sh).

All state is in one directory (``$SECMIG_CLOUD_DIR``, default
``<repo>/.cloud``): configuration, data, logs, pids, the lab hosts, and
``cloud.env`` (credentials and names, read by tests/functional/cloud).
Ports are probed for free ones and kept in ``ports.json``. Services start
in parallel, each step waits on a health check, prints its duration, and a
failure names the service and its log. ``down`` stops only the processes
recorded in ``pids/`` (checked against their start time), stops the lab
hosts (no domain or namespace left) and deletes every data file; the logs
stay in ``<dir>/logs`` until the next ``up``.

Needs root and tools/cloud/install.sh. Runs with any Python 3.11
(stdlib only); the services run from ``$SECMIG_CLOUD_VENV``
(default ``<repo>/.venv-cloud``).
"""

import argparse
import concurrent.futures
import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STATE = os.path.abspath(os.environ.get('SECMIG_CLOUD_DIR',
                                       os.path.join(REPO, '.cloud')))
VENV = os.path.abspath(os.environ.get('SECMIG_CLOUD_VENV',
                                      os.path.join(REPO, '.venv-cloud')))
BIN = os.path.join(VENV, 'bin')
HOSTS_SH = os.path.join(REPO, 'tools', 'lab', 'hosts.sh')
GUEST_SH = os.path.join(REPO, 'tools', 'lab', 'guest.sh')
CONFIGURE = os.path.join(REPO, 'tools', 'cloud', 'configure-secmig.sh')
RABBIT_BIN = '/usr/lib/rabbitmq/bin'
HOST = '127.0.0.1'
PORT_BASE = int(os.environ.get('SECMIG_CLOUD_PORT_BASE', '29300'))
# Lab host name -> trust cloud. nova's host is the host's own hostname
# (lab-<name>), so the plugin's `hostname -s` names the certificate.
HOSTS = {'cmp-a': 'cloud-a', 'cmp-b': 'cloud-b'}
TUNNEL_PORTS = {'cloud-a': (49700, 49749), 'cloud-b': (49750, 49799)}
# What a host that offers the tunnel reports in placement.
SECMIG_TRAIT = 'CUSTOM_SECMIG_TUNNEL'
SECURE_DRIVER = 'secmig.SecureLibvirtDriver'
# The image's kernel command line: the guest keeps 4 MiB of lines of it in
# memory (tools/lab/guest.sh), what a wire tap must never see.
MARKER = 'SECMIG-CLOUD-MARKER-5b0e'
PORT_NAMES = ('mysql', 'amqp', 'amqp_dist', 'keystone', 'placement',
              'glance', 'neutron', 'nova')
DATABASES = ('keystone', 'placement', 'glance', 'neutron', 'nova_api',
             'nova_cell0', 'nova', 'secmig_cloud_a', 'secmig_cloud_b')
SERVICE_USERS = ('nova', 'placement', 'glance', 'neutron')
FLAVOR = 'm1.secmig'
IMAGE = 'secmig-guest'
PROJECT = 'demo'
OPERATOR = 'operator'      # migration_operator + cross_cloud_operator
MEMBER = 'member'          # member only
TIMEOUT = float(os.environ.get('SECMIG_CLOUD_TIMEOUT', '180'))

_print_lock = threading.Lock()


def say(msg):
    with _print_lock:
        print('[cloud] %s' % msg, flush=True)


class CloudError(Exception):
    """A step failed; the message names the service and its log."""


def path(*parts):
    return os.path.join(STATE, *parts)


def log_path(name):
    return path('logs', '%s.log' % name)


def tail(file, size=3000):
    try:
        with open(file, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return '(no log)'


def write(file, text, mode=0o644):
    os.makedirs(os.path.dirname(file), exist_ok=True)
    with open(file, 'w') as f:
        f.write(text)
    os.chmod(file, mode)


def copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(src, dst)


def ini(sections):
    out = []
    for section, opts in sections.items():
        out.append('[%s]' % section)
        out.extend('%s = %s' % (k, v) for k, v in opts.items())
        out.append('')
    return '\n'.join(out)


# -- processes ----------------------------------------------------------------

def _start_time(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def spawn(name, argv, env=None, log=None):
    """Start a service in its own session; remember its pid."""
    log = log or log_path(name)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, 'ab') as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    write(path('pids', name), '%d %s\n' % (proc.pid, _start_time(proc.pid)))
    proc.service = name
    proc.log = log
    return proc


def recorded(name):
    """The pid of a service this script started, if it still runs."""
    try:
        pid, start = open(path('pids', name)).read().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    return pid if _start_time(pid) == start else None


def stop(name, timeout=20):
    pid = recorded(name)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while recorded(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if recorded(name):
            say('%s did not stop on SIGTERM; SIGKILL' % name)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        os.unlink(path('pids', name))
    except FileNotFoundError:
        pass
    return pid is not None


def run(name, argv, env=None, timeout=TIMEOUT, input=None):
    """Run a command to completion; its output goes to the step's log."""
    log = log_path(name)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, 'ab') as out:
        out.write(('$ %s\n' % ' '.join(argv)).encode())
        out.flush()
        try:
            res = subprocess.run(argv, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, timeout=timeout,
                                 input=input.encode() if input else None,
                                 stdin=None if input else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CloudError('%s: %s did not finish within %.0f s; log %s'
                             % (name, argv[0], timeout, log))
    if res.returncode != 0:
        raise CloudError('%s: %s failed with status %d; log %s:\n%s'
                         % (name, ' '.join(argv[:3]), res.returncode, log,
                            tail(log, 1500)))


def output(argv, env=None, timeout=60):
    res = subprocess.run(argv, env=env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise CloudError('%s failed: %s' % (
            ' '.join(argv[:4]), (res.stderr or res.stdout)[-1500:]))
    return res.stdout


def wait_for(name, check, proc=None, timeout=TIMEOUT, log=None,
             fatal=None):
    """Poll ``check`` until it is true.

    Fails when ``proc`` exits, ``fatal`` appears in the log, or after
    ``timeout`` seconds.
    """
    log = log or (proc.log if proc is not None else log_path(name))
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise CloudError('%s exited with status %s before it was ready; '
                             'log %s:\n%s' % (name, proc.returncode, log,
                                              tail(log, 2000)))
        if fatal and fatal in tail(log, 200000):
            raise CloudError('%s failed to start ("%s" in its log %s):\n%s'
                             % (name, fatal.strip(), log, tail(log, 2000)))
        try:
            if check():
                return
        except CloudError:
            raise
        except Exception:  # noqa: not ready yet
            pass
        if time.monotonic() > deadline:
            raise CloudError('%s not ready within %.0f s; log %s:\n%s'
                             % (name, timeout, log, tail(log, 2000)))
        time.sleep(0.2)


def http_ok(port, url_path='/'):
    try:
        with urllib.request.urlopen('http://%s:%d%s' % (HOST, port, url_path),
                                    timeout=3) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500


# -- ports ----------------------------------------------------------------

def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def port_user(port):
    try:
        out = subprocess.run(['ss', '-Hltnp', 'sport = :%d' % port],
                             capture_output=True, text=True, timeout=5).stdout
        return out.strip() or 'unknown process'
    except (OSError, subprocess.TimeoutExpired):
        return 'unknown process'


def choose_ports():
    ports, port = {}, PORT_BASE
    for name in PORT_NAMES:
        while not port_free(port):
            port += 1
        ports[name] = port
        port += 1
    write(path('ports.json'), json.dumps(ports, indent=1))
    return ports


def claim(service, port):
    if not port_free(port):
        raise CloudError('%s: port %d on %s is already taken (%s); run '
                         '"tools/cloud/cloud.sh down" or set '
                         'SECMIG_CLOUD_PORT_BASE' % (service, port, HOST,
                                                     port_user(port)))


# -- the cloud --------------------------------------------------------------

class Cloud:

    def __init__(self):
        self.ports = None
        self.password = None
        self.procs = {}
        self.timings = []
        self.ids = {}
        try:
            with open(path('ports.json')) as f:
                self.ports = json.load(f)
            with open(path('secret')) as f:
                self.password = f.read().strip()
        except (OSError, ValueError):
            pass

    # -- helpers ----------------------------------------------------------

    def step(self, name, func, *args):
        t0 = time.monotonic()
        result = func(*args)
        took = time.monotonic() - t0
        self.timings.append((name, took))
        say('%-28s %6.1f s' % (name, took))
        return result

    def parallel(self, *steps):
        with concurrent.futures.ThreadPoolExecutor(len(steps)) as pool:
            futures = [pool.submit(self.step, *s) for s in steps]
            errors = []
            for f in futures:
                try:
                    f.result()
                except CloudError as e:
                    errors.append(str(e))
            if errors:
                raise CloudError('\n'.join(errors))

    def db_url(self, db):
        return ('mysql+pymysql://cloud:%s@%s:%d/%s?charset=utf8mb4'
                % (self.password, HOST, self.ports['mysql'], db))

    def rabbit_url(self, vhost):
        return 'rabbit://guest:guest@%s:%d/%s' % (HOST, self.ports['amqp'],
                                                  vhost)

    def url(self, service, suffix=''):
        return 'http://%s:%d%s' % (HOST, self.ports[service], suffix)

    @property
    def keystone_url(self):
        return self.url('keystone', '/v3')

    def authtoken(self, user):
        return {'www_authenticate_uri': self.keystone_url,
                'auth_url': self.keystone_url,
                'auth_type': 'password', 'project_domain_name': 'Default',
                'user_domain_name': 'Default', 'project_name': 'service',
                'username': user, 'password': self.password,
                'service_token_roles_required': 'true'}

    def creds(self, user, **extra):
        d = {'auth_type': 'password', 'auth_url': self.keystone_url,
             'project_domain_name': 'Default',
             'user_domain_name': 'Default', 'project_name': 'service',
             'username': user, 'password': self.password,
             'region_name': 'RegionOne'}
        d.update(extra)
        return d

    def admin_env(self, system=False, user='admin', project='admin'):
        env = dict(os.environ)
        env.update({'OS_AUTH_URL': self.keystone_url,
                    'OS_USERNAME': user, 'OS_PASSWORD': self.password,
                    'OS_USER_DOMAIN_NAME': 'Default',
                    'OS_IDENTITY_API_VERSION': '3',
                    'OS_REGION_NAME': 'RegionOne',
                    'PATH': BIN + ':' + env.get('PATH', '')})
        for k in ('OS_PROJECT_NAME', 'OS_SYSTEM_SCOPE', 'OS_CLOUD'):
            env.pop(k, None)
        if system:
            env['OS_SYSTEM_SCOPE'] = 'all'
        else:
            env['OS_PROJECT_NAME'] = project
            env['OS_PROJECT_DOMAIN_NAME'] = 'Default'
        return env

    def osc(self, *args, system=False, timeout=120):
        return output([os.path.join(BIN, 'openstack')] + list(args),
                      env=self.admin_env(system=system), timeout=timeout)

    def lab_env(self):
        env = dict(os.environ)
        env['SECMIG_LAB_DIR'] = path('lab')
        env['SECMIG_LAB_CAPS_SEED'] = os.path.join(REPO, '.lab',
                                                   'qemu-capabilities')
        return env

    def uwsgi(self, name, module, env_extra):
        claim(name, self.ports[name])
        env = dict(os.environ, **env_extra)
        argv = [os.path.join(BIN, 'uwsgi'), '--home', VENV,
                '--http-socket', '%s:%d' % (HOST, self.ports[name]),
                '--module', module, '--master', '--processes', '1',
                '--threads', '2', '--enable-threads', '--lazy-apps',
                '--die-on-term', '--need-app',
                '--add-header', 'Connection: close',
                '--procname-prefix', 'secmig-cloud-%s ' % name]
        proc = spawn(name, argv, env=env)
        wait_for(name, lambda: http_ok(self.ports[name]), proc)
        self.procs[name] = proc

    # -- up -----------------------------------------------------------------

    def up(self):
        t0 = time.monotonic()
        if not os.path.exists(os.path.join(BIN, 'nova-compute')):
            raise CloudError('the cloud venv %s is missing: run '
                             'tools/cloud/install.sh' % VENV)
        if any(recorded(n) for n in self.pid_names()):
            raise CloudError('a cloud is already running from %s: '
                             'tools/cloud/cloud.sh status | down' % STATE)
        if os.path.isdir(path('lab', 'hosts')):
            # Hosts of an earlier run that failed half-way.
            run('lab-hosts', ['bash', HOSTS_SH, 'stop'] +
                sorted(os.listdir(path('lab', 'hosts'))), env=self.lab_env())
        self.reset_state()
        self.ports = choose_ports()
        self.password = secrets.token_hex(12)
        write(path('secret'), self.password, 0o600)
        say('state in %s, ports %s' % (STATE, json.dumps(self.ports)))
        self.parallel(('guest image (lab)', self.build_guest),
                      ('mariadb', self.start_mysql),
                      ('rabbitmq', self.start_rabbit),
                      ('lab hosts', self.start_hosts))
        self.write_configs()
        self.parallel(('secmig CAs + nova.conf (plugin)',
                       self.configure_secmig),
                      ('keystone db', self.keystone_db),
                      ('placement db', self.placement_db),
                      ('glance db', self.glance_db),
                      ('neutron db', self.neutron_db),
                      ('nova dbs + cells', self.nova_db))
        self.step('keystone', self.uwsgi, 'keystone',
                  'keystone.wsgi.api:application',
                  {'OS_KEYSTONE_CONFIG_DIR': path('etc', 'keystone')})
        self.parallel(('keystone accounts', self.accounts),
                      ('placement', self.uwsgi, 'placement',
                       'placement.wsgi.api:application',
                       {'OS_PLACEMENT_CONFIG_DIR': path('etc', 'placement')}),
                      ('glance', self.uwsgi, 'glance',
                       'glance.wsgi.api:application',
                       {'OS_GLANCE_CONFIG_DIR': path('etc', 'glance')}),
                      ('neutron-server', self.uwsgi, 'neutron',
                       'neutron_wsgi:application',
                       {'OS_NEUTRON_CONFIG_DIR': path('etc', 'neutron'),
                        'OS_NEUTRON_CONFIG_FILES':
                            'neutron.conf;ml2_conf.ini',
                        'PYTHONPATH': path('etc', 'neutron')}),
                      ('nova-api', self.uwsgi, 'nova',
                       'nova.wsgi.osapi_compute:application',
                       {'OS_NOVA_CONFIG_DIR': path('etc', 'nova')}),
                      )
        # Everything below authenticates as a service user.
        self.parallel(('nova-conductor', self.nova_service,
                       'nova-conductor'),
                      ('nova-scheduler', self.nova_service,
                       'nova-scheduler'),
                      ('secmig brokers', self.brokers),
                      ('images (openstack image create)', self.images),
                      ('flavor', self.flavor),
                      *[('nova-compute %s' % h, self.compute, h)
                        for h in HOSTS])
        self.step('discover hosts (cell1)', self.discover_hosts)
        self.write_env()
        total = time.monotonic() - t0
        say('cloud up in %.1f s; env file %s' % (total, path('cloud.env')))
        self.timings.append(('total', total))
        write(path('timings.json'), json.dumps(self.timings, indent=1))

    def reset_state(self):
        keep_caps = os.path.join(REPO, '.lab', 'qemu-capabilities')
        for sub in ('etc', 'data', 'lab', 'pids', 'logs', 'secmig',
                    'cloud.env', 'ports.json', 'secret', 'timings.json'):
            p = path(sub)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
        os.makedirs(path('logs'), exist_ok=True)
        os.makedirs(keep_caps, exist_ok=True)

    def pid_names(self):
        try:
            return sorted(os.listdir(path('pids')))
        except FileNotFoundError:
            return []

    def build_guest(self):
        run('guest', ['bash', GUEST_SH, 'build'])
        k, r = output(['bash', GUEST_SH, 'paths']).split()
        self.kernel, self.ramdisk = k, r

    # MariaDB

    def start_mysql(self):
        claim('mariadb', self.ports['mysql'])
        d = path('data', 'mysql')
        os.makedirs(d)
        run('mariadb', ['mariadb-install-db', '--no-defaults',
                        '--datadir=%s' % d, '--user=root',
                        '--auth-root-authentication-method=normal',
                        '--skip-test-db'])
        sock = path('data', 'mysql.sock')
        proc = spawn('mariadb', [
            'mariadbd', '--no-defaults', '--user=root', '--datadir=%s' % d,
            '--socket=%s' % sock, '--pid-file=%s' % path('data', 'mysql.pid'),
            '--port=%d' % self.ports['mysql'], '--bind-address=%s' % HOST,
            '--log-error=%s' % log_path('mariadb'), '--skip-name-resolve',
            '--max-connections=1000', '--innodb-buffer-pool-size=64M',
            '--character-set-server=utf8mb4'])
        self.procs['mariadb'] = proc
        wait_for('mariadb', lambda: subprocess.run(
            ['mariadb-admin', '--no-defaults', '--socket=%s' % sock, 'ping'],
            capture_output=True, timeout=5).returncode == 0, proc)
        sql = ["CREATE USER 'cloud'@'127.0.0.1' IDENTIFIED BY '%s';"
               % self.password]
        for db in DATABASES:
            sql.append('CREATE DATABASE %s CHARACTER SET utf8mb4;' % db)
            sql.append("GRANT ALL ON %s.* TO 'cloud'@'127.0.0.1';" % db)
        run('mariadb', ['mariadb', '--no-defaults', '--socket=%s' % sock,
                        '-u', 'root'], input='\n'.join(sql))

    # RabbitMQ

    def rabbit_env(self):
        d = path('data', 'rabbit')
        env = dict(os.environ)
        env.update({
            'HOME': d, 'RABBITMQ_NODENAME': 'secmigcloud@localhost',
            'RABBITMQ_NODE_IP_ADDRESS': HOST,
            'RABBITMQ_NODE_PORT': str(self.ports['amqp']),
            'RABBITMQ_DIST_PORT': str(self.ports['amqp_dist']),
            'RABBITMQ_MNESIA_BASE': os.path.join(d, 'mnesia'),
            'RABBITMQ_MNESIA_DIR': os.path.join(d, 'mnesia', 'node'),
            'RABBITMQ_FEATURE_FLAGS_FILE': os.path.join(d, 'feature_flags'),
            'RABBITMQ_LOG_BASE': os.path.join(d, 'log'),
            'RABBITMQ_PID_FILE': os.path.join(d, 'rabbit.pid'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(d, 'plugins'),
            'RABBITMQ_CONFIG_FILE': os.path.join(d, 'rabbitmq'),
            'RABBITMQ_ADVANCED_CONFIG_FILE': os.path.join(d, 'advanced'),
            'RABBITMQ_CONF_ENV_FILE': os.path.join(d, 'env'),
        })
        return env

    def rabbitctl(self, *args, timeout=60):
        return subprocess.run(
            [os.path.join(RABBIT_BIN, 'rabbitmqctl'), '-n',
             'secmigcloud@localhost'] + list(args), env=self.rabbit_env(),
            capture_output=True, text=True, timeout=timeout)

    def start_rabbit(self):
        claim('rabbitmq', self.ports['amqp'])
        claim('rabbitmq (distribution)', self.ports['amqp_dist'])
        d = path('data', 'rabbit')
        write(os.path.join(d, 'plugins'), '[].\n')
        write(os.path.join(d, 'rabbitmq.conf'),
              'loopback_users.guest = true\n'
              'listeners.tcp.default = %s:%d\n' % (HOST, self.ports['amqp']))
        write(os.path.join(d, 'env'), '')
        proc = spawn('rabbitmq', [os.path.join(RABBIT_BIN, 'rabbitmq-server')],
                     env=self.rabbit_env())
        self.procs['rabbitmq'] = proc
        wait_for('rabbitmq', lambda: self.rabbitctl(
            'await_startup', '--timeout', '5', timeout=20).returncode == 0,
            proc)
        for vhost in ('nova',) + tuple(sorted(set(HOSTS.values()))):
            for args in (('add_vhost', vhost),
                         ('set_permissions', '-p', vhost, 'guest', '.*',
                          '.*', '.*')):
                res = self.rabbitctl(*args)
                if res.returncode != 0:
                    raise CloudError('rabbitmq: rabbitmqctl %s failed: %s; '
                                     'log %s' % (' '.join(args), res.stderr,
                                                 proc.log))

    # lab hosts

    def start_hosts(self):
        run('lab-hosts', ['bash', HOSTS_SH, 'start'] + list(HOSTS),
            env=self.lab_env())
        # nova's [libvirt] live_migration_uri is "...socket=<dir>/%s/..."
        # with nova's host name (lab-<name>): one directory per host that
        # every host sees (/work is shared), pointing at its /run/libvirt.
        for name in HOSTS:
            # instances_path, /var/lib/libvirt/nova-instances inside.
            os.makedirs(path('lab', 'hosts', name, 'lib', 'nova-instances'),
                        exist_ok=True)
            link = path('lab', 'libvirt', 'lab-%s' % name)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(path('lab', 'hosts', name, 'run', 'libvirt'), link)

    def in_host(self, name, argv):
        return ['bash', HOSTS_SH, 'exec', name] + argv

    # configuration

    def write_configs(self):
        ks = {'connection': self.db_url('keystone')}
        write(path('etc', 'keystone', 'keystone.conf'), ini({
            'DEFAULT': {'use_stderr': 'true'},
            'database': ks,
            'token': {'provider': 'fernet'},
            'fernet_tokens': {'key_repository': path('data', 'fernet-keys')},
            'fernet_receipts': {'key_repository':
                                path('data', 'fernet-keys')},
            'credential': {'key_repository': path('data', 'credential-keys')},
            'identity': {'password_hash_rounds': '4'},
        }))
        write(path('etc', 'placement', 'placement.conf'), ini({
            'DEFAULT': {'use_stderr': 'true'},
            'placement_database': {'connection': self.db_url('placement')},
            'api': {'auth_strategy': 'keystone'},
            'keystone_authtoken': self.authtoken('placement'),
        }))
        etc = os.path.join(VENV, 'etc')
        os.makedirs(path('data', 'images'))
        copy(os.path.join(etc, 'glance', 'glance-api-paste.ini'),
             path('etc', 'glance', 'glance-api-paste.ini'))
        write(path('etc', 'glance', 'glance-api.conf'), ini({
            'DEFAULT': {'use_stderr': 'true',
                        'enabled_backends': 'fs:file',
                        'image_cache_dir': path('data', 'glance-cache')},
            'database': {'connection': self.db_url('glance')},
            'keystone_authtoken': self.authtoken('glance'),
            'paste_deploy': {'flavor': 'keystone'},
            'glance_store': {'default_backend': 'fs'},
            'fs': {'filesystem_store_datadir': path('data', 'images')},
            'os_glance_staging_store': {
                'filesystem_store_datadir': path('data', 'glance-staging')},
            'os_glance_tasks_store': {
                'filesystem_store_datadir': path('data', 'glance-tasks')},
            'oslo_concurrency': {'lock_path': path('data', 'locks')},
        }))
        copy(os.path.join(etc, 'neutron', 'api-paste.ini'),
             path('etc', 'neutron', 'api-paste.ini'))
        write(path('etc', 'neutron', 'neutron.conf'), ini({
            'DEFAULT': {'use_stderr': 'true', 'core_plugin': 'ml2',
                        'service_plugins': '', 'auth_strategy': 'keystone',
                        'transport_url': self.rabbit_url('nova'),
                        'api_paste_config': path('etc', 'neutron',
                                                 'api-paste.ini'),
                        'notify_nova_on_port_status_changes': 'false',
                        'notify_nova_on_port_data_changes': 'false'},
            'database': {'connection': self.db_url('neutron')},
            'keystone_authtoken': self.authtoken('neutron'),
            'oslo_concurrency': {'lock_path': path('data', 'locks')},
        }))
        write(path('etc', 'neutron', 'ml2_conf.ini'), ini({
            'ml2': {'type_drivers': 'flat,local',
                    'tenant_network_types': 'local',
                    'mechanism_drivers': '',
                    'extension_drivers': 'port_security'},
        }))
        # neutron answers 500 to a first GET /v2.0/ports unless the ORM
        # mappers are configured up front (LAB-NOTES).
        write(path('etc', 'neutron', 'neutron_wsgi.py'),
              '"""neutron-server\'s WSGI app, mappers configured."""\n'
              'from sqlalchemy import orm\n'
              'from neutron.wsgi.api import application  # noqa\n'
              'orm.configure_mappers()\n')
        copy(os.path.join(etc, 'nova', 'api-paste.ini'),
             path('etc', 'nova', 'api-paste.ini'))
        common = {
            'keystone_authtoken': self.authtoken('nova'),
            'placement': self.creds('placement'),
            'glance': {'api_servers': self.url('glance')},
            'neutron': self.creds('neutron'),
            'service_user': dict(self.creds('nova'),
                                 send_service_user_token='true'),
            'oslo_concurrency': {'lock_path': path('data', 'locks')},
            'vnc': {'enabled': 'false'},
            'oslo_messaging_notifications': {'driver': 'noop'},
        }
        write(path('etc', 'nova', 'nova.conf'), ini(dict({
            'DEFAULT': {'use_stderr': 'true',
                        'transport_url': self.rabbit_url('nova'),
                        'my_ip': HOST, 'state_path': path('data', 'nova'),
                        'osapi_compute_workers': '1',
                        'graceful_shutdown_timeout': '5'},
            'api': {'auth_strategy': 'keystone'},
            'wsgi': {'api_paste_config': path('etc', 'nova',
                                              'api-paste.ini')},
            'api_database': {'connection': self.db_url('nova_api')},
            'database': {'connection': self.db_url('nova')},
            'conductor': {'workers': '1'},
            'scheduler': {'workers': '1'},
        }, **common)))
        for name in HOSTS:
            conf = path('etc', 'nova-cpu-%s.conf' % name)
            privsep = {'helper_command': '%s --config-file %s'
                       % (os.path.join(BIN, 'privsep-helper'), conf)}
            write(conf, ini(dict({
                'DEFAULT': {'host': 'lab-%s' % name,
                            'transport_url': self.rabbit_url('nova'),
                            'my_ip': HOST,
                            'state_path': path('data', 'nova-%s' % name),
                            # Private to the host (its /var/lib/libvirt),
                            # the same path on both: as on real hosts
                            # without shared storage (block migration).
                            'instances_path':
                                '/var/lib/libvirt/nova-instances',
                            'log_file': log_path('nova-compute-%s' % name),
                            'heal_instance_info_cache_interval': '0',
                            'graceful_shutdown_timeout': '5'},
                # Post-copy permitted: force-complete switches to it
                # (tests/functional/cloud/test_faults.py).
                'libvirt': {'virt_type': 'qemu', 'cpu_mode': 'none',
                            'live_migration_permit_post_copy': 'True',
                            'live_migration_uri':
                                'qemu+unix:///system?socket=%s/%%s/'
                                'libvirt-sock' % path('lab', 'libvirt')},
                'compute': {'cpu_shared_set': ''},
                'nova_sys_admin': privsep,
                'privsep_osbrick': privsep,
            }, **common)))
        os.makedirs(path('data', 'locks'), exist_ok=True)
        for name in list(HOSTS) + ['']:
            os.makedirs(path('data', 'nova-%s' % name if name else 'nova'),
                        exist_ok=True)

    def plugin_env(self, cloud, host=None):
        env = self.lab_env()
        peers = ' '.join(
            '%s|%s|%s' % (c, self.rabbit_url(c),
                          path('secmig', c, 'ca', 'ca.crt'))
            for c in sorted(set(HOSTS.values())) if c != cloud)
        env.update({
            'VENV_BIN': BIN, 'PATH': BIN + ':' + env.get('PATH', ''),
            'SECMIG_CLOUD_ID': cloud,
            'SECMIG_CONF_DIR': path('secmig', cloud),
            'SECMIG_DB_CONNECTION': self.db_url(
                'secmig_%s' % cloud.replace('-', '_')),
            'SECMIG_TRANSPORT_URL': self.rabbit_url(cloud),
            'SECMIG_BROKER_TRANSPORT_URL': self.rabbit_url(cloud),
            'SECMIG_PEERS': peers,
            'SECMIG_TUNNEL_PORT_MIN': str(TUNNEL_PORTS[cloud][0]),
            'SECMIG_TUNNEL_PORT_MAX': str(TUNNEL_PORTS[cloud][1]),
            'SECMIG_SOCKET_DIR': '/run/secmig',
            'NOVA_CONF_DIR': path('etc', 'nova'),
            'NOVA_CONF': path('etc', 'nova', 'nova.conf'),
            'KEYSTONE_SERVICE_URI': self.keystone_url,
            'SERVICE_PASSWORD': self.password,
            'HOST_IP': HOST, 'DATA_DIR': path('data'),
            'ENABLE_DEBUG_LOG_LEVEL': 'True',
        })
        if host:
            env['NOVA_CPU_CONF'] = path('etc', 'nova-cpu-%s.conf' % host)
        return env

    def configure_secmig(self):
        # One host per cloud here; the control plane's nova.conf gets the
        # policy and [secmig_keystone] (nova-api uses both).
        for name, cloud in HOSTS.items():
            env = self.plugin_env(cloud, name)
            for phase in ('ca', 'nova'):
                run('secmig-configure', self.in_host(
                    name, ['bash', CONFIGURE, phase]), env=env)

    # databases

    def keystone_db(self):
        conf = path('etc', 'keystone', 'keystone.conf')
        km = [os.path.join(BIN, 'keystone-manage'), '--config-file', conf]
        run('keystone-manage', km + ['db_sync'])
        run('keystone-manage', km + ['fernet_setup', '--keystone-user',
                                     'root', '--keystone-group', 'root'])
        run('keystone-manage', km + ['credential_setup', '--keystone-user',
                                     'root', '--keystone-group', 'root'])
        run('keystone-manage', km + [
            'bootstrap', '--bootstrap-password', self.password,
            '--bootstrap-admin-url', self.keystone_url,
            '--bootstrap-public-url', self.keystone_url,
            '--bootstrap-internal-url', self.keystone_url,
            '--bootstrap-region-id', 'RegionOne'])

    def placement_db(self):
        run('placement-manage', [os.path.join(BIN, 'placement-manage'),
                                 '--config-file',
                                 path('etc', 'placement', 'placement.conf'),
                                 'db', 'sync'])

    def glance_db(self):
        run('glance-manage', [os.path.join(BIN, 'glance-manage'),
                              '--config-file',
                              path('etc', 'glance', 'glance-api.conf'),
                              'db_sync'])

    def neutron_db(self):
        run('neutron-db-manage', [
            os.path.join(BIN, 'neutron-db-manage'), '--config-file',
            path('etc', 'neutron', 'neutron.conf'), '--config-file',
            path('etc', 'neutron', 'ml2_conf.ini'), 'upgrade', 'heads'])

    def nova_manage(self, *args):
        run('nova-manage', [os.path.join(BIN, 'nova-manage'),
                            '--config-file', path('etc', 'nova', 'nova.conf')]
            + list(args))

    def nova_db(self):
        self.nova_manage('api_db', 'sync')
        self.nova_manage('cell_v2', 'map_cell0', '--database_connection',
                         self.db_url('nova_cell0'))
        self.nova_manage('cell_v2', 'create_cell', '--name', 'cell1')
        self.nova_manage('db', 'sync')

    # keystone

    def accounts(self):
        script = r'''
import json, sys
from keystoneauth1.identity import v3
from keystoneauth1 import session
a = json.loads(sys.argv[1])
s = session.Session(auth=v3.Password(
    auth_url=a['url'], username='admin', password=a['pw'],
    user_domain_id='default', system_scope='all'))
K = a['url']
def call(method, p, body=None):
    r = s.request(K + p, method, json=body, raise_exc=False)
    if r.status_code >= 400:
        sys.exit('%s %s: %d %s' % (method, p, r.status_code, r.text))
    return r.json() if r.content else None
def get_or_create(kind, key, body):
    found = call('GET', '/%ss?name=%s' % (kind, body['name']))[kind + 's']
    if found:
        return found[0]['id']
    return call('POST', '/%ss' % kind, {kind: body})[kind]['id']
role = {n: get_or_create('role', 'name', {'name': n})
        for n in ('admin', 'member', 'reader', 'service',
                  'migration_operator', 'cross_cloud_operator')}
proj = {n: get_or_create('project', 'name', {'name': n,
        'domain_id': 'default'}) for n in ('service', a['project'])}
users = {}
for u in a['service_users']:
    users[u] = get_or_create('user', 'name', {'name': u, 'password': a['pw'],
                                              'domain_id': 'default'})
    for r in ('admin', 'service'):
        call('PUT', '/projects/%s/users/%s/roles/%s'
             % (proj['service'], users[u], role[r]))
for u, roles in a['people'].items():
    users[u] = get_or_create('user', 'name', {'name': u, 'password': a['pw'],
                                              'domain_id': 'default'})
    for r in roles:
        call('PUT', '/projects/%s/users/%s/roles/%s'
             % (proj[a['project']], users[u], role[r]))
for stype, name, url in a['endpoints']:
    sid = get_or_create('service', 'name', {'name': name, 'type': stype})
    for iface in ('public', 'internal', 'admin'):
        call('POST', '/endpoints', {'endpoint': {
            'service_id': sid, 'interface': iface, 'url': url,
            'region_id': 'RegionOne'}})
print(json.dumps({'project_id': proj[a['project']], 'users': users}))
'''
        arg = json.dumps({
            'url': self.keystone_url, 'pw': self.password,
            'project': PROJECT, 'service_users': SERVICE_USERS,
            'people': {'admin': ['admin', 'member'],
                       OPERATOR: ['member', 'migration_operator',
                                  'cross_cloud_operator'],
                       MEMBER: ['member']},
            'endpoints': [
                ('compute', 'nova', self.url('nova', '/v2.1')),
                ('placement', 'placement', self.url('placement')),
                ('image', 'glance', self.url('glance')),
                ('network', 'neutron', self.url('neutron')),
            ]})
        try:
            out = output([os.path.join(BIN, 'python'), '-c', script, arg])
        except CloudError as e:
            raise CloudError('keystone accounts: %s; log %s'
                             % (e, log_path('keystone')))
        self.ids.update(json.loads(out))
        # The plugin's own accounts step (roles, the secmig service user).
        env = self.plugin_env('cloud-a')
        env.update(self.admin_env(system=True))
        run('secmig-accounts', ['bash', CONFIGURE, 'accounts'], env=env)

    # nova services

    def nova_service(self, binary):
        proc = spawn(binary, [os.path.join(BIN, binary), '--config-file',
                              path('etc', 'nova', 'nova.conf'),
                              '--log-file', log_path(binary)],
                     log=log_path(binary + '.out'))
        self.procs[binary] = proc
        # Ready once its service record says it is up.
        wait_for(binary, lambda: self.service_up(binary), proc,
                 log=log_path(binary), fatal=' ERROR nova ')

    @staticmethod
    def nova_query(sql):
        """What ``sql`` prints in nova's database (tab-separated rows)."""
        return output(['mariadb', '--no-defaults', '--socket=%s'
                       % path('data', 'mysql.sock'), '-u', 'root', '-N',
                       '-e', sql, 'nova'])

    def compute_node(self, host):
        """Whether ``host`` registered its compute node, named as itself.

        nova names the node after libvirt's hostname, which libvirt
        canonicalises through the host's /etc/hosts; a node of another
        name would collide in placement with that host's.
        """
        out = self.nova_query("SELECT hypervisor_hostname FROM "
                              "compute_nodes WHERE host='%s' AND deleted=0"
                              % host)
        nodes = out.split()
        if nodes and nodes != [host]:
            raise CloudError('nova-compute on %s registered the node(s) %s, '
                             'not %s: check that host\'s /etc/hosts (%s)'
                             % (host, ', '.join(nodes), host,
                                path('lab', 'etc-hosts')))
        return bool(nodes)

    def service_up(self, binary, host=None, since=None):
        """Whether nova has a recent heartbeat of ``binary`` (on ``host``).

        Recent: less than 60 s old and, with ``since``, newer than that
        UTC time.
        """
        sql = ("SELECT host FROM services WHERE `binary`='%s' AND deleted=0 "
               "AND TIMESTAMPDIFF(SECOND, COALESCE(updated_at, created_at), "
               "UTC_TIMESTAMP()) < 60" % binary)
        if since:
            sql += " AND COALESCE(updated_at, created_at) > '%s'" % since
        hosts = self.nova_query(sql).split()
        return bool(hosts) if host is None else host in hosts

    def compute(self, name, since=None):
        conf = path('etc', 'nova-cpu-%s.conf' % name)
        env = self.lab_env()
        env['PATH'] = BIN + ':' + env.get('PATH', '')
        proc = spawn('nova-compute-%s' % name, self.in_host(
            name, [os.path.join(BIN, 'nova-compute'), '--config-file',
                   conf]), env=env,
            log=log_path('nova-compute-%s.out' % name))
        self.procs['nova-compute-%s' % name] = proc
        wait_for('nova-compute %s' % name,
                 lambda: self.service_up('nova-compute', 'lab-%s' % name,
                                         since)
                 and self.compute_node('lab-%s' % name),
                 proc, log=log_path('nova-compute-%s' % name),
                 fatal=' ERROR nova ')

    def discover_hosts(self):
        want = {'lab-%s' % n for n in HOSTS}

        def mapped():
            self.nova_manage('cell_v2', 'discover_hosts')
            out = output([os.path.join(BIN, 'nova-manage'), '--config-file',
                          path('etc', 'nova', 'nova.conf'), 'cell_v2',
                          'list_hosts'])
            return want <= set(out.split())
        wait_for('nova-manage cell_v2 discover_hosts', mapped,
                 log=log_path('nova-manage'))

    # secmig brokers

    def brokers(self):
        clouds = sorted(set(HOSTS.values()))
        for cloud in clouds:
            run('secmig-configure', ['bash', CONFIGURE, 'broker'],
                env=self.plugin_env(cloud))
        for cloud in clouds:
            name = 'secmig-broker-%s' % cloud
            log = log_path(name)
            proc = spawn(name, [os.path.join(BIN, 'secmig-broker'),
                                '--config-file',
                                path('secmig', cloud, 'broker.conf'),
                                '--log-file', log],
                         log=log_path(name + '.out'))
            self.procs[name] = proc
        for cloud in clouds:
            name = 'secmig-broker-%s' % cloud
            log = log_path(name)
            wait_for(name, lambda: 'serving topic' in tail(log, 100000),
                     self.procs[name])

    # images and flavor

    def images(self):
        wait_for('glance', lambda: http_ok(self.ports['glance']))
        ids = {}
        for name, fmt, file in (('secmig-guest-kernel', 'aki', self.kernel),
                                ('secmig-guest-ramdisk', 'ari',
                                 self.ramdisk)):
            ids[fmt] = self.osc('image', 'create', '--file', file,
                                '--disk-format', fmt, '--container-format',
                                fmt, '--public', name, '-f', 'value', '-c',
                                'id').strip()
        root = path('data', 'guest-root.raw')
        with open(root, 'wb') as f:
            f.truncate(1024 * 1024)
        self.ids['image'] = self.osc(
            'image', 'create', '--file', root, '--disk-format', 'raw',
            '--container-format', 'bare', '--public',
            '--property', 'kernel_id=%s' % ids['aki'],
            '--property', 'ramdisk_id=%s' % ids['ari'],
            '--property', 'os_command_line=console=ttyS0 '
            'secmig.marker=%s' % MARKER,
            IMAGE, '-f', 'value', '-c', 'id').strip()

    def flavor(self):
        self.osc('--os-compute-api-version', '2.86', 'flavor', 'create',
                 '--ram', '256', '--disk', '1', '--vcpus', '1',
                 '--property', 'secmig:enforcement=required', FLAVOR)

    def write_env(self):
        lines = {
            'SECMIG_CLOUD_DIR': STATE, 'SECMIG_CLOUD_VENV': VENV,
            'OS_AUTH_URL': self.keystone_url, 'OS_PASSWORD': self.password,
            'OS_USER_DOMAIN_NAME': 'Default',
            'OS_PROJECT_DOMAIN_NAME': 'Default',
            'OS_IDENTITY_API_VERSION': '3', 'OS_REGION_NAME': 'RegionOne',
            'SECMIG_CLOUD_ADMIN': 'admin', 'SECMIG_CLOUD_ADMIN_PROJECT':
                'admin',
            'SECMIG_CLOUD_PROJECT': PROJECT,
            'SECMIG_CLOUD_OPERATOR': OPERATOR,
            'SECMIG_CLOUD_MEMBER': MEMBER,
            'SECMIG_CLOUD_FLAVOR': FLAVOR, 'SECMIG_CLOUD_IMAGE': IMAGE,
            'SECMIG_CLOUD_HOSTS': ' '.join('lab-%s' % h for h in HOSTS),
            'SECMIG_CLOUD_LAB_DIR': path('lab'),
            'SECMIG_CLOUD_PORTS': json.dumps(self.ports),
            'SECMIG_CLOUD_MARKER': MARKER,
        }
        for name, cloud in HOSTS.items():
            lines['SECMIG_CLOUD_TRUST_lab_%s' % name.replace('-', '_')] = \
                cloud
        for cloud, (low, high) in TUNNEL_PORTS.items():
            lines['SECMIG_CLOUD_TUNNEL_PORTS_%s' % cloud.replace('-', '_')] \
                = '%d-%d' % (low, high)
        write(path('cloud.env'), ''.join(
            "%s='%s'\n" % (k, v) for k, v in lines.items()), 0o600)

    # -- down ---------------------------------------------------------------

    def down(self):
        t0 = time.monotonic()
        computes = [n for n in self.pid_names()
                    if n.startswith('nova-compute')]
        if computes:
            self.parallel(*[('stop %s' % n, stop, n) for n in computes])
        if os.path.isdir(path('lab', 'hosts')):
            self.step('stop lab hosts', run, 'lab-hosts',
                      ['bash', HOSTS_SH, 'stop'] +
                      sorted(os.listdir(path('lab', 'hosts'))), self.lab_env())
        rest = [n for n in self.pid_names()
                if n not in ('rabbitmq', 'mariadb')]
        if rest:
            self.parallel(*[('stop %s' % n, stop, n) for n in rest])
        if recorded('rabbitmq') and self.ports:
            self.rabbitctl('stop', timeout=60)
        for name in ('rabbitmq', 'mariadb'):
            if os.path.exists(path('pids', name)):
                self.step('stop %s' % name, stop, name)
        for sub in ('data', 'lab', 'secmig', 'etc', 'pids', 'cloud.env',
                    'secret'):
            p = path(sub)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
        say('cloud down in %.1f s (logs kept in %s)'
            % (time.monotonic() - t0, path('logs')))

    # -- restart-compute ------------------------------------------------------

    def restart_compute(self, name, enforcement=None, driver=None):
        """Restart one host's nova-compute, optionally in another mode.

        ``enforcement`` rewrites that host's ``[secmig] enforcement`` first,
        ``driver`` its ``[DEFAULT] compute_driver`` (the tests make a host
        "without secmig" with ``disabled`` or ``libvirt.LibvirtDriver``).
        Waits until nova sees the service up again, as ``up`` does, and
        until placement shows the trait the host now offers (or not).
        """
        if name not in HOSTS:
            raise CloudError('no host %r (hosts: %s)'
                             % (name, ', '.join(HOSTS)))
        if recorded('nova-compute-%s' % name) is None:
            raise CloudError('nova-compute-%s is not running: is the cloud '
                             'up? (tools/cloud/cloud.sh status)' % name)
        conf = path('etc', 'nova-cpu-%s.conf' % name)
        parser = configparser.RawConfigParser(strict=False)
        parser.optionxform = str
        parser.read(conf)
        if not parser.has_section('secmig'):
            parser.add_section('secmig')
        if enforcement is not None:
            parser.set('secmig', 'enforcement', enforcement)
        if driver is not None:
            parser.set('DEFAULT', 'compute_driver', driver)
        if enforcement is not None or driver is not None:
            with open(conf, 'w') as f:
                parser.write(f)
        t0 = time.monotonic()
        stop('nova-compute-%s' % name)
        # Up again means a heartbeat newer than the old process's last.
        since = self.nova_query('SELECT UTC_TIMESTAMP()').strip()
        self.compute(name, since=since)
        if enforcement is not None or driver is not None:
            # The other host decides from placement: wait until the node's
            # trait says what the host now offers.
            offers = (parser.get('DEFAULT', 'compute_driver',
                                 fallback='') == SECURE_DRIVER and
                      parser.get('secmig', 'enforcement',
                                 fallback='required') != 'disabled')
            rp = self.osc('resource', 'provider', 'list', '--name',
                          'lab-%s' % name, '-f', 'value', '-c',
                          'uuid').strip()
            wait_for('placement trait %s of lab-%s' % (SECMIG_TRAIT, name),
                     lambda: (SECMIG_TRAIT in self.osc(
                         '--os-placement-api-version', '1.6', 'resource',
                         'provider', 'trait', 'list', rp, '-f', 'value',
                         '-c', 'name').split()) == offers,
                     log=log_path('nova-compute-%s' % name))
        changed = ', '.join(
            '%s = %s' % (key, value) for key, value in (
                ('compute_driver', driver), ('enforcement', enforcement))
            if value)
        say('nova-compute-%s restarted%s in %.1f s'
            % (name, ' (%s)' % changed if changed else '',
               time.monotonic() - t0))

    # -- status -------------------------------------------------------------

    def status(self):
        names = self.pid_names()
        if not names:
            say('no cloud running from %s' % STATE)
            return 1
        rc = 0
        for name in names:
            pid = recorded(name)
            say('%-26s %s' % (name, 'up (pid %d)' % pid if pid
                              else 'DOWN (log %s)' % log_path(name)))
            rc |= pid is None
        if os.path.isdir(path('lab', 'hosts')):
            res = subprocess.run(['bash', HOSTS_SH, 'status'] +
                                 sorted(os.listdir(path('lab', 'hosts'))),
                                 env=self.lab_env(), capture_output=True,
                                 text=True)
            for line in res.stdout.splitlines():
                say(line)
            rc |= res.returncode != 0
        return rc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command', choices=('up', 'down', 'status',
                                            'restart-compute'))
    parser.add_argument('host', nargs='?',
                        help='restart-compute: the lab host (%s)'
                        % ', '.join(HOSTS))
    parser.add_argument('--compute-driver',
                        help='restart-compute: set [DEFAULT] compute_driver '
                        'in the host\'s nova-cpu conf first (e.g. '
                        'libvirt.LibvirtDriver, %s)' % SECURE_DRIVER)
    parser.add_argument('--secmig-enforcement',
                        choices=('disabled', 'preferred', 'required'),
                        help='restart-compute: set [secmig] enforcement '
                        'in the host\'s nova-cpu conf first')
    args = parser.parse_args()
    if args.command == 'restart-compute' and not args.host:
        parser.error('restart-compute needs a host')
    if os.geteuid() != 0:
        sys.exit('cloud: must run as root (lab hosts, libvirt)')
    cloud = Cloud()
    os.makedirs(STATE, exist_ok=True)
    try:
        if args.command == 'up':
            cloud.up()
        elif args.command == 'down':
            cloud.down()
        elif args.command == 'restart-compute':
            cloud.restart_compute(args.host, args.secmig_enforcement,
                                  args.compute_driver)
        else:
            return cloud.status()
    except (CloudError, OSError, subprocess.SubprocessError) as e:
        say('FAILED: %s' % e)
        if args.command == 'up' and cloud.procs:
            say('the services started so far keep running for debugging; '
                'tools/cloud/cloud.sh down stops them')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
