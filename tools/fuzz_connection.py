#!/usr/bin/env python3
"""Bounded fuzzer for the tunnel connection state machine (tunnel.connection).

Where tools/fuzz_frames.py fuzzes the frame codec, this one drives a real
``Connection`` pump (its ``run()`` loop, handlers, flow control and
receipts) in either role, source or destination, against a scripted peer.
A case is a seeded sequence of peer actions: DATA of random sizes,
CHECKPOINTs with right or wrong offsets and digests (FINAL or not), ACKs
and ACK FINALs (right, wrong, of the wrong kind), END and RECEIPT with
valid, mis-signed, wrong-totals or junk receipts, ABORTs with random codes
and reasons (control characters included), HELLO/HELLO_OK after the
handshake, raw bytes from the codec fuzzer's mutator, and mutations of the
next frame.  The sequence starts as a well-behaved peer's and is then
edited at random, so cases reach every state, including completion.

The peer is reactive: it decodes what the pump sends, so "ACK right" means
the right ACK for the pump's oldest unacknowledged checkpoint, and a
valid END or RECEIPT is signed over the totals the peer saw.  The TLS and
the local (QEMU) socket are fakes; what the peer reads (all, some, none)
and what the local QEMU does (takes all, some, or breaks) is part of the
case.  Invariants checked for every case:

* the pump ends within ``MAX_STEPS`` loop rounds and ``CASE_SECONDS``;
* it ends either completed (state DONE, both receipts present, totals
  equal to what the peer sent and saw) or with a ``TunnelError`` whose
  reason is known (an ``AbortCode`` name, a constant of the errors
  module, or ``code_N`` for a peer's ABORT with a code unknown to us),
  never with another exception; its message is printable;
* at every call into a fake: the frames queued for the peer, the DATA
  waiting for the local QEMU and the decoder's buffer stay within the
  "Flow control and memory" bounds of doc/source/tunnel-protocol.rst
  (2244852 bytes + chunk_size in all), the pump's own unacknowledged
  checkpoints and its unsent ACKs within ``CHECKPOINT_WINDOW``.

Usage (same style as fuzz_frames.py)::

    python tools/fuzz_connection.py --seconds 60 --seed 1
    python tools/fuzz_connection.py --iterations 500
    python tools/fuzz_connection.py --case-seed 123456    # replay one case
    python tools/fuzz_connection.py --replay case.json     # or a JSON case

It prints one summary line and exits 1 on the first failure, after
printing the failing case (its seed and its JSON).  The unit tests run it
for a few seconds so that CI exercises it on every change.
"""

import argparse
import collections
import contextlib
import errno
import json
import os
import random
import re
import socket
import ssl
import sys
import time
import traceback

try:
    from secmig_nova.tunnel import connection
except ImportError:
    # Run straight from a source tree: python tools/fuzz_connection.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    from secmig_nova.tunnel import connection  # noqa: E402
from secmig_nova.authz import tokens  # noqa: E402
from secmig_nova.tunnel import errors  # noqa: E402
from secmig_nova.tunnel import frames  # noqa: E402

CHECKPOINT_BYTES = 16 * 1024
CHUNK = 4096
MAX_STEPS = 20000
CASE_SECONDS = 10.0
# Rounds a reactive action waits for the pump's output before it gives up.
PATIENCE = 30
WINDOW = connection.CHECKPOINT_WINDOW

# "Flow control and memory": one maximal frame plus the receive room, the
# same again waiting for QEMU, and chunk_size + 16618 queued for the peer.
RECEIVE_BOUND = frames.HEADER_SIZE + frames.MAX_PAYLOAD + 64 * 1024
QUEUE_BOUND = CHUNK + 16618
TOTAL_BOUND = 2244852 + CHUNK

KNOWN_REASONS = frozenset(
    {code.reason for code in frames.AbortCode}
    | {value for name, value in vars(errors).items()
       if name.isupper() and isinstance(value, str)}
    | {connection.FLOW_CONTROL_VIOLATION})
_UNKNOWN_CODE = re.compile(r'code_[0-9]+')

_TEXT = ('ok', 'digest mismatch', '\n', '\r\n', '\x00', '\x1b[31m', '\t',
         '\u202e', '\u2028', '\x7f', '\\', 'é', '\U0001f600', 'x' * 300)


class FuzzFailure(AssertionError):
    """The pump broke an invariant."""


# -- environment: one PKI, grant and trust stores per process ---------------

_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        from secmig_nova.trust import store as trust_store
        from tests.fixtures import pki as pki_fixture
        pki = pki_fixture.get()
        store_a = trust_store.TrustStore.load(**pki.a.trust())
        store_b = trust_store.TrustStore.load(**pki.b.trust())
        grant = tokens.verify_grant(pki.grant('192.0.2.10:49400'), store_b)
        info = {
            'migration_id': 'mig-1', 'kind': 'memory', 'index': 0,
            'grant': grant, 'tls_version': 'TLSv1.3',
            'tls_cipher': 'TLS_AES_256_GCM_SHA384',
            'src_fingerprint': pki.fingerprint(pki.a, 'host-a'),
            'dst_fingerprint': pki.fingerprint(pki.b, 'host-b'),
        }
        _ENV = {'pki': pki, 'store_a': store_a, 'store_b': store_b,
                'info': info}
    return _ENV


def _ready_fd():
    """A socket that always polls readable and writable (no waiting)."""
    a, b = socket.socketpair()
    b.send(b'!')
    return a, b


# -- the peer ----------------------------------------------------------------

class Peer:
    """The scripted peer: resolves actions against what the pump sent."""

    def __init__(self, role, ops):
        self.role = role            # the pump's role
        self.ops = collections.deque(ops)
        self.tx = connection.Direction()    # DATA we sent
        self.rx = connection.Direction()    # DATA the pump sent us
        self.decoder = frames.FrameDecoder()
        self.unacked = collections.deque()  # the pump's checkpoints
        self.our_checkpoint = 0
        self.ack_final_seen = False
        self.end_token = None
        self.mutate_seed = None
        self.waited = 0

    def observe(self, data):
        self.decoder.feed(bytes(data))
        for ftype, payload in self.decoder.frames():
            if ftype is frames.FrameType.DATA:
                self.rx.update(payload)
            elif ftype is frames.FrameType.CHECKPOINT:
                cp = frames.pull_checkpoint(payload)
                self.unacked.append((cp.offset, cp.digest, cp.final))
            elif ftype is frames.FrameType.ACK:
                if frames.pull_ack(payload).final:
                    self.ack_final_seen = True
            elif ftype is frames.FrameType.END:
                self.end_token = frames.pull_end(payload)

    # Each returns the bytes to send, or None to wait for the pump.

    def next_bytes(self):
        """Bytes of the next action; b'' when the script is over."""
        while self.ops:
            out = self._resolve(self.ops[0])
            if out is None:
                if self.waited < PATIENCE:
                    self.waited += 1
                    return None
                out = b''   # gave up waiting: skip the action
            self.waited = 0
            self.ops.popleft()
            if out and self.mutate_seed is not None:
                from_fuzz = _frame_fuzzer()
                out = from_fuzz._mutate_once(random.Random(self.mutate_seed),
                                             out, [out])
                self.mutate_seed = None
            if out:
                return out
        return b''

    def _receipt_claims(self, role):
        env = _env()
        info = env['info']
        grant = info['grant']
        src, dst = (self.rx, self.tx) if self.role == 'source' \
            else (self.tx, self.rx)
        now = time.time()
        return {
            'role': role, 'migration_id': info['migration_id'],
            'instance_uuid': grant.instance_uuid, 'grant_jti': grant.jti,
            'stream_kind': info['kind'],
            'connection_index': info['index'],
            'src_to_dst': src.totals(), 'dst_to_src': dst.totals(),
            'started_at': round(now, 3), 'ended_at': round(now, 3),
            'src_fingerprint': info['src_fingerprint'],
            'dst_fingerprint': info['dst_fingerprint'],
            'src_cloud': grant.src_cloud, 'dst_cloud': grant.dst_cloud,
            'tls_version': info['tls_version'],
            'tls_cipher': info['tls_cipher'],
        }

    def _sign(self, claims, host=None):
        pki = _env()['pki']
        if self.role == 'source':   # we are the destination
            cloud, name = pki.b, host or 'host-b'
        else:
            cloud, name = pki.a, host or 'host-a'
        return tokens.sign_receipt(cloud.credentials(name), claims)

    def _ack(self, how):
        if how == 'final' or how == 'pending':
            if not self.unacked:
                return None
            out = []
            while self.unacked:
                offset, digest, final = self.unacked[0]
                if final and how != 'final':
                    break
                self.unacked.popleft()
                out.append(frames.push_ack(frames.Ack(
                    offset, digest, final=final,
                    rev_bytes=self.tx.bytes if final else None,
                    rev_digest=self.tx.digest() if final else None)))
            if how == 'final' and not out:
                return None
            return b''.join(bytes(f) for f in out) or None
        offset, digest, final = self.unacked.popleft() if self.unacked \
            else (self.rx.bytes, self.rx.digest(), False)
        if how == 'wrong_offset':
            offset = (offset + 1) % (1 << 63)
        elif how == 'wrong_digest':
            digest = bytes(32)
        elif how == 'wrong_kind':
            final = not final
        elif how == 'wrong_rev':
            final = True
        rev_bytes = self.tx.bytes + (how == 'wrong_rev')
        return frames.push_ack(frames.Ack(
            offset, digest, final=final,
            rev_bytes=rev_bytes if final else None,
            rev_digest=self.tx.digest() if final else None))

    def _checkpoint(self, how, final):
        offset, digest = self.tx.bytes, self.tx.digest()
        if how == 'wrong_offset':
            offset += 1
        elif how == 'wrong_digest':
            digest = bytes(32)
        elif how == 'stale':
            offset, digest = self.our_checkpoint, bytes(32)
        if how == 'right' and not final:
            self.our_checkpoint = offset
        return frames.push_checkpoint(frames.Checkpoint(offset, digest,
                                                        final=final))

    def _receipt_frame(self, kind, how):
        push = frames.push_end if kind == 'end' else frames.push_receipt
        if how == 'junk':
            return push('a.b.c')
        if kind == 'end':
            claims = self._receipt_claims('source')
            if self.role == 'destination' and not self.ack_final_seen:
                return None
        else:
            if self.end_token is None:
                return None
            claims = self._receipt_claims('destination')
            claims['source_receipt_sha256'] = tokens.token_digest(
                self.end_token)
            if how == 'no_ref':
                del claims['source_receipt_sha256']
        if how == 'wrong_totals':
            claims['src_to_dst'] = {'bytes': claims['src_to_dst']['bytes']
                                    + 1, 'sha256': '00' * 32}
        elif how == 'wrong_role':
            claims['role'] = 'source' if kind == 'receipt' else 'destination'
        host = None
        if how == 'other_host':
            host = 'host-b2' if self.role == 'source' else 'host-a2'
        return push(self._sign(claims, host))

    def _resolve(self, op):
        kind = op[0]
        if kind == 'data':
            if not op[1]:
                # Empty DATA: refused by push_data, so built by hand.
                return bytes((frames.FrameType.DATA, 0, 0, 0, 0))
            data = bytes((self.tx.bytes + i) % 251 for i in range(min(
                op[1], 4096))) * (op[1] // 4096 + 1)
            data = data[:op[1]]
            self.tx.update(data)
            return bytes(frames.push_data(data))
        if kind == 'checkpoint':
            return bytes(self._checkpoint(op[1], op[2]))
        if kind == 'ack':
            out = self._ack(op[1])
            return None if out is None else bytes(out)
        if kind in ('end', 'receipt'):
            out = self._receipt_frame(kind, op[1])
            return None if out is None else bytes(out)
        if kind == 'abort':
            return bytes(frames.push_abort(frames.Abort(op[1], op[2])))
        if kind == 'hello':
            return bytes(frames.push_hello(frames.Hello(
                1, frames.StreamKind.MEMORY, 0, 'mig-1', 'a.b.c')))
        if kind == 'hello_ok':
            return bytes(frames.push_hello_ok(frames.HelloOk(1, 0)))
        if kind == 'raw':
            return bytes.fromhex(op[1])
        if kind == 'mutate':
            self.mutate_seed = op[1]
            return b''
        if kind == 'wait':
            if self.waited < op[1]:
                return None
            return b''
        raise ValueError('unknown action %r' % (op,))


_FRAME_FUZZER = None


def _frame_fuzzer():
    """tools/fuzz_frames.py, for its mutator and corpus."""
    global _FRAME_FUZZER
    if _FRAME_FUZZER is None:
        import importlib.util
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'fuzz_frames.py')
        spec = importlib.util.spec_from_file_location('fuzz_frames', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.CORPUS = module.load_corpus()
        _FRAME_FUZZER = module
    return _FRAME_FUZZER


# -- the fakes ---------------------------------------------------------------

class _Hang(FuzzFailure):
    pass


class Harness:
    """A Connection with fake TLS, local socket and control."""

    def __init__(self, case):
        self.case = case
        self.rng = random.Random(case['seed'])
        self.role = case['role']
        self.peer = Peer(self.role, case['ops'])
        self.steps = 0
        self.deadline = time.monotonic() + CASE_SECONDS
        self.failures = []
        self.local_in = memoryview(bytes(
            i % 253 for i in range(case['local_bytes'])))
        self.local_sent = 0
        self.shut = False
        self.after_op = False
        self.partial = b''
        self.fd, self.fd_peer = _ready_fd()
        env = _env()
        pki = env['pki']
        if self.role == 'source':
            credentials = pki.a.credentials('host-a')
            peer_store = env['store_b']
        else:
            credentials = pki.b.credentials('host-b')
            peer_store = env['store_a']
        self.conn = connection.Connection(
            self.role, self, _Local(self), dict(env['info']), credentials,
            peer_store, self, CHECKPOINT_BYTES, CHUNK, 60.0)

    def close(self):
        self.fd.close()
        self.fd_peer.close()

    def fail(self, message):
        self.failures.append(message)
        raise FuzzFailure(message)

    def check(self):
        conn = self.conn
        queued = sum(len(f) for f in conn.tls_out)
        waiting = sum(len(d) for d in conn.local_out)
        receiving = conn.decoder.capacity
        if queued > QUEUE_BOUND:
            self.fail('%d bytes queued for the peer > %d'
                      % (queued, QUEUE_BOUND))
        if waiting > RECEIVE_BOUND:
            self.fail('%d bytes wait for QEMU > %d' % (waiting,
                                                       RECEIVE_BOUND))
        if receiving > RECEIVE_BOUND:
            self.fail('decoder holds %d bytes > %d' % (receiving,
                                                       RECEIVE_BOUND))
        if queued + waiting + receiving > TOTAL_BOUND:
            self.fail('connection holds %d bytes > %d'
                      % (queued + waiting + receiving, TOTAL_BOUND))
        if len(conn.pending_checkpoints) > WINDOW:
            self.fail('%d own checkpoints unacknowledged > window %d'
                      % (len(conn.pending_checkpoints), WINDOW))
        unsent = sum(1 for end in conn._ack_ends if end > conn._sent)
        if unsent > WINDOW:
            self.fail('%d ACKs unsent > window %d' % (unsent, WINDOW))

    # control
    stop_reason = 'fuzz'

    def should_stop(self):
        self.steps += 1
        if self.steps > MAX_STEPS or time.monotonic() > self.deadline:
            self.failures.append('pump did not end: %d rounds' % self.steps)
            raise _Hang(self.failures[-1])
        self.check()
        return False, None

    # TLS
    def setblocking(self, flag):
        pass

    def fileno(self):
        return self.fd.fileno()

    def pending(self):
        return 0

    def send(self, data):
        self.check()
        mode = self.case['peer_reads']
        if mode == 'none' or (mode == 'some' and self.rng.random() < 0.3):
            raise ssl.SSLWantWriteError()
        n = len(data)
        if mode == 'some' and n > 1:
            n = self.rng.randint(1, n)
        try:
            self.peer.observe(bytes(data[:n]))
        except Exception as e:
            self.fail('the pump sent what the peer cannot decode: %r' % e)
        return n

    def recv_into(self, view):
        self.check()
        if not self.partial:
            if self.after_op:
                # One action per round: the pump reacts in between.
                self.after_op = False
                raise ssl.SSLWantReadError()
            try:
                out = self.peer.next_bytes()
            except Exception as e:
                self.fail('fuzzer bug in the scripted peer: %r' % e)
            if out is None:
                raise ssl.SSLWantReadError()
            if not out:
                end = self.case['end']
                if end == 'reset':
                    raise ConnectionResetError(errno.ECONNRESET, 'reset')
                if end == 'bad_mac':
                    raise ssl.SSLError(1, '[SSL: DECRYPTION_FAILED_OR_'
                                          'BAD_RECORD_MAC] bad record mac')
                return 0
            self.partial = memoryview(out)
        n = min(len(view), len(self.partial), 16 * 1024)
        view[:n] = self.partial[:n]
        self.partial = self.partial[n:]
        if not self.partial:
            self.after_op = True
        return n


class _Local:
    """The local QEMU socket of the pump."""

    def __init__(self, harness):
        self.h = harness

    def setblocking(self, flag):
        pass

    def fileno(self):
        return self.h.fd.fileno()

    def recv_into(self, view):
        h = self.h
        h.check()
        if not h.local_in:
            if h.role == 'source' or h.case['local_end'] == 'eof':
                return 0
            if h.case['local_end'] == 'reset':
                raise ConnectionResetError(errno.ECONNRESET, 'reset')
            raise BlockingIOError()
        n = min(len(view), len(h.local_in), h.rng.choice(
            (len(view), h.rng.randint(1, len(view)))))
        view[:n] = h.local_in[:n]
        h.local_in = h.local_in[n:]
        return n

    def send(self, data):
        h = self.h
        h.check()
        mode = h.case['local_takes']
        n = len(data)
        if mode == 'some' and n:
            if h.rng.random() < 0.2:
                raise BlockingIOError()
            n = h.rng.randint(1, n)
        elif isinstance(mode, int) and h.local_sent + n > mode:
            raise BrokenPipeError(errno.EPIPE, 'Broken pipe')
        h.local_sent += n
        return n

    def shutdown(self, how):
        self.h.shut = True


# -- running a case ----------------------------------------------------------

def _check_reason(reason, what):
    if reason in KNOWN_REASONS or _UNKNOWN_CODE.fullmatch(reason or ''):
        return
    raise FuzzFailure('%s %r is not a known reason' % (what, reason))


@contextlib.contextmanager
def _short_grace():
    saved = connection.PEER_END_GRACE
    connection.PEER_END_GRACE = 0.02
    try:
        yield
    finally:
        connection.PEER_END_GRACE = saved


def run_case(case):
    """Run one case; returns its outcome (a reason or 'completed')."""
    h = Harness(case)
    try:
        with _short_grace():
            try:
                h.conn.run()
            except errors.TunnelError as e:
                if h.failures:
                    raise FuzzFailure(h.failures[0])
                _check_reason(e.reason, 'reason')
                if e.peer_reason is not None:
                    _check_reason(e.peer_reason, 'peer reason')
                for text in (str(e), e.args[0]):
                    if not text.isprintable():
                        raise FuzzFailure('message not printable: %r'
                                          % text)
                res = h.conn.result(errors.status_of(e), e)
                json.dumps(res)
                return e.reason
            except FuzzFailure:
                raise
            except Exception as e:
                raise FuzzFailure('pump raised %s, not a TunnelError: %s'
                                  % (type(e).__name__, e)) from e
        if h.failures:
            raise FuzzFailure(h.failures[0])
        _check_completed(h)
        return 'completed'
    finally:
        h.close()


def _check_completed(h):
    conn, peer = h.conn, h.peer
    if conn.state is not connection.State.DONE:
        raise FuzzFailure('run() returned in state %s' % conn.state.value)
    if not conn.source_receipt or not conn.destination_receipt:
        raise FuzzFailure('completed without both receipts')
    if conn.rx.totals() != peer.tx.totals():
        raise FuzzFailure('completed, but received %r, peer sent %r'
                          % (conn.rx.totals(), peer.tx.totals()))
    if conn.tx.totals() != peer.rx.totals():
        raise FuzzFailure('completed, but sent %r, peer saw %r'
                          % (conn.tx.totals(), peer.rx.totals()))
    if h.role == 'destination' and not h.shut:
        raise FuzzFailure('completed without closing the QEMU stream')
    json.dumps(conn.result())


# -- generating cases --------------------------------------------------------

def _text(rng):
    return ''.join(rng.choice(_TEXT) if rng.random() < 0.5
                   else chr(rng.randrange(0x20, 0x3000))
                   for _ in range(rng.randint(0, 12)))


def _data_size(rng):
    return rng.choice((0, 1, rng.randint(1, CHUNK), rng.randint(1, 70000),
                       rng.randint(1, 70000), frames.MAX_DATA))


def random_op(rng):
    kind = rng.randrange(12)
    if kind == 0:
        return ['data', _data_size(rng)]
    if kind == 1:
        return ['checkpoint', rng.choice(('right', 'right', 'wrong_offset',
                                          'wrong_digest', 'stale')),
                rng.random() < 0.3]
    if kind == 2:
        return ['ack', rng.choice(('pending', 'final', 'right',
                                   'wrong_offset', 'wrong_digest',
                                   'wrong_kind', 'wrong_rev'))]
    if kind == 3:
        return ['end', rng.choice(('valid', 'junk', 'wrong_totals',
                                   'wrong_role', 'other_host'))]
    if kind == 4:
        return ['receipt', rng.choice(('valid', 'junk', 'no_ref',
                                       'wrong_totals', 'wrong_role',
                                       'other_host'))]
    if kind == 5:
        code = rng.choice((int(rng.choice(list(frames.AbortCode))),
                           rng.randrange(1 << 16)))
        return ['abort', code, _text(rng)]
    if kind == 6:
        return [rng.choice(('hello', 'hello_ok'))]
    if kind in (7, 8):
        fuzzer = _frame_fuzzer()
        return ['raw', fuzzer.generate(rng, fuzzer.CORPUS).hex()]
    if kind == 9:
        return ['mutate', rng.randrange(1 << 32)]
    return ['wait', rng.randint(1, 5)]


def well_behaved(rng, role, local_bytes):
    """A peer that follows the protocol, for the pump in ``role``."""
    ops = []
    if role == 'destination':           # we are the source
        for _ in range(rng.randint(0, 4)):
            size = _data_size(rng) if rng.random() < 0.8 else 1
            ops.append(['data', size])
            if size and rng.random() < 0.5:
                ops.append(['checkpoint', 'right', False])
            ops.append(['ack', 'pending'])
        ops.append(['checkpoint', 'right', True])
        ops.append(['end', 'valid'])
    else:                               # we are the destination
        for _ in range(local_bytes // CHECKPOINT_BYTES + 1):
            if rng.random() < 0.5:
                size = rng.randint(1, 20000)
                ops.append(['data', size])
                if rng.random() < 0.5:
                    ops.append(['checkpoint', 'right', False])
            ops.append(['ack', 'pending'])
        ops.append(['ack', 'final'])
        ops.append(['receipt', 'valid'])
    return ops


def generate_case(seed):
    rng = random.Random(seed)
    role = rng.choice(('source', 'destination'))
    local_bytes = rng.choice((0, rng.randint(1, CHUNK),
                              rng.randint(1, 3 * CHECKPOINT_BYTES + 100)))
    ops = well_behaved(rng, role, local_bytes)
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 6))):
        at = rng.randint(0, len(ops))
        edit = rng.randrange(4)
        if edit == 0 or not ops:
            ops.insert(at, random_op(rng))
        elif edit == 1:
            del ops[min(at, len(ops) - 1)]
        elif edit == 2:
            ops[min(at, len(ops) - 1)] = random_op(rng)
        else:
            ops.insert(at, ['mutate', rng.randrange(1 << 32)])
    return {
        'seed': seed, 'role': role, 'local_bytes': local_bytes,
        'local_end': rng.choice(('eof', 'open', 'open', 'reset')),
        'local_takes': rng.choice(('all', 'all', 'some',
                                   rng.randrange(1 << 17))),
        'peer_reads': rng.choice(('all', 'all', 'all', 'some', 'none')),
        'end': rng.choice(('eof', 'eof', 'eof', 'reset', 'bad_mac')),
        'ops': ops,
    }


# -- command line -----------------------------------------------------------

def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iterations', type=int, default=0,
                        help='stop after N cases (0: no limit)')
    parser.add_argument('--seconds', type=float, default=0,
                        help='stop after S seconds (0: no limit; 10 if '
                             'neither limit is given)')
    parser.add_argument('--seed', type=int, default=None,
                        help='random seed (default: random, printed)')
    parser.add_argument('--case-seed', type=int, default=None,
                        help='run the single case of this seed and exit')
    parser.add_argument('--replay', default=None,
                        help='run a single case given as JSON (or a file '
                             'holding it) and exit')
    parser.add_argument('--stats', action='store_true',
                        help='also print how many cases ended how')
    return parser.parse_args(argv)


def _run_reporting(case):
    """run_case, printing the case on a failure; returns outcome or None."""
    try:
        return run_case(case)
    except Exception:
        sys.stderr.write('FAIL case-seed=%d case=%s\n'
                         % (case['seed'], json.dumps(case)))
        traceback.print_exc()
        return None


def main(argv=None):
    args = _parse_args(argv)
    if args.replay is not None or args.case_seed is not None:
        if args.case_seed is not None:
            case = generate_case(args.case_seed)
        elif os.path.exists(args.replay):
            with open(args.replay) as f:
                case = json.load(f)
        else:
            case = json.loads(args.replay)
        outcome = _run_reporting(case)
        print('fuzz_connection: case-seed=%s role=%s outcome=%s'
              % (case['seed'], case['role'], outcome or 'FAIL'))
        return 0 if outcome else 1
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), 'big')
    seconds = args.seconds
    if not args.iterations and not seconds:
        seconds = 10.0
    rng = random.Random(seed)
    _env()
    outcomes = collections.Counter()
    started = time.monotonic()
    deadline = started + seconds if seconds else None
    count = 0
    failed = False
    while not args.iterations or count < args.iterations:
        if deadline is not None and time.monotonic() >= deadline:
            break
        case = generate_case(rng.randrange(1 << 32))
        count += 1
        outcome = _run_reporting(case)
        if outcome is None:
            failed = True
            break
        outcomes['code_N' if _UNKNOWN_CODE.fullmatch(outcome)
                 else outcome] += 1
    print('fuzz_connection: seed=%d cases=%d seconds=%.2f completed=%d '
          'outcomes=%d result=%s'
          % (seed, count, time.monotonic() - started, outcomes['completed'],
             len(outcomes), 'FAIL' if failed else 'ok'))
    if args.stats:
        print(json.dumps(dict(outcomes), sort_keys=True))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
