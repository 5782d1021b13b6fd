"""One tunnel connection after the handshake: the pump and its closing.

A connection joins a local QEMU socket and a TLS 1.3 session to the peer
host. It runs in one thread with both sockets non-blocking, so an SSL object
is never used by two threads at once (OpenSSL does not allow that), and it
moves both directions because QEMU uses a return path.

Per direction the sender keeps a running SHA-256 of the plaintext and sends a
CHECKPOINT every ``checkpoint_bytes``; the receiver answers with an ACK
carrying its own digest at that offset, and any difference aborts.

The peer is authenticated but not trusted to behave, so what it can make a
connection hold is bounded ("Flow control and memory" in the protocol
document): the pump reads no TLS while data waits for the local QEMU, and
reads its QEMU only while nothing waits for the peer; the only frames it
queues in answer to the peer are ACKs, of which the checkpoint window
bounds how many may wait unsent; and ``idle_timeout`` counts from the last
progress, not from the last byte read. Closing (see
doc/source/tunnel-protocol.rst):

1. the source's QEMU reaches EOF: the source sends CHECKPOINT FINAL;
2. the destination stops reading its QEMU and answers ACK FINAL with the
   final totals of its own direction;
3. the source sends END: its signed receipt over both directions' totals;
4. the destination verifies it and sends RECEIPT, its own signed receipt.

The explicit states and the dispatch table below refuse every frame that is
not expected in the current state.
"""

import collections
import enum
import hashlib
import select
import socket
import ssl
import time

from oslo_log import log as logging

from secmig_nova.authz import tokens
from secmig_nova.trust import errors as trust_errors
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import frames

LOG = logging.getLogger(__name__)

# Checkpoints a sender may have unacknowledged before it stops reading its
# QEMU socket: enough to keep the pipe full, small enough that a peer that
# never acknowledges cannot make us stream on unverified. Part of the
# protocol: a receiver with this many ACKs not yet sent refuses another
# checkpoint (flow_control_violation), so a peer that never reads its ACKs
# cannot make us queue more of them.
CHECKPOINT_WINDOW = 2
FLOW_CONTROL_VIOLATION = 'flow_control_violation'
# TLS reads go into the decoder in batches of up to TLS_BATCH bytes (a
# record carries at most TLS_RECORD); at most TLS_BATCHES_PER_ROUND batches
# before looking at the other direction again (fairness).
TLS_RECORD = 16 * 1024 + 256
TLS_BATCH = 256 * 1024
TLS_BATCHES_PER_ROUND = 4
POLL_INTERVAL = 0.25
# When the local QEMU socket breaks mid-stream, how long to keep reading the
# peer to find out whether its connection ended first (see _local_lost).
PEER_END_GRACE = 0.5


class State(enum.Enum):
    STREAMING = 'streaming'
    FIN_SENT = 'fin_sent'          # source: CHECKPOINT FINAL sent
    END_SENT = 'end_sent'          # source: END sent, waiting for RECEIPT
    FIN_RECEIVED = 'fin_received'  # destination: ACK FINAL sent
    CLOSING = 'closing'            # last frame queued, flushing
    DONE = 'done'


class _LocalEndpointLost(errors.TunnelError):
    """The local QEMU socket broke mid-stream; the peer not yet consulted.

    Raised from deep in the pump (possibly while frames are dispatched) and
    resolved in :meth:`Connection.run`, which decides whose fault it was.
    """

    def __init__(self, exc):
        super().__init__('local_endpoint_unavailable', 'local QEMU closed '
                         'its migration socket while data was pending: %s'
                         % exc)


class Direction:
    """Counters and running digest of one stream direction."""

    def __init__(self):
        self._sha = hashlib.sha256()
        self.bytes = 0

    def update(self, data):
        self._sha.update(data)
        self.bytes += len(data)

    def digest(self):
        return self._sha.copy().digest()

    def totals(self):
        return {'bytes': self.bytes, 'sha256': self.digest().hex()}


class Connection:
    """The pump of one established, authorized tunnel connection.

    :param side: ``source`` or ``destination``.
    :param tls: the SSLSocket, handshake done, HELLO/HELLO_OK exchanged.
    :param local: the connected QEMU UNIX socket.
    :param info: dict with migration_id, kind, index, grant (a Grant),
        tls_version, tls_cipher, src_fingerprint, dst_fingerprint.
    :param credentials: this host's Credentials (signs the receipt).
    :param peer_store: TrustStore of the peer host's cloud.
    :param control: object with ``should_stop()`` -> (stop, grace_deadline)
        shared by all connections of the process.
    """

    def __init__(self, side, tls, local, info, credentials, peer_store,
                 control, checkpoint_bytes, chunk_size, idle_timeout,
                 test_hooks=None, clock=time.time):
        self.side = side
        self.tls = tls
        self.local = local
        self.info = info
        self.credentials = credentials
        self.peer_store = peer_store
        self.control = control
        self.checkpoint_bytes = checkpoint_bytes
        self.idle_timeout = idle_timeout
        self.hooks = test_hooks or {}
        self.clock = clock
        self.started_at = clock()
        self.ended_at = None
        self.tx = Direction()   # local QEMU -> peer
        self.rx = Direction()   # peer -> local QEMU
        self.state = State.STREAMING
        self.decoder = frames.FrameDecoder()
        self.tls_out = collections.deque()
        self.local_out = collections.deque()
        self.pending_checkpoints = collections.deque()
        self.next_checkpoint = checkpoint_bytes
        # Bytes ever queued for the peer and ever handed to TLS: an ACK is
        # unsent while the position where it ends (in _ack_ends) is ahead
        # of _sent.
        self._queued = 0
        self._sent = 0
        self._ack_ends = collections.deque()
        # Offset of the peer's last CHECKPOINT: the next must be past it.
        self._rx_checkpoint = 0
        # Progress that is not payload: our checkpoints acknowledged, steps
        # of the closing exchange. (Payload progress is counted in bytes.)
        self._steps = 0
        self.local_eof = False
        self.local_gone = False
        self.peer_eof = False
        self.source_receipt = None
        self.destination_receipt = None
        self._tx_buffer = bytearray(frames.HEADER_SIZE + chunk_size)
        self._tx_view = memoryview(self._tx_buffer)
        self._dispatch = {
            frames.FrameType.DATA: self._on_data,
            frames.FrameType.CHECKPOINT: self._on_checkpoint,
            frames.FrameType.ACK: self._on_ack,
            frames.FrameType.END: self._on_end,
            frames.FrameType.RECEIPT: self._on_receipt,
            frames.FrameType.ABORT: self._on_abort,
        }
        corrupt = self.hooks.get('corrupt_tx_at')
        self._corrupt_at = corrupt if isinstance(corrupt, int) else None

    @property
    def source(self):
        return self.side == 'source'

    @property
    def closing(self):
        """True once the stream itself is complete (only closing frames)."""
        return self.state not in (State.STREAMING,)

    # -- the loop --------------------------------------------------------

    def run(self):
        """Pump until the closing exchange completes; raises TunnelError."""
        self.tls.setblocking(False)
        self.local.setblocking(False)
        try:
            self._pump()
        except _LocalEndpointLost as lost:
            raise self._local_lost(lost)
        self.ended_at = self.clock()

    def _pump(self):
        # idle_timeout counts from the last progress: payload read from or
        # written to the local QEMU, bytes handed to the peer, a DATA frame
        # received whole, one of our checkpoints acknowledged or a step of
        # the closing exchange. Bytes from the peer that are none of these
        # (a frame dripped in a byte at a time) keep the loop busy, never
        # the connection alive. Whatever we send to the peer is bounded by
        # progress: our QEMU's data and checkpoints, and ACKs of the peer's
        # checkpoints, each of which must cover new DATA.
        last_progress = time.monotonic()
        while self.state is not State.DONE:
            self._check_stop()
            progressed = self._flush_tls()
            progressed |= self._flush_local()
            busy = False
            if not self.local_out:
                mark = self.rx.bytes + self._steps
                busy = self._read_tls()
                progressed |= self.rx.bytes + self._steps != mark
            if self._may_read_local():
                progressed |= self._read_local()
            if self.state is State.CLOSING and not self.tls_out \
                    and not self.local_out:
                if not self.source:
                    # Everything reached the destination QEMU: tell it
                    # the stream is over.
                    self._shutdown_local_write()
                self.state = State.DONE
                break
            now = time.monotonic()
            if progressed:
                last_progress = now
                continue
            if now - last_progress > self.idle_timeout:
                raise errors.TunnelError(
                    'timeout', 'no progress for %.0f s: no payload moved in '
                    'either direction, no checkpoint was acknowledged'
                    % self.idle_timeout)
            if not busy:
                self._wait()

    def _check_stop(self):
        stop, grace_deadline = self.control.should_stop()
        if not stop:
            return
        if (self.closing and grace_deadline is not None
                and time.monotonic() < grace_deadline):
            return
        raise errors.TunnelError(
            'terminated', 'tunnel process is stopping (%s)'
            % self.control.stop_reason)

    def _wait(self):
        poller = select.poll()
        tls_events = 0
        if self.tls_out:
            tls_events |= select.POLLOUT
        if not self.local_out:
            if self.tls.pending():
                return
            tls_events |= select.POLLIN
        if tls_events:
            poller.register(self.tls.fileno(), tls_events)
        local_events = 0
        if self.local_out and not self.local_gone:
            local_events |= select.POLLOUT
        if self._may_read_local():
            local_events |= select.POLLIN
        if local_events:
            poller.register(self.local.fileno(), local_events)
        poller.poll(POLL_INTERVAL * 1000)

    # -- TLS side --------------------------------------------------------

    def _queue(self, frame):
        self.tls_out.append(frame)
        self._queued += len(frame)

    def _queue_ack(self, ack):
        """Queue an ACK unless the peer is past the checkpoint window.

        A peer that respects the window never has more than
        CHECKPOINT_WINDOW checkpoints unacknowledged, and an ACK we have
        not sent yet is certainly not acknowledged at its end: with that
        many unsent, its checkpoint broke the window. Without this check a
        peer that never reads would make us queue an ACK for every
        checkpoint it sends.
        """
        ends = self._ack_ends
        while ends and ends[0] <= self._sent:
            ends.popleft()
        if len(ends) >= CHECKPOINT_WINDOW:
            raise errors.TunnelError(
                FLOW_CONTROL_VIOLATION, 'peer sent a checkpoint with %d '
                'of its checkpoints unacknowledged (their ACKs still queued '
                'here), beyond the window of %d: it does not wait for, or '
                'does not read, our ACKs' % (len(ends), CHECKPOINT_WINDOW))
        self._queue(ack)
        ends.append(self._queued)

    def _flush_tls(self):
        progressed = False
        while self.tls_out:
            frame = self.tls_out[0]
            try:
                sent = self.tls.send(frame)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                # OpenSSL needs the very same buffer again on retry.
                return progressed
            except ssl.SSLError as e:
                raise self._tls_failure(e)
            except OSError as e:
                raise errors.TunnelError(
                    'truncated', 'connection to the peer broke while '
                    'sending: %s' % e, notify_peer=False)
            progressed = True
            self._sent += sent
            if sent < len(frame):
                self.tls_out[0] = frame[sent:]
            else:
                self.tls_out.popleft()
        return progressed

    def _read_tls(self):
        """Read what TLS has, then decode and dispatch the frames.

        A TLS 1.3 record carries at most 16 KiB, so one read returns at
        most that much; reading several records into the decoder before
        parsing keeps the per-record Python work to one call.
        """
        progressed = False
        for _ in range(TLS_BATCHES_PER_ROUND):
            if self.state is State.CLOSING or self.state is State.DONE:
                break
            view = self.decoder.writable(TLS_BATCH)
            filled = 0
            eof = would_block = False
            while len(view) - filled >= TLS_RECORD:
                try:
                    n = self.tls.recv_into(view[filled:])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    would_block = True
                    break
                except ssl.SSLError as e:
                    raise self._tls_failure(e)
                except OSError as e:
                    raise errors.TunnelError(
                        'truncated', 'connection to the peer broke: %s' % e,
                        notify_peer=False)
                if n == 0:
                    # Noted before the frames read with it are dispatched:
                    # delivering them may find the local QEMU gone.
                    eof = self.peer_eof = True
                    break
                filled += n
            if filled:
                self.decoder.commit(filled)
                progressed = True
                try:
                    for ftype, payload in self.decoder.frames():
                        self._dispatch_frame(ftype, payload)
                except frames.FrameError as e:
                    raise errors.from_frame_error(e)
            if eof and self.state not in (State.CLOSING, State.DONE):
                raise self._truncated()
            if would_block or eof or self.local_out:
                break
        return progressed

    def _truncated(self, then=''):
        return errors.TunnelError(
            errors.TRUNCATED, 'peer closed the connection in state %s, '
            'before the closing exchange completed (%d bytes received)%s'
            % (self.state.value, self.rx.bytes, then), notify_peer=False)

    def _tls_failure(self, exc):
        name = getattr(exc, 'reason', None) or str(exc)
        if 'BAD_RECORD_MAC' in name or 'DECRYPT' in name:
            return errors.TunnelError(
                errors.STREAM_TAMPERED, 'a TLS record failed its integrity '
                'check (%s): the stream was modified in transit' % name,
                notify_peer=False)
        return errors.TunnelError(errors.TRUNCATED, 'TLS session failed: %s'
                                  % name, notify_peer=False)

    def _dispatch_frame(self, ftype, payload):
        handler = self._dispatch.get(ftype)
        if handler is None:
            raise errors.TunnelError(
                'unexpected_frame', '%s frame after the handshake'
                % ftype.name)
        handler(payload)

    def _unexpected(self, what):
        return errors.TunnelError(
            'unexpected_frame', '%s not allowed for the %s in state %s'
            % (what, self.side, self.state.value))

    # -- local (QEMU) side ----------------------------------------------

    def _may_read_local(self):
        return (self.state is State.STREAMING and not self.local_eof
                and not self.tls_out
                and len(self.pending_checkpoints) < CHECKPOINT_WINDOW)

    def _read_local(self):
        view = self._tx_view
        try:
            n = self.local.recv_into(view[frames.HEADER_SIZE:])
        except BlockingIOError:
            return False
        except OSError as e:
            LOG.info('%s: local QEMU socket closed (%s)', self._label(), e)
            n = 0
        if n == 0:
            self._on_local_eof()
            return True
        payload = view[frames.HEADER_SIZE:frames.HEADER_SIZE + n]
        start = self.tx.bytes
        self.tx.update(payload)
        if self._corrupt_at is not None and start <= self._corrupt_at \
                < self.tx.bytes:
            # Test hook: corrupt plaintext after it was hashed, i.e. a
            # fault between the digest and the wire that TLS cannot see.
            payload[self._corrupt_at - start] ^= 0xFF
            self._corrupt_at = None
        frames.pack_header_into(self._tx_buffer, 0, frames.FrameType.DATA, n)
        self._queue(view[:frames.HEADER_SIZE + n])
        if self.tx.bytes >= self.next_checkpoint:
            self._send_checkpoint(final=False)
            while self.next_checkpoint <= self.tx.bytes:
                self.next_checkpoint += self.checkpoint_bytes
        return True

    def _send_checkpoint(self, final):
        digest = self.tx.digest()
        self.pending_checkpoints.append((self.tx.bytes, digest, final))
        self._queue(frames.push_checkpoint(frames.Checkpoint(
            offset=self.tx.bytes, digest=digest, final=final)))

    def _on_local_eof(self):
        self.local_eof = True
        if self.source:
            LOG.debug('%s: QEMU stream ended after %d bytes, sending the '
                      'final checkpoint', self._label(), self.tx.bytes)
            self._send_checkpoint(final=True)
            self.state = State.FIN_SENT

    def _deliver(self, payload):
        if self.local_gone:
            return
        if not self.local_out:
            try:
                sent = self.local.send(payload)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._local_write_failed(e)
                return
            if sent == len(payload):
                return
            payload = payload[sent:]
        self.local_out.append(bytes(payload))

    def _flush_local(self):
        progressed = False
        while self.local_out and not self.local_gone:
            data = self.local_out[0]
            try:
                sent = self.local.send(data)
            except BlockingIOError:
                return progressed
            except OSError as e:
                self._local_write_failed(e)
                return True
            progressed = True
            if sent < len(data):
                self.local_out[0] = data[sent:]
            else:
                self.local_out.popleft()
        if self.local_gone:
            self.local_out.clear()
        return progressed

    def _local_write_failed(self, exc):
        if self.source and self.local_eof:
            # The source QEMU already ended its stream and closed; what the
            # destination still sends on the return path has no reader.
            self.local_gone = True
            self.local_out.clear()
            return
        raise _LocalEndpointLost(exc)

    def _local_lost(self, lost):
        """The error to report when the local QEMU socket broke mid-stream.

        A QEMU gives up when its input ends early or it is told that the
        migration failed, often because the peer tunnel went away first:
        while a slow QEMU holds data up, the pump reads no TLS, so the end
        of the peer's connection may sit unread behind the data. Before
        blaming the local endpoint, read on for up to PEER_END_GRACE: if
        the peer's connection ended without the closing exchange, the
        stream was truncated (an ABORT gives the peer's reason) and the
        local failure is only the consequence. Either way it failed.
        """
        self.local_gone = True
        self.local_out.clear()
        error = self._peer_ending(time.monotonic() + PEER_END_GRACE,
                                  lost.args[0])
        return lost if error is None else error

    def _peer_ending(self, deadline, local_failure):
        """Read the peer until its connection ends or ``deadline``.

        Frames are decoded only to find an ABORT: none is delivered,
        answered or counted, and nothing is sent. Returns the peer's error,
        or None if its connection is still there.
        """
        then = '; then the %s' % local_failure
        try:
            while True:
                for ftype, payload in self.decoder.frames():
                    if ftype is frames.FrameType.ABORT:
                        return errors.from_abort(
                            frames.pull_abort(payload), 'peer')
                if self.peer_eof:
                    return self._truncated(then)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    n = self.tls.recv_into(self.decoder.writable(TLS_BATCH))
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    poller = select.poll()
                    poller.register(self.tls.fileno(), select.POLLIN)
                    poller.poll(remaining * 1000)
                    continue
                except ssl.SSLError as e:
                    return self._tls_failure(e)
                except OSError as e:
                    return errors.TunnelError(
                        'truncated', 'connection to the peer broke: %s%s'
                        % (e, then), notify_peer=False)
                if n == 0:
                    self.peer_eof = True
                else:
                    self.decoder.commit(n)
        except frames.FrameError as e:
            return errors.from_frame_error(e)

    # -- frame handlers --------------------------------------------------

    def _on_data(self, payload):
        allowed = (State.STREAMING, State.FIN_SENT) if self.source \
            else (State.STREAMING,)
        if self.state not in allowed:
            raise self._unexpected('DATA')
        self.rx.update(payload)
        self._deliver(payload)

    def _on_checkpoint(self, payload):
        cp = frames.pull_checkpoint(payload)
        allowed = (State.STREAMING, State.FIN_SENT) if self.source \
            else (State.STREAMING,)
        if self.state not in allowed or (cp.final and self.source):
            raise self._unexpected('CHECKPOINT')
        digest = self.rx.digest()
        if cp.offset != self.rx.bytes or cp.digest != digest:
            raise errors.TunnelError(
                'checkpoint_mismatch', 'checkpoint at offset %d with '
                'SHA-256 %s, but %d bytes with SHA-256 %s arrived'
                % (cp.offset, cp.digest.hex(), self.rx.bytes, digest.hex()))
        if not cp.final:
            # Only the final checkpoint may repeat the previous offset: one
            # that covers nothing new is no progress, only an ACK to send.
            if cp.offset <= self._rx_checkpoint:
                raise errors.TunnelError(
                    FLOW_CONTROL_VIOLATION, 'checkpoint at offset %d covers '
                    'no new data since the checkpoint at offset %d'
                    % (cp.offset, self._rx_checkpoint))
            self._rx_checkpoint = cp.offset
            self._queue_ack(frames.push_ack(frames.Ack(offset=cp.offset,
                                                       digest=digest)))
            return
        # Destination: the source's stream is complete. Our own direction
        # ends here too, so both sides agree on the final totals.
        self.local_eof = True
        self.state = State.FIN_RECEIVED
        self._steps += 1
        tx_digest = self.tx.digest()
        self._queue_ack(frames.push_ack(frames.Ack(
            offset=cp.offset, digest=digest, final=True,
            rev_bytes=self.tx.bytes, rev_digest=tx_digest)))
        LOG.debug('%s: final checkpoint verified at %d bytes',
                  self._label(), cp.offset)

    def _on_ack(self, payload):
        ack = frames.pull_ack(payload)
        if not self.pending_checkpoints:
            raise self._unexpected('ACK without a checkpoint')
        offset, digest, final = self.pending_checkpoints.popleft()
        if ack.final != final:
            raise self._unexpected('ACK of the wrong kind')
        if ack.offset != offset or ack.digest != digest:
            raise errors.TunnelError(
                'checkpoint_mismatch', 'peer acknowledged offset %d with '
                'SHA-256 %s, we sent %d bytes with SHA-256 %s'
                % (ack.offset, ack.digest.hex(), offset, digest.hex()))
        self._steps += 1
        if not final:
            return
        if ack.rev_bytes != self.rx.bytes or ack.rev_digest != \
                self.rx.digest():
            raise errors.TunnelError(
                'totals_mismatch', 'peer says it sent %d bytes (SHA-256 '
                '%s), %d arrived (SHA-256 %s)'
                % (ack.rev_bytes, ack.rev_digest.hex(), self.rx.bytes,
                   self.rx.digest().hex()))
        self.source_receipt = tokens.sign_receipt(
            self.credentials, self._receipt_claims('source'))
        self._queue(frames.push_end(self.source_receipt))
        self.state = State.END_SENT

    def _on_end(self, payload):
        if self.source or self.state is not State.FIN_RECEIVED:
            raise self._unexpected('END')
        token = frames.pull_end(payload)
        self._check_receipt(token, 'source', self.info['src_fingerprint'])
        self.source_receipt = token
        claims = self._receipt_claims('destination')
        claims['source_receipt_sha256'] = tokens.token_digest(token)
        self.destination_receipt = tokens.sign_receipt(self.credentials,
                                                       claims)
        self._queue(frames.push_receipt(self.destination_receipt))
        self.state = State.CLOSING
        self._steps += 1

    def _on_receipt(self, payload):
        if not self.source or self.state is not State.END_SENT:
            raise self._unexpected('RECEIPT')
        token = frames.pull_receipt(payload)
        claims = self._check_receipt(token, 'destination',
                                     self.info['dst_fingerprint'])
        if claims.get('source_receipt_sha256') != tokens.token_digest(
                self.source_receipt):
            raise errors.TunnelError(
                'receipt_invalid', 'destination receipt does not reference '
                'our END receipt')
        self.destination_receipt = token
        self.state = State.CLOSING
        self._steps += 1

    def _on_abort(self, payload):
        raise errors.from_abort(frames.pull_abort(payload), 'peer')

    # -- receipts --------------------------------------------------------

    def _receipt_claims(self, role):
        src, dst = (self.tx, self.rx) if self.source else (self.rx, self.tx)
        grant = self.info['grant']
        return {
            'role': role,
            'migration_id': self.info['migration_id'],
            'instance_uuid': grant.instance_uuid,
            'grant_jti': grant.jti,
            'stream_kind': self.info['kind'],
            'connection_index': self.info['index'],
            'src_to_dst': src.totals(),
            'dst_to_src': dst.totals(),
            'started_at': round(self.started_at, 3),
            'ended_at': round(self.clock(), 3),
            'src_fingerprint': self.info['src_fingerprint'],
            'dst_fingerprint': self.info['dst_fingerprint'],
            'src_cloud': grant.src_cloud,
            'dst_cloud': grant.dst_cloud,
            'tls_version': self.info['tls_version'],
            'tls_cipher': self.info['tls_cipher'],
        }

    def _check_receipt(self, token, role, fingerprint):
        try:
            claims, _peer = tokens.verify_receipt(
                token, self.peer_store, expected_fingerprint=fingerprint,
                now=self.clock())
        except (tokens.TokenError, trust_errors.TrustError) as e:
            raise errors.TunnelError('receipt_invalid',
                                     '%s receipt refused: %s' % (role, e))
        expected = self._receipt_claims(role)
        for name in ('role', 'migration_id', 'instance_uuid', 'grant_jti',
                     'stream_kind', 'connection_index', 'src_to_dst',
                     'dst_to_src', 'src_fingerprint', 'dst_fingerprint',
                     'src_cloud', 'dst_cloud'):
            if claims.get(name) != expected[name]:
                raise errors.TunnelError(
                    'totals_mismatch' if name in ('src_to_dst', 'dst_to_src')
                    else 'receipt_invalid',
                    '%s receipt claims %s=%r, expected %r'
                    % (role, name, claims.get(name), expected[name]))
        return claims

    def _shutdown_local_write(self):
        try:
            self.local.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- results ---------------------------------------------------------

    def _label(self):
        return '%s %s/%s#%d' % (self.info['migration_id'], self.side,
                                self.info['kind'], self.info['index'])

    def result(self, status='completed', error=None):
        src, dst = (self.tx, self.rx) if self.source else (self.rx, self.tx)
        res = {
            'kind': self.info['kind'],
            'index': self.info['index'],
            'status': status,
            'src_to_dst': src.totals(),
            'dst_to_src': dst.totals(),
            'tls_version': self.info['tls_version'],
            'tls_cipher': self.info['tls_cipher'],
            'src_fingerprint': self.info['src_fingerprint'],
            'dst_fingerprint': self.info['dst_fingerprint'],
            'started_at': self.started_at,
            'ended_at': self.ended_at or self.clock(),
            'source_receipt': self.source_receipt,
            'destination_receipt': self.destination_receipt,
        }
        if error is not None:
            res['reason'] = error.reason
            res['message'] = str(error.args[0])
        return res
