"""Tests for signed tokens (secmig_nova.authz.tokens): grants and receipts.

Grants are signed by cloud-b's broker and receipts by hosts, with the shared
test PKI (tests/fixtures/pki.py). Forged tokens are built here by hand (or
with PyJWT) so that each one differs from a valid token only in what its
test is about; every refusal asserts its named reason.
"""

import base64
import hashlib
import hmac
import json
import time

from cryptography.hazmat.primitives import serialization
import jwt
import testtools

from secmig_nova.authz import tokens
from secmig_nova.trust import ca
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store
from tests.fixtures import pki as pki_fixture

ENDPOINT = '192.0.2.10:49400'
# Marks a field or claim to remove.
_DROP = object()


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def _unb64url(text):
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def split(token):
    """(header, claims, signature segment) of a compact JWS."""
    header, payload, signature = token.split('.')
    return (json.loads(_unb64url(header)), json.loads(_unb64url(payload)),
            signature)


def join(header, claims, signature):
    enc = lambda obj: _b64url(json.dumps(obj).encode())  # noqa: E731
    return '%s.%s.%s' % (enc(header), enc(claims), signature)


def x5c_of(credentials):
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER))
            .decode('ascii') for c in credentials.chain]


class TokenTestBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.store_a = trust_store.TrustStore.load(**self.pki.a.trust())
        self.store_b = trust_store.TrustStore.load(**self.pki.b.trust())
        self.broker_b = self.pki.b.credentials('broker-b')
        self.now = int(time.time())

    def grant(self, **kwargs):
        kwargs.setdefault('now', self.now)
        return self.pki.grant(ENDPOINT, **kwargs)

    def grant_claims(self):
        return split(self.grant())[1]

    def signed(self, claims, credentials=None, typ=tokens.TYP_GRANT):
        return tokens.sign(claims, credentials or self.broker_b, typ)

    def assertToken(self, reason, func, *args, **kwargs):
        e = self.assertRaises(tokens.TokenError, func, *args, **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e

    def assertGrantRefused(self, reason, token, **kwargs):
        kwargs.setdefault('now', self.now)
        return self.assertToken(reason, tokens.verify_grant, token,
                                self.store_b, **kwargs)


class GrantTest(TokenTestBase):

    def test_round_trip(self):
        token = self.grant(streams={'memory': 4, 'disk': 2})
        grant = tokens.verify_grant(token, self.store_b, now=self.now)
        self.assertEqual('mig-1', grant.migration_id)
        self.assertEqual('cloud-a', grant.src_cloud)
        self.assertEqual('host-a', grant.src_host)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a'),
                         grant.src_fingerprint)
        self.assertEqual('cloud-b', grant.dst_cloud)
        self.assertEqual('host-b', grant.dst_host)
        self.assertEqual(self.pki.fingerprint(self.pki.b, 'host-b'),
                         grant.dst_fingerprint)
        self.assertEqual({'memory': 4, 'disk': 2}, grant.streams)
        self.assertEqual(('192.0.2.10', 49400), grant.endpoint)
        self.assertEqual(self.now, grant.iat)
        self.assertEqual(self.now + tokens.DEFAULT_GRANT_TTL, grant.exp)
        self.assertEqual(token, grant.token)
        header, claims, _sig = split(token)
        self.assertEqual('ES256', header['alg'])
        self.assertEqual(tokens.TYP_GRANT, header['typ'])
        self.assertEqual(x5c_of(self.broker_b), header['x5c'])
        self.assertEqual('cloud-b', claims['iss'])
        self.assertEqual('cloud-b', claims['aud'])

    def test_ipv6_endpoint(self):
        token = self.pki.grant('[2001:db8::1]:49401', now=self.now)
        grant = tokens.verify_grant(token, self.store_b, now=self.now)
        self.assertEqual(('2001:db8::1', 49401), grant.endpoint)

    def test_unique_jti(self):
        first = split(self.grant())[1]['jti']
        second = split(self.grant())[1]['jti']
        self.assertNotEqual(first, second)

    # -- algorithm and type ---------------------------------------------

    def test_alg_none(self):
        header, claims, _sig = split(self.grant())
        header['alg'] = 'none'
        self.assertGrantRefused('token_bad_algorithm',
                                join(header, claims, ''))

    def test_alg_hs256_with_public_key_as_secret(self):
        # The classic confusion: HMAC keyed with the verifier's public key.
        header, claims, _sig = split(self.grant())
        header['alg'] = 'HS256'
        secret = self.broker_b.cert.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo)
        unsigned = join(header, claims, '')[:-1]
        mac = hmac.new(secret, unsigned.encode('ascii'),
                       hashlib.sha256).digest()
        self.assertGrantRefused('token_bad_algorithm',
                                unsigned + '.' + _b64url(mac))

    def test_other_algorithms(self):
        for alg in ('ES384', 'RS256', 'es256', 'EdDSA', None):
            header, claims, sig = split(self.grant())
            header['alg'] = alg
            self.assertGrantRefused('token_bad_algorithm',
                                    join(header, claims, sig))

    def test_receipt_as_grant(self):
        receipt = tokens.sign_receipt(
            self.pki.b.credentials('host-b'),
            {'migration_id': 'mig-1', 'role': 'destination'})
        self.assertGrantRefused('token_wrong_type', receipt)

    def test_grant_typ_refused_as_receipt(self):
        self.assertToken('token_wrong_type', tokens.verify_receipt,
                         self.grant(), self.store_b, now=self.now)

    # -- signature ------------------------------------------------------

    def test_tampered_claim(self):
        header, claims, sig = split(self.grant())
        claims['streams'] = {'memory': 64}
        self.assertGrantRefused('token_bad_signature',
                                join(header, claims, sig))

    def test_tampered_header(self):
        # The protected header is part of the signed input too.
        header, claims, sig = split(self.grant())
        header['kid'] = 'x'
        self.assertGrantRefused('token_bad_signature',
                                join(header, claims, sig))

    def test_signed_by_another_key_with_valid_x5c(self):
        other = ca.new_key()
        token = jwt.encode(self.grant_claims(), other, algorithm='ES256',
                           headers={'typ': tokens.TYP_GRANT,
                                    'x5c': x5c_of(self.broker_b)})
        self.assertGrantRefused('token_bad_signature', token)

    def test_flipped_signature_bit(self):
        header, claims, sig = split(self.grant())
        raw = bytearray(_unb64url(sig))
        raw[10] ^= 0x01
        self.assertGrantRefused('token_bad_signature',
                                join(header, claims, _b64url(bytes(raw))))

    # -- x5c ------------------------------------------------------------

    def _with_x5c(self, x5c, drop=False):
        header, claims, sig = split(self.grant())
        if drop:
            del header['x5c']
        else:
            header['x5c'] = x5c
        return join(header, claims, sig)

    def test_x5c_missing(self):
        self.assertGrantRefused('token_malformed',
                                self._with_x5c(None, drop=True))

    def test_x5c_not_a_list(self):
        for x5c in (x5c_of(self.broker_b)[0], {'0': 'x'}, None, 7):
            self.assertGrantRefused('token_malformed', self._with_x5c(x5c))

    def test_x5c_empty(self):
        self.assertGrantRefused('token_malformed', self._with_x5c([]))

    def test_x5c_too_long(self):
        leaf = x5c_of(self.broker_b)[0]
        self.assertGrantRefused('token_malformed',
                                self._with_x5c([leaf] * (tokens.MAX_X5C + 1)))

    def test_x5c_not_strings(self):
        self.assertGrantRefused('token_malformed', self._with_x5c([1]))

    def test_x5c_not_base64(self):
        self.assertGrantRefused('token_malformed',
                                self._with_x5c(['!!not base64!!']))

    def test_x5c_garbage_der(self):
        garbage = base64.b64encode(b'\x30\x03garbage').decode('ascii')
        self.assertGrantRefused('token_malformed', self._with_x5c([garbage]))

    # -- syntax and size ------------------------------------------------

    def test_too_large(self):
        claims = self.grant_claims()
        claims['pad'] = 'x' * tokens.MAX_TOKEN_BYTES
        self.assertGrantRefused('token_too_large', self.signed(claims))

    def test_largest_accepted(self):
        claims = self.grant_claims()
        claims['pad'] = ''
        size = len(self.signed(claims))
        claims['pad'] = 'x' * ((tokens.MAX_TOKEN_BYTES - size) * 3 // 4)
        token = self.signed(claims)
        self.assertLessEqual(len(token), tokens.MAX_TOKEN_BYTES)
        tokens.verify_grant(token, self.store_b, now=self.now)

    def test_not_a_string(self):
        token = self.grant()
        for value in (token.encode('ascii'), None, 42, [token]):
            self.assertGrantRefused('token_malformed', value)

    def test_not_a_jws(self):
        for value in ('', 'abc', 'a.b', 'a.b.c', '\u00e9.x.y',
                      _b64url(b'[1]') + '.e30.'):
            self.assertGrantRefused('token_malformed', value)

    # -- trust ----------------------------------------------------------

    def test_signed_by_a_host(self):
        token = self.grant(broker=self.pki.b.credentials('host-b2'))
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_grant,
                              token, self.store_b, now=self.now)
        self.assertEqual('wrong_role', e.reason)

    def test_verified_against_another_clouds_store(self):
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_grant,
                              self.grant(), self.store_a, now=self.now)
        self.assertEqual('certificate_untrusted', e.reason)

    def test_signed_by_rogue_broker(self):
        token = self.grant(broker=self.pki.rogue.credentials('broker-b'))
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_grant,
                              token, self.store_b, now=self.now)
        self.assertEqual('certificate_untrusted', e.reason)

    def test_wrong_audience(self):
        claims = self.grant_claims()
        claims['aud'] = 'cloud-a'
        self.assertGrantRefused('token_wrong_audience', self.signed(claims))
        del claims['aud']
        self.assertGrantRefused('token_wrong_audience', self.signed(claims))

    def test_wrong_destination_cloud(self):
        claims = self.grant_claims()
        claims['dst_cloud'] = 'cloud-a'
        self.assertGrantRefused('token_invalid_claim', self.signed(claims))

    # -- time -----------------------------------------------------------

    def test_expired(self):
        token = self.grant(now=self.now - 1000, ttl=300)
        self.assertGrantRefused('token_expired', token)

    def test_expiry_leeway(self):
        # exp 10 s ago: inside the default 30 s leeway, outside a 5 s one.
        token = self.grant(now=self.now - 310, ttl=300)
        tokens.verify_grant(token, self.store_b, now=self.now)
        self.assertGrantRefused('token_expired', token, leeway=5)
        tokens.verify_grant(token, self.store_b, now=self.now, leeway=10)

    def test_not_yet_valid(self):
        token = self.grant(now=self.now + 120)
        self.assertGrantRefused('token_not_yet_valid', token)

    def test_not_yet_valid_leeway(self):
        token = self.grant(now=self.now + 10)
        tokens.verify_grant(token, self.store_b, now=self.now)
        self.assertGrantRefused('token_not_yet_valid', token, leeway=5)

    def test_nbf(self):
        claims = self.grant_claims()
        claims['nbf'] = self.now + 120
        self.assertGrantRefused('token_not_yet_valid', self.signed(claims))

    def test_time_claims_must_be_numbers(self):
        for name, value in (('exp', str(self.now + 60)), ('exp', True),
                            ('iat', [self.now]), ('nbf', 'soon')):
            claims = self.grant_claims()
            claims[name] = value
            self.assertGrantRefused('token_invalid_time',
                                    self.signed(claims))

    def test_uses_injected_clock(self):
        token = self.grant(now=self.now + 1000)
        tokens.verify_grant(token, self.store_b, now=self.now + 1100)
        self.assertGrantRefused('token_not_yet_valid', token)
        self.assertGrantRefused('token_expired', token, now=self.now + 2000)

    def test_signer_certificate_checked_at_token_time(self):
        # The injected clock applies to the x5c chain too: at a time when
        # the broker's certificate has expired, its grants are refused.
        later = self.now + 400 * 86400
        token = self.grant(now=later)
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_grant,
                              token, self.store_b, now=later)
        self.assertEqual('certificate_expired', e.reason)

    # -- grant claims ---------------------------------------------------

    def assertClaimRefused(self, reason, **changes):
        claims = self.grant_claims()
        for name, value in changes.items():
            if value is _DROP:
                del claims[name]
            else:
                claims[name] = value
        return self.assertGrantRefused(reason, self.signed(claims))

    def test_required_claims(self):
        for name in ('iat', 'exp', 'jti', 'migration_id', 'instance_uuid',
                     'src_cloud', 'src_host', 'dst_cloud', 'dst_host',
                     'dst_endpoint'):
            self.assertClaimRefused('token_missing_claim', **{name: _DROP})

    def test_string_claims(self):
        for value in ('', 7, ['mig-1'], 'm' * 256):
            self.assertClaimRefused('token_invalid_claim',
                                    migration_id=value)

    def test_streams(self):
        for streams in ({}, [], 'memory', {'memory': 0},
                        {'memory': tokens.MAX_CONNECTIONS + 1},
                        {'cpu': 1}, {'memory': 1, 'cpu': 1},
                        {'memory': True}, {'memory': 1.0},
                        {'memory': '1'}, {'memory': -1}):
            self.assertClaimRefused('token_invalid_claim', streams=streams)
        self.assertClaimRefused('token_invalid_claim', streams=_DROP)

    def test_streams_at_the_limit(self):
        token = self.grant(streams={'memory': tokens.MAX_CONNECTIONS,
                                    'disk': 1})
        grant = tokens.verify_grant(token, self.store_b, now=self.now)
        self.assertEqual(tokens.MAX_CONNECTIONS, grant.streams['memory'])

    def test_fingerprints(self):
        good = self.pki.fingerprint(self.pki.a, 'host-a')
        for value in (good.upper(), good[:-1], good + '0', 'g' * 64,
                      None, 7):
            self.assertClaimRefused('token_invalid_claim',
                                    src_fingerprint=value)
            self.assertClaimRefused('token_invalid_claim',
                                    dst_fingerprint=value)

    def test_endpoint(self):
        for value in ('host', 'host:', ':80', 'host:0', 'host:65536',
                      'host:http', 'host:-1', 'host: 80'):
            self.assertClaimRefused('token_invalid_claim',
                                    dst_endpoint=value)

    def test_endpoint_non_ascii_digits(self):
        # str.isdigit() accepts digits int() cannot parse ('\u00b2') and
        # digits of other scripts that it can: neither is a port.
        for value in ('host:\u00b2', 'host:\u0664\u0664\u0663'):
            self.assertClaimRefused('token_invalid_claim',
                                    dst_endpoint=value)

    def test_issue_grant_checks_claims(self):
        self.assertToken('token_invalid_claim', self.grant,
                         streams={'cpu': 1})
        self.assertToken('token_invalid_claim', self.grant,
                         dst_endpoint='no-port')


class ReceiptTest(TokenTestBase):

    def setUp(self):
        super().setUp()
        self.host_a = self.pki.a.credentials('host-a')

    def receipt_claims(self, **extra):
        claims = {'migration_id': 'mig-1', 'role': 'source',
                  'iat': self.now, 'jti': 'r-1'}
        claims.update(extra)
        return claims

    def test_round_trip(self):
        token = tokens.sign_receipt(self.host_a, {'migration_id': 'mig-1',
                                                  'role': 'source',
                                                  'src_to_dst': {'bytes': 1}})
        claims, peer = tokens.verify_receipt(
            token, self.store_a, expected_fingerprint=self.host_a.fingerprint)
        self.assertEqual('urn:secmig:cloud-a:host:host-a', claims['iss'])
        self.assertEqual({'bytes': 1}, claims['src_to_dst'])
        self.assertIn('jti', claims)
        self.assertIn('iat', claims)
        self.assertEqual(self.host_a.fingerprint, peer.fingerprint)
        header = split(token)[0]
        self.assertEqual(tokens.TYP_RECEIPT, header['typ'])

    def test_sign_receipt_overrides_iss(self):
        token = tokens.sign_receipt(self.host_a, self.receipt_claims(
            iss='urn:secmig:cloud-a:host:host-a2'))
        claims, _peer = tokens.verify_receipt(token, self.store_a)
        self.assertEqual('urn:secmig:cloud-a:host:host-a', claims['iss'])

    def test_issuer_not_the_signer(self):
        token = tokens.sign(self.receipt_claims(
            iss='urn:secmig:cloud-a:host:host-a2'), self.host_a,
            tokens.TYP_RECEIPT)
        self.assertToken('token_invalid_claim', tokens.verify_receipt, token,
                         self.store_a)

    def test_no_issuer(self):
        token = tokens.sign(self.receipt_claims(), self.host_a,
                            tokens.TYP_RECEIPT)
        self.assertToken('token_invalid_claim', tokens.verify_receipt, token,
                         self.store_a)

    def test_bad_role(self):
        for role in ('broker', 'Source', '', None):
            token = tokens.sign_receipt(self.host_a,
                                        self.receipt_claims(role=role))
            # A null claim is a missing one.
            self.assertToken('token_missing_claim' if role is None
                             else 'token_invalid_claim',
                             tokens.verify_receipt, token, self.store_a)

    def test_required_claims(self):
        for name in ('migration_id', 'role'):
            claims = self.receipt_claims()
            del claims[name]
            token = tokens.sign_receipt(self.host_a, claims)
            self.assertToken('token_missing_claim', tokens.verify_receipt,
                             token, self.store_a)

    def test_exp_not_required(self):
        token = tokens.sign_receipt(self.host_a, self.receipt_claims())
        self.assertNotIn('exp', split(token)[1])
        tokens.verify_receipt(token, self.store_a)

    def test_signed_by_a_broker(self):
        token = tokens.sign_receipt(self.pki.a.credentials('broker-a'),
                                    self.receipt_claims())
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_receipt,
                              token, self.store_a)
        self.assertEqual('wrong_role', e.reason)

    def test_pinned_fingerprint(self):
        token = tokens.sign_receipt(self.host_a, self.receipt_claims())
        other = self.pki.fingerprint(self.pki.a, 'host-a2')
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_receipt,
                              token, self.store_a,
                              expected_fingerprint=other)
        self.assertEqual('fingerprint_mismatch', e.reason)

    def test_tampered_totals(self):
        token = tokens.sign_receipt(self.host_a, self.receipt_claims(
            src_to_dst={'bytes': 10}))
        header, claims, sig = split(token)
        claims['src_to_dst'] = {'bytes': 11}
        self.assertToken('token_bad_signature', tokens.verify_receipt,
                         join(header, claims, sig), self.store_a)

    def test_token_digest(self):
        token = tokens.sign_receipt(self.host_a, self.receipt_claims())
        self.assertEqual(hashlib.sha256(token.encode()).hexdigest(),
                         tokens.token_digest(token))
