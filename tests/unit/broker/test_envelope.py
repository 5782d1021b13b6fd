"""Tests of secmig_nova/broker/envelope.py: the size caps of envelopes.

The caps are checked before anything of an envelope is decoded, and they
depend on the method being served, never on what the envelope claims.
The other refusals (signature, audience, method, age, replay) are tested
through the brokers in test_broker.py.
"""

from unittest import mock

import testtools

from secmig_nova.authz import replay
from secmig_nova.authz import tokens
from secmig_nova.broker import envelope
from secmig_nova.trust import store
from tests.fixtures import pki as pki_fixture


class TestCaps(testtools.TestCase):

    def test_caps_per_method(self):
        self.assertEqual(32 * 1024, envelope.max_bytes('record_receipt'))
        for method in ('authorize_migration', 'request_grant',
                       'forward_grant'):
            self.assertEqual(21 * 1024, envelope.max_bytes(method))
        for method in ('register_incoming', 'get_migration',
                       'list_migrations', 'no_such_method'):
            self.assertEqual(10 * 1024, envelope.max_bytes(method))

    def test_caps_leave_room_for_what_requests_carry(self):
        # The signer's chain may take what a whole token may; a token in
        # the claims grows by a third (base64url), plus its quotes.
        self.assertGreaterEqual(envelope.ENVELOPE_BASE_BYTES,
                                tokens.MAX_TOKEN_BYTES)
        self.assertGreaterEqual(envelope.EMBEDDED_TOKEN_BYTES,
                                -(-tokens.MAX_TOKEN_BYTES * 4 // 3) + 2)


class TestOpen(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.creds = self.pki.a.credentials('host-a')
        self.stores = {'cloud-a': store.TrustStore.load(
            'cloud-a', self.pki.a.ca.ca_file)}
        self.replay = replay.MemoryReplayStore()

    def seal(self, method, size=None, **payload):
        """An envelope for ``method``, padded to about ``size`` bytes."""
        token = envelope.seal(self.creds, 'cloud-a', method,
                              dict(payload, pad=''))
        if size is not None:
            # Three bytes of padding make four of base64url.
            pad = 'x' * ((size - len(token)) * 3 // 4)
            token = envelope.seal(self.creds, 'cloud-a', method,
                                  dict(payload, pad=pad))
        return token

    def open(self, token, method):
        return envelope.open_envelope(token, self.stores, 'cloud-a', method,
                                      self.replay, 'host')

    def assertRefused(self, reason, token, method):
        e = self.assertRaises(envelope.EnvelopeError, self.open, token,
                              method)
        self.assertEqual(reason, e.reason, str(e))
        return e

    def test_within_the_record_receipt_cap(self):
        cap = envelope.max_bytes('record_receipt')
        token = self.seal('record_receipt', cap - 200, migration_id='m')
        self.assertGreater(len(token), tokens.MAX_TOKEN_BYTES)
        self.assertLessEqual(len(token), cap)
        payload, _claims, peer = self.open(token, 'record_receipt')
        self.assertEqual('m', payload['migration_id'])
        self.assertEqual(self.creds.fingerprint, peer.fingerprint)

    def test_over_the_cap_refused_before_decoding(self):
        cap = envelope.max_bytes('record_receipt')
        for token in ('x' * (cap + 1),
                      self.seal('record_receipt', cap + 200)):
            self.assertGreater(len(token), cap)
            with mock.patch.object(tokens, 'unverified_claims') as peek, \
                    mock.patch.object(tokens, 'verify') as verify:
                e = self.assertRefused(envelope.TOO_LARGE, token,
                                       'record_receipt')
            peek.assert_not_called()
            verify.assert_not_called()
            self.assertIn('record_receipt', str(e))
        self.assertEqual(0, len(self.replay))

    def test_the_cap_is_the_served_methods(self):
        # Claiming record_receipt does not buy its cap at another method.
        token = self.seal('record_receipt', 12 * 1024)
        self.assertRefused(envelope.TOO_LARGE, token, 'register_incoming')
        token = self.seal('register_incoming', 12 * 1024)
        self.assertRefused(envelope.TOO_LARGE, token, 'register_incoming')
        # Within the cap of the method served, the method claim decides.
        self.assertRefused(envelope.WRONG_METHOD, token, 'record_receipt')

    def test_missing(self):
        for token in (None, '', b'abc'):
            self.assertRefused(envelope.BAD_ENVELOPE, token,
                               'record_receipt')

    def test_tokens_keep_their_own_cap(self):
        # Only envelopes get the larger caps: a receipt inside one is
        # verified against tokens.MAX_TOKEN_BYTES.
        claims = {'migration_id': 'm', 'role': 'source',
                  'pad': 'x' * tokens.MAX_TOKEN_BYTES}
        receipt = tokens.sign_receipt(self.creds, claims)
        e = self.assertRaises(tokens.TokenError, tokens.verify_receipt,
                              receipt, self.stores['cloud-a'])
        self.assertEqual(tokens.TOO_LARGE, e.reason)
