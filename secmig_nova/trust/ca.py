"""A small cloud CA for labs, tests and devstack.

``secmig-nova-manage ca init`` creates a cloud's CA; ``ca issue host|broker``
issues ECDSA P-256 certificates with the secmig SAN convention; ``ca revoke``
maintains a CRL. Production clouds may use any CA that issues certificates of
the same profile (see doc/source/admin/certificates.rst).
"""

import datetime
import os

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

from secmig_nova.trust import certs

CA_CERT = 'ca.crt'
CA_KEY = 'ca.key'
CRL = 'ca.crl'
REVOKED_LIST = 'revoked.txt'

DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365
DEFAULT_CRL_DAYS = 30


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def write_private(path, data):
    """Write a secret with mode 0600 from the start (no window at 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # The mode above only applies to a new file: tighten an existing one
    # before a byte of the secret is written.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(data)


def write_public(path, data):
    with open(path, 'wb') as f:
        f.write(data)
    os.chmod(path, 0o644)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'secmig-nova'),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def make_ca(cloud_id, days=DEFAULT_CA_DAYS, key=None, now=None):
    """Return (certificate, key) of a self-signed cloud CA."""
    if not certs.CLOUD_ID_RE.match(cloud_id):
        raise ValueError('invalid cloud id %r' % cloud_id)
    key = key or new_key()
    now = now or _utcnow()
    name = _name('secmig CA %s' % cloud_id)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ski), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert, ca_key, cloud_id, role, name, days=DEFAULT_CERT_DAYS,
          not_before=None, not_after=None, key=None, dns_names=None):
    """Issue a host or broker certificate; returns (certificate, key).

    ``not_before``/``not_after`` override ``days`` (tests use them to make
    expired or not-yet-valid certificates).
    """
    urn = certs.make_urn(cloud_id, role, name)
    key = key or new_key()
    now = _utcnow()
    not_before = not_before or now - datetime.timedelta(minutes=5)
    not_after = not_after or now + datetime.timedelta(days=days)
    san = [x509.UniformResourceIdentifier(urn)]
    san += [x509.DNSName(n) for n in (dns_names or [name])]
    ca_ski = ca_cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(_name('%s %s %s' % (cloud_id, role, name)))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH,
                 ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def make_crl(ca_cert, ca_key, revoked_serials, days=DEFAULT_CRL_DAYS,
             now=None):
    now = now or _utcnow()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=days)))
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial).revocation_date(now).build())
    return builder.sign(ca_key, hashes.SHA256())


class CADirectory:
    """A CA kept in a directory: ca.crt, ca.key (0600), ca.crl, revoked.txt."""

    def __init__(self, path):
        self.path = path

    def _p(self, name):
        return os.path.join(self.path, name)

    @property
    def ca_file(self):
        return self._p(CA_CERT)

    @property
    def crl_file(self):
        return self._p(CRL)

    def exists(self):
        return os.path.exists(self._p(CA_CERT))

    def init(self, cloud_id, days=DEFAULT_CA_DAYS, force=False):
        if self.exists() and not force:
            raise FileExistsError('a CA already exists in %s' % self.path)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        cert, key = make_ca(cloud_id, days=days)
        write_private(self._p(CA_KEY), _key_pem(key))
        write_public(self._p(CA_CERT), _cert_pem(cert))
        with open(self._p('cloud_id'), 'w') as f:
            f.write(cloud_id + '\n')
        write_public(self._p(REVOKED_LIST), b'')
        self.write_crl()
        return cert

    @property
    def cloud_id(self):
        with open(self._p('cloud_id')) as f:
            return f.read().strip()

    def load(self):
        ca_cert = certs.load_pem_chain(self._p(CA_CERT))[0]
        ca_key = certs.load_private_key(self._p(CA_KEY))
        return ca_cert, ca_key

    def issue(self, role, name, out_dir=None, days=DEFAULT_CERT_DAYS,
              **kwargs):
        """Issue and write ``<name>.crt`` / ``<name>.key`` into out_dir."""
        ca_cert, ca_key = self.load()
        cert, key = issue(ca_cert, ca_key, self.cloud_id, role, name,
                          days=days, **kwargs)
        out_dir = out_dir or self.path
        os.makedirs(out_dir, exist_ok=True)
        cert_file = os.path.join(out_dir, '%s.crt' % name)
        key_file = os.path.join(out_dir, '%s.key' % name)
        write_private(key_file, _key_pem(key))
        write_public(cert_file, _cert_pem(cert))
        return cert_file, key_file

    def revoke(self, cert_file):
        cert = certs.load_pem_chain(cert_file)[0]
        with open(self._p(REVOKED_LIST), 'a') as f:
            f.write('%x\n' % cert.serial_number)
        self.write_crl()
        return cert.serial_number

    def write_crl(self, days=DEFAULT_CRL_DAYS):
        ca_cert, ca_key = self.load()
        with open(self._p(REVOKED_LIST)) as f:
            serials = [int(line, 16) for line in f if line.strip()]
        crl = make_crl(ca_cert, ca_key, serials, days=days)
        write_public(self._p(CRL), crl.public_bytes(
            serialization.Encoding.PEM))
        return self._p(CRL)
