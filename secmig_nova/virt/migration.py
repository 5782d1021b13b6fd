"""One secure live migration, either side: broker, tunnel, receipts.

The compute driver (secmig_nova/virt/driver.py) and the standalone
``secmig-migrate`` CLI drive migrations through this module, so the order of
the steps and the clean-up on every path live in one place:

destination (:meth:`SecureMigration.prepare_destination`)
    start the destination tunnel (it listens on a port of the configured
    range), register it with this cloud's broker under the migration id;
    after libvirt finished, :meth:`IncomingMigration.finish` stops the
    tunnel, verifies both receipts of every connection and records them.

source (:meth:`SecureMigration.start_source`)
    ask the broker for a ticket (the caller's user and project; the broker
    pulls the roles from Keystone), then for the destination's grant; start
    the source tunnel listening on ``<socket_dir>/<migration-id>.sock`` (and
    ``<migration-id>-disk.sock``), which libvirt gets as ``migrate_uri`` /
    ``disks_uri`` (:func:`libvirt_params`); after libvirt finished,
    :meth:`OutgoingMigration.finish` collects the tunnel's outcome, verifies
    the receipts and records them.

Every refusal or failure is a :class:`SecureMigrationError` with a named
reason; whatever happens, tunnels are stopped (SIGTERM, then SIGKILL) and
their sockets removed. Nothing here imports nova.
"""

import dataclasses
import os
import socket
import stat
import threading
import time

from oslo_log import log as logging
import oslo_messaging as messaging

from secmig_nova.authz import tokens
from secmig_nova.broker import rpcapi
from secmig_nova.trust import certs
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store
from secmig_nova.tunnel import process

LOG = logging.getLogger(__name__)

SOURCE = 'source'
DESTINATION = 'destination'
MEMORY = 'memory'
DISK = 'disk'
MAX_CONNECTIONS = tokens.MAX_CONNECTIONS

# Outcome statuses (the tunnel's, and the broker's record_receipt).
COMPLETED = 'completed'
FAILED = 'failed'
ABORTED = 'aborted'

# libvirt's migrateToURI3 typed parameter names (VIR_MIGRATE_PARAM_*).
# Spelled out so this module works without libvirt-python.
PARAM_URI = 'migrate_uri'
PARAM_DISKS_URI = 'disks_uri'
PARAM_DEST_XML = 'destination_xml'
PARAM_PERSIST_XML = 'persistent_xml'
PARAM_MIGRATE_DISKS = 'migrate_disks'
PARAM_BANDWIDTH = 'bandwidth'
PARAM_PARALLEL_CONNECTIONS = 'parallel.connections'

# Seconds a stopped tunnel gets between SIGTERM and SIGKILL (its own
# termination grace plus a margin).
STOP_TIMEOUT = 15.0


class SecureMigrationError(Exception):
    """A secure migration was refused or failed; ``reason`` names why."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


def _config_error(message, *args):
    return SecureMigrationError('config_invalid', message % args)


# -- settings and identity --------------------------------------------------

@dataclasses.dataclass
class Settings:
    """The ``[secmig]`` values one host's migrations use."""

    cloud_id: str
    cert_file: str
    key_file: str
    ca_file: str
    crl_file: str = None
    socket_dir: str = '/run/secmig'
    grant_ledger_dir: str = '/var/lib/secmig/used-grants'
    tunnel_listen_address: str = '127.0.0.1'
    tunnel_port_min: int = 49400
    tunnel_port_max: int = 49499
    checkpoint_bytes: int = 64 * 1024 * 1024
    tls_cipher: str = 'aes-256-gcm'
    ecdh_curve: str = 'prime256v1'
    handshake_timeout: float = 10.0
    tunnel_max_preauth_connections: int = 32
    local_endpoint_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_clock_skew: float = 30.0
    tunnel_ready_timeout: float = 30.0
    tunnel_result_timeout: float = 60.0

    @classmethod
    def from_conf(cls, conf):
        return cls.from_group(conf.secmig)

    @classmethod
    def from_group(cls, group):
        """From ``[secmig]`` or a group with the same options."""
        return cls(**{f.name: getattr(group, f.name)
                      for f in dataclasses.fields(cls)})

    def tunables(self):
        """Tunnel parameters shared by both sides (params.py names)."""
        return {'checkpoint_bytes': self.checkpoint_bytes,
                'tls_cipher': self.tls_cipher,
                'ecdh_curve': self.ecdh_curve,
                'handshake_timeout': float(self.handshake_timeout),
                'max_preauth_connections':
                    int(self.tunnel_max_preauth_connections),
                'local_endpoint_timeout': float(self.local_endpoint_timeout),
                'idle_timeout': float(self.idle_timeout),
                'max_clock_skew': float(self.max_clock_skew),
                'grant_ledger_dir': self.grant_ledger_dir}


@dataclasses.dataclass
class HostIdentity:
    """This host's certificate, key and cloud trust store, verified."""

    cert_file: str
    key_file: str
    credentials: certs.Credentials
    store: trust_store.TrustStore

    @property
    def fingerprint(self):
        return self.credentials.fingerprint

    @property
    def name(self):
        return self.credentials.identity.name

    @property
    def cloud_id(self):
        return self.credentials.identity.cloud_id

    @classmethod
    def load(cls, settings, host=None, local=True):
        """Load and check everything; errors say what to change.

        :param host: this host's name as the peers and the broker know it
            (nova's ``[DEFAULT] host``); the certificate must carry it.
        :param local: this process runs on that host (its socket_dir is
            checked); ``secmig-migrate`` loads remote hosts with False.
        :raises SecureMigrationError: ``config_invalid``.
        """
        for opt in ('cert_file', 'key_file', 'ca_file'):
            path = getattr(settings, opt)
            if not path or not os.path.isfile(path):
                raise _config_error(
                    '[secmig] %s = %s is not a readable file; issue the '
                    'host certificate with "secmig-nova-manage ca issue host '
                    '%s" and point [secmig] cert_file, key_file and ca_file '
                    'at it', opt, path, host or '<host>')
        mode = stat.S_IMODE(os.stat(settings.key_file).st_mode)
        if mode & 0o077:
            raise _config_error(
                '[secmig] key_file %s has mode %04o: a private key must be '
                'readable by the nova-compute user only (chmod 600 it)',
                settings.key_file, mode)
        try:
            credentials = certs.Credentials.load(settings.cert_file,
                                                 settings.key_file)
        except (trust_errors.TrustError, OSError, ValueError) as e:
            raise _config_error('cannot load [secmig] cert_file %s with '
                                'key_file %s: %s', settings.cert_file,
                                settings.key_file, e)
        try:
            identity = credentials.identity
        except (trust_errors.TrustError, ValueError) as e:
            raise _config_error('[secmig] cert_file %s carries no secmig '
                                'identity: %s', settings.cert_file, e)
        if identity.role != 'host':
            raise _config_error(
                '[secmig] cert_file %s is %s, a %s certificate; compute '
                'hosts need a host certificate (secmig-nova-manage ca issue '
                'host)', settings.cert_file, identity.urn, identity.role)
        if identity.cloud_id != settings.cloud_id:
            raise _config_error(
                '[secmig] cert_file %s belongs to cloud %s but [secmig] '
                'cloud_id is %s; make them agree', settings.cert_file,
                identity.cloud_id, settings.cloud_id)
        if host is not None and identity.name != host:
            raise _config_error(
                '[secmig] cert_file %s names host %s but this host is %s '
                '(nova [DEFAULT] host); issue the host certificate for %s',
                settings.cert_file, identity.name, host, host)
        try:
            own = trust_store.TrustStore.load(settings.cloud_id,
                                              settings.ca_file,
                                              settings.crl_file)
            own.verify(credentials.chain, 'client', role='host')
        except trust_errors.TrustError as e:
            raise _config_error(
                '[secmig] cert_file %s is not valid for cloud %s with '
                '[secmig] ca_file %s%s: %s', settings.cert_file,
                settings.cloud_id, settings.ca_file,
                ' and crl_file %s' % settings.crl_file
                if settings.crl_file else '', e)
        if local:
            _check_socket_dir(settings.socket_dir)
        if settings.tunnel_port_min > settings.tunnel_port_max:
            raise _config_error('[secmig] tunnel_port_min %d is above '
                                'tunnel_port_max %d',
                                settings.tunnel_port_min,
                                settings.tunnel_port_max)
        return cls(settings.cert_file, settings.key_file, credentials, own)


def peer_stores_from_conf(conf):
    """``{cloud_id: TrustStore}`` of ``[secmig] peer_ca_files``."""
    stores = {}
    for cloud_id, ca_file in sorted((conf.secmig.peer_ca_files or {}).items()):
        if cloud_id == conf.secmig.cloud_id:
            raise _config_error('[secmig] peer_ca_files names this host\'s '
                                'own cloud %s', cloud_id)
        try:
            stores[cloud_id] = trust_store.TrustStore.load(cloud_id, ca_file)
        except (trust_errors.TrustError, OSError, ValueError) as e:
            raise _config_error('[secmig] peer_ca_files: cannot load the CA '
                                'bundle %s of cloud %s: %s', ca_file,
                                cloud_id, e)
    return stores


def _check_socket_dir(path):
    if not os.path.isdir(path):
        raise _config_error(
            '[secmig] socket_dir %s does not exist; create it (same path on '
            'every compute host, writable by nova-compute and readable by '
            'QEMU)', path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise _config_error('[secmig] socket_dir %s is not writable by '
                            'this process', path)


def host_client_from_conf(conf, credentials, group=None):
    """A :class:`~secmig_nova.broker.rpcapi.HostClient` for this host.

    The transport is ``[secmig] broker_transport_url`` (or that of
    ``group``, with the same options), or the service's own ``[DEFAULT]
    transport_url`` when unset.
    """
    group = group or conf.secmig
    transport = messaging.get_rpc_transport(
        conf, url=group.broker_transport_url or None)
    api = rpcapi.BrokerAPI(transport, topic=group.broker_topic,
                           version_cap=group.broker_version_cap,
                           timeout=group.broker_timeout)
    return rpcapi.HostClient(api, credentials)


# -- sockets, streams, libvirt parameters -----------------------------------

def socket_path(socket_dir, migration_id, kind=MEMORY):
    """The UNIX socket of one stream kind of a migration.

    The same path on both hosts: the source tunnel listens on it for QEMU,
    the destination QEMU listens on it for the destination tunnel.
    """
    if not migration_id or '/' in migration_id or migration_id[0] == '.':
        raise SecureMigrationError('bad_request', 'migration id %r cannot '
                                   'name a socket' % (migration_id,))
    suffix = '.sock' if kind == MEMORY else '-%s.sock' % kind
    return os.path.join(socket_dir, migration_id + suffix)


def unix_uri(path):
    """libvirt's UNIX transport URI for a socket path (libvirt >= 6.8)."""
    return 'unix://' + path


def stream_counts(parallel=0, disks=0):
    """Connections QEMU opens: ``{kind: n}``.

    With parallel connections (multifd) QEMU opens the main migration
    channel plus ``parallel`` data channels; block migration opens one NBD
    connection per copied disk.
    """
    memory = parallel + 1 if parallel and parallel > 1 else 1
    streams = {MEMORY: memory}
    if disks:
        streams[DISK] = disks
    _check_streams(streams)
    return streams


def _check_streams(streams):
    if not isinstance(streams, dict) or not streams or \
            not set(streams) <= {MEMORY, DISK} or \
            not all(isinstance(n, int) and 0 < n <= MAX_CONNECTIONS
                    for n in streams.values()):
        raise SecureMigrationError(
            'bad_request', 'streams must map memory/disk to 1..%d '
            'connections, not %r' % (MAX_CONNECTIONS, streams))


def libvirt_params(migrate_uri, disks_uri=None, destination_xml=None,
                   migrate_disks=None, bandwidth=0, parallel=0):
    """migrateToURI3 parameters of a migration through the tunnel.

    ``migrate_uri`` (and ``disks_uri`` for block migration) are the source
    tunnel's UNIX sockets, which nova's ``Guest.migrate`` cannot pass.
    """
    params = {PARAM_URI: migrate_uri}
    if bandwidth:
        params[PARAM_BANDWIDTH] = bandwidth
    if destination_xml:
        params[PARAM_DEST_XML] = destination_xml
        params[PARAM_PERSIST_XML] = destination_xml
    if migrate_disks:
        params[PARAM_MIGRATE_DISKS] = list(migrate_disks)
        if disks_uri:
            params[PARAM_DISKS_URI] = disks_uri
    if parallel and parallel > 1:
        params[PARAM_PARALLEL_CONNECTIONS] = parallel
    return params


def remove_socket(path):
    """Remove a stale UNIX socket (never a file of another type)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
            return True
    except FileNotFoundError:
        pass
    except OSError as e:
        LOG.warning('Could not remove socket %s: %s', path, e)
    return False


def accepting(path):
    """Whether something accepts connections on the UNIX socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def remove_stale_sockets(paths):
    """Remove sockets nobody listens on any more; return those removed.

    After a failed migration the destination QEMU is gone but (QEMU 7.2
    removes it only on success) its listening socket is left in
    ``socket_dir``. A socket something still accepts on is left alone.
    """
    removed = []
    for path in paths:
        if not os.path.lexists(path):
            continue
        if accepting(path):
            LOG.warning('Socket %s is still accepting connections; not '
                        'removing it', path)
        elif remove_socket(path):
            removed.append(path)
    return removed


# -- receipts ---------------------------------------------------------------

def verify_connections(outcome, migration_id, src_store, dst_store,
                       src_fingerprint=None, dst_fingerprint=None,
                       expected_streams=None, now=None):
    """Check a completed tunnel outcome; return its connections.

    For every connection: the source receipt verifies against the source
    cloud's trust store with the source host's pinned fingerprint, the
    destination receipt likewise for the destination, both name this
    migration, stream and connection, agree on the byte counts and digests
    of both directions, and the destination receipt references the source
    receipt. ``expected_streams`` (the grant's, on the source) must match
    the completed connections exactly.

    :raises SecureMigrationError: ``receipt_invalid`` or the tunnel's reason.
    """
    if not isinstance(outcome, dict):
        raise SecureMigrationError('tunnel_failed',
                                   'the tunnel reported no outcome')
    if outcome.get('status') != COMPLETED:
        raise SecureMigrationError(
            outcome.get('reason') or 'tunnel_failed',
            'the %s tunnel ended %s: %s'
            % (outcome.get('side', 'migration'), outcome.get('status'),
               outcome.get('message', '')))
    counts = {}
    verified = []
    for conn in outcome.get('connections') or []:
        label = '%s connection #%s' % (conn.get('kind'), conn.get('index'))
        if conn.get('status') != COMPLETED:
            raise SecureMigrationError(
                conn.get('reason') or 'tunnel_failed',
                '%s ended %s' % (label, conn.get('status')))
        src_fp = src_fingerprint or conn.get('src_fingerprint')
        dst_fp = dst_fingerprint or conn.get('dst_fingerprint')
        if conn.get('src_fingerprint') != src_fp or \
                conn.get('dst_fingerprint') != dst_fp:
            raise SecureMigrationError(
                'receipt_invalid', '%s ran between other hosts than the '
                'grant named' % label)
        src_token = conn.get('source_receipt')
        dst_token = conn.get('destination_receipt')
        try:
            src_claims, _ = tokens.verify_receipt(
                src_token, src_store, expected_fingerprint=src_fp, now=now)
            dst_claims, _ = tokens.verify_receipt(
                dst_token, dst_store, expected_fingerprint=dst_fp, now=now)
        except (tokens.TokenError, trust_errors.TrustError) as e:
            raise SecureMigrationError('receipt_invalid', '%s: %s'
                                       % (label, e))
        for role, claims in (('source', src_claims),
                             ('destination', dst_claims)):
            wanted = {'role': role, 'migration_id': migration_id,
                      'stream_kind': conn.get('kind'),
                      'connection_index': conn.get('index'),
                      'src_to_dst': conn.get('src_to_dst'),
                      'dst_to_src': conn.get('dst_to_src')}
            for name, value in wanted.items():
                if claims.get(name) != value:
                    raise SecureMigrationError(
                        'receipt_invalid', '%s: %s receipt says %s=%r, '
                        'expected %r' % (label, role, name, claims.get(name),
                                         value))
        if dst_claims.get('source_receipt_sha256') != \
                tokens.token_digest(src_token):
            raise SecureMigrationError(
                'receipt_invalid', '%s: the destination receipt does not '
                'reference the source receipt' % label)
        counts[conn['kind']] = counts.get(conn['kind'], 0) + 1
        verified.append(conn)
    if not verified:
        raise SecureMigrationError('receipt_invalid', 'the tunnel completed '
                                   'without any connection')
    if expected_streams is not None and counts != dict(expected_streams):
        raise SecureMigrationError(
            'receipt_invalid', 'connections %s completed, the grant allowed '
            '%s' % (counts, dict(expected_streams)))
    return verified


# -- tunnels ----------------------------------------------------------------

class Tunnel:
    """One tunnel process of one side of a migration, always cleaned up.

    :param factory: callable ``(params) -> TunnelProcess``-like object.
    :param sockets: socket paths this side's tunnel listens on, removed
        by ``cleaner`` (default :func:`remove_stale_sockets`) when the
        process ended without reporting an outcome (killed): a tunnel that
        reports one has removed them itself.
    """

    def __init__(self, side, migration_id, params, factory, sockets=(),
                 cleaner=None):
        self.side = side
        self.migration_id = migration_id
        self.params = params
        self.factory = factory
        self.sockets = tuple(sockets)
        self.cleaner = cleaner or remove_stale_sockets
        self.process = None
        self._replenished = False
        self.ended = False      # the process is gone (outcome or not)
        self.ready = None
        self.outcome = None

    def start(self, timeout):
        """Start the process and wait for its ready line."""
        try:
            self.process = self.factory(self.params)
            self.ready = self.process.wait_ready(timeout)
        except (process.TunnelProcessError, OSError) as e:
            outcome = getattr(e, 'outcome', None) or {}
            self.stop()
            raise SecureMigrationError(
                outcome.get('reason') or 'tunnel_failed',
                'the %s tunnel of migration %s did not start: %s'
                % (self.side, self.migration_id,
                   outcome.get('message') or e))
        return self.ready

    def result(self, timeout):
        """The outcome once the process ends by itself; stop it if not."""
        if self.process is None:
            return self.outcome
        try:
            _rc, outcome = self.process.wait(timeout)
        except process.TunnelProcessError:
            LOG.error('%s tunnel of migration %s still running after '
                      '%.0f s, stopping it', self.side, self.migration_id,
                      timeout)
            outcome = self.stop()
            return {'side': self.side, 'status': FAILED,
                    'reason': 'timeout',
                    'message': 'no outcome within %.0f s' % timeout,
                    'connections': (outcome or {}).get('connections', [])}
        self.outcome = outcome
        self.ended = True
        self._remove_sockets()
        self._replenish()
        return outcome

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, SIGKILL if it lingers; remove sockets. Idempotent."""
        try:
            if self.process is not None and not self.ended:
                try:
                    _rc, self.outcome = self.process.terminate(timeout)
                except Exception:  # noqa: must not mask the real error
                    LOG.exception('Stopping the %s tunnel of migration %s '
                                  'failed; killing it', self.side,
                                  self.migration_id)
                    try:
                        _rc, self.outcome = self.process.kill()
                    except Exception:  # noqa
                        LOG.exception('Killing the %s tunnel of migration '
                                      '%s failed', self.side,
                                      self.migration_id)
                self.ended = True
        finally:
            self._remove_sockets()
            self._replenish()
        return self.outcome

    def _replenish(self):
        """Let a factory that keeps a spare process start the next one.

        Now, after this migration, not during it (the CPU is the guest's).
        """
        replenish = getattr(self.factory, 'replenish', None)
        if replenish is None or self._replenished or not self.ended:
            return
        self._replenished = True
        try:
            replenish()
        except Exception:  # noqa: the next migration starts a fresh one
            LOG.exception('Could not start a spare tunnel process')

    def _remove_sockets(self):
        if not self.sockets or self.outcome is not None:
            return
        try:
            removed = self.cleaner(self.sockets)
        except Exception:  # noqa: clean-up must not mask the outcome
            LOG.exception('Could not remove the %s tunnel sockets %s of '
                          'migration %s', self.side, self.sockets,
                          self.migration_id)
            return
        if removed:
            LOG.info('Removed the sockets %s the %s tunnel of migration %s '
                     'left behind', ', '.join(removed), self.side,
                     self.migration_id)


@dataclasses.dataclass
class Result:
    """How one side of a migration ended, as recorded at the broker."""

    migration_id: str
    side: str
    status: str
    reason: str = None
    message: str = None
    connections: list = dataclasses.field(default_factory=list)
    recorded: bool = False

    @property
    def ok(self):
        return self.status == COMPLETED


class _Side:
    """What both sides share: recording the end at the broker, once."""

    side = None

    def __init__(self, owner, migration_id, instance_uuid, tunnel):
        self.owner = owner
        self.migration_id = migration_id
        self.instance_uuid = instance_uuid
        self.tunnel = tunnel
        self.result = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def _record(self, status, connections=(), reason=None):
        """Report the end to the broker, one connection per request.

        A connection's two receipts carry their signers' chains: about
        8 KB of envelope with one-certificate chains, up to about 20 KB
        with an intermediate CA; ``envelope.max_bytes('record_receipt')``
        (32 KiB) holds one connection's pair, not several. The first
        request sets the migration's final state; the others add receipts.
        """
        recorded = True
        for batch in [(conn,) for conn in connections] or [()]:
            try:
                self.owner.host_client.record_receipt(
                    self.migration_id, status, connections=batch,
                    reason=reason)
            except rpcapi.BrokerRefused as e:
                LOG.error('Migration %s: the broker did not record the %s '
                          'side\'s %s end: %s', self.migration_id, self.side,
                          status, e)
                recorded = False
        return recorded

    def _end(self, completed, reason, verify, cancelled=False):
        with self._lock:
            if self.result is not None:
                return self.result
            try:
                if completed:
                    outcome = self.tunnel.result(self._result_timeout())
                else:
                    outcome = self.tunnel.stop()
                self.result = self._conclude(completed, reason, outcome,
                                             verify, cancelled)
            finally:
                self.tunnel.stop()
                self.done.set()
            return self.result

    def _result_timeout(self):
        return self.owner.settings.tunnel_result_timeout

    def _conclude(self, completed, reason, outcome, verify,
                  cancelled=False):
        mid = self.migration_id
        if completed:
            try:
                connections = verify(outcome)
            except SecureMigrationError as e:
                LOG.error('Migration %s (%s side): libvirt completed but the '
                          'tunnel\'s receipts do not verify: %s', mid,
                          self.side, e)
                recorded = self._record(FAILED, reason='%s' % e)
                return Result(mid, self.side, FAILED, e.reason, e.args[0],
                              recorded=recorded)
            recorded = self._record(COMPLETED, connections)
            LOG.info('Migration %s (%s side) completed through the tunnel: '
                     '%d connection(s), receipts verified%s', mid, self.side,
                     len(connections),
                     '' if recorded else ' (not recorded at the broker)')
            return Result(mid, self.side, COMPLETED,
                          connections=connections, recorded=recorded)
        if not outcome:
            # The tunnel ended without saying how (killed, crashed): that
            # is a failure, never a clean abort.
            status, outcome = FAILED, {}
            reason = '%s (the %s tunnel ended without an outcome)' % (
                reason or 'not completed', self.side)
        elif cancelled:
            # The operator (or nova's completion timeout) cancelled the
            # job; the tunnel's failure, if any, is its consequence.
            status = ABORTED
        elif outcome.get('status') in (FAILED, 'refused'):
            status = FAILED
        else:
            status = ABORTED
        why = reason or outcome.get('message') or outcome.get('reason') \
            or 'stopped'
        verdict = outcome.get('reason')
        if status == FAILED and reason and verdict and verdict not in reason:
            # The tunnel's own verdict first: what the caller knows (nova
            # marked the migration failed, it rolled back) does not say
            # why, and the audit record must (e.g. stream_tampered).
            why = '%s tunnel: %s: %s; %s' % (
                self.side, verdict, outcome.get('message') or verdict,
                reason)
        recorded = self._record(status, reason=why)
        LOG.warning('Migration %s (%s side) did not complete: %s', mid,
                    self.side, why)
        return Result(mid, self.side, status,
                      outcome.get('reason') or 'migration_failed', why,
                      recorded=recorded)

    def abort(self, reason):
        """Stop the tunnel and record the migration as not completed."""
        return self._end(False, reason, None)

    def wait_done(self, timeout):
        return self.done.wait(timeout)


class OutgoingMigration(_Side):
    """The source side of one migration, from grant to receipts."""

    side = SOURCE

    def __init__(self, owner, migration_id, instance_uuid, tunnel, grant,
                 sockets, dst_store):
        super().__init__(owner, migration_id, instance_uuid, tunnel)
        self.grant = grant
        self.sockets = dict(sockets)
        self.dst_store = dst_store

    @property
    def streams(self):
        return dict(self.grant.streams)

    @property
    def migrate_uri(self):
        return unix_uri(self.sockets[MEMORY])

    @property
    def disks_uri(self):
        path = self.sockets.get(DISK)
        return unix_uri(path) if path else None

    def tunnel_failure(self, timeout=5.0):
        """The tunnel's outcome if it ended unsuccessfully, else None.

        Used when libvirt reports an error: a tunnel that aborted explains
        it (and it exits right after aborting).
        """
        proc = self.tunnel.process
        if proc is None:
            return None
        try:
            _rc, outcome = proc.wait(timeout)
        except process.TunnelProcessError:
            return None
        self.tunnel.outcome = outcome
        self.tunnel.ended = True
        if outcome and outcome.get('status') != COMPLETED:
            return outcome
        return None

    def finish(self, completed, reason=None, cancelled=False):
        """libvirt is done: collect, verify and record; clean up.

        ``cancelled``: libvirt said the job was cancelled; the migration
        is recorded ``aborted`` (if the tunnel ended with an outcome).
        """
        return self._end(completed, reason, self._verify,
                         cancelled and not completed)

    def _verify(self, outcome):
        store = self.owner.identity.store
        return verify_connections(
            outcome, self.migration_id, store, self.dst_store,
            src_fingerprint=self.owner.identity.fingerprint,
            dst_fingerprint=self.grant.dst_fingerprint,
            expected_streams=self.grant.streams)


class _Phases:
    """Wall-clock durations of a side's setup steps, in order."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._start = self._last = clock()
        self.steps = {}

    def done(self, name):
        now = self._clock()
        self.steps[name] = now - self._last
        self._last = now

    @property
    def total(self):
        return self._last - self._start

    def __str__(self):
        return 'setup %.3f s (%s)' % (self.total, ', '.join(
            '%s %.3f s' % item for item in self.steps.items()))


class IncomingMigration(_Side):
    """The destination side of one migration: tunnel and registration."""

    side = DESTINATION

    def __init__(self, owner, migration_id, instance_uuid, tunnel, endpoint,
                 streams, src_store):
        super().__init__(owner, migration_id, instance_uuid, tunnel)
        self.endpoint = endpoint
        self.streams = dict(streams)
        self.src_store = src_store

    def finish(self, completed, reason=None):
        """libvirt is done: stop the tunnel, verify, record.

        The destination tunnel does not know how many connections the
        source will open (the grant is only known to the source), so it
        runs until stopped here; connections in their closing exchange get
        the tunnel's termination grace.
        """
        return self._end(completed, reason, self._verify)

    def _end(self, completed, reason, verify):
        with self._lock:
            if self.result is not None:
                return self.result
            try:
                outcome = self.tunnel.stop()
                self.result = self._conclude(completed, reason, outcome,
                                             verify)
            finally:
                if self.result is None or not self.result.ok:
                    self._remove_qemu_sockets()
                self.done.set()
            return self.result

    def _remove_qemu_sockets(self):
        paths = [socket_path(self.owner.settings.socket_dir,
                             self.migration_id, kind)
                 for kind in self.streams]
        try:
            removed = self.owner.socket_cleaner(paths)
        except Exception:  # noqa: clean-up must not mask the outcome
            LOG.exception('Migration %s: could not remove the destination '
                          'QEMU sockets %s', self.migration_id, paths)
            return
        if removed:
            LOG.info('Migration %s: removed the failed destination QEMU\'s '
                     'stale sockets %s', self.migration_id,
                     ', '.join(removed))

    def _verify(self, outcome):
        return verify_connections(
            outcome, self.migration_id, self.src_store,
            self.owner.identity.store,
            dst_fingerprint=self.owner.identity.fingerprint)


class SecureMigration:
    """Secure migrations of one host: starts both sides, tracks nothing.

    :param settings: :class:`Settings`.
    :param identity: :class:`HostIdentity` of this host.
    :param host_client: :class:`~secmig_nova.broker.rpcapi.HostClient` of
        this cloud's broker.
    :param tunnel_factory: ``(params) -> TunnelProcess``; the default runs
        ``secmig-tunnel`` with this interpreter.
    :param peer_stores: ``{cloud_id: TrustStore}`` of peer clouds, for
        migrations across clouds (``secmig-migrate``).
    :param socket_cleaner: ``(paths) -> removed paths``: removes the
        stale sockets a failed destination QEMU left on this host
        (default :func:`remove_stale_sockets`, here).
    """

    def __init__(self, settings, identity, host_client, tunnel_factory=None,
                 peer_stores=None, clock=time.time, socket_cleaner=None):
        self.settings = settings
        self.identity = identity
        self.host_client = host_client
        self.tunnel_factory = tunnel_factory or process.TunnelProcess
        self.socket_cleaner = socket_cleaner or remove_stale_sockets
        self.peer_stores = dict(peer_stores or {})
        self.clock = clock

    @classmethod
    def from_conf(cls, conf, host=None, **kwargs):
        settings = Settings.from_conf(conf)
        identity = HostIdentity.load(settings, host)
        if 'peer_stores' not in kwargs:
            kwargs['peer_stores'] = peer_stores_from_conf(conf)
        client = host_client_from_conf(conf, identity.credentials)
        return cls(settings, identity, client, **kwargs)

    @property
    def cloud_id(self):
        return self.settings.cloud_id

    def close(self):
        """End what this object keeps running between migrations."""
        close = getattr(self.tunnel_factory, 'close', None)
        if close is not None:
            close()

    def trust_store(self, cloud_id):
        if cloud_id in (None, self.cloud_id):
            return self.identity.store
        try:
            return self.peer_stores[cloud_id]
        except KeyError:
            raise SecureMigrationError('unknown_cloud', 'no trust store for '
                                       'cloud %s' % cloud_id)

    def _trust_params(self, store):
        return {'cloud_id': store.cloud_id, 'ca_file': store.ca_file,
                'crl_file': store.crl_file}

    def tunnel_params(self, side, migration_id, sockets, peer_store,
                      **extra):
        """The JSON parameters of this host's tunnel process."""
        s = self.settings
        params = {'side': side, 'migration_id': migration_id,
                  'cloud_id': s.cloud_id,
                  'cert_file': self.identity.cert_file,
                  'key_file': self.identity.key_file,
                  'ca_file': self.identity.store.ca_file,
                  'peer': self._trust_params(peer_store),
                  'sockets': dict(sockets)}
        if self.identity.store.crl_file:
            params['crl_file'] = self.identity.store.crl_file
        params.update(s.tunables())
        params.update(extra)
        return params

    # -- destination -----------------------------------------------------

    def prepare_destination(self, migration_id, instance_uuid, streams,
                            src_cloud=None):
        """Start the destination tunnel and register it with the broker.

        :param streams: the most connections per kind this host accepts.
        :returns: :class:`IncomingMigration`.
        :raises SecureMigrationError: nothing is left running then.
        """
        _check_streams(streams)
        phases = _Phases()
        s = self.settings
        src_store = self.trust_store(src_cloud)
        sockets = {kind: socket_path(s.socket_dir, migration_id, kind)
                   for kind in streams}
        tunnel = Tunnel(DESTINATION, migration_id, self.tunnel_params(
            DESTINATION, migration_id, sockets, src_store,
            listen_host=s.tunnel_listen_address,
            port_min=s.tunnel_port_min, port_max=s.tunnel_port_max),
            self.tunnel_factory)
        ready = tunnel.start(s.tunnel_ready_timeout)
        phases.done('tunnel ready')
        endpoint = ready.get('endpoint')
        try:
            if not endpoint:
                raise SecureMigrationError('tunnel_failed', 'the destination '
                                           'tunnel reported no endpoint')
            self.host_client.register_incoming(migration_id, endpoint,
                                               streams, instance_uuid)
            phases.done('registration')
        except (SecureMigrationError, rpcapi.BrokerRefused) as e:
            tunnel.stop()
            reason = getattr(e, 'reason', 'broker_refused')
            raise SecureMigrationError(
                reason, 'the broker of cloud %s did not register the '
                'destination tunnel of migration %s: %s'
                % (self.cloud_id, migration_id, e.args[0]))
        LOG.info('Migration %s of instance %s: destination tunnel listening '
                 'on %s for %s, registered with the broker; %s',
                 migration_id, instance_uuid, endpoint, streams, phases)
        incoming = IncomingMigration(self, migration_id, instance_uuid,
                                     tunnel, endpoint, streams, src_store)
        incoming.setup = phases
        return incoming

    # -- source ----------------------------------------------------------

    def start_source(self, migration_id, instance_uuid, dst_host, streams,
                     user_id=None, project_id=None, token=None,
                     dst_cloud=None):
        """Ticket, grant, source tunnel; ready for libvirt.

        :param streams: the connections QEMU will open
            (:func:`stream_counts`); the grant must allow exactly these.
        :param user_id: the user who asked for the migration (with
            ``project_id``; the broker pulls their roles from Keystone), or
        :param token: their Keystone token.
        :returns: :class:`OutgoingMigration`.
        :raises SecureMigrationError: nothing is left running then, and the
            broker knows the migration failed.
        """
        _check_streams(streams)
        phases = _Phases()
        dst_cloud = dst_cloud or self.cloud_id
        dst_store = self.trust_store(dst_cloud)
        client = self.host_client
        try:
            ticket = client.authorize_migration(
                migration_id, instance_uuid, dst_host, dst_cloud,
                token=token, user_id=user_id,
                project_id=project_id)['ticket']
            phases.done('ticket')
        except rpcapi.BrokerRefused as e:
            raise SecureMigrationError(
                e.reason, 'the broker of cloud %s refused to authorize '
                'migration %s to %s: %s' % (self.cloud_id, migration_id,
                                            dst_host, e.args[0]))
        tunnel = None
        try:
            try:
                answer = client.request_grant(migration_id, ticket, streams)
            except rpcapi.BrokerRefused as e:
                raise SecureMigrationError(
                    e.reason, 'no grant for migration %s from cloud %s: %s'
                    % (migration_id, dst_cloud, e.args[0]))
            grant = self._check_grant(answer.get('grant'), migration_id,
                                      instance_uuid, dst_host, streams,
                                      dst_store)
            phases.done('grant')
            s = self.settings
            sockets = {kind: socket_path(s.socket_dir, migration_id, kind)
                       for kind in streams}
            tunnel = Tunnel(SOURCE, migration_id, self.tunnel_params(
                SOURCE, migration_id, sockets, dst_store,
                grant=grant.token, expect_connections=dict(grant.streams)),
                self.tunnel_factory, sockets=sockets.values(),
                cleaner=self.socket_cleaner)
            ready = tunnel.start(s.tunnel_ready_timeout)
            phases.done('tunnel ready')
            if ready.get('sockets') != sockets:
                raise SecureMigrationError(
                    'tunnel_failed', 'the source tunnel listens on %s, '
                    'expected %s' % (ready.get('sockets'), sockets))
        except SecureMigrationError as e:
            if tunnel is not None:
                tunnel.stop()
            try:
                client.record_receipt(migration_id, FAILED,
                                      reason=str(e))
            except rpcapi.BrokerRefused as rec:
                LOG.warning('Migration %s: could not record the refusal: %s',
                            migration_id, rec)
            raise
        LOG.info('Migration %s of instance %s to %s: granted %s, source '
                 'tunnel listening on %s; %s', migration_id, instance_uuid,
                 dst_host, grant.streams, sockets, phases)
        outgoing = OutgoingMigration(self, migration_id, instance_uuid,
                                     tunnel, grant, sockets, dst_store)
        outgoing.setup = phases
        return outgoing

    def _check_grant(self, token, migration_id, instance_uuid, dst_host,
                     streams, dst_store):
        try:
            grant = tokens.verify_grant(token, dst_store, now=self.clock(),
                                        leeway=self.settings.max_clock_skew)
        except (tokens.TokenError, trust_errors.TrustError) as e:
            raise SecureMigrationError('grant_invalid', 'the grant for '
                                       'migration %s does not verify: %s'
                                       % (migration_id, e))
        problems = []
        if grant.migration_id != migration_id:
            problems.append('migration %s' % grant.migration_id)
        if grant.instance_uuid != instance_uuid:
            problems.append('instance %s' % grant.instance_uuid)
        if grant.src_fingerprint != self.identity.fingerprint:
            problems.append('another source host')
        if grant.dst_host != dst_host:
            problems.append('destination host %s' % grant.dst_host)
        if problems:
            raise SecureMigrationError('grant_invalid', 'the grant for '
                                       'migration %s names %s'
                                       % (migration_id, ', '.join(problems)))
        if dict(grant.streams) != dict(streams):
            raise SecureMigrationError(
                'stream_not_allowed', 'the destination allows connections '
                '%s, QEMU will open %s' % (grant.streams, streams))
        return grant
