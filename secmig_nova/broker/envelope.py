"""Signed envelopes: how brokers and hosts talk over an untrusted bus.

The message bus (RabbitMQ) is shared infrastructure, so nothing a broker acts
on is taken from the bus on trust. Every request a broker receives from a peer
broker, and every registration from a compute host, travels as a JWS envelope
(ES256, signer chain in ``x5c``, see secmig_nova/authz/tokens.py) with:

``iss``      the sender's cloud id
``aud``      the receiving cloud id
``method``   the RPC method the envelope is for (no cross-method reuse)
``payload``  the request body
``iat``      when it was signed; older than ``max_age`` is refused
``exp``      ``iat + max_age``
``jti``      a nonce: single use, remembered in the replay store

Refusals carry a named reason: ``envelope_too_large``, ``unknown_cloud``,
``bad_envelope`` (any signature, chain or format problem),
``stale_envelope``, ``replayed``, ``wrong_method``, ``wrong_audience``.

Size caps
---------

An envelope's size is checked before any of it is decoded: it bounds what
a sender can make a broker parse before the signature is verified. The
cap depends on the method, because some requests carry other tokens
(each at most ``tokens.MAX_TOKEN_BYTES``) in their payload, and a token
inside the claims grows by a third when they are base64url encoded. Every
envelope gets ``ENVELOPE_BASE_BYTES``: its own header (the signer's chain in
``x5c``, allowed as much as a whole token) and the other claims; each token
it may carry adds ``EMBEDDED_TOKEN_BYTES``. So 10 KiB for most methods,
21 KiB for the ones carrying a ticket or a Keystone token, and 32 KiB for
``record_receipt``: a source and a destination receipt, each with its
host's chain (7.8 KB with the test PKI's one-certificate chains, about 19
KB with an RSA intermediate CA in both).
"""

import time
import uuid

from secmig_nova.authz import replay
from secmig_nova.authz import tokens
from secmig_nova.trust import errors as trust_errors

TYP_ENVELOPE = 'secmig-envelope+jwt'
DEFAULT_MAX_AGE = 60

TOO_LARGE = 'envelope_too_large'
UNKNOWN_CLOUD = 'unknown_cloud'
BAD_ENVELOPE = 'bad_envelope'
STALE_ENVELOPE = 'stale_envelope'
REPLAYED = 'replayed'
WRONG_METHOD = 'wrong_method'
WRONG_AUDIENCE = 'wrong_audience'


ENVELOPE_BASE_BYTES = 10 * 1024
EMBEDDED_TOKEN_BYTES = 11 * 1024  # > 4/3 * tokens.MAX_TOKEN_BYTES
# Tokens a request may carry in its payload: a Keystone token, the
# ticket, or one connection's two receipts (hosts send one connection per
# record_receipt request).
EMBEDDED_TOKENS = {
    'authorize_migration': 1,
    'request_grant': 1,
    'forward_grant': 1,
    'record_receipt': 2,
}


def max_bytes(method):
    """Size cap of an envelope for ``method`` (see the module docstring)."""
    return ENVELOPE_BASE_BYTES + \
        EMBEDDED_TOKENS.get(method, 0) * EMBEDDED_TOKEN_BYTES


class EnvelopeError(Exception):
    """An envelope was refused; ``reason`` names why."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


def seal(credentials, audience, method, payload, max_age=DEFAULT_MAX_AGE,
         now=None):
    """Sign ``payload`` for ``audience``'s ``method``."""
    now = int(time.time() if now is None else now)
    claims = {
        'iss': credentials.identity.cloud_id,
        'aud': audience,
        'method': method,
        'payload': payload,
        'iat': now,
        'exp': now + int(max_age),
        'jti': uuid.uuid4().hex,
    }
    return tokens.sign(claims, credentials, TYP_ENVELOPE)


def _unverified_issuer(token, limit):
    try:
        claims = tokens.unverified_claims(token, max_bytes=limit)
    except tokens.TokenError as e:
        raise EnvelopeError(BAD_ENVELOPE, str(e))
    iss = claims.get('iss')
    if not isinstance(iss, str):
        raise EnvelopeError(BAD_ENVELOPE, 'envelope has no issuer')
    return iss


def open_envelope(token, trust_stores, audience, method, replay_store,
                  role, max_age=DEFAULT_MAX_AGE, now=None):
    """Verify an envelope; returns ``(payload, claims, VerifiedPeer)``.

    :param trust_stores: ``{cloud_id: TrustStore}`` of the clouds this
        receiver accepts envelopes from; the issuer is looked up here and
        the signer must chain to that cloud's CA.
    :param role: ``broker`` or ``host``: what the signer must be.
    """
    now = time.time() if now is None else now
    if not isinstance(token, str) or not token:
        raise EnvelopeError(BAD_ENVELOPE, 'envelope missing')
    limit = max_bytes(method)
    if len(token) > limit:
        raise EnvelopeError(TOO_LARGE, 'envelope of %d bytes for %s exceeds '
                            'its cap of %d' % (len(token), method, limit))
    issuer = _unverified_issuer(token, limit)
    store = trust_stores.get(issuer)
    if store is None:
        raise EnvelopeError(UNKNOWN_CLOUD, 'envelope from unknown cloud %r'
                            % issuer)
    try:
        claims, peer = tokens.verify(
            token, store, TYP_ENVELOPE, role, now=now, leeway=0,
            required=('iat', 'exp', 'jti', 'aud', 'method', 'payload'),
            max_bytes=limit)
    except tokens.TokenError as e:
        if e.reason == tokens.EXPIRED:
            raise EnvelopeError(STALE_ENVELOPE, str(e))
        raise EnvelopeError(BAD_ENVELOPE, str(e))
    except trust_errors.TrustError as e:
        raise EnvelopeError(BAD_ENVELOPE, 'signer refused: %s' % e)
    if peer.identity.cloud_id != issuer:
        raise EnvelopeError(BAD_ENVELOPE, 'signer %s is not of issuing '
                            'cloud %s' % (peer.identity.urn, issuer))
    if claims['aud'] != audience:
        raise EnvelopeError(WRONG_AUDIENCE, 'envelope for %r, this is %r'
                            % (claims['aud'], audience))
    if claims['method'] != method:
        raise EnvelopeError(WRONG_METHOD, 'envelope for %r used for %r'
                            % (claims['method'], method))
    iat = claims['iat']
    if not isinstance(iat, (int, float)) or abs(now - iat) > max_age:
        raise EnvelopeError(STALE_ENVELOPE, 'envelope signed %.0f s from '
                            'now, more than %d s' % (now - iat, max_age))
    if not isinstance(claims['payload'], dict):
        raise EnvelopeError(BAD_ENVELOPE, 'payload must be an object')
    try:
        fresh = replay_store.check_and_remember(
            'envelope:%s:%s' % (issuer, claims['jti']), iat + 2 * max_age)
    except replay.ReplayStoreError as e:
        # Cannot tell whether it is a replay: refuse (fail closed).
        raise EnvelopeError(e.reason, 'envelope %s from %s refused: %s'
                            % (claims['jti'], issuer, e))
    if not fresh:
        raise EnvelopeError(REPLAYED, 'envelope %s from %s was already used'
                            % (claims['jti'], issuer))
    return claims['payload'], claims, peer
