"""Security tests of the tokens surface: hostile time claims in every kind.

Each token kind (grant, ticket, receipt, broker envelope) is signed with
the right key, so only the time claim under test is hostile: a NaN or
infinite ``exp`` would otherwise never expire (NaN compares false with
every bound), and huge or negative values crash datetime conversions.
Every one must be refused with the named reason ``token_invalid_time``,
never accepted and never an unexpected exception. The replay stores'
retention boundary is tested in test_tickets and test_replay.
"""

import base64
import json
import time
import uuid

import testtools

from secmig_nova.authz import replay
from secmig_nova.authz import tickets
from secmig_nova.authz import tokens
from secmig_nova.broker import envelope
from secmig_nova.trust import store as trust_store
from tests.fixtures import pki as pki_fixture

INSTANCE = '0b6b1f5e-8a4b-4c2e-9b0e-1d2c3b4a5f60'
ENDPOINT = '127.0.0.1:49400'

# What an attacker can put in a JSON number (Python's json reads NaN,
# Infinity and -Infinity, and 1e400 overflows to infinity).
HOSTILE_TIMES = (float('nan'), float('inf'), float('-inf'), -1, -1e9,
                 tokens.MAX_TIME + 1, 10 ** 20, 2 ** 64, 1e308, True, '1',
                 None, [1], {'t': 1})


def claims_of(token):
    body = token.split('.')[1]
    return json.loads(base64.urlsafe_b64decode(body + '=' * (-len(body) % 4)))


class HostileTimeClaimsTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.store_a = trust_store.TrustStore.load(**self.pki.a.trust())
        self.store_b = trust_store.TrustStore.load(**self.pki.b.trust())
        self.broker_a = self.pki.a.credentials('broker-a')
        self.broker_b = self.pki.b.credentials('broker-b')
        self.host_a = self.pki.a.credentials('host-a')
        self.now = int(time.time())

    def _variants(self, token):
        """(name, value, claims) for every hostile value of each claim."""
        good = claims_of(token)
        for name in tokens.TIME_CLAIMS:
            for value in HOSTILE_TIMES:
                claims = dict(good)
                if value is None and name in good:
                    # A JSON null time claim, not an absent one.
                    claims[name] = None
                elif value is None:
                    continue
                else:
                    claims[name] = value
                yield name, value, claims

    def assertTimeRefused(self, func, token, what):
        try:
            func(token)
        except tokens.TokenError as e:
            self.assertIn(e.reason, (tokens.INVALID_TIME,
                                     tokens.MISSING_CLAIM),
                          '%s: %s' % (what, e))
            return e
        except envelope.EnvelopeError as e:
            self.assertEqual(envelope.BAD_ENVELOPE, e.reason, str(e))
            self.assertTrue(tokens.INVALID_TIME in str(e) or
                            tokens.MISSING_CLAIM in str(e), what)
            return e
        self.fail('%s was accepted' % what)

    def _check_kind(self, token, sign, verify):
        checked = 0
        for name, value, claims in self._variants(token):
            hostile = sign(claims)
            e = self.assertTimeRefused(verify, hostile,
                                       '%s=%r' % (name, value))
            if value is not None:
                self.assertIn(name, str(e))
            checked += 1
        self.assertGreaterEqual(checked, 2 * len(HOSTILE_TIMES))

    def test_grant(self):
        token = self.pki.grant(ENDPOINT, now=self.now)
        self._check_kind(
            token, lambda c: tokens.sign(c, self.broker_b, tokens.TYP_GRANT),
            lambda t: tokens.verify_grant(t, self.store_b, now=self.now))

    def test_ticket(self):
        token = tickets.issue_ticket(
            self.broker_a, user_id='u', project_id='p',
            roles=['migration_operator'], instance_uuid=INSTANCE,
            src_host='host-a', dst_host='host-b', dst_cloud='cloud-b',
            now=self.now)
        self._check_kind(
            token,
            lambda c: tokens.sign(dict(c, jti=uuid.uuid4().hex),
                                  self.broker_a, tokens.TYP_TICKET),
            lambda t: tickets.verify_ticket(
                t, {'cloud-a': self.store_a}, audience='cloud-b',
                replay_store=replay.MemoryReplayStore(), now=self.now))

    def test_receipt(self):
        token = tokens.sign_receipt(self.host_a, {
            'migration_id': 'mig-1', 'role': 'source', 'iat': self.now})
        self._check_kind(
            token,
            lambda c: tokens.sign(c, self.host_a, tokens.TYP_RECEIPT),
            lambda t: tokens.verify_receipt(t, self.store_a, now=self.now))

    def test_envelope(self):
        token = envelope.seal(self.host_a, 'cloud-a', 'get_migration',
                              {'migration_id': 'm'}, now=self.now)
        self._check_kind(
            token,
            lambda c: tokens.sign(dict(c, jti=uuid.uuid4().hex), self.host_a,
                                  envelope.TYP_ENVELOPE),
            lambda t: envelope.open_envelope(
                t, {'cloud-a': self.store_a}, 'cloud-a', 'get_migration',
                replay.MemoryReplayStore(), 'host', now=self.now))

    def test_hostile_verification_time_is_refused(self):
        # Offline checks verify an old receipt at its own (attacker-given)
        # iat: a non-finite or absurd "now" is refused, not a crash.
        token = tokens.sign_receipt(self.host_a, {
            'migration_id': 'mig-1', 'role': 'source', 'iat': self.now})
        for now in (float('nan'), float('inf'), -5, 10 ** 20):
            e = self.assertRaises(tokens.TokenError, tokens.verify_receipt,
                                  token, self.store_a, now=now)
            self.assertEqual(tokens.INVALID_TIME, e.reason)

    def test_bounds_are_inclusive_and_finite(self):
        for value in (0, 0.0, 1.5, tokens.MAX_TIME, float(tokens.MAX_TIME)):
            self.assertTrue(tokens.is_time(value), value)
        for value in HOSTILE_TIMES:
            self.assertFalse(tokens.is_time(value), value)

    def test_a_valid_grant_still_verifies(self):
        # The guard against the hostile values is not a guard against all.
        grant = tokens.verify_grant(self.pki.grant(ENDPOINT, now=self.now),
                                    self.store_b, now=self.now)
        self.assertEqual(self.now + tokens.DEFAULT_GRANT_TTL, grant.exp)
