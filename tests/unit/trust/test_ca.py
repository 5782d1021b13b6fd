"""Tests for the lab CA (secmig_nova.trust.ca): files, modes, profiles, CRL.

Each test works in its own temporary directory; EC P-256 keys are cheap
enough to make a fresh CA per test.
"""

import datetime
import os
import stat

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
import fixtures
import testtools

from secmig_nova.trust import ca
from secmig_nova.trust import certs
from secmig_nova.trust import errors
from secmig_nova.trust import store


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


class CADirectoryTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        # A permissive umask must not loosen the key files' modes.
        self.useFixture(_Umask(0o000))
        self.ca_dir = ca.CADirectory(os.path.join(self.root, 'ca'))
        self.ca_cert = self.ca_dir.init('cloud-t')

    def test_init_files_and_modes(self):
        path = self.ca_dir.path
        self.assertEqual(0o600, _mode(os.path.join(path, ca.CA_KEY)))
        self.assertEqual(0o644, _mode(os.path.join(path, ca.CA_CERT)))
        self.assertEqual(0o644, _mode(os.path.join(path, ca.CRL)))
        self.assertEqual(0o700, _mode(path))
        self.assertEqual('cloud-t', self.ca_dir.cloud_id)
        self.assertTrue(self.ca_dir.exists())

    def test_issue_files_and_modes(self):
        out = os.path.join(self.root, 'hosts')
        cert_file, key_file = self.ca_dir.issue('host', 'host-t',
                                                out_dir=out)
        self.assertEqual(os.path.join(out, 'host-t.crt'), cert_file)
        self.assertEqual(os.path.join(out, 'host-t.key'), key_file)
        self.assertEqual(0o600, _mode(key_file))
        self.assertEqual(0o644, _mode(cert_file))
        creds = certs.Credentials.load(cert_file, key_file)
        self.assertEqual(certs.Identity('cloud-t', 'host', 'host-t'),
                         creds.identity)

    def test_write_private_replaces_loose_file(self):
        path = os.path.join(self.root, 'secret')
        with open(path, 'wb') as f:
            f.write(b'old')
        os.chmod(path, 0o666)
        ca.write_private(path, b'new')
        self.assertEqual(0o600, _mode(path))
        with open(path, 'rb') as f:
            self.assertEqual(b'new', f.read())

    def _modes_at_write(self):
        modes = []
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return real_fdopen(fd, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch('os.fdopen', fdopen))
        return modes

    def test_write_private_no_window_on_new_file(self):
        modes = self._modes_at_write()
        ca.write_private(os.path.join(self.root, 'secret'), b'new')
        self.assertEqual([0o600], modes)

    def test_write_private_no_window_on_existing_file(self):
        # O_CREAT's mode only applies to a new file: an existing loose file
        # must be tightened before the secret goes into it.
        path = os.path.join(self.root, 'secret')
        with open(path, 'wb') as f:
            f.write(b'old')
        os.chmod(path, 0o644)
        modes = self._modes_at_write()
        ca.write_private(path, b'new')
        self.assertEqual([0o600], modes)

    def test_init_twice_refused(self):
        with open(self.ca_dir.ca_file, 'rb') as f:
            before = f.read()
        self.assertRaises(FileExistsError, self.ca_dir.init, 'cloud-t')
        with open(self.ca_dir.ca_file, 'rb') as f:
            self.assertEqual(before, f.read())

    def test_init_twice_with_force(self):
        new = self.ca_dir.init('cloud-t', force=True)
        self.assertNotEqual(self.ca_cert, new)
        self.assertEqual(new, self.ca_dir.load()[0])

    def test_init_invalid_cloud_id(self):
        other = ca.CADirectory(os.path.join(self.root, 'other'))
        self.assertRaises(ValueError, other.init, 'not a cloud')
        self.assertFalse(other.exists())

    def test_revoke(self):
        cert_file, key_file = self.ca_dir.issue('host', 'host-t')
        keep_file, _key = self.ca_dir.issue('host', 'host-u')
        fresh = store.TrustStore.load('cloud-t', self.ca_dir.ca_file,
                                      self.ca_dir.crl_file)
        leaf = certs.load_pem_chain(cert_file)[0]
        fresh.verify([leaf], 'client', role='host')

        serial = self.ca_dir.revoke(cert_file)
        self.assertEqual(leaf.serial_number, serial)
        crl = certs.load_crl(self.ca_dir.crl_file)
        self.assertIsNotNone(
            crl.get_revoked_certificate_by_serial_number(serial))
        self.assertEqual(1, len(list(crl)))
        self.assertEqual(0o644, _mode(self.ca_dir.crl_file))

        trust_store = store.TrustStore.load('cloud-t', self.ca_dir.ca_file,
                                            self.ca_dir.crl_file)
        e = self.assertRaises(errors.TrustError, trust_store.verify, [leaf],
                              'client')
        self.assertEqual('certificate_revoked', e.reason)
        kept = certs.load_pem_chain(keep_file)[0]
        trust_store.verify([kept], 'client', role='host')

    def test_revocations_accumulate(self):
        first, _k = self.ca_dir.issue('host', 'host-t')
        second, _k = self.ca_dir.issue('host', 'host-u')
        serials = {self.ca_dir.revoke(first), self.ca_dir.revoke(second)}
        crl = certs.load_crl(self.ca_dir.crl_file)
        self.assertEqual(serials, {r.serial_number for r in crl})

    def test_crl_signed_and_current(self):
        crl = certs.load_crl(self.ca_dir.crl_file)
        self.assertEqual(self.ca_cert.subject, crl.issuer)
        self.assertTrue(crl.is_signature_valid(self.ca_cert.public_key()))
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(crl.last_update_utc, now)
        self.assertGreater(crl.next_update_utc,
                           now + datetime.timedelta(days=ca.DEFAULT_CRL_DAYS
                                                    - 1))


class ProfileTest(testtools.TestCase):
    """What ca.make_ca and ca.issue put into certificates."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ca_cert, cls.ca_key = ca.make_ca('cloud-p')
        cls.host, cls.host_key = ca.issue(cls.ca_cert, cls.ca_key, 'cloud-p',
                                          'host', 'host-p')
        cls.broker, _key = ca.issue(cls.ca_cert, cls.ca_key, 'cloud-p',
                                    'broker', 'broker-p',
                                    dns_names=['broker.example'])

    def test_ca_is_ca(self):
        bc = _ext(self.ca_cert, x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertTrue(bc.value.ca)
        ku = _ext(self.ca_cert, x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.key_cert_sign)
        self.assertTrue(ku.value.crl_sign)
        self.assertFalse(ku.value.digital_signature)
        self.assertEqual(self.ca_cert.subject, self.ca_cert.issuer)
        self.ca_cert.verify_directly_issued_by(self.ca_cert)

    def test_ca_key(self):
        self.assertIsInstance(self.ca_key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(self.ca_key.curve, ec.SECP256R1)

    def test_ca_validity(self):
        cert, _key = ca.make_ca('cloud-p', days=10)
        span = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(datetime.timedelta(days=10, minutes=5), span)

    def test_make_ca_invalid_cloud_id(self):
        for cloud_id in ('', 'a b', 'a:b', 'x' * 64):
            self.assertRaises(ValueError, ca.make_ca, cloud_id,
                              key=self.ca_key)

    def test_leaf_not_ca(self):
        for cert in (self.host, self.broker):
            bc = _ext(cert, x509.BasicConstraints)
            self.assertTrue(bc.critical)
            self.assertFalse(bc.value.ca)
            ku = _ext(cert, x509.KeyUsage).value
            self.assertTrue(ku.digital_signature)
            self.assertFalse(ku.key_cert_sign)
            self.assertFalse(ku.crl_sign)
            cert.verify_directly_issued_by(self.ca_cert)

    def test_leaf_eku_server_and_client(self):
        for cert in (self.host, self.broker):
            eku = _ext(cert, x509.ExtendedKeyUsage).value
            self.assertEqual({ExtendedKeyUsageOID.SERVER_AUTH,
                              ExtendedKeyUsageOID.CLIENT_AUTH}, set(eku))

    def test_host_san(self):
        san = _ext(self.host, x509.SubjectAlternativeName).value
        self.assertEqual(
            ['urn:secmig:cloud-p:host:host-p'],
            san.get_values_for_type(x509.UniformResourceIdentifier))
        self.assertEqual(['host-p'], san.get_values_for_type(x509.DNSName))

    def test_broker_san(self):
        san = _ext(self.broker, x509.SubjectAlternativeName).value
        self.assertEqual(
            ['urn:secmig:cloud-p:broker:broker-p'],
            san.get_values_for_type(x509.UniformResourceIdentifier))
        self.assertEqual(['broker.example'],
                         san.get_values_for_type(x509.DNSName))

    def test_leaf_key(self):
        self.assertIsInstance(self.host_key.curve, ec.SECP256R1)
        self.assertEqual(self.host_key.public_key().public_numbers(),
                         self.host.public_key().public_numbers())

    def test_key_identifiers(self):
        ca_ski = _ext(self.ca_cert, x509.SubjectKeyIdentifier).value
        aki = _ext(self.host, x509.AuthorityKeyIdentifier).value
        self.assertEqual(ca_ski.digest, aki.key_identifier)

    def test_issue_invalid_identity(self):
        for role, name in (('admin', 'x'), ('host', ''), ('host', 'a:b')):
            self.assertRaises(ValueError, ca.issue, self.ca_cert,
                              self.ca_key, 'cloud-p', role, name,
                              key=self.host_key)

    def test_issued_verifies(self):
        trust_store = store.TrustStore('cloud-p', [self.ca_cert])
        trust_store.verify([self.host], 'server', role='host')
        trust_store.verify([self.broker], 'client', role='broker')


class _Umask(fixtures.Fixture):

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def _setUp(self):
        old = os.umask(self.mask)
        self.addCleanup(os.umask, old)
