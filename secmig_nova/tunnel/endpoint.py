"""The two sides of a migration tunnel: accept, authenticate, authorize.

:class:`SourceEndpoint` listens on UNIX sockets that the source QEMU connects
to (one per stream kind); every accepted QEMU connection becomes its own TLS
1.3 connection to the destination named in the grant (multifd: connection
index in HELLO). :class:`DestinationEndpoint` listens on a TCP port from the
configured range, verifies the peer certificate, HELLO and the grant, and only
then connects to the local QEMU socket.

Both fail closed: the first refused or failed connection of the migration
aborts every other one, so QEMU's migration fails and the guest keeps
running on the source host. On the destination, a connection is the
migration's only once its peer completed the TLS handshake and presented a
HELLO that passes the grant checks (:meth:`DestinationEndpoint._authorize`);
anything refused before that is closed, counted and logged rate-limited
(secmig_nova/tunnel/preauth.py) and never touches the migration, since
anyone who can reach the port can open a connection.
"""

import os
import select
import socket
import stat
import threading
import time

from oslo_log import log as logging

from secmig_nova.authz import tokens
from secmig_nova.trust import certs
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store
from secmig_nova.tunnel import connection
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import frames
from secmig_nova.tunnel import ledger
from secmig_nova.tunnel import preauth
from secmig_nova.tunnel import tls

LOG = logging.getLogger(__name__)

ACCEPT_POLL = 0.2
ACCEPT_BATCH = 64
# Pause after accept() failed (e.g. EMFILE), so a listener that stays
# readable does not spin.
ACCEPT_BACKOFF = 0.05
# Listen backlog of the destination's TCP port: room for the real source's
# connections beside a burst of others.
TCP_BACKLOG = 128
ABORT_LINGER = 1.0


class Control:
    """Stop state shared by the endpoint and all its connections."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stop = False
        self.stop_reason = None
        self.grace_deadline = None

    def stop(self, reason, grace=None):
        with self._lock:
            if self._stop:
                return
            self._stop = True
            self.stop_reason = reason
            if grace:
                self.grace_deadline = time.monotonic() + grace

    def should_stop(self):
        return self._stop, self.grace_deadline

    @property
    def stopped(self):
        return self._stop


class Endpoint:
    """What both sides share: identity, trust, TLS context, bookkeeping."""

    side = None

    def __init__(self, params, clock=time.time, on_event=None):
        self.params = params
        self.clock = clock
        # Called with a dict for events the caller may print (the tunnel
        # process prints them as JSON lines on standard output).
        self.on_event = on_event
        self.control = Control()
        self._lock = threading.Lock()
        self.results = []
        self.failure = None
        self.active = 0
        self.completed = {}
        self._threads = []
        try:
            self.credentials = certs.Credentials.load(params.cert_file,
                                                      params.key_file)
            identity = self.credentials.identity
            if identity.cloud_id != params.cloud_id or \
                    identity.role != 'host':
                raise trust_errors.TrustError(
                    trust_errors.IDENTITY_INVALID,
                    'own certificate is %s, expected a host of cloud %s'
                    % (identity.urn, params.cloud_id))
            self.own_store = trust_store.TrustStore.load(
                params.trust.cloud_id, params.trust.ca_file,
                params.trust.crl_file)
            self.peer_store = trust_store.TrustStore.load(
                params.peer.cloud_id, params.peer.ca_file,
                params.peer.crl_file)
            # Our own certificate must be acceptable to our own cloud: a
            # misconfigured host finds out here, not at the peer.
            self.own_store.verify(self.credentials.chain, 'client',
                                  role='host')
        except (trust_errors.TrustError, OSError) as e:
            raise errors.TunnelError(errors.CONFIG_INVALID,
                                     'identity or trust store unusable: %s'
                                     % e, notify_peer=False)
        self.fingerprint = self.credentials.fingerprint
        self.context = tls.make_context(
            self.side == 'destination',
            (params.cert_file, params.key_file), self.peer_store,
            params.ecdh_curve)

    # -- bookkeeping -----------------------------------------------------

    def terminate(self, reason='terminated'):
        """Stop accepting and abort streaming connections.

        Connections already in their closing exchange may finish within
        ``termination_grace`` seconds.
        """
        LOG.info('%s tunnel of migration %s stopping: %s', self.side,
                 self.params.migration_id, reason)
        self.control.stop(reason, grace=self.params.termination_grace)

    def _fail(self, error):
        with self._lock:
            if self.failure is None:
                self.failure = error
        self.control.stop(error.reason)

    def _spawn(self, target, *args, counted=True):
        """Run a connection thread.

        ``counted``: the connection is the migration's from the start (it
        counts in :attr:`active` until :meth:`_finished`); a destination
        connection counts only once authorized.
        """
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            if counted:
                self.active += 1
            # Under a flood of refused connections the list must not grow.
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _finished(self, result, error=None):
        """A counted connection thread ended (see :meth:`_spawn`)."""
        with self._lock:
            self.active -= 1
        self._record(result, error)

    def _record(self, result, error=None):
        with self._lock:
            self.results.append(result)
            if error is None:
                kind = result['kind']
                self.completed[kind] = self.completed.get(kind, 0) + 1
        if error is not None:
            self._fail(error)

    def _expected_done(self):
        expect = self.params.expect_connections
        if not expect:
            return False
        with self._lock:
            return self.active == 0 and all(
                self.completed.get(k, 0) >= n for k, n in expect.items())

    def _serve_connection(self, label, setup, kind=None, index=None,
                          slot=None):
        """Run ``setup`` (handshake, HELLO) then the pump; record result.

        ``setup(socks, stream)`` stores every socket it opens in ``socks``
        (keys ``tls`` and ``local``) so that, whatever fails, the peer gets
        an ABORT and every socket is closed here; and the stream ``kind``
        and connection ``index`` in ``stream`` as soon as it knows them
        (the destination learns them from HELLO), so that the record of a
        connection refused before the pump still names its stream.
        ``label`` names the connection in the log and in the record.

        ``slot`` (destination): the connection's place in the pre-auth
        :class:`preauth.Gate`; until ``setup`` sets ``stream['authorized']``
        whatever ends the connection is a refusal of an unauthenticated
        peer (see :meth:`_refused_preauth`), not the migration's.
        """
        conn = None
        socks = {}
        stream = {'kind': kind, 'index': index,
                  'authorized': slot is None}
        refusal = None
        try:
            info = setup(socks, stream)
            conn = connection.Connection(
                self.side, socks['tls'], socks['local'], info,
                self.credentials, self.peer_store, self.control,
                checkpoint_bytes=self.params.checkpoint_bytes,
                chunk_size=self.params.chunk_size,
                idle_timeout=self.params.idle_timeout,
                test_hooks=self.params.test_hooks, clock=self.clock)
            conn.run()
            result = conn.result()
            result['label'] = label
            LOG.info('%s: completed, %d bytes to the destination, %d bytes '
                     'back, receipts exchanged', label,
                     result['src_to_dst']['bytes'],
                     result['dst_to_src']['bytes'])
            self._finished(result)
        except errors.TunnelError as e:
            if not stream['authorized']:
                refusal = self._refused_preauth(label, slot, socks, stream,
                                                e)
                return
            self._log_error(label, e)
            if socks.get('tls') is not None:
                self._close_failed(socks['tls'], e)
            self._finished(self._failed_record(
                conn, label, stream, errors.status_of(e), e), e)
        except Exception as e:  # noqa: broad on purpose: fail closed
            err = errors.TunnelError('internal_error', repr(e))
            if not stream['authorized']:
                LOG.debug('%s: internal error before authorization', label,
                          exc_info=True)
                refusal = self._refused_preauth(label, slot, socks, stream,
                                                err)
                return
            LOG.exception('%s: internal error', label)
            if socks.get('tls') is not None:
                self._close_failed(socks['tls'], err)
            self._finished(self._failed_record(conn, label, stream,
                                               'failed', err), err)
        finally:
            for sock in socks.values():
                try:
                    sock.close()
                except OSError:
                    pass
            if refusal is not None:
                # Counted and logged out of the except clause: the log
                # line is the tally's own, without the exception appended.
                self.tally.refused(*refusal[0], **refusal[1])

    @staticmethod
    def _failed_record(conn, label, stream, status, error):
        """The record of a connection that ended with ``error``.

        Without a pump (refused or failed during setup) there are no byte
        counts or receipts; ``kind`` and ``index`` are None until known.
        """
        if conn is not None:
            result = conn.result(status, error)
        else:
            result = {'kind': stream['kind'], 'index': stream['index'],
                      'status': status, 'reason': error.reason,
                      'message': str(error.args[0])}
        result['label'] = label
        return result

    def _log_error(self, label, error):
        if error.refusal:
            LOG.warning('%s: REFUSED (%s): %s', label, error.reason,
                        error.args[0])
        elif error.reason == 'terminated':
            LOG.info('%s: aborted: %s', label, error.args[0])
        else:
            LOG.error('%s: FAILED (%s): %s', label, error.reason,
                      error.args[0])

    @staticmethod
    def _close_failed(sock, error):
        """Tell the peer why (an ABORT, when we can), then linger.

        Closing a socket that still has unread input makes the kernel send
        a RST, which can discard what we (or OpenSSL, with its own alert)
        sent last before the peer reads it; so the write side is shut
        first and input is drained briefly.
        """
        try:
            sock.settimeout(1.0)
            if error.notify_peer:
                sock.sendall(frames.push_abort(frames.Abort(
                    code=error.abort_code,
                    reason=str(error.args[0])[:400])))
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + ABORT_LINGER
            while time.monotonic() < deadline:
                if not sock.recv(65536):
                    break
        except (OSError, ValueError):
            pass

    def _verify_grant(self, token, store):
        """Verify a grant for this migration from ``store``'s broker."""
        try:
            grant = tokens.verify_grant(token, store, now=self.clock(),
                                        leeway=self.params.max_clock_skew)
        except tokens.TokenError as e:
            raise errors.from_token_error(e)
        except trust_errors.TrustError as e:
            raise errors.TunnelError('grant_invalid',
                                     'grant signer refused: %s' % e)
        if grant.migration_id != self.params.migration_id:
            raise errors.TunnelError(
                'grant_wrong_migration', 'grant is for migration %s, this '
                'tunnel serves %s' % (errors.peer_text(grant.migration_id),
                                      self.params.migration_id))
        return grant

    def _expect_frame(self, sock, decoder, deadline, expected, pull, peer):
        """The peer's first frame of the opening exchange, parsed.

        An ABORT is the peer's refusal (its reason becomes ours); any other
        frame than ``expected`` is a protocol error.
        """
        try:
            ftype, payload = self._read_frame(sock, decoder, deadline)
            if ftype == frames.FrameType.ABORT:
                raise errors.from_abort(frames.pull_abort(payload), peer)
            if ftype != expected:
                raise errors.TunnelError(
                    'unexpected_frame', '%s from the %s instead of %s'
                    % (ftype.name, peer, expected.name))
            return pull(payload)
        except frames.FrameError as e:
            raise errors.from_frame_error(e)

    def _read_frame(self, sock, decoder, deadline):
        """Blocking read of one frame during the opening exchange."""
        while True:
            for ftype, payload in decoder.frames():
                return ftype, bytes(payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.TunnelError('timeout', 'peer sent no frame in '
                                         'time during the opening exchange')
            sock.settimeout(remaining)
            try:
                n = sock.recv_into(decoder.writable())
            except TimeoutError:
                raise errors.TunnelError('timeout', 'peer sent no frame in '
                                         'time during the opening exchange')
            except OSError as e:
                raise tls.map_ssl_error(e, 'peer')
            if n == 0:
                raise errors.TunnelError(
                    'truncated', 'peer closed the connection during the '
                    'opening exchange', notify_peer=False)
            decoder.commit(n)

    def _refused_preauth(self, label, slot, socks, stream, error):
        """Overridden by the destination; the source has no pre-auth."""
        raise NotImplementedError

    def _close_preauth(self):
        """The tunnel is ending: close unauthenticated connections."""

    def _outcome_extra(self, out, results):
        """Side-specific additions to the outcome."""

    def outcome(self):
        with self._lock:
            results = list(self.results)
            failure = self.failure
        if failure is not None:
            status = errors.status_of(failure)
        elif self.control.stop_reason in ('terminated', 'deadline') and \
                (not results or any(r['status'] != 'completed'
                                    for r in results)):
            status = 'aborted'
        elif results:
            status = 'completed'
        else:
            status = 'aborted'
        out = {'event': 'outcome', 'side': self.side,
               'migration_id': self.params.migration_id, 'status': status,
               'fingerprint': self.fingerprint,
               'connections': sorted(
                   results, key=lambda r: (str(r['kind']),
                                           r.get('index') or 0))}
        if failure is not None:
            out['reason'] = failure.reason
            out['message'] = str(failure.args[0])
        elif status == 'aborted':
            out['reason'] = self.control.stop_reason or 'terminated'
            out['message'] = 'stopped before any connection completed' \
                if not results else 'stopped'
        self._outcome_extra(out, results)
        return out

    def _tick(self):
        """Called about every ACCEPT_POLL seconds by the accept loop."""

    def _accept_failed(self, error):
        LOG.warning('%s tunnel of migration %s: accept failed: %s',
                    self.side, self.params.migration_id, error)

    def _wait_threads(self, timeout):
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self, listeners, on_accept):
        """Poll listeners until done, failed, terminated or deadline."""
        deadline = time.monotonic() + self.params.deadline
        poller = select.poll()
        by_fd = {}
        for item in listeners:
            sock = item[0]
            poller.register(sock.fileno(), select.POLLIN)
            by_fd[sock.fileno()] = item
        while not self.control.stopped:
            if self._expected_done():
                break
            if time.monotonic() > deadline:
                self._fail(errors.TunnelError(
                    'timeout', 'migration did not complete within %.0f s'
                    % self.params.deadline))
                break
            for fd, _ev in poller.poll(ACCEPT_POLL * 1000):
                item = by_fd[fd]
                # Drain the backlog (bounded, to look at the stop state
                # again), so a flood does not leave the real peer waiting
                # in it.
                for _ in range(ACCEPT_BATCH):
                    try:
                        conn, addr = item[0].accept()
                    except BlockingIOError:
                        break
                    except OSError as e:
                        # Out of descriptors or memory, or the peer gave
                        # up in the backlog: never the end of the tunnel.
                        self._accept_failed(e)
                        time.sleep(ACCEPT_BACKOFF)
                        break
                    on_accept(item, conn, addr)
            self._tick()
        self._close_preauth()
        # Closing connections may finish within the grace period.
        grace = self.params.termination_grace + self.params.handshake_timeout
        self._wait_threads(grace + 2.0)


class SourceEndpoint(Endpoint):
    """UNIX listeners for the source QEMU; TLS client to the destination."""

    side = 'source'

    def __init__(self, params, clock=time.time, on_event=None):
        super().__init__(params, clock, on_event)
        self.grant = self._check_grant()
        self._listeners = []
        self._counts = {}

    def _check_grant(self):
        p = self.params
        # The destination cloud's broker signed it: verify with the peer's
        # trust store before listening, so a bad grant never opens a socket.
        grant = self._verify_grant(p.grant, self.peer_store)
        if grant.src_fingerprint != self.fingerprint or \
                grant.src_cloud != p.cloud_id:
            raise errors.TunnelError(
                'grant_wrong_source', 'grant names source %s/%s, this host '
                'is %s/%s' % (grant.src_cloud, grant.src_fingerprint[:16],
                              p.cloud_id, self.fingerprint[:16]))
        missing = set(p.sockets) - set(grant.streams)
        if missing:
            raise errors.TunnelError(
                'stream_not_allowed', 'grant does not allow stream kinds %s'
                % ', '.join(sorted(missing)))
        return grant

    def listen(self):
        """Create the UNIX sockets; returns {kind: path}."""
        for kind, path in sorted(self.params.sockets.items()):
            self._remove_stale(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            except OSError as e:
                sock.close()
                self.close()
                raise errors.TunnelError(errors.CONFIG_INVALID,
                                         'cannot listen on %s: %s'
                                         % (path, e), notify_peer=False)
            finally:
                os.umask(old)
            os.chmod(path, self.params.socket_mode)
            sock.listen(16)
            sock.setblocking(False)
            self._listeners.append((sock, kind, path))
        return {kind: path for _s, kind, path in self._listeners}

    @staticmethod
    def _remove_stale(path):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise errors.TunnelError(errors.CONFIG_INVALID,
                                     '%s exists and is not a socket' % path,
                                     notify_peer=False)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
        finally:
            probe.close()
        raise errors.TunnelError(errors.CONFIG_INVALID,
                                 '%s is in use by another process' % path,
                                 notify_peer=False)

    def run(self):
        try:
            self._accept_loop(self._listeners, self._on_accept)
        finally:
            self.close()
        return self.outcome()

    def close(self):
        for sock, _kind, path in self._listeners:
            sock.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._listeners = []

    def _on_accept(self, item, qemu, _addr):
        kind = item[1]
        index = self._counts.get(kind, 0)
        self._counts[kind] = index + 1
        label = '%s source/%s#%d' % (self.params.migration_id, kind, index)
        if index >= self.grant.streams[kind]:
            qemu.close()
            error = errors.TunnelError(
                'stream_not_allowed', 'QEMU opened %s connection #%d, the '
                'grant allows %d' % (kind, index, self.grant.streams[kind]))
            self._record({'kind': kind, 'index': index, 'status': 'refused',
                          'reason': error.reason, 'label': label}, error)
            return
        LOG.info('%s: QEMU connected, opening TLS to %s', label,
                 errors.peer_text(self.grant.dst_endpoint))
        self._spawn(self._serve_connection, label,
                    lambda socks, _stream: self._setup(socks, qemu, kind,
                                                       index),
                    kind, index)

    def _setup(self, socks, qemu, kind, index):
        p = self.params
        socks['local'] = qemu
        grant = self.grant
        deadline = time.monotonic() + p.handshake_timeout
        peer = grant.dst_endpoint
        try:
            raw = socket.create_connection(grant.endpoint,
                                           timeout=p.handshake_timeout)
        except OSError as e:
            raise errors.TunnelError(errors.PEER_UNREACHABLE,
                                     'cannot connect to %s: %s' % (peer, e),
                                     notify_peer=False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks['raw'] = raw
        sock = self.context.wrap_socket(raw, do_handshake_on_connect=False)
        # 'ssl' is for closing; 'tls' (set once the handshake is done) is
        # where an ABORT can be sent.
        socks['ssl'] = sock
        try:
            sock.do_handshake()
        except OSError as e:
            raise tls.map_ssl_error(e, peer)
        socks['tls'] = sock
        version, suite = tls.check_negotiated(sock, p.tls_cipher)
        # The pin is the identity check: the certificate must be exactly
        # the one the destination cloud's broker named in the grant.
        tls.verify_peer(sock, self.peer_store, 'server',
                        expected_fingerprint=grant.dst_fingerprint)
        sock.sendall(frames.push_hello(frames.Hello(
            version=frames.PROTOCOL_VERSION,
            kind=frames.StreamKind.from_label(kind),
            conn_index=index, migration_id=p.migration_id,
            grant=p.grant)))
        decoder = frames.FrameDecoder()
        ok = self._expect_frame(sock, decoder, deadline,
                                frames.FrameType.HELLO_OK,
                                frames.pull_hello_ok, 'destination')
        if ok.conn_index != index or ok.version != frames.PROTOCOL_VERSION:
            raise errors.TunnelError('protocol_error',
                                     'HELLO_OK does not match HELLO')
        if decoder.pending():
            raise errors.TunnelError('unexpected_frame',
                                     'data after HELLO_OK before the '
                                     'stream started')
        info = {'migration_id': p.migration_id, 'kind': kind,
                'index': index, 'grant': grant, 'tls_version': version,
                'tls_cipher': suite, 'src_fingerprint': self.fingerprint,
                'dst_fingerprint': grant.dst_fingerprint}
        return info


class DestinationEndpoint(Endpoint):
    """TLS listener for the source host; client of the local QEMU."""

    side = 'destination'

    def __init__(self, params, clock=time.time, on_event=None):
        super().__init__(params, clock, on_event)
        self.gate = preauth.Gate(params.max_preauth_connections)
        self.tally = preauth.Tally(on_event=on_event)
        self._sock = None
        self.endpoint = None
        self.bound = None
        self._used = set()
        # Keys this process took in the host's ledger (a connection index
        # the gate evicted before authorization may be tried again here).
        self._mine = set()
        self.ledger = ledger.GrantLedger(params.grant_ledger_dir, clock)
        self._local_order = threading.Condition()
        self._next_local = {}

    def listen(self):
        """Bind the first free port of the range; returns ``host:port``.

        The host's grant ledger is opened first: a tunnel that could not
        tell a replayed grant never listens.
        """
        self.ledger.open()
        p = self.params
        family = socket.AF_INET6 if ':' in p.listen_host else socket.AF_INET
        last = None
        for port in range(p.port_min, p.port_max + 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((p.listen_host, port))
            except OSError as e:
                last = e
                sock.close()
                continue
            sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
            self._sock = sock
            host = '[%s]' % p.listen_host if family == socket.AF_INET6 \
                else p.listen_host
            self.bound = '%s:%d' % (host, port)
            self.endpoint = p.advertise_endpoint or self.bound
            return self.endpoint
        raise errors.TunnelError(errors.CONFIG_INVALID,
                                 'no free port in %d..%d on %s: %s'
                                 % (p.port_min, p.port_max, p.listen_host,
                                    last), notify_peer=False)

    def run(self):
        try:
            self._accept_loop([(self._sock,)], self._on_accept)
        finally:
            self.close()
        return self.outcome()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_accept(self, _item, raw, addr):
        label = '%s destination/%s:%s' % (self.params.migration_id,
                                          addr[0], addr[1])
        # Anyone can connect: one log line per connection would let a
        # flood write the log (refusals are logged rate-limited).
        LOG.debug('%s: connection from %s:%s', label, addr[0], addr[1])
        try:
            slot, _evicted = self.gate.admit(raw, addr[0])
        except OSError as e:
            # No descriptor left for the duplicate: refuse this one.
            raw.close()
            self.tally.refused(label, 'resources_exhausted', str(e))
            return
        self._spawn(self._serve_connection, label,
                    lambda socks, stream: self._setup(socks, stream, raw,
                                                      label, slot),
                    None, None, slot, counted=False)

    def _refused_preauth(self, label, slot, socks, stream, error):
        """A connection ended before its peer was authorized.

        Closed (with an ABORT when there is a TLS session, so a real but
        misconfigured source learns why) and counted; the migration is
        not touched. Returns the tally's arguments: _serve_connection
        counts it once the sockets are closed. An ABORT from the peer is
        counted as ``peer_aborted`` with the reason it claims kept in the
        record: an unauthenticated peer's word is no reason of ours.
        """
        reason, extra = error.reason, {}
        if slot.closed_reason is not None:
            # Evicted at the cap or closed as the tunnel stops: what the
            # read saw then is only the consequence.
            reason = slot.closed_reason
        elif error.peer_reason is not None:
            reason = preauth.PEER_ABORTED
            extra['peer_reason'] = error.peer_reason
        elif error.reason == 'terminated':
            reason = preauth.CLOSED_AT_STOP
        if stream['kind'] is not None:
            extra.update(kind=stream['kind'], index=stream['index'])
        if socks.get('tls') is not None and slot.closed_reason is None:
            self._close_failed(socks['tls'], error)
        self.gate.release(slot)
        return (label, reason, str(error.args[0])), extra

    def _close_preauth(self):
        self.gate.close_all()

    def _tick(self):
        self.tally.tick()

    def _accept_failed(self, error):
        # Anyone can make this happen: counted and rate-limited.
        self.tally.refused('%s destination' % self.params.migration_id,
                           'resources_exhausted', str(error))

    def _outcome_extra(self, out, results):
        """Refusals before authorization: counts and the first records.

        They are not the migration's connections (``connections`` lists
        authorized ones only) and never its reason; when the tunnel did
        not complete, the message names them, so an operator sees that a
        source was refused and why.
        """
        self.tally.flush()
        out['refused'] = dict(self.tally.counts)
        out['refused_connections'] = list(self.tally.records)
        summary = self.tally.summary()
        if summary and out['status'] != 'completed':
            authorized = 'no connection was authorized' if not results \
                else '%d connection(s) authorized' % len(results)
            out['message'] = '%s; %s; %s' % (
                out.get('message', out['status']), authorized, summary)

    def _setup(self, socks, stream, raw, label, slot):
        p = self.params
        socks['raw'] = raw
        deadline = time.monotonic() + p.handshake_timeout
        raw.setblocking(True)
        raw.settimeout(p.handshake_timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.context.wrap_socket(raw, server_side=True,
                                        do_handshake_on_connect=False)
        socks['ssl'] = sock
        try:
            sock.do_handshake()
        except OSError as e:
            raise tls.map_ssl_error(e, label)
        socks['tls'] = sock
        self.gate.handshake_done(slot)
        version, suite = tls.check_negotiated(sock, p.tls_cipher)
        peer = tls.verify_peer(sock, self.peer_store, 'client')
        decoder = frames.FrameDecoder()
        # An ABORT here may be the source refusing us (e.g. our certificate
        # is not the one its grant pins), or anyone with a certificate of
        # the peer cloud: counted, not the migration's reason.
        hello = self._expect_frame(sock, decoder, deadline,
                                   frames.FrameType.HELLO,
                                   frames.pull_hello, 'source')
        # What the HELLO asks for, even if it is refused below.
        stream.update(kind=hello.kind.label, index=hello.conn_index)
        grant = self._authorize(hello, peer, slot)
        # From here on the connection is the migration's.
        stream['authorized'] = True
        kind = hello.kind.label
        try:
            self._wait_local_turn(kind, hello.conn_index)
            socks['local'] = self._connect_local(kind)
        finally:
            self._local_turn_done(kind, hello.conn_index)
        sock.sendall(frames.push_hello_ok(frames.HelloOk(
            version=frames.PROTOCOL_VERSION, conn_index=hello.conn_index)))
        if decoder.pending():
            raise errors.TunnelError('unexpected_frame',
                                     'data before HELLO_OK')
        LOG.info('%s: authorized %s connection #%d of migration %s from %s',
                 label, kind, hello.conn_index, p.migration_id,
                 errors.peer_text(peer.identity.urn))
        info = {'migration_id': p.migration_id, 'kind': kind,
                'index': hello.conn_index, 'grant': grant,
                'tls_version': version, 'tls_cipher': suite,
                'src_fingerprint': peer.fingerprint,
                'dst_fingerprint': self.fingerprint}
        return info

    def _authorize(self, hello, peer, slot):
        """HELLO and grant checks; the connection index is single-use.

        Passing them makes the connection the migration's: it leaves the
        pre-auth gate and counts in :attr:`active`, atomically with taking
        its connection index, unless the gate closed it meanwhile.
        """
        p = self.params
        if hello.version != frames.PROTOCOL_VERSION:
            raise errors.TunnelError('version_unsupported',
                                     'protocol version %d, expected %d'
                                     % (hello.version,
                                        frames.PROTOCOL_VERSION))
        if hello.migration_id != p.migration_id:
            raise errors.TunnelError(
                'grant_wrong_migration', 'HELLO for migration %s, this '
                'tunnel serves %s' % (errors.peer_text(hello.migration_id),
                                      p.migration_id))
        grant = self._verify_grant(hello.grant, self.own_store)
        if grant.dst_fingerprint != self.fingerprint or \
                grant.dst_endpoint != self.endpoint:
            raise errors.TunnelError(
                'grant_wrong_destination', 'grant is for %s at %s, this is '
                '%s at %s' % (errors.peer_text(grant.dst_fingerprint[:16]),
                              errors.peer_text(grant.dst_endpoint),
                              self.fingerprint[:16], self.endpoint))
        if grant.src_cloud != peer.identity.cloud_id:
            raise errors.TunnelError(
                'grant_wrong_source', 'grant is for a source in cloud %s, '
                'peer is %s' % (errors.peer_text(grant.src_cloud),
                                errors.peer_text(peer.identity.urn)))
        if grant.src_fingerprint != peer.fingerprint:
            raise errors.TunnelError(
                'fingerprint_mismatch', 'peer certificate %s has '
                'fingerprint %s, the grant pinned %s'
                % (errors.peer_text(peer.identity.urn), peer.fingerprint,
                   errors.peer_text(grant.src_fingerprint)))
        kind = hello.kind.label
        allowed = grant.streams.get(kind, 0)
        if kind not in p.sockets or hello.conn_index >= allowed:
            raise errors.TunnelError(
                'stream_not_allowed', '%s connection #%d not allowed (grant '
                'allows %d)' % (kind, hello.conn_index, allowed))
        key = (grant.jti, kind, hello.conn_index)
        with self._lock:
            if key in self._used:
                raise errors.TunnelError(
                    'connection_replayed', '%s connection #%d of grant %s '
                    'was already used' % (kind, hello.conn_index,
                                          errors.peer_text(grant.jti)))
            if key not in self._mine:
                # Single use across this host's tunnel processes too.
                self.ledger.consume(grant.jti, kind, hello.conn_index,
                                    grant.exp + p.max_clock_skew)
                self._mine.add(key)
            if not self.gate.authorize(slot):
                raise errors.TunnelError(
                    preauth.EVICTED, 'closed before authorization',
                    notify_peer=False)
            self._used.add(key)
            self.active += 1
        return grant

    def _wait_local_turn(self, kind, index):
        """Reach the local QEMU in the order the source QEMU connected.

        Each tunnel connection has its own TLS handshake, so connection
        #1 can be ready before #0. QEMU before 8.1 takes the first
        connection it accepts as the main migration channel (multifd's
        data channels come after it), so connection #i connects to the
        local socket only after #0..#i-1 did (or gave up).
        """
        deadline = time.monotonic() + self.params.local_endpoint_timeout
        with self._local_order:
            while self._next_local.get(kind, 0) < index:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.control.stopped:
                    raise errors.TunnelError(
                        'local_endpoint_unavailable', '%s connection #%d '
                        'waited %.1f s for connection #%d to reach the '
                        'local QEMU first'
                        % (kind, index, self.params.local_endpoint_timeout,
                           self._next_local.get(kind, 0)))
                self._local_order.wait(min(remaining, 0.1))

    def _local_turn_done(self, kind, index):
        with self._local_order:
            self._next_local[kind] = max(self._next_local.get(kind, 0),
                                         index + 1)
            self._local_order.notify_all()

    def _connect_local(self, kind):
        path = self.params.sockets[kind]
        deadline = time.monotonic() + self.params.local_endpoint_timeout
        delay = 0.02
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return sock
            except OSError as e:
                sock.close()
                if time.monotonic() >= deadline:
                    raise errors.TunnelError(
                        'local_endpoint_unavailable', 'QEMU migration socket '
                        '%s did not accept within %.1f s: %s'
                        % (path, self.params.local_endpoint_timeout, e))
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
