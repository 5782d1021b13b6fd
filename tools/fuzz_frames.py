#!/usr/bin/env python3
"""Bounded fuzzer for the tunnel frame codec (secmig_nova.tunnel.frames).

Every input goes through :func:`fuzz_one`, which feeds it to
``FrameDecoder`` (whole, and again in small pieces through the
``writable()``/``commit()`` path), parses each decoded frame with its
``pull_*`` function, and also hands the raw bytes to every ``pull_*``
function as a payload.  The only exception allowed out of the codec is
``FrameError``; anything else, a disagreement between the two decoder
paths, or an accepted payload that does not serialise back to the very
same bytes is reported as a failure.

Inputs are the known-answer vectors mutated with a seeded
``random.Random``: bit flips, interesting bytes, truncations, length-field
and type-byte edits, splices and plain random bytes.  Run it for a number
of iterations or seconds, whichever ends first::

    python tools/fuzz_frames.py --seconds 60 --seed 1
    python tools/fuzz_frames.py --iterations 100000
    python tools/fuzz_frames.py --hex 0300000001ff     # replay one input

It prints one summary line and exits 1 on the first failure, after
printing the failing input as hex.  The unit tests run it for about two
seconds so that CI exercises it on every change.

Coverage-guided fuzzing: atheris is not a dependency, but it can drive the
same entry point unchanged::

    import atheris, sys
    atheris.Setup(sys.argv, fuzz_frames.fuzz_one)
    atheris.Fuzz()
"""

import argparse
import collections
import json
import os
import random
import sys
import time
import traceback

try:
    from secmig_nova.tunnel import frames
except ImportError:
    # Run straight from a source tree: python tools/fuzz_frames.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    from secmig_nova.tunnel import frames  # noqa: E402


VECTORS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'tests', 'unit', 'tunnel', 'vectors',
    'frames.json')

# FrameType -> (pull, push) where push(value) rebuilds the whole frame.
_CODECS = {
    frames.FrameType.HELLO: (frames.pull_hello, frames.push_hello),
    frames.FrameType.HELLO_OK: (frames.pull_hello_ok, frames.push_hello_ok),
    frames.FrameType.DATA: (frames.pull_data, frames.push_data),
    frames.FrameType.CHECKPOINT: (frames.pull_checkpoint,
                                  frames.push_checkpoint),
    frames.FrameType.ACK: (frames.pull_ack, frames.push_ack),
    frames.FrameType.END: (frames.pull_end, frames.push_end),
    frames.FrameType.RECEIPT: (frames.pull_receipt, frames.push_receipt),
    frames.FrameType.ABORT: (frames.pull_abort, frames.push_abort),
}

_INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0x81, 0xC0, 0xC3,
                      0xED, 0xFE, 0xFF)


class FuzzFailure(AssertionError):
    """The codec misbehaved on an input (not a FrameError)."""


def _pull_checked(ftype, payload):
    """Parse a payload; an accepted one must serialise back identically."""
    pull, push = _CODECS[ftype]
    try:
        value = pull(payload)
    except frames.FrameError as exc:
        return ('error', exc.code.reason)
    rebuilt = push(value)
    original = frames.push_header(ftype, len(payload)) + bytes(payload)
    if rebuilt != original:
        raise FuzzFailure('%s: %r does not serialise back to its input'
                          % (ftype.name, value))
    if isinstance(value, memoryview):
        # DATA comes back as the payload view itself; compare contents.
        value = bytes(value)
    return ('ok', repr(value))


def _decode(data, chunk):
    """Decode a stream; returns a comparable list of what came out."""
    decoder = frames.FrameDecoder(initial_size=16)
    out = []
    pos = 0
    try:
        while True:
            if chunk is None:
                decoder.feed(data)
                pos = len(data)
            else:
                view = decoder.writable(min_free=chunk)
                n = min(chunk, len(view), len(data) - pos)
                view[:n] = data[pos:pos + n]
                decoder.commit(n)
                pos += n
            for ftype, payload in decoder.frames():
                if not isinstance(payload, memoryview):
                    raise FuzzFailure('payload is not a memoryview')
                out.append((ftype, bytes(payload),
                            _pull_checked(ftype, payload)))
            if pos >= len(data):
                break
    except frames.FrameError as exc:
        out.append(('dead', exc.code.reason))
        # A dead decoder must stay dead with the same error.
        try:
            decoder.frames()
        except frames.FrameError as again:
            if again.code != exc.code:
                raise FuzzFailure('dead decoder changed its error')
        else:
            raise FuzzFailure('dead decoder came back to life')
        return out
    out.append(('pending', decoder.pending()))
    return out


def fuzz_one(data):
    """Run one input through every entry point of the codec.

    Returns a small dict of counters; raises on a bug (never on a
    FrameError, which is the expected answer to bad input).
    """
    data = bytes(data)
    stats = collections.Counter()
    whole = _decode(data, None)
    chunk = (data[0] % 11) + 1 if data else 1
    pieces = _decode(data, chunk)
    if whole != pieces:
        raise FuzzFailure('whole feed and %d-byte pieces disagree:\n%r\n%r'
                          % (chunk, whole, pieces))
    for item in whole:
        if item[0] == 'dead':
            stats['decoder_error:' + item[1]] += 1
        elif item[0] != 'pending':
            stats['frames'] += 1
    try:
        frames.parse_header(data)
    except frames.FrameError:
        stats['bad_headers'] += 1
    for ftype in _CODECS:
        if _pull_checked(ftype, data)[0] == 'error':
            stats['pull_errors'] += 1
        else:
            stats['pull_ok'] += 1
    return stats


# -- input generation -------------------------------------------------------

def load_corpus(path=VECTORS):
    """Seed inputs: the vectors plus a few multi-frame streams."""
    corpus = []
    try:
        with open(path) as f:
            corpus.extend(bytes.fromhex(v['hex']) for v in json.load(f))
    except OSError:
        pass
    digest = bytes(range(32))
    stream = b''.join((
        frames.push_hello(frames.Hello(1, frames.StreamKind.DISK, 2,
                                       'mig', 'a.b.c')),
        frames.push_hello_ok(frames.HelloOk(1, 2)),
        frames.push_data(b'x' * 40),
        frames.push_checkpoint(frames.Checkpoint(40, digest, final=True)),
        frames.push_ack(frames.Ack(40, digest, True, 0, digest)),
        frames.push_end('h.p.s'),
        frames.push_receipt('h.p.s'),
        frames.push_abort(frames.Abort(frames.AbortCode.TIMEOUT, 'late')),
    ))
    corpus.append(stream)
    return corpus


def _edit_length(rng, data):
    if len(data) < frames.HEADER_SIZE:
        return data
    # Usually the first header, sometimes any offset (a later frame's).
    at = 0 if rng.random() < 0.6 else rng.randrange(
        len(data) - frames.HEADER_SIZE + 1)
    type_byte = data[at]
    current = int.from_bytes(data[at + 1:at + 5], 'big')
    choices = [0, 1, current - 1, current + 1, 0xFFFFFFFF, 0x7FFFFFFF,
               rng.randrange(1 << 32), frames.MAX_DATA, frames.MAX_DATA + 1]
    if type_byte in frames.LIMITS.keys():
        lo, hi, _fixed = frames.LIMITS[frames.FrameType(type_byte)]
        choices += [lo - 1, lo, hi, hi + 1]
    new = rng.choice(choices) & 0xFFFFFFFF
    return data[:at + 1] + new.to_bytes(4, 'big') + data[at + 5:]


def _mutate_once(rng, data, corpus):
    op = rng.randrange(10)
    if op == 0 and data:                                    # bit flips
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if op == 1 and data:                                    # magic byte
        buf = bytearray(data)
        buf[rng.randrange(len(buf))] = rng.choice(_INTERESTING_BYTES)
        return bytes(buf)
    if op == 2:                                             # truncate
        return data[:rng.randint(0, len(data))]
    if op == 3:                                             # length field
        return _edit_length(rng, data)
    if op == 4 and data:                                    # type byte
        return bytes((rng.randrange(256),)) + data[1:]
    if op == 5:                                             # append junk
        return data + rng.randbytes(rng.randint(1, 16))
    if op == 6:                                             # concatenate
        return data + rng.choice(corpus)
    if op == 7 and data:                                    # splice
        other = rng.choice(corpus)
        return (data[:rng.randint(0, len(data))]
                + other[rng.randint(0, len(other)):])
    if op == 8 and data:                                    # delete range
        a = rng.randrange(len(data))
        return data[:a] + data[a + rng.randint(1, 8):]
    return rng.randbytes(rng.randint(0, 64))                # random bytes


def generate(rng, corpus):
    data = rng.choice(corpus)
    for _ in range(rng.randint(1, 4)):
        data = _mutate_once(rng, data, corpus)
    return data


# -- command line -----------------------------------------------------------

def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iterations', type=int, default=0,
                        help='stop after N inputs (0: no limit)')
    parser.add_argument('--seconds', type=float, default=0,
                        help='stop after S seconds (0: no limit; 10 if '
                             'neither limit is given)')
    parser.add_argument('--seed', type=int, default=None,
                        help='random seed (default: random, printed)')
    parser.add_argument('--hex', default=None,
                        help='run a single input given as hex and exit')
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    if args.hex is not None:
        print(dict(fuzz_one(bytes.fromhex(args.hex))))
        return 0
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), 'big')
    seconds = args.seconds
    if not args.iterations and not seconds:
        seconds = 10.0
    rng = random.Random(seed)
    corpus = load_corpus()
    totals = collections.Counter()
    started = time.monotonic()
    deadline = started + seconds if seconds else None
    count = 0
    failed = None
    while not args.iterations or count < args.iterations:
        if deadline is not None and time.monotonic() >= deadline:
            break
        data = generate(rng, corpus)
        count += 1
        try:
            totals.update(fuzz_one(data))
        except Exception:
            failed = data
            sys.stderr.write('FAIL input=%s\n' % data.hex())
            traceback.print_exc()
            break
    errors = sum(v for k, v in totals.items()
                 if k.startswith('decoder_error:'))
    print('fuzz_frames: seed=%d iterations=%d seconds=%.2f frames=%d '
          'decoder_errors=%d pull_ok=%d pull_errors=%d result=%s'
          % (seed, count, time.monotonic() - started, totals['frames'],
             errors, totals['pull_ok'], totals['pull_errors'],
             'FAIL' if failed is not None else 'ok'))
    return 1 if failed is not None else 0


if __name__ == '__main__':
    sys.exit(main())
