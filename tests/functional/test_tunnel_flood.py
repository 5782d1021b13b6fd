"""A pinned peer that floods or stalls an authorized tunnel connection.

The attacker here IS the peer the grant pins: it has the right certificate
and a valid grant, so the TLS handshake and HELLO/HELLO_OK pass, and then it
misuses the stream. Each attack runs against a real ``secmig-tunnel``
process on loopback, in both directions: a hostile source against the
destination tunnel (a raw TLS client with host-a's certificate), and a
hostile destination against the source tunnel (a raw TLS server with
host-b's certificate at the endpoint the grant names). Each attack is
bounded in count and time, and each test asserts the named reason the
tunnel ends with:

* a CHECKPOINT flood whose ACKs are never read must not grow the tunnel's
  memory (its RSS is sampled during the flood) and ends with
  ``flow_control_violation``;
* a CHECKPOINT that covers no new DATA is ``flow_control_violation`` even
  when the peer reads its ACKs;
* a peer that never acknowledges our checkpoints stops our stream at the
  checkpoint window, and keeping the connection busy without progress (a
  DATA frame dripped a byte at a time) does not keep it alive:
  ``idle_timeout`` means no progress, so it ends with ``timeout``.

See "Flow control and memory" in doc/source/tunnel-protocol.rst.
"""

import collections
import hashlib
import os
import select
import socket
import ssl
import threading
import time

from secmig_nova.tunnel import connection
from secmig_nova.tunnel import frames
from tests.functional import tunnel_harness as harness

# The smallest checkpoint interval the tunnel accepts: our side sends
# checkpoints early, so the window is reached after a few hundred KiB.
CHECKPOINT_BYTES = 64 * 1024
# Short, for the tests about it; generous enough for a busy machine.
IDLE_TIMEOUT = 2.0
# A flood stops after this many bytes or seconds, or when the tunnel
# closes the connection, whichever comes first.
FLOOD_BYTES = 24 << 20
FLOOD_SECONDS = 60.0
# How long an attacker keeps a connection busy without progress, at most.
DRIP_SECONDS = 30.0
DRIP_INTERVAL = 0.1
# The tunnel's RSS may grow by at most this much under a flood: the
# per-connection bound the protocol document states (about 2.5 MiB with the
# default chunk size) plus room for the interpreter and the allocator.
RSS_GROWTH_MAX = 8 << 20


class RssSampler:
    """Peak resident set size of a process from ``baseline()`` on.

    Resets the kernel's peak (``VmHWM``, via ``/proc/PID/clear_refs``)
    where it may, so that the peak between two samples is seen too; it
    samples ``VmRSS`` every few milliseconds either way.
    """

    def __init__(self, pid, interval=0.01):
        self.pid = pid
        self.interval = interval
        self.base = None
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _status(self):
        values = {}
        with open('/proc/%d/status' % self.pid) as f:
            for line in f:
                name, _, value = line.partition(':')
                if name in ('VmRSS', 'VmHWM'):
                    values[name] = int(value.split()[0]) * 1024
        return values

    def baseline(self):
        try:
            with open('/proc/%d/clear_refs' % self.pid, 'w') as f:
                f.write('5')
            self._hwm = True
        except OSError:
            self._hwm = False
        self.base = self._status()['VmRSS']
        self.peak = self.base
        self._thread.start()
        return self.base

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                values = self._status()
            except (OSError, ValueError, KeyError):
                return      # the process ended
            self.samples += 1
            peak = values.get('VmRSS', 0)
            if self._hwm:
                peak = max(peak, values.get('VmHWM', 0))
            self.peak = max(self.peak, peak)

    def stop(self):
        self._stop.set()
        self._thread.join(harness.TIMEOUT)
        return self.peak - self.base


class Peer:
    """The attacker's end of an authorized connection, in one thread.

    Non-blocking: :meth:`step` sends what is queued and, if asked to,
    reads and decodes everything that arrived (one SSL object is never
    used by two threads). It records what the tunnel sent: DATA bytes,
    CHECKPOINT offsets, ACK offsets and the ABORT's reason; it never
    answers anything.
    """

    def __init__(self, tls):
        tls.setblocking(False)
        self.tls = tls
        self.decoder = frames.FrameDecoder()
        self.out = collections.deque()
        self.data = 0
        self.checkpoints = []
        self.acks = []
        self.abort = None
        self.closed = False

    def send(self, frame):
        self.out.append(bytes(frame))

    def step(self, read=True, wait=0.02):
        """One round; returns False once the connection is gone."""
        while self.out and not self.closed:
            try:
                n = self.tls.send(self.out[0])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError:
                self.closed = True
                break
            if n < len(self.out[0]):
                self.out[0] = self.out[0][n:]
            else:
                self.out.popleft()
        while read and not self.closed:
            try:
                chunk = self.tls.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            self.decoder.feed(chunk)
            for ftype, payload in self.decoder.frames():
                self._record(ftype, bytes(payload))
        if self.closed:
            return False
        select.select([self.tls] if read else [],
                      [self.tls] if self.out else [], [], wait)
        return True

    def _record(self, ftype, payload):
        if ftype == frames.FrameType.DATA:
            self.data += len(payload)
        elif ftype == frames.FrameType.CHECKPOINT:
            self.checkpoints.append(frames.pull_checkpoint(payload).offset)
        elif ftype == frames.FrameType.ACK:
            self.acks.append(frames.pull_ack(payload).offset)
        elif ftype == frames.FrameType.ABORT:
            self.abort = frames.pull_abort(payload).code.reason

    def run_until(self, predicate, seconds, read=True):
        """Step until ``predicate()``, the connection ends or ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not predicate():
            if not self.step(read):
                return False
        return not self.closed


class AdvancingCheckpoints:
    """Blocks of pairs: a 1-byte DATA and a valid CHECKPOINT after it.

    Every CHECKPOINT is one the receiver must verify and acknowledge: its
    offset and digest are right and it covers one new byte. Each block
    goes on where the previous one ended.
    """

    def __init__(self, pairs):
        self.pairs = pairs
        self.data = bytes(frames.push_data(b'x'))
        self.sha = hashlib.sha256()
        self.offset = 0

    def __call__(self):
        out = []
        for _ in range(self.pairs):
            self.sha.update(b'x')
            self.offset += 1
            out.append(self.data)
            out.append(frames.push_checkpoint(frames.Checkpoint(
                offset=self.offset, digest=self.sha.copy().digest())))
        return b''.join(out)


def empty_checkpoints(count):
    """Blocks of ``count`` CHECKPOINTs at offset 0: right, but no data."""
    block = frames.push_checkpoint(frames.Checkpoint(
        offset=0, digest=hashlib.sha256().digest())) * count
    return lambda: block


class FloodTestCase(harness.TunnelTestCase):

    # -- a hostile source against a real destination ---------------------

    def hostile_source(self, reply=b'', **dst_over):
        """A raw source with host-a's certificate and a valid grant.

        Returns ``(destination process, TLS socket after HELLO_OK, fake
        destination QEMU)``.
        """
        dst, endpoint = self.start_destination(**dst_over)
        qemu = harness.FakeDestinationQemu(self.dst_qemu_sock, reply=reply)
        self.addCleanup(qemu.close)
        tls = self.raw_client(endpoint)
        self.addCleanup(tls.close)
        tls.sendall(self.hello(self.pki.grant(endpoint)))
        ftype, _payload = self.read_frame(tls)
        self.assertEqual(frames.FrameType.HELLO_OK, ftype)
        return dst, tls, qemu

    # -- a hostile destination against a real source ---------------------

    def hostile_destination(self, data=b'', hold=True, **src_over):
        """A raw destination with host-b's certificate at the granted endpoint.

        The fake source QEMU sends ``data`` and, with ``hold``, keeps its
        connection open (the stream does not end). Returns ``(source
        process, TLS socket after HELLO_OK, fake source QEMU)``.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)
        listener.settimeout(harness.TIMEOUT)
        endpoint = '127.0.0.1:%d' % listener.getsockname()[1]
        src = self.start(self.src_params(self.pki.grant(endpoint),
                                         **src_over))
        src.wait_ready(harness.TIMEOUT)
        release = threading.Event() if hold else None
        feeder = harness.FakeSourceQemu(self.src_sock, data, hold=release)
        self.addCleanup(feeder.wait, 5)
        if hold:
            self.addCleanup(release.set)
        raw, _ = listener.accept()
        raw.settimeout(harness.TIMEOUT)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(*self.pki.b.hosts['host-b'])
        tls = ctx.wrap_socket(raw, server_side=True)
        self.addCleanup(tls.close)
        ftype, payload = self.read_frame(tls)
        self.assertEqual(frames.FrameType.HELLO, ftype)
        hello = frames.pull_hello(payload)
        tls.sendall(frames.push_hello_ok(frames.HelloOk(
            version=frames.PROTOCOL_VERSION, conn_index=hello.conn_index)))
        return src, tls, feeder

    def attack(self, side, **over):
        """The tunnel under attack on ``side`` and the attacker's socket."""
        if side == 'destination':
            proc, tls, _qemu = self.hostile_source(**over)
        else:
            proc, tls, _feeder = self.hostile_destination(
                data=b'q' * 1000, **over)
        return proc, tls

    # -- the checks ------------------------------------------------------

    def assertFailedWith(self, proc, reason):
        rc, outcome = proc.wait(harness.TIMEOUT)
        detail = '%s\nstderr:\n%s' % (outcome, proc.stderr[-3000:])
        self.assertIsNotNone(outcome, detail)
        self.assertEqual(1, rc, detail)
        self.assertEqual(('failed', reason),
                         (outcome['status'], outcome.get('reason')), detail)
        conn, = outcome['connections']
        self.assertEqual(reason, conn['reason'], detail)
        return outcome

    def flood(self, tls, blocks):
        """Send ``blocks()`` after ``blocks()`` and never read; bounded.

        Returns the bytes sent before the tunnel closed the connection,
        the bound was reached or a send blocked for long.
        """
        tls.settimeout(10.0)
        sent = 0
        deadline = time.monotonic() + FLOOD_SECONDS
        while sent < FLOOD_BYTES and time.monotonic() < deadline:
            block = blocks()
            try:
                tls.sendall(block)
            except OSError:
                break
            sent += len(block)
        return sent


class TestCheckpointFlood(FloodTestCase):
    """Checkpoints as fast as the peer can send them, ACKs never read."""

    def _flood(self, side, blocks):
        proc, tls = self.attack(side)
        rss = RssSampler(proc.pid)
        base = rss.baseline()
        sent = self.flood(tls, blocks)
        tls.close()
        proc.wait(harness.TIMEOUT)
        growth = rss.stop()
        self.assertGreater(rss.samples, 0)
        self.assertLess(growth, RSS_GROWTH_MAX,
                        'RSS grew from %d to %d bytes under a flood of %d '
                        'bytes' % (base, base + growth, sent))
        # (How much the flood sent says little: after its ABORT the tunnel
        # reads and discards input for a second before it closes.)
        return self.assertFailedWith(proc, 'flow_control_violation')

    def test_destination_flooded_with_checkpoints(self):
        out = self._flood('destination', AdvancingCheckpoints(8192))
        self.assertIn('unacknowledged', out['message'])

    def test_source_flooded_with_checkpoints(self):
        out = self._flood('source', AdvancingCheckpoints(8192))
        self.assertIn('unacknowledged', out['message'])

    def test_destination_flooded_with_empty_checkpoints(self):
        out = self._flood('destination', empty_checkpoints(8192))
        self.assertIn('no new data', out['message'])

    def test_source_flooded_with_empty_checkpoints(self):
        out = self._flood('source', empty_checkpoints(8192))
        self.assertIn('no new data', out['message'])


class TestCheckpointWithoutData(FloodTestCase):
    """Checkpoints that cover no new DATA, the ACKs read: no progress."""

    def _repeat(self, side):
        proc, tls = self.attack(side)
        peer = Peer(tls)
        data = b'abc'
        peer.send(frames.push_data(data))
        cp = frames.push_checkpoint(frames.Checkpoint(
            offset=len(data), digest=hashlib.sha256(data).digest()))
        peer.send(cp)
        # The first checkpoint is right and acknowledged.
        self.assertTrue(peer.run_until(lambda: peer.acks, harness.TIMEOUT),
                        proc.stderr[-3000:])
        self.assertEqual([len(data)], peer.acks)
        # Then the same one again, and again (bounded).
        for _ in range(2000):
            peer.send(cp)
            if not peer.step():
                break
        peer.run_until(lambda: False, 10.0)
        tls.close()
        self.assertFailedWith(proc, 'flow_control_violation')
        # The peer was told why.
        self.assertEqual('flow_control_violation', peer.abort)
        self.assertEqual([len(data)], peer.acks)

    def test_destination(self):
        self._repeat('destination')

    def test_source(self):
        self._repeat('source')


class TestNoProgress(FloodTestCase):
    """A peer that never acknowledges and keeps the connection busy.

    Our side streams (the source's QEMU, or the destination's QEMU on the
    return path); the peer reads every byte, never sends an ACK, and drips
    a DATA frame a byte at a time, so that bytes arrive all the time but no
    payload ever does. Our sender stops at the checkpoint window, and the
    connection ends after ``idle_timeout`` without progress.
    """

    def _stall(self, side):
        stream = os.urandom(4 << 20)
        over = {'idle_timeout': IDLE_TIMEOUT,
                'checkpoint_bytes': CHECKPOINT_BYTES}
        if side == 'destination':
            proc, tls, _qemu = self.hostile_source(reply=stream, **over)
        else:
            proc, tls, _feeder = self.hostile_destination(
                data=stream, hold=False, **over)
        peer = Peer(tls)
        # The header of a 1000-byte DATA frame, then its payload dripped.
        peer.send(frames.push_header(frames.FrameType.DATA, 1000))
        deadline = time.monotonic() + DRIP_SECONDS
        next_drip = time.monotonic()
        dripped = 0
        while time.monotonic() < deadline and dripped < 999:
            if time.monotonic() >= next_drip:
                peer.send(b'd')
                dripped += 1
                next_drip += DRIP_INTERVAL
            if not peer.step(wait=0.01):
                break
        # The tunnel cut the connection while the drip went on.
        cut = peer.closed
        tls.close()
        self.assertTrue(cut, 'still connected after %d s of dripping: %s'
                        % (DRIP_SECONDS, proc.stderr[-3000:]))
        outcome = self.assertFailedWith(proc, 'timeout')
        self.assertIn('no progress', outcome['message'])
        self.assertEqual('timeout', peer.abort)
        # The window stopped our sender: no more checkpoints than it
        # allows went unacknowledged, and the stream did not go on.
        self.assertTrue(peer.checkpoints)
        self.assertLessEqual(len(peer.checkpoints),
                             connection.CHECKPOINT_WINDOW)
        self.assertLess(peer.data, len(stream))
        # Dripped all the while: bytes arrived, progress did not.
        self.assertGreaterEqual(dripped, IDLE_TIMEOUT / DRIP_INTERVAL / 2)
        self.assertEqual([], peer.acks)

    def test_destination(self):
        self._stall('destination')

    def test_source(self):
        self._stall('source')
