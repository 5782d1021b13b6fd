"""``secmig-migrate``: secure live migration of a libvirt domain, no nova.

    secmig-migrate --config-file /etc/secmig-nova/secmig-migrate.conf DOMAIN

The same path the compute driver takes (secmig_nova/virt/migration.py):
the source cloud's broker issues a ticket for the user and project, the
destination cloud's broker grants the destination host's registered
tunnel, both tunnels run as ``secmig-tunnel`` processes on their hosts
(``exec_prefix``), libvirt migrates peer to peer through the source
tunnel's UNIX socket, and both sides' signed receipts are verified before
it reports success. Brokers are embedded (in-process ``fake://`` bus, roles
from a local file) unless ``[secmig_migrate] broker = remote``.

Exit status: 0 migrated and verified; 1 refused, failed or interrupted
(SIGINT, SIGTERM; the domain is still on the source); 2 bad configuration;
3 libvirt moved the domain but the receipts did not verify.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNVERIFIED = 3

MIB = 1024.0 * 1024.0

_CLEANER = ('import json, sys; from secmig_nova.virt import migration; '
            'print(json.dumps(migration.remove_stale_sockets(sys.argv[1:])))')


# Seconds to wait for libvirt to abort the job after an interrupt.
ABORT_WAIT = 60
INTERRUPTED = 'interrupted by the operator (SIGINT or SIGTERM)'


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the migration is being stopped."""


def _interrupt(signum, _frame):
    raise Interrupted('signal %d' % signum)


class CommandError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _size(n):
    if n is None:
        return '?'
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(n) < 1024 or unit == 'GiB':
            return ('%d %s' % (n, unit)) if unit == 'B' else \
                '%.1f %s' % (n, unit)
        n /= 1024.0


# -- hosts --------------------------------------------------------------------

class HostEnd:
    """One host of the migration, from its configuration group."""

    def __init__(self, conf, group_name, side):
        from secmig_nova.virt import migration
        group = conf[group_name]
        self.side = side
        self.group_name = group_name
        self.group = group
        if not group.libvirt_uri:
            raise CommandError(EXIT_CONFIG, '[%s] libvirt_uri is required'
                               % group_name)
        self.libvirt_uri = group.libvirt_uri
        self.settings = migration.Settings.from_group(group)
        self.prefix = list(group.exec_prefix or [])
        try:
            self.identity = migration.HostIdentity.load(
                self.settings, group.host, local=not self.prefix)
        except migration.SecureMigrationError as e:
            raise CommandError(EXIT_CONFIG, '[%s]: %s' % (
                group_name, str(e).replace('[secmig]', '[%s]' % group_name)))
        self.name = group.host or self.identity.name
        self.cloud_id = self.settings.cloud_id
        self.python = group.python or sys.executable

    def tunnel_factory(self):
        """Tunnels of this end, the first one loading from now on.

        A spare started here loads while the brokers and libvirt are
        reached, so the tunnel is (nearly) ready when it is needed.
        """
        from secmig_nova.tunnel import process
        spares = process.SpareTunnels(
            replenish=False, prefix=self.prefix,
            command=[self.python, '-m', 'secmig_nova.cmd.tunnel'])
        spares.prepare()
        return spares

    def socket_cleaner(self, paths):
        """Remove a failed QEMU's stale sockets on that host."""
        from secmig_nova.virt import migration
        if not self.prefix:
            return migration.remove_stale_sockets(paths)
        out = subprocess.run(self.prefix + [self.python, '-c', _CLEANER]
                             + list(paths), capture_output=True, text=True,
                             timeout=30, check=True)
        return json.loads(out.stdout or '[]')


# -- progress -----------------------------------------------------------------

class Progress:
    """Steps as lines, libvirt's job as one redrawn bar (terminals only)."""

    WIDTH = 24

    def __init__(self, stream, enabled):
        self.stream = stream
        self.enabled = enabled
        self.t0 = time.monotonic()
        self._drawn = False

    def step(self, text):
        if self.enabled:
            self._clear()
            self.stream.write('[%6.2fs] %s\n' % (time.monotonic() - self.t0,
                                                 text))
            self.stream.flush()

    def job(self, stats):
        """Draw one frame from ``virDomainGetJobStats``."""
        if not self.enabled or not stats:
            return
        done = stats.get('data_processed') or 0
        left = stats.get('data_remaining')
        rate = stats.get('memory_bps') or 0
        total = done + (left or 0)
        frac = done / total if total else 0.0
        fill = int(self.WIDTH * frac)
        iteration = stats.get('memory_iteration')
        if not done:
            phase = 'starting'
        elif stats.get('memory_postcopy_requests'):
            phase = 'post-copy'
        elif iteration and iteration > 1:
            phase = 'memory pass %d' % iteration
        else:
            phase = 'memory'
        eta = '%.1fs' % (left / rate) if rate and left is not None else '?'
        line = '\r[%s%s] %3d%% %-14s %10s %9s/s ETA %s' % (
            '=' * fill, ' ' * (self.WIDTH - fill), int(100 * frac), phase,
            _size(done), _size(rate), eta)
        self.stream.write(line + '\x1b[K')
        self.stream.flush()
        self._drawn = True

    def _clear(self):
        if self._drawn:
            self.stream.write('\r\x1b[K')
            self._drawn = False

    def close(self):
        if self.enabled:
            self._clear()
            self.stream.flush()


# -- the migration ------------------------------------------------------------

class Migrate:
    """One secure migration of a libvirt domain between two hosts."""

    def __init__(self, conf, progress=None):
        from secmig_nova.conf import migrate as migrate_conf
        self.conf = conf
        self.opts = conf[migrate_conf.GROUP_NAME]
        self.progress = progress or Progress(sys.stdout, False)
        self.src = HostEnd(conf, migrate_conf.SOURCE_GROUP, 'source')
        self.dst = HostEnd(conf, migrate_conf.DESTINATION_GROUP,
                           'destination')
        self.brokers = None

    # -- brokers ---------------------------------------------------------

    def _clients(self):
        from secmig_nova.authz import keystone
        from secmig_nova.authz import rolefile
        from secmig_nova.broker import embedded
        from secmig_nova.conf import migrate as migrate_conf
        from secmig_nova.virt import migration
        if self.opts.broker == migrate_conf.REMOTE:
            return tuple(migration.host_client_from_conf(
                self.conf, end.identity.credentials, group=end.group)
                for end in (self.src, self.dst))
        try:
            roles = rolefile.RoleFile.load(self.opts.role_file)
        except keystone.KeystoneError as e:
            raise CommandError(EXIT_CONFIG, str(e.args[0]))
        clouds = {}
        for end in (self.dst, self.src):
            clouds[end.cloud_id] = (end.identity.store,
                                    end.group.broker_cert_file,
                                    end.group.broker_key_file)
        try:
            self.brokers = embedded.EmbeddedBrokers(
                self.conf, clouds, roles, self.opts.state_dir)
        except (embedded.EmbeddedBrokerError, OSError) as e:
            raise CommandError(EXIT_CONFIG, 'embedded broker: %s' % e)
        self.progress.step('embedded brokers of %s started (roles from %s)'
                           % (', '.join(sorted(clouds)), roles.path))
        return (self.brokers.host_client(self.src.cloud_id,
                                         self.src.identity.credentials),
                self.brokers.host_client(self.dst.cloud_id,
                                         self.dst.identity.credentials))

    def _engines(self):
        from secmig_nova.virt import migration
        src_client, dst_client = self._clients()
        engines = []
        for end, client, peer in ((self.src, src_client, self.dst),
                                  (self.dst, dst_client, self.src)):
            engines.append(migration.SecureMigration(
                end.settings, end.identity, client,
                tunnel_factory=end.tunnel_factory(),
                peer_stores={peer.cloud_id: peer.identity.store},
                socket_cleaner=end.socket_cleaner))
        return engines

    # -- libvirt ---------------------------------------------------------

    @staticmethod
    def _connect(uri):
        import libvirt
        # libvirt prints every error to stderr by default; ours are
        # handled (a finished job has no stats, etc.).
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise CommandError(EXIT_CONFIG, 'cannot connect to libvirt at '
                               '%s: %s' % (uri, e))

    def _flags(self, parallel):
        import libvirt
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        if parallel and parallel > 1:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
        if self.opts.persistent:
            flags |= (libvirt.VIR_MIGRATE_PERSIST_DEST
                      | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        return flags

    def _libvirt_migrate(self, dom, params, flags):
        """migrateToURI3 in a thread, the bar from jobStats in another.

        libvirt calls run only in threads that block SIGINT and SIGTERM:
        a signal landing in a thread waiting on the libvirt connection
        breaks that connection, libvirtd then cancels the migration and
        migrateToURI3 may still return success. The main thread only
        waits, takes the signal and aborts the job.
        """
        import libvirt
        box = {}
        done = threading.Event()

        def no_signals():
            signal.pthread_sigmask(signal.SIG_BLOCK,
                                   {signal.SIGINT, signal.SIGTERM})

        def run():
            no_signals()
            try:
                dom.migrateToURI3(self.dst.libvirt_uri, params, flags)
            except libvirt.libvirtError as e:
                box['error'] = e
            finally:
                done.set()

        def watch():
            no_signals()
            while not done.wait(0.25):
                try:
                    self.progress.job(dom.jobStats())
                except libvirt.libvirtError:
                    pass

        def abort(why):
            self.progress.step('%s: aborting the libvirt job' % why)
            try:
                dom.abortJob()
            except libvirt.libvirtError:
                pass    # it may have just ended

        worker = threading.Thread(target=run, daemon=True)
        watcher = threading.Thread(target=watch, daemon=True)
        started = time.monotonic()
        worker.start()
        watcher.start()
        deadline = started + self.opts.timeout
        try:
            while not done.wait(0.25):
                if time.monotonic() > deadline:
                    abort('timeout after %d s' % self.opts.timeout)
                    deadline = float('inf')
        except Interrupted:
            # Ctrl-C or SIGTERM: the job is aborted and waited for, so the
            # domain stays on the source, unless libvirt finished first.
            abort('interrupted')
            done.wait(ABORT_WAIT)
            if not done.is_set() or 'error' in box:
                raise
        finally:
            watcher.join(5)
        return time.monotonic() - started, box.get('error')

    # -- run -------------------------------------------------------------

    def run(self, domain, migration_id=None, user_id=None, project_id=None,
            token=None):
        """Migrate; returns the summary dict (``status`` says how)."""
        from secmig_nova.virt import migration
        t0 = time.monotonic()
        # Configuration first (certificates, brokers), then libvirt.
        src_engine, dst_engine = self._engines()
        try:
            src_conn = self._connect(self.src.libvirt_uri)
            try:
                dst_conn = self._connect(self.dst.libvirt_uri)
            except CommandError:
                src_conn.close()
                raise
            try:
                dom = self._lookup(src_conn, domain)
                instance_uuid = dom.UUIDString()
                mid = migration_id or str(uuid.uuid4())
                parallel = self.opts.parallel_connections
                streams = migration.stream_counts(parallel=parallel)
                summary = {'migration_id': mid, 'domain': dom.name(),
                           'instance_uuid': instance_uuid,
                           'source': '%s/%s' % (self.src.cloud_id,
                                                self.src.name),
                           'destination': '%s/%s' % (self.dst.cloud_id,
                                                     self.dst.name),
                           'streams': streams}
                return self._run(summary, dom, dst_conn, src_engine,
                                 dst_engine, streams, parallel,
                                 user_id or self.opts.user_id,
                                 project_id or self.opts.project_id,
                                 token, t0)
            finally:
                src_conn.close()
                dst_conn.close()
        finally:
            for engine in (src_engine, dst_engine):
                engine.close()
            if self.brokers is not None:
                self.brokers.stop()

    @staticmethod
    def _lookup(conn, domain):
        import libvirt
        for find in (conn.lookupByName, conn.lookupByUUIDString):
            try:
                return find(domain)
            except libvirt.libvirtError:
                continue
        raise CommandError(EXIT_FAILED, 'no domain %r on %s'
                           % (domain, conn.getURI()))

    def _run(self, summary, dom, dst_conn, src_engine, dst_engine, streams,
             parallel, user_id, project_id, token, t0):
        from secmig_nova.virt import migration
        mid = summary['migration_id']
        uuid_ = summary['instance_uuid']
        try:
            incoming = dst_engine.prepare_destination(
                mid, uuid_, streams, src_cloud=self.src.cloud_id)
        except migration.SecureMigrationError as e:
            return self._refused(summary, 'destination', e, dom, t0)
        self.progress.step('destination tunnel on %s listening at %s, '
                           'registered with the broker of %s'
                           % (self.dst.name, incoming.endpoint,
                              self.dst.cloud_id))
        try:
            outgoing = src_engine.start_source(
                mid, uuid_, self.dst.name, streams, user_id=user_id,
                project_id=project_id, token=token,
                dst_cloud=self.dst.cloud_id)
        except migration.SecureMigrationError as e:
            incoming.abort(str(e))
            return self._refused(summary, 'source', e, dom, t0)
        except Interrupted:
            incoming.abort(INTERRUPTED)
            raise
        grant = outgoing.grant
        self.progress.step(
            'ticket for %s/%s, grant %s from %s (destination pinned %s...); '
            'source tunnel on %s' % (user_id, project_id, grant.jti,
                                     grant.dst_cloud,
                                     grant.dst_fingerprint[:16],
                                     outgoing.sockets))
        summary['setup_seconds'] = round(time.monotonic() - t0, 3)
        summary['setup_steps'] = {
            side: {step: round(seconds, 3)
                   for step, seconds in phases.steps.items()}
            for side, phases in (('destination', incoming.setup),
                                 ('source', outgoing.setup))}
        params = migration.libvirt_params(
            outgoing.migrate_uri, bandwidth=self.opts.bandwidth,
            parallel=parallel)
        self.progress.step('libvirt: %s -> %s via %s'
                           % (self.src.libvirt_uri, self.dst.libvirt_uri,
                              outgoing.migrate_uri))
        try:
            seconds, error = self._libvirt_migrate(dom, params,
                                                   self._flags(parallel))
        except Interrupted:
            self.progress.close()
            out = outgoing.finish(False, INTERRUPTED)
            inc = incoming.finish(False, INTERRUPTED)
            summary.update(status='interrupted', reason='interrupted',
                           message=INTERRUPTED,
                           results=self._results(out, inc))
            return self._still_on_source(summary, dom, t0)
        self.progress.close()
        summary['libvirt_seconds'] = round(seconds, 3)
        if error is None:
            error = self._not_moved(dom, dst_conn, uuid_)
        if error is not None:
            failure = outgoing.tunnel_failure() or {}
            reason = failure.get('reason') or 'libvirt_failed'
            message = '%s%s' % (error, ' (%s tunnel: %s)' % (
                failure.get('side', 'source'), failure.get('message'))
                if failure else '')
            out = outgoing.finish(False, message)
            inc = incoming.finish(False, message)
            results = self._results(out, inc)
            verdict = detected_reason(reason, results)
            if verdict != reason:
                message = '%s (the destination tunnel detected %s; the ' \
                    'source saw %s)' % (message, verdict, reason)
            summary.update(status='failed', reason=verdict, message=message,
                           results=results)
            return self._still_on_source(summary, dom, t0)
        out = outgoing.finish(True)
        inc = incoming.finish(True)
        summary['seconds'] = round(time.monotonic() - t0, 3)
        summary['results'] = self._results(out, inc)
        summary.update(self._job(dst_conn, uuid_))
        summary.update(self._streams(out, inc))
        summary['receipts_file'] = self._save_receipts(mid, out)
        if out.ok and inc.ok and summary['digests_agree']:
            summary['status'] = 'completed'
        else:
            summary['status'] = 'unverified'
            summary['reason'] = out.reason or inc.reason or 'receipt_invalid'
            summary['message'] = out.message or inc.message or \
                'source and destination digests differ'
        return summary

    @staticmethod
    def _not_moved(dom, dst_conn, instance_uuid):
        """Why libvirt's success is not believed, or None.

        Only a domain running on the destination and no longer on the
        source counts as migrated, whatever migrateToURI3 returned.
        """
        import libvirt
        try:
            on_source = bool(dom.isActive())
        except libvirt.libvirtError:
            on_source = False
        try:
            on_destination = bool(dst_conn.lookupByUUIDString(
                instance_uuid).isActive())
        except libvirt.libvirtError:
            on_destination = False
        if on_destination and not on_source:
            return None
        return 'libvirt reported success, but the domain is %srunning on ' \
            'the source and %srunning on the destination' % (
                '' if on_source else 'not ', '' if on_destination else 'not ')

    def _refused(self, summary, side, error, dom, t0):
        summary.update(status='refused', side=side, reason=error.reason,
                       message=str(error.args[0]))
        return self._still_on_source(summary, dom, t0)

    def _still_on_source(self, summary, dom, t0):
        import libvirt
        summary['seconds'] = round(time.monotonic() - t0, 3)
        try:
            summary['domain_running_on_source'] = bool(dom.isActive())
        except libvirt.libvirtError:
            summary['domain_running_on_source'] = False
        return summary

    @staticmethod
    def _results(out, inc):
        return {r.side: {'status': r.status, 'reason': r.reason,
                         'recorded': r.recorded,
                         'verified_connections': len(r.connections)}
                for r in (out, inc)}

    @staticmethod
    def _job(dst_conn, instance_uuid):
        import libvirt
        try:
            stats = dst_conn.lookupByUUIDString(instance_uuid).jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            stats = {}
        return {'downtime_ms': stats.get('downtime'),
                'job_ms': stats.get('time_elapsed'),
                'memory_bytes': stats.get('memory_processed')}

    @staticmethod
    def _streams(out, inc):
        key = lambda c: (c.get('kind'), c.get('index'))  # noqa: E731
        theirs = {key(c): c for c in inc.connections}
        agree = bool(out.connections) and len(theirs) == len(
            out.connections)
        sent = back = 0
        tls = set()
        for conn in out.connections:
            other = theirs.get(key(conn)) or {}
            for direction in ('src_to_dst', 'dst_to_src'):
                if (conn.get(direction) or {}).get('sha256') != \
                        (other.get(direction) or {}).get('sha256'):
                    agree = False
            sent += (conn.get('src_to_dst') or {}).get('bytes', 0)
            back += (conn.get('dst_to_src') or {}).get('bytes', 0)
            tls.add((conn.get('tls_version'), conn.get('tls_cipher')))
        return {'bytes_to_destination': sent, 'bytes_to_source': back,
                'connections': len(out.connections),
                'tls': sorted('%s %s' % t for t in tls),
                'digests_agree': agree}

    def _save_receipts(self, mid, out):
        if not out.connections:
            return None
        directory = os.path.join(self.opts.state_dir, 'receipts')
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, '%s.json' % mid)
        with open(path, 'w') as f:
            json.dump({'migration_id': mid, 'connections': out.connections},
                      f, indent=1)
        return path


# Reasons that say nothing about what went wrong on the wire.
_UNSPECIFIC = frozenset({'migration_failed', 'libvirt_failed', 'terminated'})


def detected_reason(source_reason, results):
    """The failure's reason as named by the side that detected it.

    A source tunnel whose peer detected tampering, or whose path was cut,
    cannot tell which (``truncated`` or ``stream_tampered``; see "What each
    side can know" in tunnel-protocol.rst). The destination tunnel that
    detected it can: its reason wins when it is more specific.
    """
    from secmig_nova.tunnel import errors
    dst = ((results or {}).get('destination') or {}).get('reason')
    if source_reason in errors.PEER_DETECTED_OR_CUT and dst and \
            dst not in (source_reason, errors.TRUNCATED) and \
            dst not in _UNSPECIFIC:
        return dst
    return source_reason


# -- output -------------------------------------------------------------------

_RECEIPT_LABELS = {'source': 'source rcpts', 'destination': 'dest. rcpts'}


def render(summary, src, dst):
    """The human summary."""
    lines = []
    status = summary.get('status')
    head = 'secmig-migrate: migration %s of %s: %s -> %s: %s' % (
        summary.get('migration_id'), summary.get('domain'),
        summary.get('source'), summary.get('destination'),
        status.upper() if status else '?')
    lines.append(head)
    if status in ('refused', 'failed', 'unverified', 'interrupted'):
        lines.append('  reason         %s: %s' % (summary.get('reason'),
                                                  summary.get('message')))
    if 'domain_running_on_source' in summary:
        lines.append('  domain         %s on the source'
                     % ('still running' if summary['domain_running_on_source']
                        else 'NOT running'))
    if summary.get('seconds') is not None:
        lines.append('  time           %.2f s (setup %.2f s, libvirt %.2f s)'
                     % (summary['seconds'], summary.get('setup_seconds') or 0,
                        summary.get('libvirt_seconds') or 0))
    if summary.get('setup_steps'):
        lines.append('  setup steps    %s' % '; '.join(
            '%s: %s' % (side, ', '.join('%s %.3f s' % item
                                        for item in steps.items()))
            for side, steps in sorted(summary['setup_steps'].items())))
    if summary.get('downtime_ms') is not None:
        lines.append('  downtime       %d ms' % summary['downtime_ms'])
    if 'bytes_to_destination' in summary:
        lines.append('  bytes          %s to the destination, %s back, '
                     '%d connection(s)'
                     % (_size(summary['bytes_to_destination']),
                        _size(summary['bytes_to_source']),
                        summary['connections']))
        lines.append('  TLS            %s' % ', '.join(summary['tls']))
    for side in ('source', 'destination'):
        result = (summary.get('results') or {}).get(side)
        if result:
            if result['status'] == 'completed':
                text = 'verified (%d connection(s))%s' % (
                    result['verified_connections'],
                    '' if result['recorded'] else ', NOT recorded')
            else:
                text = '%s (%s)' % (result['status'], result['reason'])
            lines.append('  %-14s %s' % (_RECEIPT_LABELS[side], text))
    if 'digests_agree' in summary:
        lines.append('  digests        %s' % (
            'source and destination agree' if summary['digests_agree']
            else 'DIFFER'))
    if summary.get('receipts_file'):
        lines.append('  receipts file  %s' % summary['receipts_file'])
        cas = ' '.join('--ca %s=%s' % (e.cloud_id, e.settings.ca_file)
                       for e in {e.cloud_id: e for e in (src, dst)}.values())
        lines.append('  verify with    secmig-nova-manage receipts verify '
                     '%s %s' % (summary['receipts_file'], cas))
    return '\n'.join(lines)


def exit_code(summary):
    return {'completed': EXIT_OK, 'unverified': EXIT_UNVERIFIED}.get(
        summary.get('status'), EXIT_FAILED)


def _cli_opts():
    from oslo_config import cfg
    return [
        cfg.StrOpt('domain', positional=True, required=True,
                   help='Name or UUID of the libvirt domain on the source.'),
        cfg.StrOpt('migration-id',
                   help='Migration id (default: a new UUID).'),
        cfg.StrOpt('os-user-id', dest='user_id_arg',
                   help='Overrides [secmig_migrate] user_id.'),
        cfg.StrOpt('os-project-id', dest='project_id_arg',
                   help='Overrides [secmig_migrate] project_id.'),
        cfg.StrOpt('os-token', secret=True,
                   help='A Keystone token of the user instead of --user '
                        'and --project (remote brokers only).'),
        cfg.BoolOpt('progress', default=None,
                    help='Progress lines and bar (default: when stdout is a '
                         'terminal).'),
        cfg.BoolOpt('json', default=False,
                    help='Print the summary as one JSON object.'),
    ]


def main(argv=None):
    import warnings
    # futurist and oslo.service import eventlet, which warns on import; this
    # command never uses eventlet.
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
    from oslo_service import backend
    backend.init_backend(backend.BackendType.THREADING)

    import logging as std_logging

    from oslo_config import cfg
    from oslo_log import log as logging

    from secmig_nova.conf import migrate as migrate_conf

    # The global configuration: oslo.messaging registers some of the
    # options its transports read (tracing) on it only.
    conf = cfg.CONF
    migrate_conf.register_opts(conf)
    conf.register_cli_opts(_cli_opts())
    logging.register_options(conf)
    conf.set_default('use_stderr', True)
    logging.set_defaults(default_log_levels=logging.get_default_log_levels()
                         + ['oslo_messaging=WARNING', 'oslo.messaging='
                            'WARNING', 'alembic=WARNING'])
    try:
        conf(sys.argv[1:] if argv is None else argv, project='secmig-nova',
             prog='secmig-migrate', default_config_files=[])
    except cfg.Error as e:
        print('secmig-migrate: %s' % e, file=sys.stderr)
        return EXIT_CONFIG
    logging.setup(conf, 'secmig-migrate')
    if not conf.debug and not conf.log_file:
        # The console shows the progress lines and the summary; the
        # services' INFO lines go to a --log-file when one is given.
        std_logging.getLogger('secmig_nova').setLevel(std_logging.WARNING)
    log = logging.getLogger('secmig_nova.cmd.migrate')
    show = conf.progress if conf.progress is not None else sys.stdout.isatty()
    progress = Progress(sys.stdout, show and not conf.json)
    # Stop cleanly on Ctrl-C and SIGTERM: abort the job, stop the tunnels,
    # record the end at the brokers; the domain stays on the source.
    previous = {sig: signal.signal(sig, _interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(conf, progress, log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(conf, progress, log):
    from oslo_config import cfg
    try:
        engine = Migrate(conf, progress)
        summary = engine.run(conf.domain, migration_id=conf.migration_id,
                             user_id=conf.user_id_arg,
                             project_id=conf.project_id_arg,
                             token=conf.os_token)
    except Interrupted:
        progress.close()
        print('secmig-migrate: interrupted before libvirt started; nothing '
              'was migrated', file=sys.stderr)
        if conf.json:
            print(json.dumps({'status': 'interrupted',
                              'message': INTERRUPTED}))
        return EXIT_FAILED
    except (CommandError, cfg.Error) as e:
        # oslo.config checks a value's type when it is first read.
        if not isinstance(e, CommandError):
            e = CommandError(EXIT_CONFIG, 'configuration: %s' % e)
        progress.close()
        if conf.log_file:
            log.error('%s', e)
        if conf.json:
            print(json.dumps({'status': 'error', 'message': str(e)}))
        else:
            print('secmig-migrate: %s' % e, file=sys.stderr)
        return e.code
    if conf.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(render(summary, engine.src, engine.dst))
    return exit_code(summary)


if __name__ == '__main__':
    sys.exit(main())
