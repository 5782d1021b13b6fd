"""Signed tokens: JWS (ES256) with the signer's certificate chain in ``x5c``.

One module issues and verifies every secmig token: grants (here), receipts
(signed by hosts at the end of a tunnel connection) and, with the
authorization work, tickets. Verification order is fixed and fail-closed:

1. size, then the unverified header: ``alg`` must be exactly ES256 (``none``
   and HS*/RS* are refused before any key is touched), ``typ`` must be the
   expected token type, ``x5c`` a short list of DER certificates;
2. the ``x5c`` chain against the trust store of the cloud expected to have
   signed, for the expected role (host or broker), optionally pinned;
3. the signature with the leaf's public key (PyJWT, algorithm pinned);
4. the time claims with a bounded clock skew, against an injectable clock;
5. the type's own claims.

Every failure raises :class:`TokenError` with a named reason.
"""

import base64
import dataclasses
import hashlib
import json
import math
import re
import time
import uuid

from cryptography.hazmat.primitives import serialization
import jwt

from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store

ALGORITHM = 'ES256'
# Size cap of one token (ticket, grant, receipt), checked before anything
# is decoded. Containers of tokens (the broker's envelopes) have their own,
# larger caps: see secmig_nova/broker/envelope.py.
MAX_TOKEN_BYTES = 8192
MAX_X5C = 4

TYP_GRANT = 'secmig-grant+jwt'
TYP_RECEIPT = 'secmig-receipt+jwt'
TYP_TICKET = 'secmig-ticket+jwt'

DEFAULT_GRANT_TTL = 300
DEFAULT_LEEWAY = 30.0

STREAM_KINDS = ('memory', 'disk')
MAX_CONNECTIONS = 64


class TokenError(Exception):
    """A token was refused; ``reason`` names why."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


# Reasons shared by every token type.
MALFORMED = 'token_malformed'
TOO_LARGE = 'token_too_large'
BAD_ALGORITHM = 'token_bad_algorithm'
WRONG_TYPE = 'token_wrong_type'
BAD_SIGNATURE = 'token_bad_signature'
EXPIRED = 'token_expired'
NOT_YET_VALID = 'token_not_yet_valid'
WRONG_AUDIENCE = 'token_wrong_audience'
MISSING_CLAIM = 'token_missing_claim'
INVALID_CLAIM = 'token_invalid_claim'
INVALID_TIME = 'token_invalid_time'
REPLAYED = 'token_replayed'

# Time claims (iat, nbf, exp) must be finite POSIX times in this range:
# NaN compares false with everything (an ``exp`` of NaN would never
# expire), an infinite ``exp`` never expires, and values beyond year 9999
# cannot become a datetime. Bounds are inclusive.
MIN_TIME = 0
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z
TIME_CLAIMS = ('iat', 'nbf', 'exp')


def _b64(der):
    return base64.b64encode(der).decode('ascii')


def sign(claims, credentials, typ):
    """Sign ``claims`` with a host's or broker's credentials."""
    x5c = [_b64(c.public_bytes(serialization.Encoding.DER))
           for c in credentials.chain]
    return jwt.encode(dict(claims), credentials.key, algorithm=ALGORITHM,
                      headers={'typ': typ, 'x5c': x5c})


def token_digest(token):
    """SHA-256 hex of a compact token, to reference it from another one."""
    return hashlib.sha256(token.encode('ascii')).hexdigest()


def _unverified_header(token, max_bytes=MAX_TOKEN_BYTES):
    if not isinstance(token, str):
        raise TokenError(MALFORMED, 'token is not a string')
    if len(token) > max_bytes:
        raise TokenError(TOO_LARGE, 'token of %d bytes exceeds %d'
                         % (len(token), max_bytes))
    try:
        token.encode('ascii')
        header = jwt.get_unverified_header(token)
    except (UnicodeError, jwt.PyJWTError, ValueError, TypeError) as e:
        raise TokenError(MALFORMED, 'not a compact JWS: %s' % e)
    if not isinstance(header, dict):
        raise TokenError(MALFORMED, 'JWS header is not an object')
    return header


def unverified_claims(token, max_bytes=MAX_TOKEN_BYTES):
    """The claims of ``token`` without any verification.

    Only for choosing what to verify with (e.g. the trust store of the
    cloud named in ``iss``); everything it returns is attacker-controlled
    until :func:`verify` has succeeded. Size (at most ``max_bytes``) and
    syntax are checked.
    """
    _unverified_header(token, max_bytes)
    try:
        claims = jwt.decode(token, options={'verify_signature': False})
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise TokenError(MALFORMED, 'cannot decode token: %s' % e)
    if not isinstance(claims, dict):
        raise TokenError(MALFORMED, 'claims are not an object')
    return claims


def _x5c_chain(header):
    x5c = header.get('x5c')
    if (not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_X5C
            or not all(isinstance(c, str) for c in x5c)):
        raise TokenError(MALFORMED, 'x5c must list 1 to %d certificates'
                         % MAX_X5C)
    try:
        ders = [base64.b64decode(c, validate=True) for c in x5c]
    except ValueError as e:
        raise TokenError(MALFORMED, 'x5c is not base64: %s' % e)
    try:
        return trust_store.chain_from_der(ders)
    except trust_errors.TrustError as e:
        raise TokenError(MALFORMED, str(e))


def verify(token, store, typ, role, now=None, leeway=DEFAULT_LEEWAY,
           audience=None, expected_fingerprint=None,
           required=('iat', 'exp', 'jti'), max_bytes=MAX_TOKEN_BYTES):
    """Verify a token end to end; returns ``(claims, VerifiedPeer)``.

    :param store: :class:`~secmig_nova.trust.store.TrustStore` of the cloud
        that must have signed the token.
    :param role: ``broker`` or ``host``: what the signer must be.
    :param max_bytes: size cap, checked first; only containers of other
        tokens (envelopes) pass more than :data:`MAX_TOKEN_BYTES`.
    :raises TokenError: with a named reason, or TrustError for the chain.
    """
    now = time.time() if now is None else now
    if not is_time(now):
        # Callers pass a token's own iat to check an old receipt's signer
        # as it was then: that value is attacker-controlled.
        raise TokenError(INVALID_TIME, 'verification time %s is not a '
                         'finite POSIX time' % _short_repr(now))
    header = _unverified_header(token, max_bytes)
    alg = header.get('alg')
    if alg != ALGORITHM:
        raise TokenError(BAD_ALGORITHM, 'algorithm %r refused; only %s is '
                         'accepted' % (alg, ALGORITHM))
    if header.get('typ') != typ:
        raise TokenError(WRONG_TYPE, 'token type %r, expected %r'
                         % (header.get('typ'), typ))
    chain = _x5c_chain(header)
    peer = store.verify(chain, 'client', role=role,
                        expected_fingerprint=expected_fingerprint,
                        now=_as_datetime(now))
    try:
        claims = jwt.decode(
            token, key=chain[0].public_key(), algorithms=[ALGORITHM],
            options={'verify_signature': True, 'verify_exp': False,
                     'verify_nbf': False, 'verify_iat': False,
                     'verify_aud': False, 'verify_iss': False})
    except jwt.InvalidSignatureError as e:
        raise TokenError(BAD_SIGNATURE, 'signature does not verify with '
                         'the x5c certificate: %s' % e)
    except jwt.PyJWTError as e:
        raise TokenError(MALFORMED, 'cannot decode token: %s' % e)
    if not isinstance(claims, dict):
        raise TokenError(MALFORMED, 'claims are not an object')
    for name in required:
        if claims.get(name) is None:
            raise TokenError(MISSING_CLAIM, 'claim %r is required' % name)
    _check_times(claims, now, leeway)
    if audience is not None and claims.get('aud') != audience:
        raise TokenError(WRONG_AUDIENCE, 'audience %r, expected %r'
                         % (claims.get('aud'), audience))
    return claims, peer


def _as_datetime(ts):
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def is_time(value):
    """Whether ``value`` is a usable time claim (see :data:`MAX_TIME`)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and MIN_TIME <= value <= MAX_TIME)


def _number(claims, name):
    if name not in claims:
        return None
    value = claims[name]
    if not is_time(value):
        raise TokenError(INVALID_TIME, 'claim %r must be a finite POSIX time '
                         'between %d and %d, not %s'
                         % (name, MIN_TIME, MAX_TIME, _short_repr(value)))
    return value


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


def _check_times(claims, now, leeway):
    exp, nbf, iat = (_number(claims, name) for name in ('exp', 'nbf', 'iat'))
    if exp is not None and now > exp + leeway:
        raise TokenError(EXPIRED, 'token expired %.0f s ago' % (now - exp))
    if nbf is not None and now + leeway < nbf:
        raise TokenError(NOT_YET_VALID, 'token not valid for another %.0f s'
                         % (nbf - now))
    if iat is not None and now + leeway < iat:
        raise TokenError(NOT_YET_VALID, 'token issued %.0f s in the future'
                         % (iat - now))


# -- grants ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Grant:
    """What the destination cloud allows one migration to send, and where."""

    migration_id: str
    instance_uuid: str
    src_cloud: str
    src_host: str
    src_fingerprint: str
    dst_cloud: str
    dst_host: str
    dst_fingerprint: str
    dst_endpoint: str
    streams: dict
    jti: str
    iat: float
    exp: float
    token: str = dataclasses.field(default='', compare=False, repr=False)

    @property
    def endpoint(self):
        """(host, port) of ``dst_endpoint`` (``host:port``, ``[v6]:port``)."""
        host, _, port = self.dst_endpoint.rpartition(':')
        return host.strip('[]'), int(port)


def issue_grant(credentials, *, migration_id, instance_uuid, src_cloud,
                src_host, src_fingerprint, dst_host, dst_fingerprint,
                dst_endpoint, streams, ttl=DEFAULT_GRANT_TTL, now=None,
                jti=None):
    """Sign a grant as the destination cloud's broker."""
    now = int(time.time() if now is None else now)
    identity = credentials.identity
    claims = {
        'iss': identity.cloud_id,
        'aud': identity.cloud_id,
        'sub': instance_uuid,
        'migration_id': migration_id,
        'instance_uuid': instance_uuid,
        'src_cloud': src_cloud,
        'src_host': src_host,
        'src_fingerprint': src_fingerprint,
        'dst_cloud': identity.cloud_id,
        'dst_host': dst_host,
        'dst_fingerprint': dst_fingerprint,
        'dst_endpoint': dst_endpoint,
        'streams': dict(streams),
        'iat': now,
        'exp': now + int(ttl),
        'jti': jti or uuid.uuid4().hex,
    }
    _check_grant_claims(claims)
    return sign(claims, credentials, TYP_GRANT)


_FP_CHARS = set('0123456789abcdef')


def _check_fingerprint(claims, name):
    value = claims.get(name)
    if (not isinstance(value, str) or len(value) != 64
            or not set(value) <= _FP_CHARS):
        raise TokenError(INVALID_CLAIM, 'claim %r must be a SHA-256 '
                         'fingerprint (64 lower-case hex)' % name)


def _check_grant_claims(claims):
    for name in ('migration_id', 'instance_uuid', 'src_cloud', 'src_host',
                 'dst_cloud', 'dst_host', 'dst_endpoint', 'jti'):
        value = claims.get(name)
        if not isinstance(value, str) or not value or len(value) > 255:
            raise TokenError(MISSING_CLAIM if value is None else
                             INVALID_CLAIM,
                             'claim %r must be a non-empty string' % name)
    _check_fingerprint(claims, 'src_fingerprint')
    _check_fingerprint(claims, 'dst_fingerprint')
    host, sep, port = claims['dst_endpoint'].rpartition(':')
    if not sep or not host or not re.fullmatch('[0-9]{1,5}', port) \
            or not 0 < int(port) < 65536:
        raise TokenError(INVALID_CLAIM, 'dst_endpoint must be host:port')
    streams = claims.get('streams')
    if (not isinstance(streams, dict) or not streams
            or not set(streams) <= set(STREAM_KINDS)
            or not all(isinstance(n, int) and not isinstance(n, bool)
                       and 1 <= n <= MAX_CONNECTIONS
                       for n in streams.values())):
        raise TokenError(INVALID_CLAIM, 'streams must map %s to 1..%d '
                         'connections' % ('/'.join(STREAM_KINDS),
                                          MAX_CONNECTIONS))


def verify_grant(token, store, now=None, leeway=DEFAULT_LEEWAY):
    """Verify a grant signed by a broker of ``store``'s cloud."""
    claims, _peer = verify(token, store, TYP_GRANT, 'broker', now=now,
                           leeway=leeway, audience=store.cloud_id)
    _check_grant_claims(claims)
    if claims['dst_cloud'] != store.cloud_id:
        raise TokenError(INVALID_CLAIM, 'grant names destination cloud %s '
                         'but was verified as cloud %s'
                         % (claims['dst_cloud'], store.cloud_id))
    return Grant(
        migration_id=claims['migration_id'],
        instance_uuid=claims['instance_uuid'],
        src_cloud=claims['src_cloud'], src_host=claims['src_host'],
        src_fingerprint=claims['src_fingerprint'],
        dst_cloud=claims['dst_cloud'], dst_host=claims['dst_host'],
        dst_fingerprint=claims['dst_fingerprint'],
        dst_endpoint=claims['dst_endpoint'], streams=claims['streams'],
        jti=claims['jti'], iat=claims['iat'], exp=claims['exp'],
        token=token)


# -- receipts --------------------------------------------------------------

RECEIPT_ROLES = ('source', 'destination')


def sign_receipt(credentials, claims):
    """Sign a tunnel connection's receipt as a host."""
    claims = dict(claims)
    claims.setdefault('iat', int(time.time()))
    claims.setdefault('jti', uuid.uuid4().hex)
    claims['iss'] = credentials.identity.urn
    return sign(claims, credentials, TYP_RECEIPT)


def verify_receipt(token, store, expected_fingerprint=None, now=None):
    """Verify a receipt signed by a host of ``store``'s cloud.

    Receipts are evidence kept for years: their own age is not checked
    here (``exp`` is not required), but the signer's certificate must be
    valid at ``now`` (pass the receipt's ``iat`` to verify an old receipt
    against the certificate as it was then).
    """
    claims, peer = verify(token, store, TYP_RECEIPT, 'host', now=now,
                          expected_fingerprint=expected_fingerprint,
                          required=('iat', 'jti', 'migration_id', 'role'))
    if claims.get('role') not in RECEIPT_ROLES:
        raise TokenError(INVALID_CLAIM, 'receipt role must be one of %s'
                         % (RECEIPT_ROLES,))
    if claims.get('iss') != peer.identity.urn:
        raise TokenError(INVALID_CLAIM, 'receipt issuer %r is not its '
                         'signer %s' % (claims.get('iss'), peer.identity.urn))
    return claims, peer


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(',', ':'))
