"""A cloud's trust store: its CA bundle and CRL, and chain verification.

Verification uses ``cryptography.x509.verification`` (RFC 5280 / CA/B
profile path building) and then checks revocation against the cloud's CRL
and the secmig identity in the leaf's subjectAltName. Every failure is a
:class:`~secmig_nova.trust.errors.TrustError` with a named reason.
"""

import dataclasses
import datetime

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography import x509
from cryptography.x509 import verification
from oslo_log import log as logging

from secmig_nova.trust import certs
from secmig_nova.trust import errors

LOG = logging.getLogger(__name__)

PURPOSES = ('server', 'client')
MAX_CHAIN_DEPTH = 4


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class VerifiedPeer:
    """The outcome of a successful verification."""

    identity: certs.Identity
    fingerprint: str
    chain: tuple


class TrustStore:
    """CA certificates (and optionally a CRL) of one cloud.

    :param cloud_id: the cloud whose identities this store accepts; a leaf
        whose SAN names another cloud is refused even if it chains here.
    """

    def __init__(self, cloud_id, ca_certs, crl=None, ca_file=None,
                 crl_file=None):
        if not ca_certs:
            raise errors.TrustError(errors.UNTRUSTED,
                                    'trust store of cloud %s has no CA '
                                    'certificate' % cloud_id)
        self.cloud_id = cloud_id
        self.ca_certs = list(ca_certs)
        self.crl = crl
        # Kept so TLS contexts can load the very same files into OpenSSL.
        self.ca_file = ca_file
        self.crl_file = crl_file
        if crl is not None:
            self._check_crl(_utcnow())

    @classmethod
    def load(cls, cloud_id, ca_file, crl_file=None):
        ca_certs = certs.load_pem_chain(ca_file)
        crl = certs.load_crl(crl_file) if crl_file else None
        return cls(cloud_id, ca_certs, crl, ca_file=ca_file,
                   crl_file=crl_file)

    def _crl_issuer(self):
        for ca in self.ca_certs:
            if ca.subject == self.crl.issuer:
                return ca
        return None

    def _check_crl(self, now):
        issuer = self._crl_issuer()
        if issuer is None:
            raise errors.TrustError(
                errors.CRL_INVALID,
                'CRL of cloud %s is not issued by any of its CAs'
                % self.cloud_id)
        if not self.crl.is_signature_valid(issuer.public_key()):
            raise errors.TrustError(
                errors.CRL_INVALID,
                'CRL of cloud %s has a bad signature' % self.cloud_id)
        next_update = self.crl.next_update_utc
        if next_update is not None and next_update < now:
            raise errors.TrustError(
                errors.CRL_INVALID,
                'CRL of cloud %s expired at %s; publish a new one'
                % (self.cloud_id, next_update.isoformat()))

    def verify(self, chain, purpose, dns_name=None, role=None,
               expected_fingerprint=None, now=None):
        """Verify a peer's chain (leaf first) for ``purpose``.

        :param purpose: ``server`` or ``client`` (TLS extended key usage).
        :param dns_name: for ``server``, the DNS name the leaf must carry;
            defaults to the name of its secmig identity.
        :param role: ``host`` or ``broker`` when the caller needs one.
        :param expected_fingerprint: the SHA-256 fingerprint pinned for this
            migration; checked in addition to the chain, never instead.
        :returns: :class:`VerifiedPeer`
        """
        if purpose not in PURPOSES:
            raise ValueError('purpose must be one of %s' % (PURPOSES,))
        if not chain:
            raise errors.TrustError(errors.UNTRUSTED, 'no certificate')
        now = now or _utcnow()
        leaf, intermediates = chain[0], list(chain[1:])
        fp = certs.fingerprint(leaf)
        identity = certs.identity_of(leaf)
        self._check_validity(leaf, now)
        if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey):
            raise errors.TrustError(errors.UNTRUSTED,
                                    'peer key is not ECDSA')
        builder = (verification.PolicyBuilder()
                   .store(verification.Store(self.ca_certs))
                   .time(now)
                   .max_chain_depth(MAX_CHAIN_DEPTH))
        try:
            if purpose == 'server':
                verifier = builder.build_server_verifier(
                    verification.DNSName(dns_name or identity.name))
                built = verifier.verify(leaf, intermediates)
            else:
                built = builder.build_client_verifier().verify(
                    leaf, intermediates).chain
        except verification.VerificationError as e:
            raise errors.TrustError(
                errors.UNTRUSTED,
                'certificate %s (%s) does not chain to a CA of cloud %s '
                'for %s use: %s' % (identity.urn, fp[:16], self.cloud_id,
                                    purpose, e))
        if self.crl is not None:
            self._check_crl(now)
            for cert in built[:-1]:
                if cert.issuer != self.crl.issuer:
                    continue
                revoked = self.crl.get_revoked_certificate_by_serial_number(
                    cert.serial_number)
                if revoked is not None:
                    raise errors.TrustError(
                        errors.REVOKED,
                        'certificate %s serial %x was revoked on %s'
                        % (certs.identity_of(cert).urn
                           if cert is leaf else cert.subject.rfc4514_string(),
                           cert.serial_number,
                           revoked.revocation_date_utc.isoformat()))
        if identity.cloud_id != self.cloud_id:
            raise errors.TrustError(
                errors.WRONG_CLOUD,
                'certificate %s belongs to cloud %s, expected %s'
                % (identity.urn, identity.cloud_id, self.cloud_id))
        if role is not None and identity.role != role:
            raise errors.TrustError(
                errors.WRONG_ROLE,
                'certificate %s is a %s certificate, expected %s'
                % (identity.urn, identity.role, role))
        if expected_fingerprint is not None and fp != expected_fingerprint:
            raise errors.TrustError(
                errors.FINGERPRINT_MISMATCH,
                'certificate %s has fingerprint %s, but this migration '
                'pinned %s' % (identity.urn, fp, expected_fingerprint))
        return VerifiedPeer(identity, fp, tuple(built))

    @staticmethod
    def _check_validity(leaf, now):
        if leaf.not_valid_after_utc < now:
            raise errors.TrustError(
                errors.EXPIRED,
                'certificate %s expired at %s'
                % (leaf.subject.rfc4514_string(),
                   leaf.not_valid_after_utc.isoformat()))
        if leaf.not_valid_before_utc > now:
            raise errors.TrustError(
                errors.NOT_YET_VALID,
                'certificate %s is not valid before %s'
                % (leaf.subject.rfc4514_string(),
                   leaf.not_valid_before_utc.isoformat()))


def chain_from_der(der_list):
    """Parse a list of DER certificates (e.g. an ``x5c`` header)."""
    try:
        return [x509.load_der_x509_certificate(d) for d in der_list]
    except ValueError as e:
        raise errors.TrustError(errors.UNTRUSTED,
                                'malformed certificate: %s' % e)
