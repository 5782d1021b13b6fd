"""The real-libvirt lab from Python: hosts, the tiny guest, migrations.

Tests (tests/functional/lab), the demo and CI drive the lab through this
module; the shell scripts next to it do the system work (install.sh,
hosts.sh, guest.sh) so a person can run the same steps by hand.

    from tools.lab import lab
    with lab.Lab.temporary() as the_lab:        # or lab.Lab() for .lab/
        a, b = the_lab.host('a'), the_lab.host('b')
        the_lab.start_guest(a, 'g1')
        the_lab.wait_heartbeat(a, 'g1')
        result = the_lab.migrate_secure(a, b, 'g1')

Each host is a mount + UTS namespace with its own libvirtd (see hosts.sh).
Tunnel processes run inside a host's namespaces through
``Host.prefix`` (``nsenter -t PID -m -u``), so ``/run/secmig/<id>.sock``
is that host's own socket, as on separate machines. Everything talks over
loopback or UNIX sockets.
"""

import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509 import oid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from secmig_nova.authz import policies  # noqa: E402
from secmig_nova.authz import tokens  # noqa: E402
from secmig_nova.trust import ca  # noqa: E402
from secmig_nova.trust import certs  # noqa: E402
from secmig_nova.tunnel import process  # noqa: E402
from secmig_nova.virt import migration  # noqa: E402

HOSTS_SH = os.path.join(HERE, 'hosts.sh')
GUEST_SH = os.path.join(HERE, 'guest.sh')
INSTALL_SH = os.path.join(HERE, 'install.sh')
DEFAULT_DIR = os.path.join(REPO, '.lab')
# [secmig] socket_dir: the same path on every host, a private directory on
# each (hosts.sh creates it).
SOCKET_DIR = '/run/secmig'
# The guest's default marker (guest.sh DEFAULT_MARKER).
MARKER = 'SECMIG-LAB-MARKER-7d1f0c2a9e'
# secmig.hog_mib of the "dirtying memory hard" guest (guest.sh).
HARD_HOG_MIB = 64
# Where each host's QEMU finds its native-TLS migration credentials
# (hosts.sh: migrate_tls_x509_cert_dir in the host's qemu.conf).
QEMU_TLS_DIR = '/etc/libvirt/migrate-tls'
TUNNEL_MODULE = 'secmig_nova.cmd.tunnel'
HEARTBEAT_RE = re.compile(rb'SECMIG-HEARTBEAT (\d+) ')
BOOTED = b'SECMIG-LAB-BOOTED'
# Inside path -> directory under hosts/<name>/ (hosts.sh PRIVATE_DIRS).
PRIVATE_DIRS = (('/run', 'run'), ('/etc/libvirt', 'etc'),
                ('/var/lib/libvirt', 'lib'), ('/var/log/libvirt', 'log'),
                ('/var/cache/libvirt', 'cache'))
MIB = 1 << 20
# Upper bounds of waits on events, for a busy machine: a tunnel process
# printing its ready line, a libvirt host answering (hosts.sh), tcpdump
# listening. Each wait ends at its event.
READY_TIMEOUT = 120
HOST_START_TIMEOUT = 180
CAPTURE_START_TIMEOUT = 60


_QUIET = False


class LabError(Exception):
    """The lab could not do what was asked; the message says why."""


def _libvirt():
    try:
        import libvirt
    except ImportError as e:
        raise LabError('libvirt-python is not installed (%s): run '
                       'tools/lab/install.sh --venv .venv' % e)
    global _QUIET
    if not _QUIET:
        # Errors surface as libvirtError; the default handler would also
        # print every expected "domain not found" to stderr.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _QUIET = True
    return libvirt


def _run(argv, env=None, timeout=300):
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError('%s: %s' % (' '.join(argv), e))
    if proc.returncode != 0:
        raise LabError('%s failed (exit %d):\n%s%s'
                       % (' '.join(argv), proc.returncode, proc.stdout,
                          proc.stderr))
    return proc.stdout


def _mnt_ns(pid):
    return os.readlink('/proc/%d/ns/mnt' % pid)


class Host:
    """One lab host: its namespace holder, libvirtd and private dirs."""

    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.dir = os.path.join(lab.root, 'hosts', name)
        self.hostname = 'lab-%s' % name
        self._conn = None

    def __repr__(self):
        return '<Host %s>' % self.name

    @property
    def pid(self):
        return int(_run([HOSTS_SH, 'pid', self.name], env=self.lab.env))

    @property
    def uri(self):
        return 'qemu+unix:///system?socket=%s' % self.outside(
            '/run/libvirt/libvirt-sock')

    @property
    def host_uuid(self):
        with open(os.path.join(self.dir, 'host_uuid')) as f:
            return f.read().strip()

    @property
    def prefix(self):
        """argv prefix that runs a command inside this host."""
        return ['nsenter', '-t', str(self.pid), '-m', '-u', '--']

    def outside(self, path):
        """Where a path inside this host is seen from outside it."""
        for inside, sub in PRIVATE_DIRS:
            if path == inside or path.startswith(inside + '/'):
                return os.path.join(self.dir, sub) + path[len(inside):]
        return path

    def run(self, argv, **kwargs):
        """subprocess.run of argv inside this host's namespaces."""
        kwargs.setdefault('capture_output', True)
        kwargs.setdefault('text', True)
        return subprocess.run(self.prefix + list(argv), **kwargs)

    def conn(self):
        if self._conn is None:
            self._conn = _libvirt().open(self.uri)
        return self._conn

    def close(self):
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def domain(self, name):
        """The domain, or None if this host does not have it."""
        libvirt = _libvirt()
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    @property
    def mnt_ns(self):
        """The host's mount namespace (``mnt:[inode]``)."""
        return _mnt_ns(self.pid)

    def serial_log(self, guest):
        return self.outside('/var/log/libvirt/qemu/%s.serial.log' % guest)

    def processes(self, needle):
        """pids in this host's mount namespace whose argv has needle."""
        ns = self.mnt_ns
        pids = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                if _mnt_ns(int(entry)) != ns:
                    continue
                with open('/proc/%s/cmdline' % entry, 'rb') as f:
                    argv = f.read().split(b'\0')
            except OSError:
                continue
            if any(needle.encode() in arg for arg in argv):
                pids.append(int(entry))
        return sorted(pids)

    def tunnel_pids(self):
        """secmig-tunnel processes running inside this host."""
        return self.processes(TUNNEL_MODULE)

    def socket_files(self):
        """What is left in this host's /run/secmig (the socket_dir)."""
        try:
            return sorted(os.listdir(self.outside(SOCKET_DIR)))
        except FileNotFoundError:
            return []

    def migration_ports(self):
        """(min, max) of the plain migration ports (hosts.sh qemu.conf)."""
        with open(os.path.join(self.dir, 'etc', 'qemu.conf')) as f:
            conf = f.read()
        found = dict(re.findall(r'^migration_port_(min|max) = (\d+)$',
                                conf, re.M))
        return int(found['min']), int(found['max'])


class LabPki:
    """One cloud per lab host (cloud ``lab-<name>``): CA, host, broker.

    Grants are minted the way the destination cloud's broker would; the
    broker issue replaces this with the real broker.
    """

    def __init__(self, root):
        self.root = root
        self._creds = {}

    def _cloud(self, name):
        cloud_dir = os.path.join(self.root, name)
        cad = ca.CADirectory(os.path.join(cloud_dir, 'ca'))
        if not cad.exists():
            cad.init('lab-%s' % name)
            cad.issue('host', 'lab-%s' % name, out_dir=cloud_dir)
            cad.issue('broker', 'broker-%s' % name, out_dir=cloud_dir)
        return cloud_dir, cad

    def host_files(self, name):
        cloud_dir, _ = self._cloud(name)
        return (os.path.join(cloud_dir, 'lab-%s.crt' % name),
                os.path.join(cloud_dir, 'lab-%s.key' % name))

    def trust(self, name):
        _, cad = self._cloud(name)
        return {'cloud_id': 'lab-%s' % name, 'ca_file': cad.ca_file}

    def credentials(self, name, role='host'):
        key = (name, role)
        if key not in self._creds:
            cloud_dir, _ = self._cloud(name)
            base = 'lab-%s' % name if role == 'host' else 'broker-%s' % name
            self._creds[key] = certs.Credentials.load(
                os.path.join(cloud_dir, base + '.crt'),
                os.path.join(cloud_dir, base + '.key'))
        return self._creds[key]

    def other_host(self, name, hostname):
        """Credentials of another host of cloud ``lab-<name>``.

        E.g. ``other_host('b', 'lab-c')``: a host the destination cloud's
        broker could grant a migration to, that is not the lab's host b.
        """
        cloud_dir, cad = self._cloud(name)
        cert = os.path.join(cloud_dir, '%s.crt' % hostname)
        key = os.path.join(cloud_dir, '%s.key' % hostname)
        if not os.path.exists(cert):
            cad.issue('host', hostname, out_dir=cloud_dir)
        return certs.Credentials.load(cert, key)

    def grant(self, src, dst, endpoint, migration_id, instance_uuid,
              streams, dst_host=None, dst_fingerprint=None):
        """The grant dst's broker would mint for a migration src -> dst.

        ``dst_host``/``dst_fingerprint`` name another destination host
        than dst's own (the refusal tests).
        """
        return tokens.issue_grant(
            self.credentials(dst, 'broker'), migration_id=migration_id,
            instance_uuid=instance_uuid, src_cloud='lab-%s' % src,
            src_host='lab-%s' % src,
            src_fingerprint=self.credentials(src).fingerprint,
            dst_host=dst_host or 'lab-%s' % dst,
            dst_fingerprint=(dst_fingerprint
                             or self.credentials(dst).fingerprint),
            dst_endpoint=endpoint, streams=streams)

    def broker_files(self, name):
        cloud_dir, _ = self._cloud(name)
        return (os.path.join(cloud_dir, 'broker-%s.crt' % name),
                os.path.join(cloud_dir, 'broker-%s.key' % name))

    def role_file(self, roles=None):
        """secmig-migrate's local role file: who may migrate what.

        Default: user ``operator`` on project ``lab`` holds the roles a
        cross-cloud migration needs; ``auditor`` only reads.
        """
        path = os.path.join(self.root, 'roles.json')
        if roles is None:
            roles = {'operator': {'lab': [policies.ROLE_MIGRATION_OPERATOR,
                                          policies.ROLE_CROSS_CLOUD_OPERATOR]},
                     'auditor': {'lab': ['reader']}}
        doc = {'users': {user: {'projects': projects}
                         for user, projects in roles.items()}}
        os.makedirs(self.root, exist_ok=True)
        with open(path + '.tmp', 'w') as f:
            json.dump(doc, f, indent=1)
        os.chmod(path + '.tmp', 0o600)
        os.replace(path + '.tmp', path)
        return path

    # -- QEMU native TLS (VIR_MIGRATE_TLS), the benchmark's baseline --------

    def _qemu_ca(self):
        path = os.path.join(self.root, 'qemu-tls')
        ca_crt = os.path.join(path, 'ca-cert.pem')
        ca_key = os.path.join(path, 'ca-key.pem')
        if not os.path.exists(ca_crt):
            os.makedirs(path, mode=0o700, exist_ok=True)
            cert, key = _x509_cert('secmig lab QEMU migration CA', ca=True)
            _write_pem(ca_key, key, private=True)
            _write_pem(ca_crt, cert)
        with open(ca_crt, 'rb') as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(ca_key, 'rb') as f:
            key = serialization.load_pem_private_key(f.read(), None)
        return cert, key

    def qemu_tls(self, out_dir, hostname):
        """Write QEMU's x509 migration credentials for one host.

        One lab CA for every host (QEMU's TLS needs a CA both sides
        trust); ``server-cert.pem`` names ``hostname``, ``localhost`` and
        127.0.0.1 (the address the source QEMU connects to and verifies),
        ``client-cert.pem`` is the host as a migration source. Idempotent.
        """
        names = ('ca-cert.pem', 'server-cert.pem', 'server-key.pem',
                 'client-cert.pem', 'client-key.pem')
        if all(os.path.exists(os.path.join(out_dir, n)) for n in names):
            return out_dir
        ca_cert, ca_key = self._qemu_ca()
        os.makedirs(out_dir, exist_ok=True)
        for role in ('server', 'client'):
            cert, key = _x509_cert('%s migration %s' % (hostname, role),
                                   issuer=(ca_cert, ca_key), role=role,
                                   dns=[hostname, 'localhost'],
                                   ips=['127.0.0.1'])
            _write_pem(os.path.join(out_dir, '%s-key.pem' % role), key,
                       private=True)
            _write_pem(os.path.join(out_dir, '%s-cert.pem' % role), cert)
        _write_pem(os.path.join(out_dir, 'ca-cert.pem'), ca_cert)
        return out_dir


def _x509_cert(cn, issuer=None, ca=False, role=None, dns=(), ips=()):
    """An RSA certificate as QEMU's x509 credentials check it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, cn)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                              critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=not ca, content_commitment=False,
                   key_encipherment=not ca, data_encipherment=False,
                   key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                   encipher_only=False, decipher_only=False), critical=True))
    if role:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [oid.ExtendedKeyUsageOID.SERVER_AUTH if role == 'server'
             else oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    alt = [x509.DNSName(n) for n in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write_pem(path, obj, private=False):
    if private:
        data = obj.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    else:
        data = obj.public_bytes(serialization.Encoding.PEM)
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600 if private else 0o644)
    with os.fdopen(fd, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


class Migration:
    """What one migration did: timings, libvirt's job stats, tunnels."""

    def __init__(self, kind, guest, src, dst, migrate_uri):
        self.kind = kind
        self.guest = guest
        self.src = src
        self.dst = dst
        self.migrate_uri = migrate_uri
        self.migration_id = None
        self.seconds = None
        self.started = None     # time.monotonic() around migrateToURI3
        self.ended = None
        self.setup_seconds = None   # tunnels and grant, before libvirt
        self.job = {}
        self.error = None       # what migrateToURI3 raised (check=False)
        self.tunnels = {}       # side -> (returncode, outcome)
        self.tunnel_ns = {}     # side -> mount namespace the tunnel ran in
        self.tunnel_stderr = {}
        self.procs = {}         # side -> TunnelProcess
        self.ready = {}         # side -> the tunnel's ready event
        self.terminated = []    # sides the lab had to stop (SIGTERM)
        self.stale_sockets = []  # socket files the lab removed afterwards
        self.during_error = None  # what the ``during`` callback raised

    @property
    def bytes(self):
        """Bytes QEMU sent (tunnel count for secure, libvirt's otherwise)."""
        if self.tunnels:
            _, outcome = self.tunnels.get('source', (None, None))
            return sum(c.get('src_to_dst', {}).get('bytes', 0)
                       for c in (outcome or {}).get('connections', []))
        return self.job.get('data_processed')

    def summary(self):
        return {'kind': self.kind, 'guest': self.guest,
                'src': self.src.name, 'dst': self.dst.name,
                'migration_id': self.migration_id,
                'migrate_uri': self.migrate_uri,
                'seconds': (None if self.seconds is None
                            else round(self.seconds, 3)),
                'bytes': self.bytes,
                'downtime_ms': self.job.get('downtime'),
                'job_ms': self.job.get('time_elapsed'),
                'error': None if self.error is None else str(self.error),
                'tunnels': {side: out and out.get('status')
                            for side, (_, out) in self.tunnels.items()}}


class Lab:
    """Hosts, guest image, PKI under one state directory.

    :param root: state directory (default ``$SECMIG_LAB_DIR`` or
        ``<repo>/.lab``, the scripts' default, so by-hand and Python use
        share hosts).
    :param hosts: host names.
    :param remove: delete ``root`` on teardown (``Lab.temporary``).
    """

    def __init__(self, root=None, hosts=('a', 'b'), remove=False):
        self.root = os.path.abspath(
            root or os.environ.get('SECMIG_LAB_DIR') or DEFAULT_DIR)
        self.names = tuple(hosts)
        self.remove = remove
        self.env = dict(os.environ, SECMIG_LAB_DIR=self.root)
        self.env.setdefault('SECMIG_LAB_START_TIMEOUT',
                            str(HOST_START_TIMEOUT))
        # One guest image for every lab state directory.
        self.env.setdefault('SECMIG_LAB_GUEST_DIR',
                            os.path.join(DEFAULT_DIR, 'guest'))
        self.guest_dir = self.env['SECMIG_LAB_GUEST_DIR']
        self.hosts = {name: Host(self, name) for name in self.names}
        self.pki = LabPki(os.path.join(self.root, 'pki'))
        self.timings = {}
        self._tunnels = []
        # Host name -> process.SpareTunnels, when tunnel_spares is set (the
        # driver's default, [secmig] tunnel_spare): a tunnel process per
        # host started ahead, as nova-compute keeps one.
        self.tunnel_spares = False
        self._spares = {}

    @classmethod
    def temporary(cls, hosts=('a', 'b')):
        """A lab in a fresh ``.lab/runs/<id>`` removed on teardown.

        Runs whose owning process is gone (a killed test run) are stopped
        and removed first.
        """
        runs = os.path.join(DEFAULT_DIR, 'runs')
        os.makedirs(runs, exist_ok=True)
        cls.sweep(runs)
        root = tempfile.mkdtemp(prefix='', dir=runs)
        with open(os.path.join(root, 'owner.pid'), 'w') as f:
            f.write('%d\n' % os.getpid())
        return cls(root, hosts=hosts, remove=True)

    @classmethod
    def sweep(cls, runs):
        for entry in os.listdir(runs):
            root = os.path.join(runs, entry)
            try:
                with open(os.path.join(root, 'owner.pid')) as f:
                    owner = int(f.read())
            except (OSError, ValueError):
                continue
            if owner != os.getpid() and os.path.exists('/proc/%d' % owner):
                continue
            with contextlib.suppress(LabError):
                _run([HOSTS_SH, 'stop'],
                     env=dict(os.environ, SECMIG_LAB_DIR=root))
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.teardown()

    def host(self, name):
        return self.hosts[name]

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """Build the guest, start the hosts (idempotent); raises LabError."""
        if shutil.which('libvirtd') is None:
            raise LabError('libvirtd is not installed: run '
                           'tools/install-deps.sh (tools/lab/install.sh)')
        _libvirt()
        t0 = time.monotonic()
        _run([GUEST_SH, 'build'], env=self.env, timeout=900)
        t1 = time.monotonic()
        _run([HOSTS_SH, 'start'] + list(self.names), env=self.env,
             timeout=len(self.names) * HOST_START_TIMEOUT + 60)
        t2 = time.monotonic()
        self.timings.update(guest_build=t1 - t0, hosts_start=t2 - t1)
        return self

    def status(self):
        return _run([HOSTS_SH, 'status'] + list(self.names), env=self.env)

    def teardown(self):
        """Stop tunnels, guests and hosts; remove a temporary root."""
        for tunnel in self._tunnels:
            with contextlib.suppress(Exception):
                tunnel.kill()
        self._tunnels = []
        for spares in self._spares.values():
            with contextlib.suppress(Exception):
                spares.close()
        self._spares = {}
        for host in self.hosts.values():
            host.close()
        try:
            _run([HOSTS_SH, 'stop'] + list(self.names), env=self.env)
        finally:
            if self.remove and not os.environ.get('SECMIG_LAB_KEEP'):
                shutil.rmtree(self.root, ignore_errors=True)

    # -- guests ------------------------------------------------------------

    def guest_xml(self, name, memory_mib=256, marker=MARKER, dirty_kib=1024,
                  period=0.5, hog_mib=0):
        """The guest's domain XML (see guest.sh for the knobs).

        :param hog_mib: the "dirtying memory hard" mode: a loop in the
            guest rewrites this many MiB without pause (HARD_HOG_MIB).
        """
        # The uncompressed ELF kernel boots through PVH (guest.sh).
        kernel = os.path.join(self.guest_dir, 'vmlinux')
        initrd = os.path.join(self.guest_dir, 'initrd.gz')
        cmdline = ('console=ttyS0 quiet panic=-1 secmig.marker=%s '
                   'secmig.dirty_kib=%d secmig.period=%s'
                   % (marker, dirty_kib, period))
        if hog_mib:
            cmdline += ' secmig.hog_mib=%d' % hog_mib
        serial = '/var/log/libvirt/qemu/%s.serial.log' % name
        return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'>
      <source path='{serial}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""

    def start_guest(self, host, name, **kwargs):
        """Create (transient) and start the guest on host; returns it."""
        for other in self.hosts.values():
            if other.domain(name) is not None:
                raise LabError('guest %s already runs on %s'
                               % (name, other.name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(host.serial_log(name))
        return host.conn().createXML(self.guest_xml(name, **kwargs), 0)

    def destroy_guest(self, name):
        """Destroy the guest wherever it runs (no error if it does not)."""
        libvirt = _libvirt()
        for host in self.hosts.values():
            dom = host.domain(name)
            if dom is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()

    def serial(self, host, name):
        try:
            with open(host.serial_log(name), 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return b''

    def heartbeats(self, host, name, since=0):
        """The heartbeat counters in host's serial log of the guest.

        :param since: byte offset in the log to start at (its length
            before a migration, to see only what came after it).
        """
        return [int(m) for m in
                HEARTBEAT_RE.findall(self.serial(host, name)[since:])]

    def wait_heartbeat(self, host, name, above=0, timeout=60.0, since=0):
        """Wait until host's serial log shows a counter > above."""
        deadline = time.monotonic() + timeout
        while True:
            beats = self.heartbeats(host, name, since)
            if beats and beats[-1] > above:
                return beats[-1]
            if time.monotonic() > deadline:
                tail = self.serial(host, name)[-1500:].decode('ascii',
                                                              'replace')
                raise LabError('no heartbeat above %d from %s on %s within '
                               '%ss; serial log ends with:\n%s'
                               % (above, name, host.name, timeout, tail))
            time.sleep(0.2)

    def memory_dump(self, host, name):
        """The guest's RAM now (a live, memory-only ELF core dump)."""
        libvirt = _libvirt()
        inside = '/var/lib/libvirt/qemu/%s.%s.dump' % (name,
                                                       uuid.uuid4().hex[:8])
        host.domain(name).coreDumpWithFormat(
            inside, libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
            libvirt.VIR_DUMP_LIVE | libvirt.VIR_DUMP_MEMORY_ONLY)
        path = host.outside(inside)
        try:
            with open(path, 'rb') as f:
                return f.read()
        finally:
            os.unlink(path)

    # -- migrations --------------------------------------------------------

    def _flags(self, parallel=0):
        libvirt = _libvirt()
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        if parallel and parallel > 1:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
        return flags

    def _job_stats(self, host, name):
        libvirt = _libvirt()
        dom = host.domain(name)
        if dom is None:
            return {}
        with contextlib.suppress(libvirt.libvirtError):
            return dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return {}

    def _migrate(self, dom, dst, params, flags, result, timeout,
                 during=None):
        """migrateToURI3 with a watchdog; fills result.seconds and job.

        ``during(result)`` runs in a thread while libvirt migrates. After
        ``timeout`` seconds the job is aborted (libvirt then raises).
        """
        watchdog = threading.Timer(timeout, _abort_job, args=(dom,))
        watchdog.daemon = True
        helper = None
        if during is not None:
            helper = threading.Thread(target=_call_logged,
                                      args=(during, result), daemon=True)
        watchdog.start()
        result.started = time.monotonic()
        try:
            if helper is not None:
                helper.start()
            dom.migrateToURI3(dst.uri, params, flags)
        finally:
            result.ended = time.monotonic()
            result.seconds = result.ended - result.started
            watchdog.cancel()
            if helper is not None:
                helper.join(timeout)
        result.job = self._job_stats(dst, result.guest)

    def migrate_plain(self, src, dst, name, timeout=300, tls=False,
                      parallel=0):
        """Plain libvirt p2p live migration over loopback TCP (baseline).

        ``tls=True``: QEMU's native TLS (VIR_MIGRATE_TLS) with the lab's
        x509 credentials in each host's ``QEMU_TLS_DIR``; same transport
        and ports otherwise.
        """
        libvirt = _libvirt()
        uri = 'tcp://127.0.0.1'
        result = Migration('tls' if tls else 'plain', name, src, dst, uri)
        dom = src.domain(name)
        if dom is None:
            raise LabError('guest %s is not on %s' % (name, src.name))
        params = {libvirt.VIR_MIGRATE_PARAM_URI: uri,
                  libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: '127.0.0.1'}
        flags = self._flags(parallel)
        if parallel and parallel > 1:
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = parallel
        if tls:
            for host in (src, dst):
                self.pki.qemu_tls(host.outside(QEMU_TLS_DIR), host.hostname)
            flags |= libvirt.VIR_MIGRATE_TLS
        self._migrate(dom, dst, params, flags, result, timeout)
        return result

    def migrate_tls(self, src, dst, name, timeout=300, parallel=0):
        """QEMU native TLS migration (VIR_MIGRATE_TLS); see migrate_plain."""
        return self.migrate_plain(src, dst, name, timeout=timeout, tls=True,
                                  parallel=parallel)

    def tunnel(self, host, params, env=None):
        """Start a secmig-tunnel process inside host's namespaces.

        With ``tunnel_spares`` (and no ``env``), the host's spare takes the
        parameters if it is ready.
        """
        if self.tunnel_spares and env is None:
            tunnel = self.spares(host)(params)
        else:
            tunnel = process.TunnelProcess(params, prefix=host.prefix,
                                           env=env)
        self._tunnels.append(tunnel)
        return tunnel

    def spares(self, host):
        """The host's SpareTunnels, its spare started (tunnel_spares)."""
        if host.name not in self._spares:
            self._spares[host.name] = process.SpareTunnels(
                prefix=host.prefix)
        spares = self._spares[host.name]
        spares.prepare()
        return spares

    def wait_spares(self, timeout=READY_TIMEOUT):
        """Wait until every host's spare has loaded (tunnel_spares)."""
        for name in self.names:
            self.spares(self.hosts[name]).wait_loaded(timeout)

    def tunnel_params(self, side, host, peer, migration_id, sockets,
                      **extra):
        cert, key = self.pki.host_files(host.name)
        own = self.pki.trust(host.name)
        params = dict(side=side, migration_id=migration_id,
                      cloud_id=own['cloud_id'], ca_file=own['ca_file'],
                      cert_file=cert, key_file=key,
                      peer=self.pki.trust(peer.name), sockets=sockets)
        params.update(extra)
        return params

    def migrate_secure(self, src, dst, name, migration_id=None,
                       timeout=300, tunnel_timeout=120, check=True,
                       destination_params=None, source_params=None,
                       on_destination_ready=None, grant=None, during=None,
                       bandwidth_mib=None, parallel=0, before_migrate=None):
        """Live-migrate through a source and a destination secmig-tunnel.

        The destination tunnel runs in dst's namespaces and connects to
        ``/run/secmig/<id>.sock`` there, where dst's QEMU listens; the
        source tunnel runs in src's namespaces and listens on the same
        path there, which src's libvirt gets as the migrate URI
        (VIR_MIGRATE_PARAM_MIGRATE_URI, libvirt's UNIX transport).

        For the failure tests:

        :param check: if False, a failed migration does not raise: the
            result has ``error`` (what libvirt raised) and the tunnels'
            own outcomes (each tunnel gets ``tunnel_timeout`` seconds to
            end by itself before it is stopped and listed in
            ``terminated``).
        :param destination_params, source_params: extra tunnel parameters
            (e.g. ``advertise_endpoint``).
        :param on_destination_ready: ``f(result, ready)`` once the
            destination tunnel listens, before the grant is minted
            (``ready['bound']`` is where it listens).
        :param grant: ``f(result, endpoint, instance_uuid, streams)``
            returning the grant the source tunnel gets (default: the one
            dst's broker would mint for this migration).
        :param during: ``f(result)`` run in a thread while libvirt
            migrates (``result.procs`` has both TunnelProcess objects).
        :param before_migrate: ``f(result)`` once both tunnels are ready,
            right before libvirt is asked to migrate (e.g. to start two
            migrations together).
        :param bandwidth_mib: QEMU's migration bandwidth cap in MiB/s
            (VIR_MIGRATE_PARAM_BANDWIDTH; default: libvirt's, unlimited).
        :param parallel: QEMU multifd channels (VIR_MIGRATE_PARALLEL): the
            main channel and ``parallel`` data channels, each its own
            tunnel connection.

        Socket files a dead tunnel left in ``/run/secmig`` are removed
        afterwards, as the compute driver's cleanup would, and listed in
        ``result.stale_sockets``.
        """
        libvirt = _libvirt()
        migration_id = migration_id or 'lab-%s' % uuid.uuid4().hex[:12]
        # The driver's and secmig-migrate's names and parameters.
        sock = migration.socket_path(SOCKET_DIR, migration_id)
        uri = migration.unix_uri(sock)
        result = Migration('secure', name, src, dst, uri)
        result.migration_id = migration_id
        dom = src.domain(name)
        if dom is None:
            raise LabError('guest %s is not on %s' % (name, src.name))
        streams = migration.stream_counts(parallel=parallel)
        t0 = time.monotonic()
        dst_tunnel = self.tunnel(dst, self.tunnel_params(
            'destination', dst, src, migration_id, {'memory': sock},
            expect_connections=streams, **(destination_params or {})))
        result.procs['destination'] = dst_tunnel
        src_tunnel = None
        migrated = False
        try:
            ready = dst_tunnel.wait_ready(READY_TIMEOUT)
            result.ready['destination'] = ready
            endpoint = ready['endpoint']
            result.tunnel_ns['destination'] = _mnt_ns(dst_tunnel.pid)
            if on_destination_ready is not None:
                on_destination_ready(result, ready)
            if grant is None:
                token = self.pki.grant(src.name, dst.name, endpoint,
                                       migration_id, dom.UUIDString(),
                                       streams)
            else:
                token = grant(result, endpoint, dom.UUIDString(), streams)
            src_tunnel = self.tunnel(src, self.tunnel_params(
                'source', src, dst, migration_id, {'memory': sock},
                grant=token, expect_connections=streams,
                **(source_params or {})))
            result.procs['source'] = src_tunnel
            result.ready['source'] = src_tunnel.wait_ready(READY_TIMEOUT)
            result.tunnel_ns['source'] = _mnt_ns(src_tunnel.pid)
            result.setup_seconds = time.monotonic() - t0
            if before_migrate is not None:
                before_migrate(result)
            params = migration.libvirt_params(uri, bandwidth=bandwidth_mib,
                                              parallel=parallel)
            try:
                self._migrate(dom, dst, params, self._flags(parallel), result,
                              timeout, during)
                migrated = True
            except libvirt.libvirtError as e:
                if check:
                    raise
                result.error = e
            for side, tunnel in (('source', src_tunnel),
                                 ('destination', dst_tunnel)):
                try:
                    result.tunnels[side] = tunnel.wait(tunnel_timeout)
                except process.TunnelProcessError:
                    if migrated:
                        raise
                    result.terminated.append(side)
                    result.tunnels[side] = tunnel.terminate(10)
        except BaseException as e:
            for side, tunnel in (('source', src_tunnel),
                                 ('destination', dst_tunnel)):
                if tunnel is not None and side not in result.tunnels:
                    result.tunnels[side] = tunnel.terminate(10)
            if isinstance(e, Exception):
                error = LabError(
                    'secure migration %s of %s %s->%s failed: %s\n'
                    'tunnels: %s\nstderr: %s'
                    % (migration_id, name, src.name, dst.name, e,
                       json.dumps(result.tunnels)[-3000:],
                       self._stderr(src_tunnel, dst_tunnel)))
                error.result = result
                raise error
            raise
        finally:
            for side, tunnel in (('source', src_tunnel),
                                 ('destination', dst_tunnel)):
                if tunnel is not None:
                    result.tunnel_stderr[side] = tunnel.stderr
                    with contextlib.suppress(ValueError):
                        self._tunnels.remove(tunnel)
            if self.tunnel_spares:
                # The next spares start now, after the migration (as the
                # driver does), not while the guest needs the CPU.
                for host in (src, dst):
                    self.spares(host)
            for host in (src, dst):
                path = host.outside(sock)
                if os.path.lexists(path) and not migration.accepting(path):
                    os.unlink(path)
                    result.stale_sockets.append('%s:%s' % (host.name, sock))
        return result

    # -- secmig-migrate: the path the driver takes ---------------------------

    def migrate_conf(self, src, dst, path=None, roles=None, hosts=None,
                     **options):
        """Write a secmig-migrate configuration for src -> dst.

        Embedded brokers of clouds ``lab-<src>`` and ``lab-<dst>`` with
        the lab's broker certificates, roles from :meth:`LabPki.role_file`,
        each host's tunnel run inside it (``exec_prefix``).
        ``options``: ``[secmig_migrate]`` values (replacing these);
        ``hosts``: ``{host name: {option: value}}`` for the host groups.
        """
        path = path or os.path.join(self.root, 'migrate-%s-%s.conf'
                                    % (src.name, dst.name))
        values = {'broker': 'embedded',
                  'role_file': self.pki.role_file(roles),
                  'user_id': 'operator', 'project_id': 'lab',
                  'state_dir': os.path.join(self.root, 'migrate')}
        values.update(options)
        lines = ['[secmig_migrate]']
        lines += ['%s = %s' % kv for kv in sorted(values.items())]
        for group, host in (('secmig_migrate_source', src),
                            ('secmig_migrate_destination', dst)):
            cert, key = self.pki.host_files(host.name)
            bcert, bkey = self.pki.broker_files(host.name)
            lines += ['', '[%s]' % group, 'libvirt_uri = %s' % host.uri,
                      'cloud_id = lab-%s' % host.name,
                      'cert_file = %s' % cert, 'key_file = %s' % key,
                      'ca_file = %s' % self.pki.trust(host.name)['ca_file'],
                      'socket_dir = %s' % SOCKET_DIR,
                      'exec_prefix = %s' % ','.join(host.prefix),
                      'broker_cert_file = %s' % bcert,
                      'broker_key_file = %s' % bkey]
            lines += ['%s = %s' % kv for kv in sorted(
                (hosts or {}).get(host.name, {}).items())]
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        return path

    def migrate_cli(self, src, dst, name, args=(), json_output=True,
                    timeout=600, conf=None, **options):
        """Run ``secmig-migrate`` src -> dst; ``(returncode, summary, err)``.

        ``summary`` is the parsed ``--json`` output (or the text output
        with ``json_output=False``).
        """
        conf = conf or self.migrate_conf(src, dst, **options)
        argv = [sys.executable, '-m', 'secmig_nova.cmd.migrate',
                '--config-file', conf] + list(args)
        if json_output:
            argv.append('--json')
        argv.append(name)
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        summary = proc.stdout
        if json_output:
            try:
                summary = json.loads(proc.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise LabError('secmig-migrate printed no JSON summary '
                               '(rc %d): %s\n%s' % (proc.returncode,
                                                    proc.stdout[-2000:],
                                                    proc.stderr[-3000:]))
        return proc.returncode, summary, proc.stderr

    # -- packet capture -------------------------------------------------------

    def capture(self, ports, name='capture'):
        """Start tcpdump on ``lo`` for TCP ``ports``; returns a Capture."""
        path = os.path.join(self.root, '%s-%s.pcap'
                            % (name, uuid.uuid4().hex[:8]))
        return Capture(path, ports).start()

    @staticmethod
    def _stderr(*tunnels):
        return '\n'.join(t.stderr[-1500:] for t in tunnels if t is not None)


def _abort_job(dom):
    with contextlib.suppress(Exception):   # the job may have ended
        dom.abortJob()


def _call_logged(func, result):
    try:
        func(result)
    except Exception as e:  # noqa: the caller checks result.during_error
        result.during_error = e


class Capture:
    """tcpdump on the loopback interface for some TCP ports.

    ``ports``: port numbers and ``(low, high)`` ranges (or ``bpf``, a
    tcpdump filter). Every hop of the lab's migrations is on ``lo`` (one
    network namespace), so this sees exactly what a wire tap between the
    hosts would.
    """

    def __init__(self, path, ports, bpf=None):
        self.path = path
        parts = []
        for p in ports:
            if isinstance(p, (tuple, list)):
                parts.append('tcp portrange %d-%d' % tuple(p))
            else:
                parts.append('tcp port %d' % p)
        # ``bpf``: a whole tcpdump filter instead of the ports.
        self.filter = bpf or ' or '.join(parts)
        self.proc = None
        self.stats = {}
        self._err = []
        self._ready = threading.Event()

    def start(self, timeout=CAPTURE_START_TIMEOUT):
        if shutil.which('tcpdump') is None:
            raise LabError('tcpdump is not installed: run '
                           'tools/lab/install.sh')
        # -U: write each packet at once; -B: a 256 MiB kernel buffer,
        # more than a whole lab migration (about 80 MiB plain, 230 MiB for
        # the hard guest), so that a tcpdump starved of CPU on a busy
        # machine still drops nothing (64 MiB dropped 1038 packets of a
        # plain migration beside two CPU hogs); -Z root: the file stays
        # root's.
        self.proc = subprocess.Popen(
            ['tcpdump', '-i', 'lo', '-n', '-U', '-B', '262144', '-s', '0',
             '-Z', 'root', '-w', self.path, self.filter],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_err, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise LabError('tcpdump did not start: %s' % ''.join(self._err))
        return self

    def _read_err(self):
        for line in self.proc.stderr:
            self._err.append(line)
            if 'listening on' in line:
                self._ready.set()
        self._ready.set()

    def stop(self, settle=1.0, timeout=60):
        """Stop tcpdump; returns its counters (captured, dropped...).

        First let it catch up: with ``-U`` each packet is written as it is
        read, so the file not growing for ``settle`` seconds (at most
        ``timeout``) means tcpdump has read what the kernel held for it,
        even when it runs behind on a busy machine.
        """
        if self.proc.poll() is None:
            self._wait_settled(settle, timeout)
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        text = ''.join(self._err)
        for m in re.finditer(r'(\d+) packets? (captured|received by filter|'
                             r'dropped by kernel)', text):
            self.stats[m.group(2).replace(' ', '_')] = int(m.group(1))
        return self.stats

    def _wait_settled(self, settle, timeout):
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                now_size = os.path.getsize(self.path)
            except OSError:
                now_size = -1
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= settle:
                return
            time.sleep(0.1)

    @property
    def stderr(self):
        return ''.join(self._err)

    def read(self):
        with open(self.path, 'rb') as f:
            return f.read()

    def streams(self):
        """TCP payload per direction: {(src, sport, dst, dport): bytes}.

        Reassembled by sequence number, so a string cut across two
        packets is found too.
        """
        return tcp_streams(self.read())

    def remove(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def tcp_streams(pcap):
    """Reassemble the TCP payload of a pcap file, per direction."""
    magic = pcap[:4]
    if magic in (b'\xd4\xc3\xb2\xa1', b'\x4d\x3c\xb2\xa1'):
        endian = '<'
    elif magic in (b'\xa1\xb2\xc3\xd4', b'\xa1\xb2\x3c\x4d'):
        endian = '>'
    else:
        raise LabError('not a pcap file')
    linktype = struct.unpack(endian + 'I', pcap[20:24])[0]
    link_len = {1: 14, 113: 16}.get(linktype)
    if link_len is None:
        raise LabError('unsupported pcap link type %d' % linktype)
    segments = {}
    off = 24
    view = memoryview(pcap)
    while off + 16 <= len(pcap):
        incl = struct.unpack(endian + 'I', pcap[off + 8:off + 12])[0]
        pkt = view[off + 16:off + 16 + incl]
        off += 16 + incl
        ethertype = struct.unpack('>H', pkt[link_len - 2:link_len])[0]
        ip = pkt[link_len:]
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 6:
            ihl = (ip[0] & 0x0f) * 4
            total = struct.unpack('>H', ip[2:4])[0]
            src, dst = bytes(ip[12:16]), bytes(ip[16:20])
            tcp = ip[ihl:total]
        elif ethertype == 0x86dd and len(ip) >= 40 and ip[6] == 6:
            plen = struct.unpack('>H', ip[4:6])[0]
            src, dst = bytes(ip[8:24]), bytes(ip[24:40])
            tcp = ip[40:40 + plen]
        else:
            continue
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack('>HHI', tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if not len(payload):
            continue
        key = (str(ipaddress.ip_address(src)), sport,
               str(ipaddress.ip_address(dst)), dport)
        segments.setdefault(key, []).append((seq, bytes(payload)))
    streams = {}
    for key, segs in segments.items():
        base = segs[0][0]
        out = bytearray()
        for rel, data in sorted(((seq - base) % (1 << 32), data)
                                for seq, data in segs):
            if rel + len(data) <= len(out):
                continue            # a retransmission
            out += data[max(0, len(out) - rel):]
        streams[key] = bytes(out)
    return streams


def _say(text=''):
    print(text, flush=True)


def _demo_move(the_lab, src, dst, name, progress):
    """One secmig-migrate run src -> dst, its output on this terminal."""
    mark = len(the_lab.serial(dst, name))
    conf = os.path.relpath(the_lab.migrate_conf(src, dst))
    migration_id = str(uuid.uuid4())
    argv = ['--config-file', conf, '--migration-id', migration_id,
            '--progress' if progress else '--noprogress', name]
    _say('$ secmig-migrate %s' % ' '.join(argv))
    rc = subprocess.call([sys.executable, '-m', 'secmig_nova.cmd.migrate']
                         + argv, env=the_lab.env)
    if rc != 0:
        raise LabError('secmig-migrate %s -> %s exited %d'
                       % (src.name, dst.name, rc))
    if dst.domain(name) is None or src.domain(name) is not None:
        raise LabError('%s is not running on %s alone' % (name, dst.name))
    before = the_lab.heartbeats(src, name)[-1]
    the_lab.wait_heartbeat(dst, name, since=mark)
    first = the_lab.heartbeats(dst, name, since=mark)[0]
    newer = the_lab.wait_heartbeat(dst, name, above=first, since=mark)
    if BOOTED in the_lab.serial(dst, name)[mark:] or first > before + 2:
        raise LabError('%s did not continue on %s: last heartbeat #%d on '
                       '%s, first #%d' % (name, dst.name, before, src.name,
                                          first))
    _say('guest %s: last heartbeat on %s #%d, first on %s #%d, now #%d '
         '(no reboot)' % (name, src.hostname, before, dst.hostname, first,
                          newer))
    return os.path.join(the_lab.root, 'migrate', 'receipts',
                        '%s.json' % migration_id)


def demo(the_lab, progress):
    """README command 1: a running guest moved A -> B -> A securely."""
    a, b = the_lab.host('a'), the_lab.host('b')
    _say('== two libvirt hosts on this machine (own mount/UTS namespaces)')
    for host in (a, b):
        _say('%s: libvirtd %s, %s' % (host.hostname, host.uri,
                                      host.conn().getHostname()))
    the_lab.destroy_guest('demo')
    the_lab.start_guest(a, 'demo')
    beat = the_lab.wait_heartbeat(a, 'demo', above=1)
    _say('guest demo booted on %s, heartbeat #%d (serial log %s)'
         % (a.hostname, beat, os.path.relpath(a.serial_log('demo'))))
    files = []
    for src, dst in ((a, b), (b, a)):
        _say()
        _say('== secure live migration %s -> %s' % (src.hostname,
                                                    dst.hostname))
        files.append(_demo_move(the_lab, src, dst, 'demo', progress))
    _say()
    _say('== both receipts of each migration, verified offline')
    cas = []
    for name in the_lab.names:
        trust = the_lab.pki.trust(name)
        cas += ['--ca', '%s=%s' % (trust['cloud_id'], trust['ca_file'])]
    for path in files:
        argv = ['secmig-nova-manage', 'receipts', 'verify',
                os.path.relpath(path)] + cas
        _say('$ ' + ' '.join(argv))
        proc = subprocess.run([sys.executable, '-m',
                               'secmig_nova.cmd.manage'] + argv[1:],
                              capture_output=True, text=True)
        _say(proc.stdout.rstrip())
        if proc.returncode != 0:
            raise LabError('receipts of %s do not verify: %s'
                           % (path, proc.stderr))
    the_lab.destroy_guest('demo')
    _say()
    _say('demo complete: the guest moved %s -> %s -> %s through the secmig '
         'tunnel, its heartbeat continued, every receipt verified'
         % (a.hostname, b.hostname, a.hostname))


def compare(the_lab, rounds):
    """Plain and secure round trips, one JSON line each (timings)."""
    a, b = the_lab.host('a'), the_lab.host('b')
    the_lab.destroy_guest('demo')
    the_lab.start_guest(a, 'demo')
    the_lab.wait_heartbeat(a, 'demo')
    for _ in range(rounds):
        for migrate in (the_lab.migrate_plain, the_lab.migrate_secure):
            for src, dst in ((a, b), (b, a)):
                result = migrate(src, dst, 'demo')
                before = the_lab.heartbeats(src, 'demo')[-1]
                beat = the_lab.wait_heartbeat(dst, 'demo', above=before)
                print(json.dumps(dict(result.summary(),
                                      heartbeat=[before, beat])))
    the_lab.destroy_guest('demo')


def main(argv=None):
    """``python tools/lab/lab.py demo|compare [--keep]`` (README.md)."""
    import argparse
    parser = argparse.ArgumentParser(description='secmig-nova lab')
    parser.add_argument('command', choices=('demo', 'compare'),
                        help='demo: secmig-migrate A -> B -> A with '
                             'receipts verified; compare: plain and '
                             'secure round trips as JSON lines')
    parser.add_argument('--keep', action='store_true',
                        help='use .lab/ and leave the hosts running')
    parser.add_argument('--rounds', type=int, default=1,
                        help='compare: round trips of each kind')
    parser.add_argument('--progress', action='store_true', default=None,
                        help='progress bar (default: on a terminal)')
    args = parser.parse_args(argv)
    the_lab = Lab() if args.keep else Lab.temporary()
    try:
        t0 = time.monotonic()
        the_lab.start()
        _say('lab up in %.1f s (state in %s)'
             % (time.monotonic() - t0, os.path.relpath(the_lab.root)))
        if args.command == 'demo':
            progress = sys.stdout.isatty() if args.progress is None \
                else args.progress
            demo(the_lab, progress)
        else:
            compare(the_lab, args.rounds)
    finally:
        if not args.keep:
            the_lab.teardown()


if __name__ == '__main__':
    main()
