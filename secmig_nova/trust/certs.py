"""PEM loading, fingerprints and the secmig identity of a certificate.

Identity convention (documented in doc/source/admin/certificates.rst): every
secmig certificate carries exactly one subjectAltName URI of the form

    urn:secmig:<cloud-id>:<role>:<name>

where ``role`` is ``host`` (a compute host's tunnel identity) or ``broker``
(a cloud's broker, which signs tickets and grants). Host certificates also
carry the hostname as a DNS name so TLS server verification has a subject.
"""

import dataclasses
import hashlib
import re

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization
from cryptography import x509

from secmig_nova.trust import errors

ROLES = ('host', 'broker')
URN_PREFIX = 'urn:secmig:'
_NAME_RE = r'[A-Za-z0-9][A-Za-z0-9._-]{0,62}'
# \Z, not $: $ also matches before a trailing newline.
_URN_RE = re.compile(r'^urn:secmig:(?P<cloud>%s):(?P<role>host|broker):'
                     r'(?P<name>%s)\Z' % (_NAME_RE, _NAME_RE))
CLOUD_ID_RE = re.compile(r'^%s\Z' % _NAME_RE)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a certificate says it is, per the SAN URI convention."""

    cloud_id: str
    role: str
    name: str

    @property
    def urn(self):
        return make_urn(self.cloud_id, self.role, self.name)


def make_urn(cloud_id, role, name):
    urn = '%s%s:%s:%s' % (URN_PREFIX, cloud_id, role, name)
    if not _URN_RE.match(urn):
        raise ValueError('invalid secmig identity %r: cloud id and name '
                         'must match %s, role one of %s'
                         % (urn, _NAME_RE, ', '.join(ROLES)))
    return urn


def identity_of(cert):
    """Return the :class:`Identity` of ``cert`` or raise TrustError."""
    try:
        san = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise errors.TrustError(errors.IDENTITY_INVALID,
                                'certificate has no subjectAltName')
    except ValueError as e:
        # cryptography parses extensions lazily: a malformed one (found by
        # tools/fuzz_connection.py in a mutated receipt's x5c) raises here.
        raise errors.TrustError(errors.IDENTITY_INVALID,
                                'certificate has a malformed extension: %s'
                                % e)
    urns = [u for u in san.get_values_for_type(
        x509.UniformResourceIdentifier) if u.startswith(URN_PREFIX)]
    if len(urns) != 1:
        raise errors.TrustError(
            errors.IDENTITY_INVALID,
            'certificate must carry exactly one %s URI, found %d'
            % (URN_PREFIX, len(urns)))
    match = _URN_RE.match(urns[0])
    if not match:
        raise errors.TrustError(errors.IDENTITY_INVALID,
                                'malformed secmig URI %r' % urns[0])
    return Identity(match['cloud'], match['role'], match['name'])


def fingerprint(cert):
    """SHA-256 of the DER certificate, lower-case hex (64 characters)."""
    if isinstance(cert, (bytes, bytearray, memoryview)):
        der = bytes(cert)
    else:
        der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def load_pem_chain(path):
    """Certificates of a PEM file in file order (leaf first for chains)."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise errors.TrustError(errors.UNTRUSTED,
                                'cannot read certificates from %s: %s'
                                % (path, e))
    return certs


def load_private_key(path):
    """Load an unencrypted PEM EC private key."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise errors.TrustError(errors.KEY_INVALID,
                                'cannot read private key %s: %s' % (path, e))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.TrustError(errors.KEY_INVALID,
                                '%s is not an ECDSA key' % path)
    return key


def load_crl(path):
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as e:
        raise errors.TrustError(errors.CRL_INVALID,
                                'cannot read CRL %s: %s' % (path, e))


@dataclasses.dataclass
class Credentials:
    """A certificate chain with its private key: what a host or broker is."""

    chain: list
    key: object

    @property
    def cert(self):
        return self.chain[0]

    @property
    def fingerprint(self):
        return fingerprint(self.chain[0])

    @property
    def identity(self):
        return identity_of(self.chain[0])

    @classmethod
    def load(cls, cert_file, key_file):
        chain = load_pem_chain(cert_file)
        if not chain:
            raise errors.TrustError(errors.UNTRUSTED,
                                    'no certificate in %s' % cert_file)
        key = load_private_key(key_file)
        if (key.public_key().public_numbers() !=
                chain[0].public_key().public_numbers()):
            raise errors.TrustError(
                errors.KEY_INVALID,
                '%s does not belong to the certificate in %s'
                % (key_file, cert_file))
        return cls(chain, key)
