"""Tests for the tunnel frame codec (secmig_nova.tunnel.frames).

The known-answer vectors in vectors/frames.json were derived independently
of the code under test (see vectors/README.md); every positive vector is
checked in both directions and every negative one must fail with exactly
the documented abort code, at the documented stage (header or payload).
"""

import contextlib
import hashlib
import importlib.util
import io
import json
import os

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import testtools

from secmig_nova.tunnel import frames


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DOC = os.path.join(REPO, 'doc', 'source', 'tunnel-protocol.rst')
FUZZER = os.path.join(REPO, 'tools', 'fuzz_frames.py')

with open(os.path.join(HERE, 'vectors', 'frames.json')) as _f:
    VECTORS = json.load(_f)
POSITIVE = [v for v in VECTORS if 'frame' in v]
NEGATIVE = [v for v in VECTORS if 'error' in v]

PULL = {
    frames.FrameType.HELLO: frames.pull_hello,
    frames.FrameType.HELLO_OK: frames.pull_hello_ok,
    frames.FrameType.DATA: frames.pull_data,
    frames.FrameType.CHECKPOINT: frames.pull_checkpoint,
    frames.FrameType.ACK: frames.pull_ack,
    frames.FrameType.END: frames.pull_end,
    frames.FrameType.RECEIPT: frames.pull_receipt,
    frames.FrameType.ABORT: frames.pull_abort,
}

# No example database: CI runs must not write examples into the tree.  Set
# SECMIG_HYPOTHESIS_EXAMPLES to search harder (e.g. 5000) by hand.
PROPERTY = settings(
    database=None, deadline=None,
    max_examples=int(os.environ.get('SECMIG_HYPOTHESIS_EXAMPLES', '150')))


def _unhex(value):
    return None if value is None else bytes.fromhex(value)


def expected_value(fields):
    """The value a vector's JSON fields describe (what pull_* returns)."""
    ftype = frames.FrameType[fields['type']]
    if ftype == frames.FrameType.HELLO:
        return frames.Hello(
            version=fields['version'],
            kind=frames.StreamKind.from_label(fields['kind']),
            conn_index=fields['conn_index'],
            migration_id=fields['migration_id'], grant=fields['grant'])
    if ftype == frames.FrameType.HELLO_OK:
        return frames.HelloOk(version=fields['version'],
                              conn_index=fields['conn_index'])
    if ftype == frames.FrameType.DATA:
        return bytes.fromhex(fields['payload'])
    if ftype == frames.FrameType.CHECKPOINT:
        return frames.Checkpoint(offset=fields['offset'],
                                 digest=_unhex(fields['digest']),
                                 final=fields['final'])
    if ftype == frames.FrameType.ACK:
        return frames.Ack(offset=fields['offset'],
                          digest=_unhex(fields['digest']),
                          final=fields['final'],
                          rev_bytes=fields['rev_bytes'],
                          rev_digest=_unhex(fields['rev_digest']))
    if ftype in (frames.FrameType.END, frames.FrameType.RECEIPT):
        return fields['jws']
    return frames.Abort(code=fields['code'], reason=fields['reason'])


def push(ftype, value):
    return {
        frames.FrameType.HELLO: frames.push_hello,
        frames.FrameType.HELLO_OK: frames.push_hello_ok,
        frames.FrameType.DATA: frames.push_data,
        frames.FrameType.CHECKPOINT: frames.push_checkpoint,
        frames.FrameType.ACK: frames.push_ack,
        frames.FrameType.END: frames.push_end,
        frames.FrameType.RECEIPT: frames.push_receipt,
        frames.FrameType.ABORT: frames.push_abort,
    }[ftype](value)


def decode_all(decoder):
    """Drain a decoder, copying payloads (views die on the next feed)."""
    return [(ftype, bytes(payload)) for ftype, payload in decoder.frames()]


def decode_pieces(data, cuts):
    decoder = frames.FrameDecoder(initial_size=8)
    out = []
    prev = 0
    for cut in list(cuts) + [len(data)]:
        decoder.feed(data[prev:cut])
        out.extend(decode_all(decoder))
        prev = cut
    return out, decoder.pending()


def data_frames(count, size, fill=None):
    blob = bytearray()
    for i in range(count):
        payload = bytes([(i + j) & 0xFF for j in range(256)]) * (size // 256)
        payload += bytes(size - len(payload))
        blob += frames.push_data(payload if fill is None else fill * size)
    return bytes(blob)


class KnownAnswerTest(testtools.TestCase):
    """One generated test per vector (see the bottom of this class)."""

    def check_positive(self, vector):
        raw = bytes.fromhex(vector['hex'])
        expected = expected_value(vector['frame'])
        ftype = frames.FrameType[vector['frame']['type']]
        # Fields -> bytes.
        self.assertEqual(vector['hex'], push(ftype, expected).hex())
        # Bytes -> fields, via the header parser and via the decoder.
        self.assertEqual((ftype, len(raw) - frames.HEADER_SIZE),
                         frames.parse_header(raw[:frames.HEADER_SIZE]))
        decoder = frames.FrameDecoder()
        decoder.feed(raw)
        got = list(decoder.frames())
        self.assertEqual(1, len(got))
        self.assertEqual(ftype, got[0][0])
        value = PULL[ftype](got[0][1])
        if ftype == frames.FrameType.DATA:
            value = bytes(value)
        self.assertEqual(expected, value)
        self.assertEqual(0, decoder.pending())
        if ftype == frames.FrameType.HELLO:
            self.assertIsInstance(value.kind, frames.StreamKind)
        if ftype == frames.FrameType.ABORT:
            self.assertEqual(vector['frame']['code'] in
                             frames.AbortCode._value2member_map_,
                             isinstance(value.code, frames.AbortCode))

    def check_negative(self, vector):
        raw = bytes.fromhex(vector['hex'])
        code = frames.AbortCode.from_reason(vector['error'])
        header = raw[:frames.HEADER_SIZE]
        if vector['stage'] == 'header':
            e = self.assertRaises(frames.FrameError, frames.parse_header,
                                  header)
            self.assertEqual(code, e.code)
            # Refused on the header alone: no payload is ever buffered.
            decoder = frames.FrameDecoder()
            decoder.feed(header)
            e = self.assertRaises(frames.FrameError, decode_all, decoder)
            self.assertEqual(code, e.code)
            declared = int.from_bytes(header[1:], 'big')
            if raw[0] in PULL and declared == len(raw) - frames.HEADER_SIZE:
                # The payload is present: pull_* must refuse it too.
                e = self.assertRaises(frames.FrameError,
                                      PULL[frames.FrameType(raw[0])],
                                      raw[frames.HEADER_SIZE:])
                self.assertEqual(code, e.code)
        else:
            ftype, length = frames.parse_header(header)
            self.assertEqual(len(raw) - frames.HEADER_SIZE, length)
            decoder = frames.FrameDecoder()
            decoder.feed(raw)
            [(got_type, payload)] = list(decoder.frames())
            self.assertEqual(ftype, got_type)
            e = self.assertRaises(frames.FrameError, PULL[ftype], payload)
            self.assertEqual(code, e.code)

    def test_every_type_has_a_positive_vector(self):
        seen = {v['frame']['type'] for v in POSITIVE}
        self.assertEqual({t.name for t in frames.FrameType}, seen)

    def test_required_negative_vectors_present(self):
        names = {v['name'] for v in NEGATIVE}
        for required in (
                'unknown_type_0', 'unknown_type_9', 'unknown_type_255',
                'data_too_large', 'hello_too_large', 'checkpoint_length_40',
                'checkpoint_length_42', 'ack_final_length_41',
                'ack_nonfinal_length_81', 'checkpoint_reserved_flag',
                'hello_bad_kind_3', 'hello_id_len_past_end',
                'hello_empty_grant', 'hello_non_utf8_id', 'end_non_ascii',
                'abort_too_short', 'abort_reason_not_utf8',
                'data_zero_length'):
            self.assertIn(required, names)

    def test_vector_names_unique(self):
        names = [v['name'] for v in VECTORS]
        self.assertEqual(len(names), len(set(names)))

    def test_doc_reproduces_every_vector(self):
        if not os.path.exists(DOC):
            self.skipTest('doc/source/tunnel-protocol.rst not present')
        with open(DOC, encoding='utf-8') as f:
            text = f.read()
        # In the doc each vector is "name" then its hex wrapped on
        # indented lines; joining the lines must give the JSON hex.
        found = {}
        name = None
        for line in text.split('.. vectors-begin')[1].split(
                '.. vectors-end')[0].splitlines():
            words = line.split()
            if line.startswith('      ') and name and words:
                found[name] += words[0]
            elif line.startswith('   ') and words:
                name = words[0]
                found[name] = ''
        self.assertEqual({v['name']: v['hex'] for v in VECTORS}, found)


def _add_vector_tests():
    for vector in VECTORS:
        if 'frame' in vector:
            def test(self, vector=vector):
                self.check_positive(vector)
        else:
            def test(self, vector=vector):
                self.check_negative(vector)
        name = 'test_vector_%s' % vector['name']
        test.__name__ = name
        setattr(KnownAnswerTest, name, test)


_add_vector_tests()


class PrimitiveTest(testtools.TestCase):

    def test_constants(self):
        self.assertEqual(1, frames.PROTOCOL_VERSION)
        self.assertEqual(5, frames.HEADER_SIZE)
        self.assertEqual(1048576, frames.MAX_DATA)
        self.assertEqual(1, frames.FLAG_FINAL)

    def test_frame_type_values(self):
        self.assertEqual(
            [('HELLO', 1), ('HELLO_OK', 2), ('DATA', 3), ('CHECKPOINT', 4),
             ('ACK', 5), ('END', 6), ('RECEIPT', 7), ('ABORT', 8)],
            [(t.name, t.value) for t in frames.FrameType])

    def test_stream_kind_labels(self):
        self.assertEqual('memory', frames.StreamKind.MEMORY.label)
        self.assertEqual('disk', frames.StreamKind.DISK.label)
        self.assertIs(frames.StreamKind.DISK,
                      frames.StreamKind.from_label('disk'))
        self.assertRaises(ValueError, frames.StreamKind.from_label, 'tape')

    def test_abort_codes_fixed(self):
        self.assertEqual({
            'protocol_error': 1, 'unknown_frame': 2, 'frame_too_large': 3,
            'malformed_frame': 4, 'unexpected_frame': 5,
            'version_unsupported': 6, 'flow_control_violation': 7,
            'grant_invalid': 10,
            'grant_expired': 11, 'grant_wrong_migration': 12,
            'grant_wrong_destination': 13, 'grant_wrong_source': 14,
            'stream_not_allowed': 15, 'connection_replayed': 16,
            'fingerprint_mismatch': 20, 'certificate_untrusted': 21,
            'checkpoint_mismatch': 30, 'totals_mismatch': 31,
            'receipt_invalid': 32, 'truncated': 33,
            'local_endpoint_unavailable': 40, 'timeout': 41,
            'terminated': 42, 'internal_error': 43,
        }, {c.reason: c.value for c in frames.AbortCode})
        self.assertIs(frames.AbortCode.TRUNCATED,
                      frames.AbortCode.from_reason('truncated'))
        self.assertRaises(ValueError, frames.AbortCode.from_reason, 'nope')

    def test_frame_error(self):
        e = frames.FrameError(4, 'bad')
        self.assertIs(frames.AbortCode.MALFORMED_FRAME, e.code)
        self.assertEqual('bad', e.message)
        self.assertEqual('malformed_frame: bad', str(e))

    def test_push_header(self):
        self.assertEqual(b'\x03\x00\x10\x00\x00',
                         frames.push_header(frames.FrameType.DATA, 1 << 20))
        self.assertEqual(b'\x05\x00\x00\x00\x51', frames.push_header(5, 81))
        for ftype, length in ((3, 0), (3, (1 << 20) + 1), (9, 1), (0, 1),
                              (4, 40), (5, 60), (1, 7), (8, 515)):
            self.assertRaises(ValueError, frames.push_header, ftype, length)

    def test_pack_header_into(self):
        buf = bytearray(b'xx' + bytes(5) + b'yy')
        frames.pack_header_into(buf, 2, frames.FrameType.DATA, 258)
        self.assertEqual(b'xx\x03\x00\x00\x01\x02yy', bytes(buf))
        self.assertRaises(ValueError, frames.pack_header_into, buf, 0,
                          frames.FrameType.DATA, 0)

    def test_parse_header_short(self):
        e = self.assertRaises(frames.FrameError, frames.parse_header,
                              b'\x03\x00\x00')
        self.assertEqual(frames.AbortCode.MALFORMED_FRAME, e.code)

    def test_parse_header_accepts_buffers(self):
        for header in (b'\x03\x00\x00\x00\x07',
                       bytearray(b'\x03\x00\x00\x00\x07'),
                       memoryview(b'\x03\x00\x00\x00\x07xyz')):
            self.assertEqual((frames.FrameType.DATA, 7),
                             frames.parse_header(header))

    def test_pull_accepts_any_buffer(self):
        raw = frames.push_abort(frames.Abort(frames.AbortCode.TIMEOUT, 'x'))
        for payload in (raw[5:], bytearray(raw[5:]), memoryview(raw)[5:]):
            self.assertEqual(frames.Abort(frames.AbortCode.TIMEOUT, 'x'),
                             frames.pull_abort(payload))

    def test_push_hello_refuses_what_we_never_send(self):
        good = dict(version=1, kind=frames.StreamKind.MEMORY, conn_index=0,
                    migration_id='m', grant='a.b.c')
        frames.push_hello(frames.Hello(**good))
        for change in (dict(migration_id=''), dict(migration_id='x' * 256),
                       dict(migration_id='\ud800'), dict(grant=''),
                       dict(grant='\u00e9'), dict(grant='g' * 16380),
                       dict(conn_index=65536), dict(version=-1),
                       dict(kind=3)):
            self.assertRaises(ValueError, frames.push_hello,
                              frames.Hello(**dict(good, **change)))

    def test_push_hello_max_sizes(self):
        hello = frames.Hello(1, frames.StreamKind.DISK, 65535, 'i' * 255,
                             'g' * (16384 - 6 - 255))
        raw = frames.push_hello(hello)
        self.assertEqual(5 + 16384, len(raw))
        self.assertEqual(hello, frames.pull_hello(raw[5:]))

    def test_push_checkpoint_and_ack_refuse_bad_totals(self):
        digest = bytes(32)
        for bad in (frames.Checkpoint(-1, digest),
                    frames.Checkpoint(1 << 64, digest),
                    frames.Checkpoint(0, bytes(31)),
                    frames.Checkpoint(0, 'x' * 32)):
            self.assertRaises(ValueError, frames.push_checkpoint, bad)
        for bad in (frames.Ack(0, digest, False, 0, None),
                    frames.Ack(0, digest, False, None, digest),
                    frames.Ack(0, digest, True),
                    frames.Ack(0, digest, True, 0, bytes(33))):
            self.assertRaises(ValueError, frames.push_ack, bad)

    def test_push_data_limits(self):
        self.assertRaises(ValueError, frames.push_data, b'')
        self.assertRaises(ValueError, frames.push_data,
                          bytes(frames.MAX_DATA + 1))
        raw = frames.push_data(memoryview(bytes(frames.MAX_DATA)))
        self.assertEqual(frames.HEADER_SIZE + frames.MAX_DATA, len(raw))

    def test_push_end_receipt_refuse(self):
        for fn in (frames.push_end, frames.push_receipt):
            self.assertRaises(ValueError, fn, '')
            self.assertRaises(ValueError, fn, '\u00e9')
            self.assertRaises(ValueError, fn, 'a' * 16385)

    def test_push_abort_truncates_long_reason(self):
        # 'é' is two bytes: 600 of them must be cut at a character
        # boundary, giving 256 characters (512 bytes).
        raw = frames.push_abort(frames.Abort(43, '\u00e9' * 600))
        self.assertEqual(5 + 2 + 512, len(raw))
        abort = frames.pull_abort(raw[5:])
        self.assertEqual('\u00e9' * 256, abort.reason)
        # A three-byte character straddling the limit is dropped whole.
        raw = frames.push_abort(frames.Abort(43, 'a' + '\u20ac' * 200))
        self.assertEqual('a' + '\u20ac' * 170,
                         frames.pull_abort(raw[5:]).reason)
        self.assertRaises(ValueError, frames.push_abort,
                          frames.Abort(65536, ''))

    def test_pull_abort_keeps_unknown_code(self):
        abort = frames.pull_abort(b'\x03\xe8hi')
        self.assertEqual(1000, abort.code)
        self.assertNotIsInstance(abort.code, frames.AbortCode)
        abort = frames.pull_abort(b'\x00\x1e')
        self.assertIs(frames.AbortCode.CHECKPOINT_MISMATCH, abort.code)

    def test_hello_version_not_checked_by_codec(self):
        # version_unsupported is the state machine's decision, not ours.
        raw = frames.push_hello(frames.Hello(7, 1, 0, 'm', 'g'))
        self.assertEqual(7, frames.pull_hello(raw[5:]).version)


class DecoderTest(testtools.TestCase):

    def stream(self):
        return b''.join(bytes.fromhex(v['hex']) for v in POSITIVE)

    def expected(self):
        return [(frames.FrameType(raw[0]), raw[5:])
                for raw in (bytes.fromhex(v['hex']) for v in POSITIVE)]

    def test_many_frames_in_one_feed(self):
        decoder = frames.FrameDecoder()
        decoder.feed(self.stream())
        self.assertEqual(self.expected(), decode_all(decoder))
        self.assertEqual(0, decoder.pending())

    def test_split_at_every_byte_boundary(self):
        data = self.stream()
        for cut in range(len(data) + 1):
            got, pending = decode_pieces(data, [cut])
            self.assertEqual(self.expected(), got, 'cut at %d' % cut)
            self.assertEqual(0, pending)

    def test_one_byte_at_a_time(self):
        data = self.stream()
        got, pending = decode_pieces(data, range(1, len(data)))
        self.assertEqual(self.expected(), got)
        self.assertEqual(0, pending)

    def test_pending_on_partial(self):
        raw = frames.push_data(b'abcdef')
        decoder = frames.FrameDecoder()
        self.assertEqual(0, decoder.pending())
        for n in range(1, len(raw)):
            decoder.feed(raw[n - 1:n])
            self.assertEqual([], decode_all(decoder))
            self.assertEqual(n, decoder.pending())
        decoder.feed(raw[-1:])
        self.assertEqual([(frames.FrameType.DATA, b'abcdef')],
                         decode_all(decoder))
        self.assertEqual(0, decoder.pending())

    def test_bad_header_after_good_frames_then_dead(self):
        good = frames.push_hello_ok(frames.HelloOk(1, 0))
        decoder = frames.FrameDecoder()
        decoder.feed(good + good + b'\x09\x00\x00\x00\x00' + good)
        it = decoder.frames()
        self.assertEqual(frames.FrameType.HELLO_OK, next(it)[0])
        self.assertEqual(frames.FrameType.HELLO_OK, next(it)[0])
        e = self.assertRaises(frames.FrameError, next, it)
        self.assertEqual(frames.AbortCode.UNKNOWN_FRAME, e.code)
        # Dead: the same error from everything that moves data.
        for call in (decoder.frames, lambda: decoder.feed(good),
                     decoder.writable, lambda: decoder.commit(0)):
            again = self.assertRaises(frames.FrameError, call)
            self.assertIs(e, again)

    def test_oversize_refused_before_payload(self):
        decoder = frames.FrameDecoder()
        decoder.feed(b'\x03\x00\x10\x00')
        self.assertEqual([], decode_all(decoder))
        decoder.feed(b'\x01')
        e = self.assertRaises(frames.FrameError, decode_all, decoder)
        self.assertEqual(frames.AbortCode.FRAME_TOO_LARGE, e.code)

    def test_stop_iterating_early(self):
        decoder = frames.FrameDecoder()
        decoder.feed(self.stream())
        for first in decoder.frames():
            break
        rest = decode_all(decoder)
        self.assertEqual(self.expected(),
                         [(first[0], bytes(first[1]))] + rest)

    def recv_loop(self, data, chunk, decoder=None, min_free=65536):
        """Simulate sock.recv_into(decoder.writable()) reads of <= chunk."""
        decoder = decoder or frames.FrameDecoder()
        pos = 0
        out = []
        max_capacity = 0
        while pos < len(data):
            view = decoder.writable(min_free)
            self.assertGreaterEqual(len(view), min(min_free, 65536))
            n = min(chunk, len(view), len(data) - pos)
            view[:n] = data[pos:pos + n]
            decoder.commit(n)
            pos += n
            for ftype, payload in decoder.frames():
                self.assertIsInstance(payload, memoryview)
                out.append((ftype, hashlib.sha256(payload).hexdigest(),
                            len(payload)))
            max_capacity = max(max_capacity, decoder.capacity)
        return out, decoder, max_capacity

    def test_writable_commit_path(self):
        data = self.stream() + data_frames(5, frames.MAX_DATA) + (
            self.stream())
        expected = [(frames.FrameType(raw[0]),
                     hashlib.sha256(raw[5:]).hexdigest(), len(raw) - 5)
                    for raw in self.split_frames(data)]
        cap = frames.HEADER_SIZE + frames.MAX_DATA + 65536
        for chunk in (1 << 18, 100003, 65536, 7777):
            out, decoder, max_capacity = self.recv_loop(data, chunk)
            self.assertEqual(expected, out)
            self.assertEqual(0, decoder.pending())
            self.assertLessEqual(max_capacity, cap)

    def split_frames(self, data):
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos + 1:pos + 5], 'big')
            yield data[pos:pos + 5 + length]
            pos += 5 + length

    def test_buffer_stays_under_cap_with_max_frames(self):
        data = data_frames(4, frames.MAX_DATA)
        _out, decoder, max_capacity = self.recv_loop(data, 1 << 20,
                                                     min_free=1 << 22)
        self.assertLessEqual(max_capacity,
                             frames.HEADER_SIZE + frames.MAX_DATA + 65536)

    def test_data_payload_is_a_view_not_a_copy(self):
        decoder = frames.FrameDecoder()
        decoder.feed(frames.push_data(b'zero copy'))
        [(ftype, payload)] = list(decoder.frames())
        self.assertIsInstance(payload, memoryview)
        self.assertIsInstance(payload.obj, bytearray)
        self.assertEqual(b'zero copy', payload.tobytes())

    def test_commit_beyond_writable_refused(self):
        decoder = frames.FrameDecoder()
        view = decoder.writable(16)
        self.assertRaises(ValueError, decoder.commit, len(view) + 1)
        self.assertRaises(ValueError, decoder.commit, -1)

    def test_writable_undrained_full_buffer(self):
        decoder = frames.FrameDecoder()
        decoder.feed(data_frames(2, frames.MAX_DATA))
        self.assertRaises(BufferError, decoder.writable)
        self.assertEqual(2, len(decode_all(decoder)))
        self.assertGreater(len(decoder.writable()), 0)

    def test_zero_min_free_still_gives_room(self):
        decoder = frames.FrameDecoder(initial_size=8)
        decoder.feed(bytes(8))
        self.assertGreater(len(decoder.writable(0)), 0)


# -- property tests ---------------------------------------------------------

U16 = st.integers(0, 0xFFFF)
U64 = st.integers(0, (1 << 64) - 1)
DIGESTS = st.binary(min_size=32, max_size=32)
IDS = st.text(st.characters(codec='utf-8'), min_size=1, max_size=80).filter(
    lambda s: len(s.encode('utf-8')) <= 255)
ASCII = st.text(st.characters(codec='ascii'), min_size=1, max_size=2000)
REASONS = st.text(st.characters(codec='utf-8'), max_size=200).filter(
    lambda s: len(s.encode('utf-8')) <= 512)

HELLOS = st.builds(frames.Hello, version=U16,
                   kind=st.sampled_from(frames.StreamKind), conn_index=U16,
                   migration_id=IDS, grant=ASCII)
HELLO_OKS = st.builds(frames.HelloOk, version=U16, conn_index=U16)
CHECKPOINTS = st.builds(frames.Checkpoint, offset=U64, digest=DIGESTS,
                        final=st.booleans())
ACKS = st.one_of(
    st.builds(frames.Ack, offset=U64, digest=DIGESTS),
    st.builds(frames.Ack, offset=U64, digest=DIGESTS, final=st.just(True),
              rev_bytes=U64, rev_digest=DIGESTS))
ABORTS = st.builds(frames.Abort,
                   code=st.one_of(st.sampled_from(frames.AbortCode), U16),
                   reason=REASONS)
DATAS = st.binary(min_size=1, max_size=4096)

VALUES = st.one_of(
    st.tuples(st.just(frames.FrameType.HELLO), HELLOS),
    st.tuples(st.just(frames.FrameType.HELLO_OK), HELLO_OKS),
    st.tuples(st.just(frames.FrameType.DATA), DATAS),
    st.tuples(st.just(frames.FrameType.CHECKPOINT), CHECKPOINTS),
    st.tuples(st.just(frames.FrameType.ACK), ACKS),
    st.tuples(st.just(frames.FrameType.END), ASCII),
    st.tuples(st.just(frames.FrameType.RECEIPT), ASCII),
    st.tuples(st.just(frames.FrameType.ABORT), ABORTS),
)


def _normal(ftype, value):
    return bytes(value) if ftype == frames.FrameType.DATA else value


class PropertyTest(testtools.TestCase):

    @PROPERTY
    @given(VALUES)
    def test_round_trip(self, item):
        ftype, value = item
        raw = push(ftype, value)
        self.assertEqual((ftype, len(raw) - 5),
                         frames.parse_header(raw[:5]))
        self.assertEqual(value, _normal(ftype, PULL[ftype](raw[5:])))

    @PROPERTY
    @given(st.lists(VALUES, min_size=1, max_size=8), st.randoms())
    def test_stream_round_trip_random_splits(self, items, rnd):
        data = b''.join(push(ftype, value) for ftype, value in items)
        cuts = sorted(rnd.sample(range(len(data) + 1),
                                 min(len(data) + 1, rnd.randint(0, 12))))
        got, pending = decode_pieces(data, cuts)
        self.assertEqual(0, pending)
        self.assertEqual([ftype for ftype, _ in items],
                         [ftype for ftype, _ in got])
        self.assertEqual(
            [value for _, value in items],
            [_normal(ftype, PULL[ftype](payload)) for ftype, payload in got])

    @PROPERTY
    @given(st.binary(max_size=400), st.randoms())
    def test_decoder_arbitrary_bytes_only_frame_error(self, data, rnd):
        decoder = frames.FrameDecoder(initial_size=rnd.randint(1, 64))
        pos = 0
        try:
            while pos < len(data):
                n = rnd.randint(1, 50)
                decoder.feed(data[pos:pos + n])
                pos += n
                for ftype, payload in decoder.frames():
                    try:
                        PULL[ftype](payload)
                    except frames.FrameError:
                        pass
        except frames.FrameError as exc:
            self.assertIn(exc.code, (frames.AbortCode.UNKNOWN_FRAME,
                                     frames.AbortCode.FRAME_TOO_LARGE,
                                     frames.AbortCode.MALFORMED_FRAME))

    @PROPERTY
    @given(st.binary(max_size=200))
    def test_pull_arbitrary_bytes_only_frame_error(self, payload):
        for ftype, pull in PULL.items():
            try:
                value = pull(payload)
            except frames.FrameError:
                continue
            # Whatever is accepted is canonical: it serialises back to the
            # very same bytes.
            self.assertEqual(frames.push_header(ftype, len(payload))
                             + payload, push(ftype, value))

    @PROPERTY
    @given(st.binary(min_size=5, max_size=5))
    def test_parse_header_only_frame_error(self, header):
        try:
            ftype, length = frames.parse_header(header)
        except frames.FrameError:
            return
        self.assertEqual(header, frames.push_header(ftype, length))


class FuzzToolTest(testtools.TestCase):

    def load_fuzzer(self):
        spec = importlib.util.spec_from_file_location('fuzz_frames', FUZZER)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def test_bounded_fuzz_run(self):
        fuzzer = self.load_fuzzer()
        out = io.StringIO()
        # Fixed seed: CI runs are reproducible; run the tool by hand with
        # other seeds to explore further.
        seed = 20240611
        with contextlib.redirect_stdout(out):
            rc = fuzzer.main(['--seconds', '2', '--seed', str(seed)])
        self.assertEqual(0, rc, out.getvalue())
        line = out.getvalue().strip()
        self.assertIn('result=ok', line)
        self.assertIn('seed=%d' % seed, line)
        self.assertEqual(1, len(line.splitlines()))

    def test_fuzz_one_on_vectors(self):
        fuzzer = self.load_fuzzer()
        for vector in VECTORS:
            fuzzer.fuzz_one(bytes.fromhex(vector['hex']))
