"""Authorization tickets: the paper's step 4, as a JWT signed by a broker.

After the policy check allowed a migration, the source cloud's broker signs
a ticket (ES256, its certificate chain in ``x5c``, ``typ``
``secmig-ticket+jwt``) saying who may migrate which instance from which
host to which host of which cloud, and by which roles. The destination
cloud's broker verifies it (:func:`verify_ticket`) before it grants
anything:

1. size and the unverified ``iss``, only to pick the trust store of the
   cloud that claims to have issued it (unknown cloud: refused);
2. through :func:`secmig_nova.authz.tokens.verify`: ``alg`` pinned to
   ES256 (``none``, HS*, RS* refused before any key is used), ``typ``, the
   ``x5c`` chain against that cloud's trust store for a *broker*
   certificate, then the signature, then ``iat``/``exp`` with a bounded
   clock skew, and the audience (the verifying cloud);
3. the ticket's own claims, its lifetime, ``iss`` equal to the signer's
   cloud and ``dst_cloud`` equal to the audience;
4. last, single use of ``jti`` through a
   :class:`~secmig_nova.authz.replay.ReplayStore`.

Every refusal raises :class:`~secmig_nova.authz.tokens.TokenError` with a
named reason (a certificate problem keeps the trust store's reason, e.g.
``certificate_untrusted``).
"""

import dataclasses
import re
import secrets
import time
import uuid

from oslo_log import log as logging
from oslo_utils import uuidutils

from secmig_nova.authz import replay
from secmig_nova.authz import tokens
from secmig_nova.trust import errors as trust_errors

LOG = logging.getLogger(__name__)

DEFAULT_TTL = 120
MAX_TTL = 600
MAX_ROLES = 32
UNKNOWN_ISSUER = 'ticket_unknown_issuer'

REQUIRED_CLAIMS = ('iss', 'sub', 'aud', 'project', 'roles', 'instance_uuid',
                   'src_host', 'dst_host', 'dst_cloud', 'iat', 'exp', 'jti',
                   'nonce')
_NONCE_RE = re.compile(r'^[0-9a-f]{32,128}$')


@dataclasses.dataclass(frozen=True)
class Ticket:
    """A verified authorization ticket."""

    issuer: str
    user_id: str
    project_id: str
    roles: tuple
    instance_uuid: str
    src_host: str
    dst_host: str
    dst_cloud: str
    iat: float
    exp: float
    jti: str
    nonce: str
    token: str = dataclasses.field(default='', compare=False, repr=False)

    @property
    def replay_key(self):
        return 'ticket:%s:%s' % (self.issuer, self.jti)


def _string(claims, name):
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise tokens.TokenError(
            tokens.MISSING_CLAIM if value is None else tokens.INVALID_CLAIM,
            'claim %r must be a non-empty string of at most 255 characters'
            % name)
    return value


def _check_claims(claims):
    for name in ('iss', 'sub', 'aud', 'project', 'src_host', 'dst_host',
                 'dst_cloud', 'jti'):
        _string(claims, name)
    if not uuidutils.is_uuid_like(_string(claims, 'instance_uuid')):
        raise tokens.TokenError(tokens.INVALID_CLAIM,
                                'claim instance_uuid is not a UUID')
    if not _NONCE_RE.match(_string(claims, 'nonce')):
        raise tokens.TokenError(tokens.INVALID_CLAIM, 'claim nonce must be '
                                'at least 128 bits of lower-case hex')
    roles = claims.get('roles')
    if (not isinstance(roles, list) or len(roles) > MAX_ROLES
            or not all(isinstance(r, str) and r and len(r) <= 255
                       for r in roles)
            or len(set(roles)) != len(roles)):
        raise tokens.TokenError(tokens.INVALID_CLAIM, 'claim roles must be '
                                'a list of at most %d distinct role names'
                                % MAX_ROLES)
    if claims['dst_cloud'] != claims['aud']:
        raise tokens.TokenError(tokens.INVALID_CLAIM, 'ticket for cloud %s '
                                'is addressed to %s'
                                % (claims['dst_cloud'], claims['aud']))


def issue_ticket(credentials, *, user_id, project_id, roles, instance_uuid,
                 src_host, dst_host, dst_cloud, ttl=DEFAULT_TTL, now=None,
                 jti=None, nonce=None):
    """Sign a ticket as this cloud's broker.

    :param credentials: the broker's
        :class:`~secmig_nova.trust.certs.Credentials`; ``iss`` is its cloud.
    :param roles: the roles that satisfied the policy
        (:func:`secmig_nova.authz.policies.authorize`).
    :returns: the compact JWT.
    """
    identity = credentials.identity
    if identity.role != 'broker':
        raise ValueError('tickets are signed by a broker, not by %s'
                         % identity.urn)
    if not 1 <= ttl <= MAX_TTL:
        raise ValueError('ticket lifetime must be 1 to %d s' % MAX_TTL)
    now = int(time.time() if now is None else now)
    claims = {
        'iss': identity.cloud_id,
        'sub': user_id,
        'aud': dst_cloud,
        'project': project_id,
        'roles': sorted(set(roles)),
        'instance_uuid': instance_uuid,
        'src_host': src_host,
        'dst_host': dst_host,
        'dst_cloud': dst_cloud,
        'iat': now,
        'exp': now + int(ttl),
        'jti': jti or uuid.uuid4().hex,
        'nonce': nonce or secrets.token_hex(16),
    }
    _check_claims(claims)
    token = tokens.sign(claims, credentials, tokens.TYP_TICKET)
    LOG.info('Issued ticket %s: user %s, instance %s, %s -> %s:%s, roles %s',
             claims['jti'], user_id, instance_uuid, src_host, dst_cloud,
             dst_host, ', '.join(claims['roles']))
    return token


def _store_for(token, trust_stores):
    if hasattr(trust_stores, 'verify'):
        return trust_stores
    issuer = tokens.unverified_claims(token).get('iss')
    store = trust_stores.get(issuer) if isinstance(issuer, str) else None
    if store is None:
        raise tokens.TokenError(UNKNOWN_ISSUER, 'ticket issued by cloud %r, '
                                'which has no trust store here' % (issuer,))
    return store


def verify_ticket(token, trust_stores, *, audience, replay_store, now=None,
                  leeway=tokens.DEFAULT_LEEWAY, max_ttl=MAX_TTL):
    """Verify a ticket and consume its ``jti``; returns a :class:`Ticket`.

    :param trust_stores: a mapping of cloud id to
        :class:`~secmig_nova.trust.store.TrustStore` of every cloud whose
        tickets are accepted, or a single trust store.
    :param audience: this (the destination) cloud's id.
    :param replay_store: :class:`~secmig_nova.authz.replay.ReplayStore`.
    :raises tokens.TokenError: with a named reason.
    """
    store = _store_for(token, trust_stores)
    try:
        claims, peer = tokens.verify(
            token, store, tokens.TYP_TICKET, 'broker', now=now,
            leeway=leeway, audience=audience, required=REQUIRED_CLAIMS)
    except trust_errors.TrustError as e:
        raise tokens.TokenError(e.reason, 'ticket signer refused: %s'
                                % e.args[0]) from e
    _check_claims(claims)
    if claims['iss'] != peer.identity.cloud_id:
        raise tokens.TokenError(tokens.INVALID_CLAIM, 'ticket claims issuer '
                                '%s but is signed by %s'
                                % (claims['iss'], peer.identity.urn))
    if claims['exp'] - claims['iat'] > max_ttl:
        raise tokens.TokenError(tokens.INVALID_CLAIM, 'ticket lifetime of '
                                '%s s exceeds %d s'
                                % (claims['exp'] - claims['iat'], max_ttl))
    ticket = Ticket(
        issuer=claims['iss'], user_id=claims['sub'],
        project_id=claims['project'], roles=tuple(claims['roles']),
        instance_uuid=claims['instance_uuid'], src_host=claims['src_host'],
        dst_host=claims['dst_host'], dst_cloud=claims['dst_cloud'],
        iat=claims['iat'], exp=claims['exp'], jti=claims['jti'],
        nonce=claims['nonce'], token=token)
    try:
        fresh = replay_store.check_and_remember(ticket.replay_key,
                                                ticket.exp + leeway)
    except replay.ReplayStoreError as e:
        raise tokens.TokenError(e.reason, str(e)) from e
    if not fresh:
        raise tokens.TokenError(tokens.REPLAYED, 'ticket %s of cloud %s was '
                                'already used' % (ticket.jti, ticket.issuer))
    LOG.info('Accepted ticket %s of cloud %s: user %s, instance %s to %s',
             ticket.jti, ticket.issuer, ticket.user_id,
             ticket.instance_uuid, ticket.dst_host)
    return ticket
