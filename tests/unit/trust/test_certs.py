"""Tests for identities, fingerprints and credential loading (trust.certs).

A secmig identity is the single ``urn:secmig:<cloud>:<role>:<name>`` URI
in a certificate's subjectAltName; refusals of certificates without one
(as seen by the trust store) are in test_store.py.
"""

import hashlib
import os

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization
from cryptography import x509
import fixtures
import testtools

from secmig_nova.trust import ca
from secmig_nova.trust import certs
from secmig_nova.trust import errors
from tests.fixtures import pki as pki_fixture
from tests.unit.trust import test_store


class MakeUrnTest(testtools.TestCase):

    def test_valid(self):
        self.assertEqual('urn:secmig:cloud-a:host:host-a',
                         certs.make_urn('cloud-a', 'host', 'host-a'))
        self.assertEqual('urn:secmig:c.1_x:broker:b',
                         certs.make_urn('c.1_x', 'broker', 'b'))
        self.assertEqual('urn:secmig:%s:host:x' % ('c' * 63),
                         certs.make_urn('c' * 63, 'host', 'x'))

    def test_invalid(self):
        for cloud_id, role, name in (
                ('', 'host', 'host-a'),
                ('cloud-a', 'host', ''),
                ('cloud-a', 'admin', 'host-a'),
                ('cloud-a', 'HOST', 'host-a'),
                ('cloud a', 'host', 'host-a'),
                ('cloud-a', 'host', 'host:a'),
                ('cloud:a', 'host', 'host-a'),
                ('-cloud', 'host', 'host-a'),
                ('cloud-a', 'host', '.host'),
                ('c' * 64, 'host', 'host-a'),
                ('cloud-a', 'host', 'h' * 64),
                ('cloud-a', 'host', 'h\u00e9te')):
            self.assertRaises(ValueError, certs.make_urn, cloud_id, role,
                              name)

    def test_trailing_newline(self):
        # ``$`` also matches before a final newline: the patterns must
        # anchor at the very end of the string.
        self.assertRaises(ValueError, certs.make_urn, 'cloud-a', 'host',
                          'host-a\n')
        self.assertIsNone(certs.CLOUD_ID_RE.match('cloud-a\n'))

    def test_identity_urn(self):
        identity = certs.Identity('cloud-a', 'broker', 'broker-a')
        self.assertEqual('urn:secmig:cloud-a:broker:broker-a', identity.urn)


class IdentityOfTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()

    def test_host_and_broker(self):
        self.assertEqual(
            certs.Identity('cloud-a', 'host', 'host-a'),
            self.pki.a.credentials('host-a').identity)
        self.assertEqual(
            certs.Identity('cloud-b', 'broker', 'broker-b'),
            self.pki.b.credentials('broker-b').identity)

    def test_other_uris_are_ignored(self):
        ca_cert, ca_key = self.pki.a.ca.load()
        cert = test_store.build_leaf(ca_cert, ca_key, [
            x509.UniformResourceIdentifier('https://host-x.example/'),
            x509.UniformResourceIdentifier('urn:secmig:cloud-a:host:host-x'),
            x509.DNSName('host-x')])
        self.assertEqual(certs.Identity('cloud-a', 'host', 'host-x'),
                         certs.identity_of(cert))

    def test_refusals(self):
        ca_cert, ca_key = self.pki.a.ca.load()
        uri = x509.UniformResourceIdentifier
        for san in (None,
                    [x509.DNSName('host-x')],
                    [uri('urn:secmig:cloud-a:host:x'),
                     uri('urn:secmig:cloud-a:host:y')],
                    [uri('urn:secmig:cloud-a:host:x:y')]):
            cert = test_store.build_leaf(ca_cert, ca_key, san)
            e = self.assertRaises(errors.TrustError, certs.identity_of,
                                  cert)
            self.assertEqual('identity_invalid', e.reason)


class FingerprintTest(testtools.TestCase):

    def test_sha256_of_der(self):
        cert = pki_fixture.get().a.credentials('host-a').cert
        der = cert.public_bytes(serialization.Encoding.DER)
        expected = hashlib.sha256(der).hexdigest()
        self.assertEqual(expected, certs.fingerprint(cert))
        self.assertEqual(expected, certs.fingerprint(der))
        self.assertEqual(expected, certs.fingerprint(bytearray(der)))
        self.assertEqual(expected, certs.fingerprint(memoryview(der)))
        self.assertEqual(64, len(expected))
        self.assertEqual(expected.lower(), expected)

    def test_credentials_fingerprint(self):
        creds = pki_fixture.get().a.credentials('host-a')
        self.assertEqual(certs.fingerprint(creds.chain[0]),
                         creds.fingerprint)
        self.assertNotEqual(
            creds.fingerprint,
            pki_fixture.get().a.credentials('host-a2').fingerprint)


class CredentialsLoadTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def _write(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def test_load(self):
        cert_file, key_file = self.pki.a.hosts['host-a']
        creds = certs.Credentials.load(cert_file, key_file)
        self.assertEqual(1, len(creds.chain))
        self.assertEqual(creds.chain[0], creds.cert)
        self.assertEqual(creds.cert.public_key().public_numbers(),
                         creds.key.public_key().public_numbers())

    def test_key_of_another_certificate(self):
        cert_file = self.pki.a.hosts['host-a'][0]
        key_file = self.pki.a.hosts['host-a2'][1]
        e = self.assertRaises(errors.TrustError, certs.Credentials.load,
                              cert_file, key_file)
        self.assertEqual('key_invalid', e.reason)

    def test_unreadable_key(self):
        cert_file = self.pki.a.hosts['host-a'][0]
        key_file = self._write('bad.key', b'not a key')
        e = self.assertRaises(errors.TrustError, certs.Credentials.load,
                              cert_file, key_file)
        self.assertEqual('key_invalid', e.reason)

    def test_rsa_key(self):
        key = test_store.rsa_key()
        key_file = self._write('rsa.key', key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        e = self.assertRaises(errors.TrustError, certs.load_private_key,
                              key_file)
        self.assertEqual('key_invalid', e.reason)
        self.assertIsInstance(key, rsa.RSAPrivateKey)

    def test_no_certificate(self):
        cert_file = self._write('empty.crt', b'')
        key_file = self.pki.a.hosts['host-a'][1]
        e = self.assertRaises(errors.TrustError, certs.Credentials.load,
                              cert_file, key_file)
        self.assertEqual('certificate_untrusted', e.reason)

    def test_chain_order_is_kept(self):
        ca_cert, _key = self.pki.a.ca.load()
        cert_file, key_file = self.pki.a.hosts['host-a']
        with open(cert_file, 'rb') as f:
            leaf_pem = f.read()
        chain_file = self._write('chain.crt', leaf_pem + ca._cert_pem(
            ca_cert))
        creds = certs.Credentials.load(chain_file, key_file)
        self.assertEqual([self.pki.a.credentials('host-a').cert, ca_cert],
                         creds.chain)
        self.assertEqual('host-a', creds.identity.name)
