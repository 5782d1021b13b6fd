"""Tests for chain verification by a cloud's trust store.

Certificates come from the shared test PKI (tests/fixtures/pki.py); the few
odd ones it does not have (no identity, RSA, an intermediate CA, a future
validity period) are built here once per test process, signed by cloud-a's
CA so that the only thing wrong with each is what its test is about. Every
refusal asserts its named reason: removing the check that produces it makes
the test fail (another check refuses with another reason, or nothing does).
"""

import datetime
import os

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID
import fixtures
import testtools

from secmig_nova.trust import ca
from secmig_nova.trust import certs
from secmig_nova.trust import errors
from secmig_nova.trust import store
from tests.fixtures import pki as pki_fixture

DAY = datetime.timedelta(days=1)
_RSA_KEY = []


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def rsa_key():
    """One RSA key per test process (RSA generation is the slow part)."""
    if not _RSA_KEY:
        _RSA_KEY.append(rsa.generate_private_key(public_exponent=65537,
                                                 key_size=2048))
    return _RSA_KEY[0]


def build_leaf(ca_cert, ca_key, san, key=None, cn='odd leaf'):
    """A leaf of the ca.issue profile with ``san`` as its SAN (None: none).

    Used for certificates ca.issue refuses to make (it always writes one
    well-formed secmig URI).
    """
    key = key or ca.new_key()
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + DAY)
               .add_extension(x509.BasicConstraints(ca=False,
                                                    path_length=None),
                              critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False,
                   key_encipherment=False, data_encipherment=False,
                   key_agreement=False, key_cert_sign=False,
                   crl_sign=False, encipher_only=False,
                   decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH,
                    ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                   key.public_key()), critical=False)
               .add_extension(
                   x509.AuthorityKeyIdentifier
                   .from_issuer_subject_key_identifier(ca_ski),
                   critical=False))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san),
                                        critical=False)
    return builder.sign(ca_key, hashes.SHA256())


build_intermediate = pki_fixture.build_intermediate


def leaf_of(cloud, name):
    return cloud.credentials(name).cert


class TrustStoreTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.ca_a, self.ca_a_key = self.pki.a.ca.load()
        self.store_a = store.TrustStore.load(**self.pki.a.trust())
        self.store_a_crl = store.TrustStore.load(**self.pki.a.trust(crl=True))
        self.host_a = leaf_of(self.pki.a, 'host-a')

    def assertRefused(self, reason, trust_store, chain, purpose='client',
                      **kwargs):
        e = self.assertRaises(errors.TrustError, trust_store.verify, chain,
                              purpose, **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e

    # -- accepted -------------------------------------------------------

    def test_client_purpose(self):
        peer = self.store_a.verify([self.host_a], 'client', role='host')
        self.assertEqual(certs.Identity('cloud-a', 'host', 'host-a'),
                         peer.identity)
        self.assertEqual(certs.fingerprint(self.host_a), peer.fingerprint)
        self.assertEqual(self.host_a, peer.chain[0])
        self.assertEqual(self.ca_a, peer.chain[-1])

    def test_server_purpose(self):
        peer = self.store_a.verify([self.host_a], 'server', role='host')
        self.assertEqual('host-a', peer.identity.name)
        self.assertEqual(self.ca_a, peer.chain[-1])

    def test_server_purpose_explicit_dns_name(self):
        self.store_a.verify([self.host_a], 'server', dns_name='host-a')
        self.assertRefused('certificate_untrusted', self.store_a,
                           [self.host_a], 'server', dns_name='host-a2')

    def test_broker_role(self):
        broker = leaf_of(self.pki.a, 'broker-a')
        peer = self.store_a.verify([broker], 'client', role='broker')
        self.assertEqual('broker', peer.identity.role)

    def test_pinned_fingerprint_accepted(self):
        fp = certs.fingerprint(self.host_a)
        peer = self.store_a.verify([self.host_a], 'client',
                                   expected_fingerprint=fp)
        self.assertEqual(fp, peer.fingerprint)

    def test_not_revoked_with_crl(self):
        self.store_a_crl.verify([self.host_a], 'client', role='host')

    def test_bad_purpose(self):
        self.assertRaises(ValueError, self.store_a.verify, [self.host_a],
                          'email')

    # -- refused --------------------------------------------------------

    def test_empty_chain(self):
        self.assertRefused('certificate_untrusted', self.store_a, [])

    def test_untrusted_ca(self):
        rogue = certs.load_pem_chain(self.pki.rogue_host_a[0])
        self.assertRefused('certificate_untrusted', self.store_a, rogue)
        self.assertRefused('certificate_untrusted', self.store_a, rogue,
                           'server')

    def test_other_clouds_ca(self):
        host_b = leaf_of(self.pki.b, 'host-b')
        store_a_as_b = store.TrustStore('cloud-b', self.store_a.ca_certs)
        self.assertRefused('certificate_untrusted', store_a_as_b, [host_b])

    def test_expired(self):
        expired = leaf_of(self.pki.a, 'host-a-expired')
        self.assertRefused('certificate_expired', self.store_a, [expired])

    def test_expired_by_clock(self):
        self.assertRefused('certificate_expired', self.store_a,
                           [self.host_a], now=_now() + 400 * DAY)

    def test_not_yet_valid(self):
        cert, _key = ca.issue(self.ca_a, self.ca_a_key, 'cloud-a', 'host',
                              'host-future', not_before=_now() + DAY,
                              not_after=_now() + 10 * DAY)
        self.assertRefused('certificate_not_yet_valid', self.store_a,
                           [cert])

    def test_not_yet_valid_by_clock(self):
        self.assertRefused('certificate_not_yet_valid', self.store_a,
                           [self.host_a], now=_now() - DAY)

    def test_revoked(self):
        revoked = leaf_of(self.pki.a, 'host-a-revoked')
        # Without the CRL the same certificate is fine: the refusal below
        # comes from the CRL, not from anything else about it.
        self.store_a.verify([revoked], 'client', role='host')
        self.assertRefused('certificate_revoked', self.store_a_crl,
                           [revoked])

    def test_crl_of_another_ca(self):
        rogue_ca, rogue_key = self.pki.rogue.ca.load()
        crl = ca.make_crl(rogue_ca, rogue_key, [])
        e = self.assertRaises(errors.TrustError, store.TrustStore,
                              'cloud-a', [self.ca_a], crl=crl)
        self.assertEqual('crl_invalid', e.reason)

    def test_crl_forged_issuer(self):
        # Names cloud-a's CA as issuer but is signed by the rogue CA's key.
        rogue_ca, rogue_key = self.pki.rogue.ca.load()
        crl = ca.make_crl(self.ca_a, rogue_key, [])
        self.assertEqual(self.ca_a.subject, crl.issuer)
        e = self.assertRaises(errors.TrustError, store.TrustStore,
                              'cloud-a', [self.ca_a], crl=crl)
        self.assertEqual('crl_invalid', e.reason)

    def test_expired_crl(self):
        crl = ca.make_crl(self.ca_a, self.ca_a_key, [], days=1,
                          now=_now() - 10 * DAY)
        e = self.assertRaises(errors.TrustError, store.TrustStore,
                              'cloud-a', [self.ca_a], crl=crl)
        self.assertEqual('crl_invalid', e.reason)

    def test_crl_expires_while_store_is_in_use(self):
        crl = ca.make_crl(self.ca_a, self.ca_a_key, [], days=1)
        trust_store = store.TrustStore('cloud-a', [self.ca_a], crl=crl)
        trust_store.verify([self.host_a], 'client')
        self.assertRefused('crl_invalid', trust_store, [self.host_a],
                           now=_now() + 2 * DAY)

    def test_unreadable_crl_file(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'ca.crl')
        with open(path, 'wb') as f:
            f.write(b'not a CRL')
        e = self.assertRaises(errors.TrustError, store.TrustStore.load,
                              'cloud-a', self.pki.a.ca.ca_file, path)
        self.assertEqual('crl_invalid', e.reason)

    def test_no_ca(self):
        e = self.assertRaises(errors.TrustError, store.TrustStore,
                              'cloud-a', [])
        self.assertEqual('certificate_untrusted', e.reason)

    def test_wrong_cloud(self):
        # Chains to the right CA, but the identity names another cloud.
        store_named_b = store.TrustStore('cloud-b', [self.ca_a])
        self.assertRefused('wrong_cloud', store_named_b, [self.host_a])

    def test_wrong_role(self):
        self.assertRefused('wrong_role', self.store_a, [self.host_a],
                           role='broker')
        self.assertRefused('wrong_role', self.store_a,
                           [leaf_of(self.pki.a, 'broker-a')], role='host')

    def test_fingerprint_mismatch(self):
        other = certs.fingerprint(leaf_of(self.pki.a, 'host-a2'))
        self.assertRefused('fingerprint_mismatch', self.store_a,
                           [self.host_a], expected_fingerprint=other)

    def test_no_subject_alt_name(self):
        cert = build_leaf(self.ca_a, self.ca_a_key, None)
        self.assertRefused('identity_invalid', self.store_a, [cert])

    def test_no_secmig_uri(self):
        cert = build_leaf(self.ca_a, self.ca_a_key, [
            x509.DNSName('host-x'),
            x509.UniformResourceIdentifier('https://host-x/')])
        self.assertRefused('identity_invalid', self.store_a, [cert])

    def test_two_secmig_uris(self):
        cert = build_leaf(self.ca_a, self.ca_a_key, [
            x509.UniformResourceIdentifier('urn:secmig:cloud-a:host:host-x'),
            x509.UniformResourceIdentifier('urn:secmig:cloud-a:host:host-y'),
            x509.DNSName('host-x')])
        self.assertRefused('identity_invalid', self.store_a, [cert])

    def test_malformed_secmig_uri(self):
        for urn in ('urn:secmig:cloud-a:admin:host-x',
                    'urn:secmig:cloud-a:host:',
                    'urn:secmig:cloud-a:host:host-x:extra',
                    'urn:secmig:cloud a:host:host-x',
                    'urn:secmig::host:host-x'):
            cert = build_leaf(self.ca_a, self.ca_a_key, [
                x509.UniformResourceIdentifier(urn), x509.DNSName('host-x')])
            e = self.assertRefused('identity_invalid', self.store_a, [cert])
            self.assertIn('malformed', str(e), urn)

    def test_secmig_uri_with_trailing_newline(self):
        # Would otherwise be taken for host-a itself.
        cert = build_leaf(self.ca_a, self.ca_a_key, [
            x509.UniformResourceIdentifier('urn:secmig:cloud-a:host:host-a\n'),
            x509.DNSName('host-a')])
        self.assertRefused('identity_invalid', self.store_a, [cert])

    def test_rsa_leaf(self):
        cert = build_leaf(self.ca_a, self.ca_a_key, [
            x509.UniformResourceIdentifier('urn:secmig:cloud-a:host:host-r'),
            x509.DNSName('host-r')], key=rsa_key())
        e = self.assertRefused('certificate_untrusted', self.store_a, [cert])
        self.assertIn('ECDSA', str(e))

    def test_build_leaf_is_otherwise_acceptable(self):
        # The odd certificates above differ from this one only in what
        # their tests are about.
        cert = build_leaf(self.ca_a, self.ca_a_key, [
            x509.UniformResourceIdentifier('urn:secmig:cloud-a:host:host-x'),
            x509.DNSName('host-x')])
        self.store_a.verify([cert], 'server', role='host')


class IntermediateTest(testtools.TestCase):
    """leaf <- intermediate <- root, with only the root in the store."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root, cls.root_key = ca.make_ca('cloud-i')
        cls.inter, cls.inter_key = build_intermediate(cls.root, cls.root_key,
                                                      'cloud-i')
        cls.leaf, _key = ca.issue(cls.inter, cls.inter_key, 'cloud-i',
                                  'host', 'host-i')

    def setUp(self):
        super().setUp()
        self.store = store.TrustStore('cloud-i', [self.root])

    def test_chain_with_intermediate(self):
        for purpose in ('client', 'server'):
            peer = self.store.verify([self.leaf, self.inter], purpose,
                                     role='host')
            self.assertEqual((self.leaf, self.inter, self.root), peer.chain)

    def test_missing_intermediate(self):
        e = self.assertRaises(errors.TrustError, self.store.verify,
                              [self.leaf], 'client')
        self.assertEqual('certificate_untrusted', e.reason)

    def test_revoked_intermediate(self):
        crl = ca.make_crl(self.root, self.root_key,
                          [self.inter.serial_number])
        trust_store = store.TrustStore('cloud-i', [self.root], crl=crl)
        e = self.assertRaises(errors.TrustError, trust_store.verify,
                              [self.leaf, self.inter], 'client')
        self.assertEqual('certificate_revoked', e.reason)

    def test_crl_applies_to_its_issuers_certificates_only(self):
        # Serials are unique per issuer: the root's CRL listing the leaf's
        # serial says nothing about the intermediate's leaf.
        crl = ca.make_crl(self.root, self.root_key,
                          [self.leaf.serial_number])
        trust_store = store.TrustStore('cloud-i', [self.root], crl=crl)
        trust_store.verify([self.leaf, self.inter], 'client')

    def test_root_crl_without_the_intermediate(self):
        crl = ca.make_crl(self.root, self.root_key, [12345])
        trust_store = store.TrustStore('cloud-i', [self.root], crl=crl)
        trust_store.verify([self.leaf, self.inter], 'client')


class ChainFromDerTest(testtools.TestCase):

    def test_round_trip(self):
        cert = leaf_of(pki_fixture.get().a, 'host-a')
        der = cert.public_bytes(serialization.Encoding.DER)
        self.assertEqual([cert], store.chain_from_der([der]))

    def test_garbage(self):
        e = self.assertRaises(errors.TrustError, store.chain_from_der,
                              [b'\x30\x03\x02\x01\x00'])
        self.assertEqual('certificate_untrusted', e.reason)
