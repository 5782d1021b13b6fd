"""Wire codec for the migration tunnel's frames.

The tunnel carries one QEMU migration stream (memory or one disk) per TLS
1.3 connection.  Inside TLS every message is a frame::

    type:u8 | length:u32 | payload[length]        (big-endian)

This module only turns frames into bytes and bytes into frames; it knows
nothing about sockets, TLS, grants or the connection state machine.  Its
contract with the rest of the tunnel is:

* ``push_*`` functions build a whole frame (header included) from a value
  and raise ``ValueError`` for a frame we would never send;
* ``pull_*`` functions take a payload (without the header) received from a
  peer and raise :class:`FrameError`, and only that, for anything invalid;
* :class:`FrameDecoder` splits a byte stream into ``(type, payload)`` pairs,
  checking each header as soon as its five bytes arrive so that a peer
  cannot make us buffer more than one maximal frame.

The written specification, including the test vectors, is
``doc/source/tunnel-protocol.rst``.
"""

import dataclasses
import enum
import struct


PROTOCOL_VERSION = 1
HEADER_SIZE = 5
MAX_DATA = 1 << 20
MAX_CONTROL = 16384
MAX_MIGRATION_ID = 255
MAX_REASON = 512
DIGEST_SIZE = 32
FLAG_FINAL = 0x01

MAX_U16 = 0xFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

_HEADER = struct.Struct('>BI')
_HELLO_FIXED = struct.Struct('>HBHB')
_HELLO_OK = struct.Struct('>HH')
_CHECKPOINT = struct.Struct('>BQ32s')
_ACK_FINAL = struct.Struct('>BQ32sQ32s')
_ABORT_CODE = struct.Struct('>H')

# Room the decoder keeps for a receive call on top of one maximal frame.
_RECV_ROOM = 65536


class FrameType(enum.IntEnum):
    HELLO = 1
    HELLO_OK = 2
    DATA = 3
    CHECKPOINT = 4
    ACK = 5
    END = 6
    RECEIPT = 7
    ABORT = 8


class StreamKind(enum.IntEnum):
    MEMORY = 1
    DISK = 2

    @property
    def label(self):
        return self.name.lower()

    @classmethod
    def from_label(cls, label):
        try:
            return cls[label.upper()]
        except (KeyError, AttributeError):
            raise ValueError('unknown stream kind %r' % (label,))


class AbortCode(enum.IntEnum):
    # The values are part of the wire protocol: never renumber them.
    PROTOCOL_ERROR = 1
    UNKNOWN_FRAME = 2
    FRAME_TOO_LARGE = 3
    MALFORMED_FRAME = 4
    UNEXPECTED_FRAME = 5
    VERSION_UNSUPPORTED = 6
    FLOW_CONTROL_VIOLATION = 7
    GRANT_INVALID = 10
    GRANT_EXPIRED = 11
    GRANT_WRONG_MIGRATION = 12
    GRANT_WRONG_DESTINATION = 13
    GRANT_WRONG_SOURCE = 14
    STREAM_NOT_ALLOWED = 15
    CONNECTION_REPLAYED = 16
    FINGERPRINT_MISMATCH = 20
    CERTIFICATE_UNTRUSTED = 21
    CHECKPOINT_MISMATCH = 30
    TOTALS_MISMATCH = 31
    RECEIPT_INVALID = 32
    TRUNCATED = 33
    LOCAL_ENDPOINT_UNAVAILABLE = 40
    TIMEOUT = 41
    TERMINATED = 42
    INTERNAL_ERROR = 43

    @property
    def reason(self):
        """The stable snake_case name used in logs and outcomes."""
        return self.name.lower()

    @classmethod
    def from_reason(cls, reason):
        try:
            return cls[reason.upper()]
        except (KeyError, AttributeError):
            raise ValueError('unknown abort reason %r' % (reason,))


class FrameError(Exception):
    """Bytes from the peer are not a valid frame.

    ``code`` is the :class:`AbortCode` to send back before closing:
    ``unknown_frame``, ``frame_too_large`` or ``malformed_frame`` from this
    module, ``protocol_error`` for the caller's own framing failures.
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = AbortCode(code)
        self.message = message

    def __str__(self):
        return '%s: %s' % (self.code.reason, self.message)


@dataclasses.dataclass(frozen=True)
class Hello:
    version: int
    kind: StreamKind
    conn_index: int
    migration_id: str
    grant: str


@dataclasses.dataclass(frozen=True)
class HelloOk:
    version: int
    conn_index: int


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    offset: int
    digest: bytes
    final: bool = False


@dataclasses.dataclass(frozen=True)
class Ack:
    offset: int
    digest: bytes
    final: bool = False
    rev_bytes: int | None = None
    rev_digest: bytes | None = None


@dataclasses.dataclass(frozen=True)
class Abort:
    code: int
    reason: str


# Payload length rules per type: (min, max, fixed).  ``fixed`` is the set of
# the only valid lengths of a fixed-layout frame, or None.  For a fixed
# layout any other length is malformed; for a variable one a length over
# ``max`` is frame_too_large (refused before buffering) and one under ``min``
# is malformed.
LIMITS = {
    FrameType.HELLO: (8, MAX_CONTROL, None),
    FrameType.HELLO_OK: (4, 4, frozenset((4,))),
    FrameType.DATA: (1, MAX_DATA, None),
    FrameType.CHECKPOINT: (41, 41, frozenset((41,))),
    FrameType.ACK: (41, 81, frozenset((41, 81))),
    FrameType.END: (1, MAX_CONTROL, None),
    FrameType.RECEIPT: (1, MAX_CONTROL, None),
    FrameType.ABORT: (2, 2 + MAX_REASON, None),
}
MAX_PAYLOAD = max(limit[1] for limit in LIMITS.values())
# The decoder's buffer holds one maximal frame plus room for one receive.
_BUFFER_CAP = HEADER_SIZE + MAX_PAYLOAD + _RECV_ROOM

# Indexed by the type byte so that the decoder's hot path is one list
# lookup and two comparisons; None marks an unknown type.
_RULES = [None] * 256
for _ftype, (_lo, _hi, _fixed) in LIMITS.items():
    _RULES[_ftype] = (_ftype, _lo, _hi, _fixed)
del _ftype, _lo, _hi, _fixed


def _length_error(ftype, length):
    """Return the FrameError for a bad length, or None if it is valid."""
    lo, hi, fixed = LIMITS[ftype]
    if fixed is not None:
        if length in fixed:
            return None
        return FrameError(
            AbortCode.MALFORMED_FRAME,
            '%s payload must be %s bytes, not %d'
            % (ftype.name, ' or '.join(str(n) for n in sorted(fixed)),
               length))
    if length > hi:
        return FrameError(
            AbortCode.FRAME_TOO_LARGE,
            '%s payload of %d bytes exceeds the limit of %d'
            % (ftype.name, length, hi))
    if length < lo:
        return FrameError(
            AbortCode.MALFORMED_FRAME,
            '%s payload of %d bytes is shorter than %d'
            % (ftype.name, length, lo))
    return None


def _check_payload(ftype, payload):
    error = _length_error(ftype, len(payload))
    if error is not None:
        raise error


def _malformed(message):
    return FrameError(AbortCode.MALFORMED_FRAME, message)


def _decode_text(data, encoding, what):
    # str() accepts any buffer (bytes, bytearray, memoryview) without a copy
    # of our own; the strict codec rejects overlong forms and surrogates.
    try:
        return str(data, encoding)
    except UnicodeDecodeError:
        raise _malformed('%s is not valid %s' % (what, encoding))


# -- header -----------------------------------------------------------------

def _check_outgoing_header(ftype, length):
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise ValueError('unknown frame type %r' % (ftype,))
    error = _length_error(ftype, length)
    if error is not None:
        raise ValueError(error.message)
    return ftype


def push_header(ftype, length):
    """Return the 5-byte header of a frame we are about to send."""
    ftype = _check_outgoing_header(ftype, length)
    return _HEADER.pack(ftype, length)


def pack_header_into(buf, offset, ftype, length):
    """Write a header into ``buf`` at ``offset`` (zero-copy DATA sends)."""
    ftype = _check_outgoing_header(ftype, length)
    _HEADER.pack_into(buf, offset, ftype, length)


def _header_error(type_byte, length):
    """Return the FrameError for a bad header, or None if it is valid."""
    rule = _RULES[type_byte]
    if rule is None:
        return FrameError(AbortCode.UNKNOWN_FRAME,
                          'unknown frame type %d' % type_byte)
    return _length_error(rule[0], length)


def parse_header(header):
    """Return ``(FrameType, length)`` from the first 5 bytes of ``header``.

    The length is checked against the type's limits here, before any of
    the payload is read.
    """
    if len(header) < HEADER_SIZE:
        raise _malformed('frame header needs %d bytes, got %d'
                         % (HEADER_SIZE, len(header)))
    type_byte, length = _HEADER.unpack_from(header, 0)
    error = _header_error(type_byte, length)
    if error is not None:
        raise error
    return _RULES[type_byte][0], length


# -- HELLO ------------------------------------------------------------------

def push_hello(hello):
    if not 0 <= hello.version <= MAX_U16:
        raise ValueError('version %r out of range' % (hello.version,))
    if not 0 <= hello.conn_index <= MAX_U16:
        raise ValueError('conn_index %r out of range' % (hello.conn_index,))
    kind = StreamKind(hello.kind)
    try:
        mid = hello.migration_id.encode('utf-8')
    except UnicodeEncodeError:
        raise ValueError('migration_id is not encodable as UTF-8')
    if not 1 <= len(mid) <= MAX_MIGRATION_ID:
        raise ValueError('migration_id must be 1..%d UTF-8 bytes'
                         % MAX_MIGRATION_ID)
    try:
        grant = hello.grant.encode('ascii')
    except UnicodeEncodeError:
        raise ValueError('grant must be ASCII')
    if not grant:
        raise ValueError('grant must not be empty')
    length = _HELLO_FIXED.size + len(mid) + len(grant)
    header = push_header(FrameType.HELLO, length)
    return b''.join((
        header,
        _HELLO_FIXED.pack(hello.version, kind, hello.conn_index, len(mid)),
        mid,
        grant,
    ))


def pull_hello(payload):
    _check_payload(FrameType.HELLO, payload)
    version, kind, conn_index, id_len = _HELLO_FIXED.unpack_from(payload, 0)
    try:
        kind = StreamKind(kind)
    except ValueError:
        raise _malformed('unknown stream kind %d' % kind)
    if id_len == 0:
        raise _malformed('HELLO migration_id is empty')
    id_end = _HELLO_FIXED.size + id_len
    if id_end >= len(payload):
        # Equal means no room is left for the (mandatory) grant.
        raise _malformed('HELLO id_len %d leaves no grant in %d bytes'
                         % (id_len, len(payload)))
    payload = memoryview(payload)
    migration_id = _decode_text(payload[_HELLO_FIXED.size:id_end], 'utf-8',
                                'HELLO migration_id')
    grant = _decode_text(payload[id_end:], 'ascii', 'HELLO grant')
    return Hello(version=version, kind=kind, conn_index=conn_index,
                 migration_id=migration_id, grant=grant)


# -- HELLO_OK ---------------------------------------------------------------

def push_hello_ok(hello_ok):
    if not 0 <= hello_ok.version <= MAX_U16:
        raise ValueError('version %r out of range' % (hello_ok.version,))
    if not 0 <= hello_ok.conn_index <= MAX_U16:
        raise ValueError('conn_index %r out of range'
                         % (hello_ok.conn_index,))
    return push_header(FrameType.HELLO_OK, 4) + _HELLO_OK.pack(
        hello_ok.version, hello_ok.conn_index)


def pull_hello_ok(payload):
    _check_payload(FrameType.HELLO_OK, payload)
    version, conn_index = _HELLO_OK.unpack_from(payload, 0)
    return HelloOk(version=version, conn_index=conn_index)


# -- DATA -------------------------------------------------------------------

def push_data(data):
    """Return a whole DATA frame (copies; see pack_header_into)."""
    return push_header(FrameType.DATA, len(data)) + bytes(data)


def pull_data(payload):
    """Check a DATA payload's length and return it unchanged."""
    _check_payload(FrameType.DATA, payload)
    return payload


# -- CHECKPOINT and ACK -----------------------------------------------------

def _check_totals(offset, digest, what):
    if not isinstance(offset, int) or not 0 <= offset <= MAX_U64:
        raise ValueError('%s offset %r out of range' % (what, offset))
    if not isinstance(digest, (bytes, bytearray)) or (
            len(digest) != DIGEST_SIZE):
        raise ValueError('%s digest must be %d bytes' % (what, DIGEST_SIZE))


def _pull_flags(flags, what):
    if flags & ~FLAG_FINAL:
        raise _malformed('%s has reserved flag bits set: 0x%02x'
                         % (what, flags))
    return bool(flags & FLAG_FINAL)


def push_checkpoint(checkpoint):
    _check_totals(checkpoint.offset, checkpoint.digest, 'CHECKPOINT')
    flags = FLAG_FINAL if checkpoint.final else 0
    return push_header(FrameType.CHECKPOINT, _CHECKPOINT.size) + (
        _CHECKPOINT.pack(flags, checkpoint.offset, bytes(checkpoint.digest)))


def pull_checkpoint(payload):
    _check_payload(FrameType.CHECKPOINT, payload)
    flags, offset, digest = _CHECKPOINT.unpack_from(payload, 0)
    final = _pull_flags(flags, 'CHECKPOINT')
    return Checkpoint(offset=offset, digest=digest, final=final)


def push_ack(ack):
    _check_totals(ack.offset, ack.digest, 'ACK')
    if not ack.final:
        if ack.rev_bytes is not None or ack.rev_digest is not None:
            raise ValueError('only a FINAL ACK carries reverse totals')
        return push_header(FrameType.ACK, _CHECKPOINT.size) + (
            _CHECKPOINT.pack(0, ack.offset, bytes(ack.digest)))
    _check_totals(ack.rev_bytes, ack.rev_digest, 'ACK reverse')
    return push_header(FrameType.ACK, _ACK_FINAL.size) + _ACK_FINAL.pack(
        FLAG_FINAL, ack.offset, bytes(ack.digest), ack.rev_bytes,
        bytes(ack.rev_digest))


def pull_ack(payload):
    _check_payload(FrameType.ACK, payload)
    flags = payload[0]
    final = _pull_flags(flags, 'ACK')
    if final != (len(payload) == _ACK_FINAL.size):
        raise _malformed('ACK of %d bytes %s the FINAL flag'
                         % (len(payload), 'with' if final else 'without'))
    if not final:
        _flags, offset, digest = _CHECKPOINT.unpack_from(payload, 0)
        return Ack(offset=offset, digest=digest)
    _flags, offset, digest, rev_bytes, rev_digest = _ACK_FINAL.unpack_from(
        payload, 0)
    return Ack(offset=offset, digest=digest, final=True,
               rev_bytes=rev_bytes, rev_digest=rev_digest)


# -- END and RECEIPT --------------------------------------------------------

def _push_jws(ftype, jws):
    try:
        data = jws.encode('ascii')
    except UnicodeEncodeError:
        raise ValueError('%s must be ASCII' % ftype.name)
    return push_header(ftype, len(data)) + data


def _pull_jws(ftype, payload):
    _check_payload(ftype, payload)
    return _decode_text(payload, 'ascii', ftype.name)


def push_end(jws):
    """END carries the source's signed receipt (a compact JWS)."""
    return _push_jws(FrameType.END, jws)


def pull_end(payload):
    return _pull_jws(FrameType.END, payload)


def push_receipt(jws):
    """RECEIPT carries the destination's signed receipt (a compact JWS)."""
    return _push_jws(FrameType.RECEIPT, jws)


def pull_receipt(payload):
    return _pull_jws(FrameType.RECEIPT, payload)


# -- ABORT ------------------------------------------------------------------

def _truncate_utf8(text, limit):
    data = text.encode('utf-8', 'replace')
    if len(data) <= limit:
        return data
    # Cut at a character boundary: drop continuation bytes (10xxxxxx) that
    # would be left without their lead byte.
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


def push_abort(abort):
    """Build an ABORT; a reason over 512 UTF-8 bytes is truncated.

    An abort is sent while something already went wrong, so a long
    exception message must not turn into a second failure here.
    """
    code = int(abort.code)
    if not 0 <= code <= MAX_U16:
        raise ValueError('abort code %r out of range' % (abort.code,))
    reason = _truncate_utf8(abort.reason, MAX_REASON)
    return b''.join((push_header(FrameType.ABORT, 2 + len(reason)),
                     _ABORT_CODE.pack(code), reason))


def pull_abort(payload):
    """Parse an ABORT; codes unknown to us are kept as plain ints."""
    _check_payload(FrameType.ABORT, payload)
    (code,) = _ABORT_CODE.unpack_from(payload, 0)
    try:
        code = AbortCode(code)
    except ValueError:
        # A newer peer may know codes we do not.
        pass
    reason = _decode_text(memoryview(payload)[2:], 'utf-8', 'ABORT reason')
    return Abort(code=code, reason=reason)


# -- incremental decoding ---------------------------------------------------

class FrameDecoder:
    """Incremental decoder over a growable bytearray, zero-copy for DATA.

    Receive path::

        view = decoder.writable()
        n = sock.recv_into(view)
        decoder.commit(n)
        for ftype, payload in decoder.frames():
            ...

    ``frames()`` yields every complete frame as a memoryview into the
    buffer; the views are valid only until the next ``writable()`` or
    ``feed()``.  Drain ``frames()`` before asking for more room: with that
    discipline the buffer never grows beyond ``HEADER_SIZE + MAX_PAYLOAD +
    64 KiB``.  The first bad header raises :class:`FrameError` and kills the
    decoder: every later ``frames()``, ``writable()``, ``commit()`` or
    ``feed()`` raises the same error.
    """

    def __init__(self, initial_size=2 * _RECV_ROOM):
        self._buf = bytearray(initial_size)
        self._view = memoryview(self._buf)
        self._start = 0       # first byte not yet yielded
        self._end = 0         # end of the received bytes
        self._need = HEADER_SIZE  # size of the frame starting at _start
        self._error = None

    @property
    def capacity(self):
        """Current size of the internal buffer, in bytes."""
        return len(self._buf)

    def pending(self):
        """Bytes received but not yet yielded (a partial frame)."""
        return self._end - self._start

    def _raise_if_dead(self):
        if self._error is not None:
            raise self._error

    def _make_room(self, min_free, limit):
        """Ensure room after _end, within ``limit``; at most one copy."""
        start, end = self._start, self._end
        if start == end:
            # Nothing pending: restart at the front for free.
            start = end = self._start = self._end = 0
        pending = end - start
        want = min(max(self._need, pending + min_free), limit)
        size = len(self._buf)
        if start + want <= size:
            return
        if want <= size:
            # Compact: move the partial frame to the front.  Doing it as
            # soon as a frame is known not to fit keeps the move short.
            self._view[:pending] = self._view[start:end]
        else:
            buf = bytearray(min(max(want, 2 * size), limit))
            buf[:pending] = self._view[start:end]
            # Old payload views keep the old buffer alive; nothing dangles.
            self._buf = buf
            self._view = memoryview(buf)
        self._start, self._end = 0, pending

    def writable(self, min_free=_RECV_ROOM):
        """Return free space at the tail of the buffer to receive into.

        The view has at least ``min_free`` bytes unless that would take the
        buffer past its cap, and always room for the rest of the current
        frame when that fits under the cap.
        """
        self._raise_if_dead()
        if self.pending() >= _BUFFER_CAP:
            raise BufferError('decoder buffer is full: drain frames() '
                              'before asking for more room')
        self._make_room(max(min_free, 1), _BUFFER_CAP)
        return self._view[self._end:]

    def commit(self, n):
        """Record that ``n`` bytes were written into the last writable()."""
        self._raise_if_dead()
        if not 0 <= n <= len(self._buf) - self._end:
            raise ValueError('commit(%r) exceeds the writable space' % (n,))
        self._end += n

    def feed(self, data):
        """Copy ``data`` in (tests and small reads).

        Unlike writable(), feed() grows the buffer past the cap if it must:
        the cap protects us from the peer, and here the caller chose the
        size.
        """
        self._raise_if_dead()
        n = len(data)
        if not n:
            return
        self._make_room(n, max(_BUFFER_CAP, self.pending() + n))
        self._view[self._end:self._end + n] = data
        self._end += n

    def frames(self):
        """Return an iterator of ``(FrameType, memoryview)``, one a frame.

        Raises FrameError at once if the decoder is already dead, or while
        iterating on reaching a bad header (frames before it are yielded).
        """
        self._raise_if_dead()
        return self._frames()

    def _frames(self):
        rules = _RULES
        unpack_from = _HEADER.unpack_from
        while True:
            start = self._start
            avail = self._end - start
            if avail < HEADER_SIZE:
                self._need = HEADER_SIZE
                return
            type_byte, length = unpack_from(self._buf, start)
            rule = rules[type_byte]
            if rule is None or not (
                    rule[1] <= length <= rule[2]
                    and (rule[3] is None or length in rule[3])):
                error = _header_error(type_byte, length)
                if error is not None:
                    self._error = error
                    raise error
            total = HEADER_SIZE + length
            if avail < total:
                self._need = total
                return
            # Consume before yielding so that a caller who stops iterating
            # early does not see the same frame twice.
            self._start = start + total
            self._need = HEADER_SIZE
            yield rule[0], self._view[start + HEADER_SIZE:start + total]
