"""Tests for authorization tickets (secmig_nova.authz.tickets).

Tickets are signed by cloud-a's broker (the source) for cloud-b (the
destination) with the shared test PKI (tests/fixtures/pki.py). Every
refusal asserts its named reason: removing the check that produces it
makes the test fail (a later check would refuse with another reason, or
nothing would refuse).
"""

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization
import fixtures
import jwt
import testtools

from secmig_nova.authz import replay
from secmig_nova.authz import tickets
from secmig_nova.authz import tokens
from secmig_nova.trust import ca
from secmig_nova.trust import certs
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store
from tests.fixtures import pki as pki_fixture

INSTANCE = '6a1f5d7e-0000-4000-8000-0000000000aa'


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def _split(token):
    header, payload, signature = token.split('.')
    pad = lambda s: s + '=' * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(payload))), signature)


def _join(header, payload, signature=''):
    enc = lambda obj: _b64url(json.dumps(obj).encode())  # noqa: E731
    return '%s.%s.%s' % (enc(header), enc(payload), signature)


class TicketTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.broker_a = self.pki.a.credentials('broker-a')
        self.store_a = trust_store.TrustStore.load(**self.pki.a.trust())
        self.store_b = trust_store.TrustStore.load(**self.pki.b.trust())
        self.stores = {'cloud-a': self.store_a, 'cloud-b': self.store_b}
        self.replay = replay.MemoryReplayStore()
        self.now = int(time.time())

    def issue(self, credentials=None, **kwargs):
        args = dict(user_id='u-alice', project_id='p-alpha',
                    roles=['migration_operator'], instance_uuid=INSTANCE,
                    src_host='host-a', dst_host='host-b',
                    dst_cloud='cloud-b', now=self.now)
        args.update(kwargs)
        return tickets.issue_ticket(credentials or self.broker_a, **args)

    def verify(self, token, **kwargs):
        args = dict(audience='cloud-b', replay_store=self.replay,
                    now=self.now + 1)
        args.update(kwargs)
        return tickets.verify_ticket(token, self.stores, **args)

    def assertRefused(self, reason, token, **kwargs):
        e = self.assertRaises(tokens.TokenError, self.verify, token,
                              **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e

    def resign(self, header, claims, key=None):
        """Sign modified header/claims with ``key`` (default broker-a)."""
        return jwt.encode(claims, key or self.broker_a.key,
                          algorithm='ES256', headers=header)

    # -- the good case -----------------------------------------------------

    def test_round_trip(self):
        token = self.issue(roles=['migration_operator', 'member'])
        header, claims, _sig = _split(token)
        self.assertEqual(tokens.TYP_TICKET, header['typ'])
        self.assertEqual('ES256', header['alg'])
        self.assertEqual(len(self.broker_a.chain), len(header['x5c']))
        self.assertEqual(set(tickets.REQUIRED_CLAIMS), set(claims))
        self.assertEqual('cloud-a', claims['iss'])
        self.assertEqual('cloud-b', claims['aud'])
        self.assertEqual(tickets.DEFAULT_TTL, claims['exp'] - claims['iat'])
        ticket = self.verify(token)
        self.assertEqual('cloud-a', ticket.issuer)
        self.assertEqual('u-alice', ticket.user_id)
        self.assertEqual('p-alpha', ticket.project_id)
        self.assertEqual(('member', 'migration_operator'), ticket.roles)
        self.assertEqual(INSTANCE, ticket.instance_uuid)
        self.assertEqual(('host-a', 'host-b', 'cloud-b'),
                         (ticket.src_host, ticket.dst_host,
                          ticket.dst_cloud))
        self.assertEqual(32, len(ticket.nonce))
        self.assertEqual(token, ticket.token)

    def test_single_trust_store(self):
        ticket = tickets.verify_ticket(self.issue(), self.store_a,
                                       audience='cloud-b',
                                       replay_store=self.replay,
                                       now=self.now)
        self.assertEqual('cloud-a', ticket.issuer)

    def test_within_clock_skew(self):
        token = self.issue(ttl=60)
        self.verify(token, now=self.now + 60 + 29, leeway=30)
        token = self.issue(now=self.now + 20)
        self.verify(token, now=self.now, leeway=30)

    def test_nonces_and_jtis_are_fresh(self):
        a = _split(self.issue())[1]
        b = _split(self.issue())[1]
        self.assertNotEqual(a['jti'], b['jti'])
        self.assertNotEqual(a['nonce'], b['nonce'])

    # -- refusals ------------------------------------------------------------

    def test_forged_signature(self):
        # Right header and x5c chain, signed by another key.
        header, claims, _sig = _split(self.issue())
        other = ec.generate_private_key(ec.SECP256R1())
        self.assertRefused(tokens.BAD_SIGNATURE,
                           self.resign(header, claims, key=other))

    def test_tampered_claim(self):
        header, claims, signature = _split(self.issue())
        claims['dst_host'] = 'host-evil'
        self.assertRefused(tokens.BAD_SIGNATURE,
                           _join(header, claims, signature))

    def test_chain_from_untrusted_ca(self):
        # A broker certificate for cloud-a, issued by a CA cloud-a's trust
        # store does not hold, with a matching key: only the chain is wrong.
        rogue_cert, rogue_key = ca.make_ca('cloud-a')
        cert, key = ca.issue(rogue_cert, rogue_key, 'cloud-a', 'broker',
                             'broker-a')
        forged = certs.Credentials([cert, rogue_cert], key)
        e = self.assertRefused(trust_errors.UNTRUSTED, self.issue(forged))
        self.assertIsInstance(e.__cause__, trust_errors.TrustError)

    def test_host_certificate_cannot_sign_tickets(self):
        host = self.pki.a.credentials('host-a')
        header, claims, _sig = _split(self.issue())
        header['x5c'] = _split(tokens.sign({}, host, 'x'))[0]['x5c']
        self.assertRefused(trust_errors.WRONG_ROLE,
                           self.resign(header, claims, key=host.key))
        self.assertRaises(ValueError, self.issue, host)

    def test_broker_of_another_cloud_cannot_claim_issuer(self):
        # cloud-b's broker signs a ticket claiming to come from cloud-a:
        # its chain does not lead to cloud-a's CA.
        broker_b = self.pki.b.credentials('broker-b')
        header, claims, _sig = _split(self.issue())
        header['x5c'] = _split(tokens.sign({}, broker_b, 'x'))[0]['x5c']
        self.assertRefused(trust_errors.UNTRUSTED,
                           self.resign(header, claims, key=broker_b.key))

    def test_certificate_naming_another_cloud(self):
        # cloud-a's CA issued a broker certificate whose identity names
        # cloud-b: it chains, but it does not speak for cloud-a.
        ca_cert, ca_key = self.pki.a.ca.load()
        cert, key = ca.issue(ca_cert, ca_key, 'cloud-b', 'broker', 'b-in-a')
        other = certs.Credentials([cert], key)
        header, claims, _sig = _split(self.issue())
        header['x5c'] = _split(tokens.sign({}, other, 'x'))[0]['x5c']
        self.assertRefused(trust_errors.WRONG_CLOUD,
                           self.resign(header, claims, key=key))

    def test_issuer_claim_must_match_signer(self):
        # Verified with cloud-a's store directly, but iss says cloud-b.
        header, claims, _sig = _split(self.issue())
        claims['iss'] = 'cloud-b'
        e = self.assertRaises(
            tokens.TokenError, tickets.verify_ticket,
            self.resign(header, claims), self.store_a, audience='cloud-b',
            replay_store=self.replay, now=self.now)
        self.assertEqual(tokens.INVALID_CLAIM, e.reason)

    def test_unknown_issuer(self):
        header, claims, _sig = _split(self.issue())
        claims['iss'] = 'cloud-z'
        self.assertRefused(tickets.UNKNOWN_ISSUER,
                           self.resign(header, claims))

    def test_alg_none(self):
        header, claims, _sig = _split(self.issue())
        header['alg'] = 'none'
        self.assertRefused(tokens.BAD_ALGORITHM, _join(header, claims, ''))

    def test_hs256_with_public_key_as_secret(self):
        # The classic key-confusion attack: HMAC keyed with the broker's
        # public key (which anyone can read from x5c).
        header, claims, _sig = _split(self.issue())
        header['alg'] = 'HS256'
        unsigned = _join(header, claims)[:-1]
        for secret in (
                self.broker_a.cert.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo),
                self.broker_a.cert.public_bytes(
                    serialization.Encoding.PEM)):
            mac = hmac.new(secret, unsigned.encode('ascii'),
                           hashlib.sha256).digest()
            self.assertRefused(tokens.BAD_ALGORITHM,
                               unsigned + '.' + _b64url(mac))

    def test_expired(self):
        token = self.issue(ttl=60)
        self.assertRefused(tokens.EXPIRED, token,
                           now=self.now + 60 + 31, leeway=30)

    def test_not_yet_valid(self):
        token = self.issue(now=self.now + 120)
        self.assertRefused(tokens.NOT_YET_VALID, token, now=self.now,
                           leeway=30)

    def test_wrong_audience(self):
        token = self.issue()
        self.assertRefused(tokens.WRONG_AUDIENCE, token, audience='cloud-c')

    def test_audience_must_be_destination_cloud(self):
        header, claims, _sig = _split(self.issue())
        claims['dst_cloud'] = 'cloud-c'
        self.assertRefused(tokens.INVALID_CLAIM, self.resign(header, claims))

    def test_replayed_jti(self):
        token = self.issue()
        self.verify(token)
        self.assertRefused(tokens.REPLAYED, token)
        # A different token reusing the jti is a replay as well.
        jti = _split(token)[1]['jti']
        self.assertRefused(tokens.REPLAYED, self.issue(jti=jti))

    def test_replay_refused_through_the_last_second_it_verifies(self):
        # The ticket verifies while now <= exp + leeway; its jti must be
        # remembered through that very instant, in both replay stores.
        from secmig_nova.broker.db import api as db_api
        from secmig_nova.broker.db import migration as db_migration
        url = 'sqlite:///%s' % self.useFixture(
            fixtures.TempDir()).join('replay.sqlite')
        db_migration.sync(url)
        db = db_api.Database(url)
        self.addCleanup(db.dispose)
        clock = [0.0]
        stores = (replay.MemoryReplayStore(clock=lambda: clock[0]),
                  db_api.DatabaseReplayStore(db, clock=lambda: clock[0]))
        for store in stores:
            token = self.issue()
            last = _split(token)[1]['exp'] + tokens.DEFAULT_LEEWAY
            clock[0] = self.now + 1
            self.verify(token, replay_store=store, now=clock[0])
            clock[0] = last
            self.assertRefused(tokens.REPLAYED, token, replay_store=store,
                               now=last)
            if isinstance(store, db_api.DatabaseReplayStore):
                store._purge(last)  # a purge at that second keeps it too
                self.assertRefused(tokens.REPLAYED, token,
                                   replay_store=store, now=last)
            clock[0] = last + 1
            self.assertRefused(tokens.EXPIRED, token, replay_store=store,
                               now=last + 1)

    def test_jti_consumed_only_after_verification(self):
        token = self.issue()
        self.assertRefused(tokens.WRONG_AUDIENCE, token, audience='cloud-c')
        self.verify(token)

    def test_replay_store_full_refuses(self):
        full = replay.MemoryReplayStore(max_entries=1)
        self.verify(self.issue(), replay_store=full)
        self.assertRefused(replay.STORE_FULL, self.issue(),
                           replay_store=full)

    def test_oversized_token(self):
        header, claims, _sig = _split(self.issue())
        claims['padding'] = 'x' * tokens.MAX_TOKEN_BYTES
        self.assertRefused(tokens.TOO_LARGE, self.resign(header, claims))

    def test_wrong_type(self):
        header, claims, _sig = _split(self.issue())
        header['typ'] = tokens.TYP_GRANT
        self.assertRefused(tokens.WRONG_TYPE, self.resign(header, claims))

    def test_missing_claim(self):
        for name in ('nonce', 'jti', 'roles', 'instance_uuid', 'dst_host'):
            header, claims, _sig = _split(self.issue())
            del claims[name]
            self.assertRefused(tokens.MISSING_CLAIM,
                               self.resign(header, claims))

    def test_invalid_claims(self):
        for name, value in (('roles', 'migration_operator'),
                            ('roles', ['a', 'a']),
                            ('roles', [''] * 2),
                            ('nonce', 'short'),
                            ('instance_uuid', 'not-a-uuid'),
                            ('src_host', 42),
                            ('exp', 'tomorrow')):
            header, claims, _sig = _split(self.issue())
            claims[name] = value
            self.assertRefused(tokens.INVALID_TIME if name == 'exp'
                               else tokens.INVALID_CLAIM,
                               self.resign(header, claims))

    def test_lifetime_is_bounded(self):
        header, claims, _sig = _split(self.issue())
        claims['exp'] = claims['iat'] + tickets.MAX_TTL + 1
        self.assertRefused(tokens.INVALID_CLAIM, self.resign(header, claims))
        self.assertRaises(ValueError, self.issue, ttl=tickets.MAX_TTL + 1)

    def test_malformed(self):
        for token in ('', 'a.b', 'not a token', '\xe9.x.y'):
            self.assertRefused(tokens.MALFORMED, token)

    def test_expired_broker_certificate(self):
        ca_cert, ca_key = self.pki.a.ca.load()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert, key = ca.issue(ca_cert, ca_key, 'cloud-a', 'broker',
                             'broker-old',
                             not_before=now - datetime.timedelta(days=3),
                             not_after=now - datetime.timedelta(days=1))
        self.assertRefused(trust_errors.EXPIRED,
                           self.issue(certs.Credentials([cert], key)))

    def test_issue_refuses_bad_input(self):
        self.assertRaises(tokens.TokenError, self.issue,
                          instance_uuid='nope')
        self.assertRaises(tokens.TokenError, self.issue, roles=['x'] * 2 +
                          [str(uuid.uuid4()) for _ in range(40)])
