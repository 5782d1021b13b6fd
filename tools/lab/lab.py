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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from secmig_nova.authz import tokens  # noqa: E402
from secmig_nova.trust import ca  # noqa: E402
from secmig_nova.trust import certs  # noqa: E402
from secmig_nova.tunnel import process  # noqa: E402

HOSTS_SH = os.path.join(HERE, 'hosts.sh')
GUEST_SH = os.path.join(HERE, 'guest.sh')
INSTALL_SH = os.path.join(HERE, 'install.sh')
DEFAULT_DIR = os.path.join(REPO, '.lab')
# [secmig] socket_dir: the same path on every host, a private directory on
# each (hosts.sh creates it).
SOCKET_DIR = '/run/secmig'
# The guest's default marker (guest.sh DEFAULT_MARKER).
MARKER = 'SECMIG-LAB-MARKER-7d1f0c2a9e'
HEARTBEAT_RE = re.compile(rb'SECMIG-HEARTBEAT (\d+) ')
BOOTED = b'SECMIG-LAB-BOOTED'
# Inside path -> directory under hosts/<name>/ (hosts.sh PRIVATE_DIRS).
PRIVATE_DIRS = (('/run', 'run'), ('/etc/libvirt', 'etc'),
                ('/var/lib/libvirt', 'lib'), ('/var/log/libvirt', 'log'),
                ('/var/cache/libvirt', 'cache'))
MIB = 1 << 20


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

    def grant(self, src, dst, endpoint, migration_id, instance_uuid,
              streams):
        return tokens.issue_grant(
            self.credentials(dst, 'broker'), migration_id=migration_id,
            instance_uuid=instance_uuid, src_cloud='lab-%s' % src,
            src_host='lab-%s' % src,
            src_fingerprint=self.credentials(src).fingerprint,
            dst_host='lab-%s' % dst,
            dst_fingerprint=self.credentials(dst).fingerprint,
            dst_endpoint=endpoint, streams=streams)


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
        self.job = {}
        self.tunnels = {}       # side -> (returncode, outcome)
        self.tunnel_ns = {}     # side -> mount namespace the tunnel ran in
        self.tunnel_stderr = {}

    @property
    def bytes(self):
        """Bytes QEMU sent (tunnel count for secure, libvirt's otherwise)."""
        if self.tunnels:
            _, outcome = self.tunnels.get('source', (None, None))
            return sum(c['src_to_dst']['bytes']
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
        # One guest image for every lab state directory.
        self.env.setdefault('SECMIG_LAB_GUEST_DIR',
                            os.path.join(DEFAULT_DIR, 'guest'))
        self.guest_dir = self.env['SECMIG_LAB_GUEST_DIR']
        self.hosts = {name: Host(self, name) for name in self.names}
        self.pki = LabPki(os.path.join(self.root, 'pki'))
        self.timings = {}
        self._tunnels = []

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
        _run([HOSTS_SH, 'start'] + list(self.names), env=self.env)
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
        for host in self.hosts.values():
            host.close()
        try:
            _run([HOSTS_SH, 'stop'] + list(self.names), env=self.env)
        finally:
            if self.remove and not os.environ.get('SECMIG_LAB_KEEP'):
                shutil.rmtree(self.root, ignore_errors=True)

    # -- guests ------------------------------------------------------------

    def guest_xml(self, name, memory_mib=256, marker=MARKER, dirty_kib=1024,
                  period=0.5):
        # The uncompressed ELF kernel boots through PVH (guest.sh).
        kernel = os.path.join(self.guest_dir, 'vmlinux')
        initrd = os.path.join(self.guest_dir, 'initrd.gz')
        cmdline = ('console=ttyS0 quiet panic=-1 secmig.marker=%s '
                   'secmig.dirty_kib=%d secmig.period=%s'
                   % (marker, dirty_kib, period))
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

    def _flags(self):
        libvirt = _libvirt()
        return libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER

    def _job_stats(self, host, name):
        libvirt = _libvirt()
        dom = host.domain(name)
        if dom is None:
            return {}
        with contextlib.suppress(libvirt.libvirtError):
            return dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return {}

    def migrate_plain(self, src, dst, name, timeout=300):
        """Plain libvirt p2p live migration over loopback TCP (baseline)."""
        libvirt = _libvirt()
        uri = 'tcp://127.0.0.1'
        result = Migration('plain', name, src, dst, uri)
        dom = src.domain(name)
        if dom is None:
            raise LabError('guest %s is not on %s' % (name, src.name))
        params = {libvirt.VIR_MIGRATE_PARAM_URI: uri,
                  libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: '127.0.0.1'}
        t0 = time.monotonic()
        dom.migrateToURI3(dst.uri, params, self._flags())
        result.seconds = time.monotonic() - t0
        result.job = self._job_stats(dst, name)
        return result

    def tunnel(self, host, params, env=None):
        """Start a secmig-tunnel process inside host's namespaces."""
        tunnel = process.TunnelProcess(params, prefix=host.prefix, env=env)
        self._tunnels.append(tunnel)
        return tunnel

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
                       timeout=300, tunnel_timeout=60):
        """Live-migrate through a source and a destination secmig-tunnel.

        The destination tunnel runs in dst's namespaces and connects to
        ``/run/secmig/<id>.sock`` there, where dst's QEMU listens; the
        source tunnel runs in src's namespaces and listens on the same
        path there, which src's libvirt gets as the migrate URI
        (VIR_MIGRATE_PARAM_MIGRATE_URI, libvirt's UNIX transport).
        """
        libvirt = _libvirt()
        migration_id = migration_id or 'lab-%s' % uuid.uuid4().hex[:12]
        sock = '%s/%s.sock' % (SOCKET_DIR, migration_id)
        uri = 'unix://%s' % sock
        result = Migration('secure', name, src, dst, uri)
        result.migration_id = migration_id
        dom = src.domain(name)
        if dom is None:
            raise LabError('guest %s is not on %s' % (name, src.name))
        streams = {'memory': 1}
        dst_tunnel = self.tunnel(dst, self.tunnel_params(
            'destination', dst, src, migration_id, {'memory': sock},
            expect_connections=streams))
        src_tunnel = None
        try:
            endpoint = dst_tunnel.wait_ready()['endpoint']
            result.tunnel_ns['destination'] = _mnt_ns(dst_tunnel.pid)
            grant = self.pki.grant(src.name, dst.name, endpoint,
                                   migration_id, dom.UUIDString(), streams)
            src_tunnel = self.tunnel(src, self.tunnel_params(
                'source', src, dst, migration_id, {'memory': sock},
                grant=grant, expect_connections=streams))
            src_tunnel.wait_ready()
            result.tunnel_ns['source'] = _mnt_ns(src_tunnel.pid)
            params = {libvirt.VIR_MIGRATE_PARAM_URI: uri}
            t0 = time.monotonic()
            dom.migrateToURI3(dst.uri, params, self._flags())
            result.seconds = time.monotonic() - t0
            result.job = self._job_stats(dst, name)
            for side, tunnel in (('source', src_tunnel),
                                 ('destination', dst_tunnel)):
                result.tunnels[side] = tunnel.wait(tunnel_timeout)
        except BaseException as e:
            for side, tunnel in (('source', src_tunnel),
                                 ('destination', dst_tunnel)):
                if tunnel is not None:
                    result.tunnels.setdefault(side, tunnel.terminate(10))
            if isinstance(e, Exception):
                raise LabError('secure migration %s of %s %s->%s failed: '
                               '%s\ntunnels: %s\nstderr: %s'
                               % (migration_id, name, src.name, dst.name,
                                  e, json.dumps(result.tunnels)[-3000:],
                                  self._stderr(src_tunnel, dst_tunnel)))
            raise
        finally:
            for side, tunnel in (('source', src_tunnel),
                                 ('destination', dst_tunnel)):
                if tunnel is not None:
                    result.tunnel_stderr[side] = tunnel.stderr
                    with contextlib.suppress(ValueError):
                        self._tunnels.remove(tunnel)
        return result

    @staticmethod
    def _stderr(*tunnels):
        return '\n'.join(t.stderr[-1500:] for t in tunnels if t is not None)


def main(argv=None):
    """Try the lab by hand: boot, migrate plain and secure, print timings.

    ``python tools/lab/lab.py demo [--keep]`` (see tools/lab/README.md).
    """
    import argparse
    parser = argparse.ArgumentParser(description='secmig-nova lab demo')
    parser.add_argument('command', choices=('demo',))
    parser.add_argument('--keep', action='store_true',
                        help='use .lab/ and leave the hosts running')
    parser.add_argument('--rounds', type=int, default=1,
                        help='plain and secure round trips to time')
    args = parser.parse_args(argv)
    the_lab = Lab() if args.keep else Lab.temporary()
    try:
        the_lab.start()
        print(json.dumps({'step': 'start', **{
            k: round(v, 2) for k, v in the_lab.timings.items()}}))
        a, b = the_lab.host('a'), the_lab.host('b')
        the_lab.destroy_guest('demo')
        t0 = time.monotonic()
        the_lab.start_guest(a, 'demo')
        the_lab.wait_heartbeat(a, 'demo')
        print(json.dumps({'step': 'boot', 'host': 'a',
                          'first_heartbeat_s': round(time.monotonic() - t0,
                                                     2)}))
        for _ in range(args.rounds):
            for migrate in (the_lab.migrate_plain, the_lab.migrate_secure):
                for src, dst in ((a, b), (b, a)):
                    result = migrate(src, dst, 'demo')
                    before = the_lab.heartbeats(src, 'demo')[-1]
                    beat = the_lab.wait_heartbeat(dst, 'demo', above=before)
                    print(json.dumps(dict(result.summary(),
                                          heartbeat=[before, beat])))
        the_lab.destroy_guest('demo')
    finally:
        if not args.keep:
            the_lab.teardown()


if __name__ == '__main__':
    main()
