"""The tunnel's one error type: a refusal or failure with a named reason.

Every check in the tunnel folds into :class:`TunnelError`; ``reason`` is the
stable snake_case name that appears in the outcome JSON, in the log line and
in the ABORT frame sent to the peer, so an operator can grep one word across
both hosts.
"""

from secmig_nova.tunnel import frames

# Reasons that are not abort codes of the wire protocol.
TLS_HANDSHAKE_FAILED = 'tls_handshake_failed'
TLS_VERSION = 'tls_version'
TLS_PARAMETERS = 'tls_parameters'
PEER_REFUSED_CERTIFICATE = 'peer_refused_certificate'
PEER_UNREACHABLE = 'peer_unreachable'
PEER_ABORTED = 'peer_aborted'
CONFIG_INVALID = 'config_invalid'
# Parameters the tunnel refuses to start with because they would expose
# the migration: a private key readable by group or others, a QEMU socket
# any local user may connect to.
KEY_FILE_INSECURE = 'key_file_insecure'
SOCKET_MODE_INSECURE = 'socket_mode_insecure'
STREAM_TAMPERED = 'stream_tampered'
TRUNCATED = 'truncated'

# What a side reports when its peer detected tampering or the path was cut.
# The two look alike from here: the peer's alert can be dropped by whoever
# cut or modified the path, and a cut can race ahead of the alert. Only the
# side that detected the tampering can name it (tunnel-protocol.rst).
PEER_DETECTED_OR_CUT = frozenset({STREAM_TAMPERED, TRUNCATED})

# Refusals happen before any migration byte moved: the peer was not
# authenticated or not authorized. Everything else is a failure mid-stream.
REFUSAL_REASONS = frozenset({
    TLS_HANDSHAKE_FAILED, TLS_VERSION, TLS_PARAMETERS,
    PEER_REFUSED_CERTIFICATE, 'certificate_untrusted',
    'certificate_expired', 'certificate_not_yet_valid',
    'certificate_revoked', 'crl_invalid', 'identity_invalid',
    'wrong_cloud', 'wrong_role', 'fingerprint_mismatch',
    'grant_invalid', 'grant_expired', 'grant_wrong_migration',
    'grant_wrong_destination', 'grant_wrong_source', 'stream_not_allowed',
    'connection_replayed', 'version_unsupported',
})


class TunnelError(Exception):
    """A tunnel connection was refused or failed.

    :param reason: snake_case reason name (an :class:`AbortCode` name or one
        of the constants above).
    :param message: what happened, for the log and the outcome.
    :param notify_peer: whether an ABORT frame should tell the peer.
    """

    def __init__(self, reason, message, notify_peer=True):
        # Last line of defence: peer text should have gone through
        # peer_text() already, but no message that reaches a log line or an
        # outcome may carry a newline or control character.
        super().__init__(printable(message))
        self.reason = reason
        self.notify_peer = notify_peer
        # The peer's reason when this error is the peer's ABORT.
        self.peer_reason = None

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])

    @property
    def refusal(self):
        return self.reason in REFUSAL_REASONS

    @property
    def abort_code(self):
        try:
            return frames.AbortCode[self.reason.upper()]
        except KeyError:
            pass
        if self.refusal:
            return frames.AbortCode.CERTIFICATE_UNTRUSTED
        return frames.AbortCode.INTERNAL_ERROR


def peer_text(value, limit=200):
    """``value`` made safe to put in a log line or a message.

    Everything a peer sends (ABORT reasons, migration ids, names from HELLO
    or certificates) goes through here before it is formatted: a backslash
    becomes ``\\\\`` and every character that is not printable (newlines, other
    control characters, Unicode line separators and format characters such
    as bidirectional overrides) becomes ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``, so peer text can neither forge a log line nor hide
    in one. Longer than ``limit`` characters, it is cut and marked ``...``.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode('utf-8', 'backslashreplace')
    elif not isinstance(value, str):
        value = str(value)
    cut = limit is not None and len(value) > limit
    if cut:
        value = value[:limit]
    out = []
    for ch in value:
        if ch == '\\':
            out.append('\\\\')
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append('\\x%02x' % code if code < 0x100 else
                       '\\u%04x' % code if code < 0x10000 else
                       '\\U%08x' % code)
    if cut:
        out.append('...')
    return ''.join(out)


def printable(text):
    """``text`` if it is printable already, else :func:`peer_text` of it.

    For messages that may embed peer text escaped already (escaping twice
    would double the backslashes) but must never carry a control
    character.
    """
    text = str(text)
    return text if text.isprintable() else peer_text(text, limit=None)


def from_abort(abort, peer):
    """The peer's ABORT frame as our error, under the peer's reason.

    The peer's reason text is escaped; ``peer_reason`` keeps the code's
    name, so a side that does not trust the peer yet can count the ABORT
    without adopting its reason.
    """
    code = abort.code
    reason = code.reason if isinstance(code, frames.AbortCode) \
        else 'code_%d' % code
    error = TunnelError(reason, '%s aborted: %s (%s)'
                        % (peer, reason, peer_text(abort.reason)),
                        notify_peer=False)
    error.peer_reason = reason
    return error


def status_of(error):
    """Outcome status for an error: refused, aborted or failed."""
    if error.refusal:
        return 'refused'
    if error.reason == 'terminated':
        return 'aborted'
    return 'failed'


def from_frame_error(exc):
    return TunnelError(frames.AbortCode(exc.code).reason, str(exc))


def from_trust_error(exc):
    return TunnelError(exc.reason, str(exc))


def from_token_error(exc, default='grant_invalid'):
    from secmig_nova.authz import tokens
    reason = {tokens.EXPIRED: 'grant_expired',
              tokens.NOT_YET_VALID: 'grant_expired'}.get(exc.reason, default)
    return TunnelError(reason, 'grant refused (%s): %s'
                       % (exc.reason, exc.args[0]))
