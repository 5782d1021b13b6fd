"""Offline verification of a tunnel connection's pair of signed receipts.

Anyone holding the two clouds' CA bundles can check, long after the fact,
who moved what where: each receipt's signature and signer chain (as of the
receipt's own issue time), the signer's role (source or destination host),
that each signer is a host of the cloud the receipt names for its role,
that two distinct hosts signed, that both receipts describe the same
migration, connection, grant, fingerprints and byte totals with digests,
that the destination's receipt references the source's, and (given the
grant or the broker's record of it) that both are bound to that grant.
Every check is reported by name; hostile input is a failed check or a
ValueError, never another exception.
"""

import dataclasses
import datetime

from secmig_nova.authz import tokens
from secmig_nova.trust import certs
from secmig_nova.trust import errors as trust_errors
from secmig_nova.tunnel import errors

SAME_CLAIMS = ('migration_id', 'instance_uuid', 'grant_jti', 'stream_kind',
               'connection_index', 'src_to_dst', 'dst_to_src',
               'src_fingerprint', 'dst_fingerprint', 'src_cloud',
               'dst_cloud', 'tls_version', 'tls_cipher')


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str = ''


@dataclasses.dataclass
class PairResult:
    label: str
    checks: list
    claims: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self):
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self):
        return [c for c in self.checks if not c.ok]


# Claims that bind a receipt to its migration and grant: a broker record
# or a grant says what they must be (see expectation_from_grant/_records).
GRANT_BOUND = ('migration_id', 'instance_uuid', 'grant_jti',
               'src_fingerprint', 'dst_fingerprint', 'src_cloud',
               'dst_cloud')
_ROLE_CLAIMS = {'source': ('src_fingerprint', 'src_cloud'),
                'destination': ('dst_fingerprint', 'dst_cloud')}


def _text(value):
    return errors.peer_text(value, limit=120)


def _verify_one(token, role, stores):
    """(claims or None, signer or None, Check) for one receipt.

    The signer must be a host of the cloud the receipt names for its role
    (``src_cloud`` for the source) and the host whose fingerprint the
    receipt names for that role.
    """
    name = '%s_signature' % role
    try:
        unverified = tokens.unverified_claims(token)
        issuer = unverified.get('iss')
        cloud = issuer.split(':')[2] if isinstance(issuer, str) and \
            issuer.startswith(certs.URN_PREFIX) and \
            issuer.count(':') >= 3 else None
        store = stores.get(cloud)
        if store is None:
            return None, None, Check(name, False, 'no CA bundle for cloud '
                                     '%s (signer %s)'
                                     % (_text(cloud), _text(issuer)))
        # Evidence outlives certificates: check the chain as it was when
        # the receipt was signed (a non-finite iat is refused by verify).
        iat = unverified.get('iat')
        claims, peer = tokens.verify_receipt(
            token, store, now=iat if tokens.is_time(iat) else None)
    except (tokens.TokenError, trust_errors.TrustError) as e:
        return None, None, Check(name, False, _text(e))
    if claims.get('role') != role:
        return None, None, Check(name, False, 'receipt is a %s receipt'
                                 % _text(claims.get('role')))
    fp_claim, cloud_claim = _ROLE_CLAIMS[role]
    if claims.get(fp_claim) != peer.fingerprint:
        return None, None, Check(name, False, 'signer %s is not the %s '
                                 'host the receipt names'
                                 % (peer.identity.urn, role))
    if claims.get(cloud_claim) != peer.identity.cloud_id:
        return None, None, Check(name, False, 'signer %s is a host of cloud '
                                 '%s, but the receipt names %s cloud %s'
                                 % (peer.identity.urn, peer.identity.cloud_id,
                                    role, _text(claims.get(cloud_claim))))
    return claims, peer, Check(name, True, 'signed by %s (%s), %s'
                               % (peer.identity.urn, peer.fingerprint[:16],
                                  _when(claims.get('iat'))))


def _when(ts):
    if not tokens.is_time(ts):
        return 'unknown time'
    return datetime.datetime.fromtimestamp(
        ts, datetime.timezone.utc).isoformat(timespec='seconds')


def totals_text(claims):
    """One line of a verified pair's byte totals, for people."""
    def get(direction, name):
        totals = claims.get(direction)
        return _text(totals.get(name) if isinstance(totals, dict) else None)
    return '%s bytes to the destination (sha256 %s), %s back' % (
        get('src_to_dst', 'bytes'), get('src_to_dst', 'sha256'),
        get('dst_to_src', 'bytes'))


def expectation_from_grant(grant):
    """What a verified :class:`~secmig_nova.authz.tokens.Grant` binds."""
    return {'migration_id': grant.migration_id,
            'instance_uuid': grant.instance_uuid, 'grant_jti': grant.jti,
            'src_fingerprint': grant.src_fingerprint,
            'dst_fingerprint': grant.dst_fingerprint,
            'src_cloud': grant.src_cloud, 'dst_cloud': grant.dst_cloud}


def expectation_from_records(records):
    """What a broker's migration records bind, or None without a grant.

    :param records: ``{side: record}`` as the broker stores them (one
        record per side it saw); records that disagree are an error.
    :raises ValueError: when the records are malformed or disagree.
    """
    if not records:
        return None
    if not isinstance(records, dict) or not all(
            isinstance(r, dict) for r in records.values()):
        raise ValueError('broker records must map a side to a record')
    expected = None
    for side in sorted(records):
        record = records[side]
        this = {'migration_id': record.get('id')}
        this.update((n, record.get(n)) for n in GRANT_BOUND
                    if n != 'migration_id')
        if not this['grant_jti']:
            continue  # refused before a grant: nothing to bind to
        if expected is not None and this != expected:
            raise ValueError('the broker records of migration %s disagree '
                             'on its grant' % _text(this['migration_id']))
        expected = this
    return expected


def verify_pair(source_receipt, destination_receipt, stores, label='',
                expected=None):
    """Verify one connection's receipts; returns a :class:`PairResult`.

    :param stores: ``{cloud_id: TrustStore}`` of both clouds.
    :param expected: the claims the grant binds (:data:`GRANT_BOUND`),
        from :func:`expectation_from_grant` or a broker record; when
        given, both receipts must carry exactly these values.
    """
    checks = []
    src = dst = src_peer = dst_peer = None
    for role, token in (('source', source_receipt),
                        ('destination', destination_receipt)):
        if not token:
            checks.append(Check('%s_signature' % role, False, 'missing'))
            continue
        claims, peer, check = _verify_one(token, role, stores)
        checks.append(check)
        if role == 'source':
            src, src_peer = claims, peer
        else:
            dst, dst_peer = claims, peer
    if src is not None and dst is not None:
        distinct = src_peer.fingerprint != dst_peer.fingerprint
        checks.append(Check(
            'distinct_hosts', distinct,
            'signed by two hosts' if distinct else 'one host (%s) signed '
            'both receipts' % src_peer.identity.urn))
        differ = [n for n in SAME_CLAIMS if src.get(n) != dst.get(n)]
        checks.append(Check(
            'same_claims', not differ,
            'the receipts differ in %s' % ', '.join(differ) if differ
            else 'migration, connection, grant, hosts and totals agree'))
        linked = dst.get('source_receipt_sha256') == tokens.token_digest(
            source_receipt)
        checks.append(Check(
            'destination_references_source', linked,
            'the destination receipt acknowledges this source receipt'
            if linked else 'the destination receipt names another source '
            'receipt'))
        if expected is not None:
            wrong = [n for n in GRANT_BOUND
                     if src.get(n) != expected.get(n)
                     or dst.get(n) != expected.get(n)]
            checks.append(Check(
                'bound_to_grant', not wrong,
                'the receipts name another %s than grant %s'
                % (', '.join(wrong), _text(expected.get('grant_jti')))
                if wrong else 'grant %s: its migration, instance, hosts '
                'and clouds' % _text(expected.get('grant_jti'))))
    claims = dst or src or {}
    label = label or '%s %s#%s' % (_text(claims.get('migration_id', '?')),
                                   _text(claims.get('stream_kind', '?')),
                                   _text(claims.get('connection_index', '?')))
    return PairResult(label, checks, claims)


def pairs_from_document(doc):
    """Receipt pairs from a tunnel outcome, a broker record or a list.

    :raises ValueError: for a document of another shape (it is input from
        a file: any JSON at all).
    """
    if isinstance(doc, dict):
        if 'connections' in doc:
            doc = doc['connections']
        elif 'receipts' in doc:
            return _pairs_from_broker(doc['receipts'])
        else:
            doc = [doc]
    if not isinstance(doc, list):
        raise ValueError('expected a tunnel outcome, a broker migration '
                         'record or a list of receipt pairs')
    return [(_token(c.get('source_receipt')),
             _token(c.get('destination_receipt')))
            for c in doc if isinstance(c, dict)]


def _token(value):
    return value if isinstance(value, str) else None


def _pairs_from_broker(rows):
    if not isinstance(rows, list):
        raise ValueError('receipts must be a list of broker receipt rows')
    by_conn = {}
    for row in rows:
        if not isinstance(row, dict) or row.get('role') not in \
                tokens.RECEIPT_ROLES:
            continue
        key = (str(row.get('stream_kind')), str(row.get('connection_index')))
        by_conn.setdefault(key, {})[row['role']] = _token(row.get('token'))
    return [(v.get('source'), v.get('destination'))
            for _k, v in sorted(by_conn.items())]
