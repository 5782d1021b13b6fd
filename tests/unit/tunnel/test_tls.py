"""Tests for the tunnel's TLS contexts and handshake checks (tunnel.tls).

Real handshakes between tunnel processes are in
tests/functional/test_tunnel.py; here the context settings, the mapping of
OpenSSL's errors to refusal reasons, the post-handshake checks (with fake
sockets) and the OpenSSL configuration text are checked directly.
"""

import socket
import ssl

from cryptography.hazmat.primitives import serialization
import testtools

from secmig_nova.trust import store as trust_store
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import tls
from secmig_nova.tunnel import tls_conf
from tests.fixtures import pki as pki_fixture

PEER = 'host-b (192.0.2.10:49400)'


class ContextTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.files_a = self.pki.a.hosts['host-a']
        self.store_b = trust_store.TrustStore.load(**self.pki.b.trust())
        self.store_b_crl = trust_store.TrustStore.load(
            **self.pki.b.trust(crl=True))

    def contexts(self, peer_store=None):
        peer_store = peer_store or self.store_b
        for server in (True, False):
            yield server, tls.make_context(server, self.files_a, peer_store,
                                           'prime256v1')

    def test_tls13_only(self):
        for _server, ctx in self.contexts():
            self.assertEqual(ssl.TLSVersion.TLSv1_3, ctx.minimum_version)
            self.assertEqual(ssl.TLSVersion.TLSv1_3, ctx.maximum_version)

    def test_peer_certificate_required(self):
        for _server, ctx in self.contexts():
            self.assertEqual(ssl.CERT_REQUIRED, ctx.verify_mode)
            self.assertTrue(ctx.verify_flags & ssl.VERIFY_X509_STRICT)

    def test_no_tickets_no_compression(self):
        for _server, ctx in self.contexts():
            self.assertEqual(ssl.OP_NO_TICKET, ctx.options & ssl.OP_NO_TICKET)
            self.assertEqual(ssl.OP_NO_COMPRESSION,
                             ctx.options & ssl.OP_NO_COMPRESSION)

    def test_server_issues_no_tickets(self):
        contexts = dict(self.contexts())
        self.assertEqual(0, contexts[True].num_tickets)
        self.assertEqual(ssl.PROTOCOL_TLS_SERVER, contexts[True].protocol)
        self.assertEqual(ssl.PROTOCOL_TLS_CLIENT, contexts[False].protocol)

    def test_crl_check_only_with_crl(self):
        for _server, ctx in self.contexts():
            self.assertFalse(ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF)
        for _server, ctx in self.contexts(self.store_b_crl):
            self.assertTrue(ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF)

    def test_peer_ca_loaded(self):
        ca_der = self.store_b.ca_certs[0].public_bytes(
            serialization.Encoding.DER)
        for _server, ctx in self.contexts():
            self.assertEqual([ca_der], ctx.get_ca_certs(binary_form=True))
            self.assertEqual(0, ctx.cert_store_stats()['crl'])
        for _server, ctx in self.contexts(self.store_b_crl):
            self.assertEqual(1, ctx.cert_store_stats()['crl'])

    def test_own_ca_not_trusted(self):
        # Only the peer cloud's CA: a host of our own cloud is no peer.
        ca_a = self.pki.a.ca.load()[0].public_bytes(
            serialization.Encoding.DER)
        for _server, ctx in self.contexts():
            self.assertNotIn(ca_a, ctx.get_ca_certs(binary_form=True))

    def test_key_mismatch_refused(self):
        files = (self.pki.a.hosts['host-a'][0], self.pki.a.hosts['host-a2'][1])
        self.assertRaises(ssl.SSLError, tls.make_context, True, files,
                          self.store_b, 'prime256v1')

    def test_curves(self):
        for curve in ('prime256v1', 'secp384r1'):
            tls.make_context(False, self.files_a, self.store_b, curve)
        self.assertRaises(ValueError, tls.make_context, False, self.files_a,
                          self.store_b, 'no-such-curve')


def _cert_error(code, message='verify failed'):
    exc = ssl.SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED]')
    exc.verify_code = code
    exc.verify_message = message
    exc.reason = 'CERTIFICATE_VERIFY_FAILED'
    return exc


def _ssl_error(reason):
    exc = ssl.SSLError(1, '[SSL: %s]' % reason)
    exc.reason = reason
    return exc


class MapSslErrorTest(testtools.TestCase):

    def assertMapped(self, reason, exc):
        mapped = tls.map_ssl_error(exc, PEER)
        self.assertIsInstance(mapped, errors.TunnelError)
        self.assertEqual(reason, mapped.reason, str(mapped))
        self.assertFalse(mapped.notify_peer)
        self.assertIn(PEER, str(mapped))
        return mapped

    def test_verify_codes(self):
        for code, reason in ((10, 'certificate_expired'),
                             (23, 'certificate_revoked'),
                             (9, 'certificate_not_yet_valid'),
                             (20, 'certificate_untrusted'),
                             (19, 'certificate_untrusted'),
                             (2, 'certificate_untrusted'),
                             (3, 'crl_invalid'),
                             (11, 'crl_invalid'),
                             (12, 'crl_invalid')):
            mapped = self.assertMapped(reason, _cert_error(code, 'msg %d'
                                                           % code))
            self.assertIn('msg %d' % code, str(mapped))
            self.assertTrue(mapped.refusal)

    def test_alerts(self):
        for name, reason in (
                ('TLSV1_ALERT_PROTOCOL_VERSION', 'tls_version'),
                ('UNSUPPORTED_PROTOCOL', 'tls_version'),
                ('NO_PROTOCOLS_AVAILABLE', 'tls_version'),
                ('SSLV3_ALERT_CERTIFICATE_EXPIRED',
                 'peer_refused_certificate'),
                ('SSLV3_ALERT_CERTIFICATE_REVOKED',
                 'peer_refused_certificate'),
                ('TLSV1_ALERT_UNKNOWN_CA', 'peer_refused_certificate'),
                ('SSLV3_ALERT_BAD_CERTIFICATE', 'peer_refused_certificate'),
                ('TLSV1_ALERT_DECRYPT_ERROR', 'peer_refused_certificate'),
                ('TLSV13_ALERT_CERTIFICATE_REQUIRED',
                 'peer_refused_certificate'),
                ('SSLV3_ALERT_HANDSHAKE_FAILURE', 'tls_handshake_failed'),
                ('WRONG_VERSION_NUMBER', 'tls_handshake_failed'),
                ('RECORD_LAYER_FAILURE', 'tls_handshake_failed')):
            mapped = self.assertMapped(reason, _ssl_error(name))
            self.assertIn(name, str(mapped))

    def test_ssl_error_without_reason(self):
        # OpenSSL errors always carry ``reason``, possibly None.
        self.assertMapped('tls_handshake_failed', _ssl_error(None))

    def test_eof(self):
        exc = ssl.SSLEOFError(8, 'EOF occurred in violation of protocol')
        exc.reason = None
        self.assertMapped('tls_handshake_failed', exc)

    def test_timeout(self):
        self.assertMapped('timeout', TimeoutError('timed out'))
        self.assertMapped('timeout', socket.timeout('timed out'))

    def test_other_os_error(self):
        self.assertMapped('tls_handshake_failed',
                          ConnectionResetError(104, 'reset by peer'))

    def test_real_errors(self):
        # A real SSLError from OpenSSL carries its reason the same way.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cadata='not a certificate')
        except ssl.SSLError as e:
            exc = e
        self.assertMapped('tls_handshake_failed', exc)


class _FakeSock(object):

    def __init__(self, version='TLSv1.3', cipher=None, der=None):
        self._version = version
        self._cipher = cipher
        self._der = der

    def version(self):
        return self._version

    def cipher(self):
        return self._cipher

    def getpeercert(self, binary_form=False):
        assert binary_form
        return self._der


class CheckNegotiatedTest(testtools.TestCase):

    def test_accepted(self):
        for cipher, suite in tls.CIPHER_SUITES.items():
            sock = _FakeSock(cipher=(suite, 'TLSv1.3', 256))
            self.assertEqual(('TLSv1.3', suite),
                             tls.check_negotiated(sock, cipher))

    def test_wrong_version(self):
        for version in ('TLSv1.2', 'TLSv1', None):
            sock = _FakeSock(version=version,
                             cipher=('TLS_AES_256_GCM_SHA384', version, 256))
            e = self.assertRaises(errors.TunnelError, tls.check_negotiated,
                                  sock, 'aes-256-gcm')
            self.assertEqual('tls_version', e.reason)

    def test_wrong_cipher(self):
        for cipher in (('TLS_AES_128_GCM_SHA256', 'TLSv1.3', 128),
                       ('TLS_CHACHA20_POLY1305_SHA256', 'TLSv1.3', 256),
                       None):
            sock = _FakeSock(cipher=cipher)
            e = self.assertRaises(errors.TunnelError, tls.check_negotiated,
                                  sock, 'aes-256-gcm')
            self.assertEqual('tls_parameters', e.reason)
        sock = _FakeSock(cipher=('TLS_AES_256_GCM_SHA384', 'TLSv1.3', 256))
        e = self.assertRaises(errors.TunnelError, tls.check_negotiated,
                              sock, 'aes-128-gcm')
        self.assertEqual('tls_parameters', e.reason)


class VerifyPeerTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.store_b = trust_store.TrustStore.load(**self.pki.b.trust())

    def der(self, cloud, name):
        return cloud.credentials(name).cert.public_bytes(
            serialization.Encoding.DER)

    def assertRefused(self, reason, der, **kwargs):
        e = self.assertRaises(errors.TunnelError, tls.verify_peer,
                              _FakeSock(der=der), self.store_b, 'server',
                              **kwargs)
        self.assertEqual(reason, e.reason, str(e))

    def test_accepted(self):
        fp = self.pki.fingerprint(self.pki.b, 'host-b')
        peer = tls.verify_peer(_FakeSock(der=self.der(self.pki.b, 'host-b')),
                               self.store_b, 'server',
                               expected_fingerprint=fp)
        self.assertEqual('host-b', peer.identity.name)

    def test_no_certificate(self):
        self.assertRefused('certificate_untrusted', None)
        self.assertRefused('certificate_untrusted', b'')

    def test_unreadable_certificate(self):
        self.assertRefused('certificate_untrusted', b'\x30\x03\x02\x01\x00')

    def test_pinned_fingerprint(self):
        other = self.pki.fingerprint(self.pki.b, 'host-b2')
        self.assertRefused('fingerprint_mismatch',
                           self.der(self.pki.b, 'host-b'),
                           expected_fingerprint=other)

    def test_broker_is_no_host(self):
        self.assertRefused('wrong_role', self.der(self.pki.b, 'broker-b'))

    def test_other_cloud(self):
        self.assertRefused('certificate_untrusted',
                           self.der(self.pki.a, 'host-a'))


class OpensslConfTest(testtools.TestCase):

    def test_pins_exactly_the_configured_suite_and_group(self):
        for cipher, suite in tls_conf.CIPHER_SUITES.items():
            for curve, group in tls_conf.GROUPS.items():
                text = tls.openssl_conf(cipher, curve)
                lines = text.splitlines()
                self.assertIn('Ciphersuites = %s' % suite, lines)
                self.assertIn('Groups = %s' % group, lines)
                self.assertIn('MinProtocol = TLSv1.3', lines)
                self.assertEqual(1, sum(1 for line in lines
                                        if line.startswith('Ciphersuites')))
                self.assertEqual(1, sum(1 for line in lines
                                        if line.startswith('Groups')))
                for other in set(tls_conf.CIPHER_SUITES.values()) - {suite}:
                    self.assertNotIn(other, text)
                for other in set(tls_conf.GROUPS.values()) - {group}:
                    self.assertNotIn(other, text)

    def test_structure(self):
        text = tls_conf.openssl_conf('aes-256-gcm', 'prime256v1')
        self.assertTrue(text.startswith('openssl_conf = secmig_init\n'))
        for section in ('[secmig_init]', '[secmig_ssl]', '[secmig_tls]'):
            self.assertIn(section, text.splitlines())

    def test_unknown_choice(self):
        self.assertRaises(KeyError, tls_conf.openssl_conf, 'rc4',
                          'prime256v1')
        self.assertRaises(KeyError, tls_conf.openssl_conf, 'aes-256-gcm',
                          'x25519')

    def test_defaults(self):
        self.assertIn(tls_conf.DEFAULT_CIPHER, tls_conf.CIPHER_SUITES)
        self.assertIn(tls_conf.DEFAULT_CURVE, tls_conf.GROUPS)
        self.assertIs(tls_conf.CIPHER_SUITES, tls.CIPHER_SUITES)
