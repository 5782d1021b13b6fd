"""Offline verification of a tunnel connection's pair of signed receipts.

Anyone holding the two clouds' CA bundles can check, long after the fact,
who moved what where: each receipt's signature and signer chain (as of the
receipt's own issue time), the signer's role (source or destination host),
that both receipts describe the same migration, connection, grant,
fingerprints and byte totals with digests, and that the destination's
receipt references the source's. Every check is reported by name.
"""

import dataclasses
import datetime

from secmig_nova.authz import tokens
from secmig_nova.trust import certs
from secmig_nova.trust import errors as trust_errors

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


def _verify_one(token, role, stores):
    """(claims or None, Check) for one receipt."""
    name = '%s_signature' % role
    try:
        unverified = tokens.unverified_claims(token)
        issuer = unverified.get('iss', '')
        cloud = issuer.split(':')[2] if issuer.startswith(
            certs.URN_PREFIX) else None
        store = stores.get(cloud)
        if store is None:
            return None, Check(name, False, 'no CA bundle for cloud %r '
                               '(signer %s)' % (cloud, issuer))
        # Evidence outlives certificates: check the chain as it was when
        # the receipt was signed.
        iat = unverified.get('iat')
        claims, peer = tokens.verify_receipt(
            token, store, now=iat if isinstance(iat, (int, float)) else None)
    except (tokens.TokenError, trust_errors.TrustError) as e:
        return None, Check(name, False, str(e))
    if claims.get('role') != role:
        return None, Check(name, False, 'receipt is a %s receipt'
                           % claims.get('role'))
    fp_claim = 'src_fingerprint' if role == 'source' else 'dst_fingerprint'
    if claims.get(fp_claim) != peer.fingerprint:
        return None, Check(name, False, 'signer %s is not the %s host the '
                           'receipt names' % (peer.identity.urn, role))
    return claims, Check(name, True, 'signed by %s (%s), %s'
                         % (peer.identity.urn, peer.fingerprint[:16],
                            _when(claims.get('iat'))))


def _when(ts):
    if not isinstance(ts, (int, float)):
        return 'unknown time'
    return datetime.datetime.fromtimestamp(
        ts, datetime.timezone.utc).isoformat(timespec='seconds')


def verify_pair(source_receipt, destination_receipt, stores, label=''):
    """Verify one connection's receipts; returns a :class:`PairResult`.

    :param stores: ``{cloud_id: TrustStore}`` of both clouds.
    """
    checks = []
    src, dst = None, None
    if source_receipt:
        src, check = _verify_one(source_receipt, 'source', stores)
        checks.append(check)
    else:
        checks.append(Check('source_signature', False, 'missing'))
    if destination_receipt:
        dst, check = _verify_one(destination_receipt, 'destination', stores)
        checks.append(check)
    else:
        checks.append(Check('destination_signature', False, 'missing'))
    if src is not None and dst is not None:
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
    claims = dst or src or {}
    label = label or '%s %s#%s' % (claims.get('migration_id', '?'),
                                   claims.get('stream_kind', '?'),
                                   claims.get('connection_index', '?'))
    return PairResult(label, checks, claims)


def pairs_from_document(doc):
    """Receipt pairs from a tunnel outcome, a broker record or a list."""
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
    return [(c.get('source_receipt'), c.get('destination_receipt'))
            for c in doc if isinstance(c, dict)]


def _pairs_from_broker(rows):
    by_conn = {}
    for row in rows:
        key = (row.get('stream_kind'), row.get('connection_index'))
        by_conn.setdefault(key, {})[row.get('role')] = row.get('token')
    return [(v.get('source'), v.get('destination'))
            for _k, v in sorted(by_conn.items(), key=lambda kv: str(kv[0]))]
