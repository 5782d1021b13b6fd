"""secmig-broker's start-up check of its own certificate."""

import testtools

from secmig_nova.broker import service
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store
from tests.fixtures import pki as pki_fixture


class TestBrokerCredentials(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.store_a = trust_store.TrustStore.load('cloud-a',
                                                   self.pki.a.ca.ca_file)
        self.store_b = trust_store.TrustStore.load('cloud-b',
                                                   self.pki.b.ca.ca_file)

    def test_own_broker_certificate(self):
        cert, key = self.pki.a.hosts['broker-a']
        creds = service.broker_credentials(cert, key, 'cloud-a',
                                           self.store_a)
        self.assertEqual('urn:secmig:cloud-a:broker:broker-a',
                         creds.identity.urn)

    def test_host_certificate_refused(self):
        cert, key = self.pki.a.hosts['host-a']
        e = self.assertRaises(trust_errors.TrustError,
                              service.broker_credentials, cert, key,
                              'cloud-a', self.store_a)
        self.assertEqual('wrong_role', e.reason)

    def test_another_clouds_broker_refused(self):
        cert, key = self.pki.b.hosts['broker-b']
        e = self.assertRaises(trust_errors.TrustError,
                              service.broker_credentials, cert, key,
                              'cloud-a', self.store_a)
        self.assertEqual('certificate_untrusted', e.reason)

    def test_broker_configured_for_another_cloud_id(self):
        # Trusted by the store it was given, but not this cloud's broker.
        cert, key = self.pki.b.hosts['broker-b']
        e = self.assertRaises(ValueError, service.broker_credentials, cert,
                              key, 'cloud-a', self.store_b)
        self.assertIn('not a broker of cloud cloud-a', str(e))
