"""Security tests of the receipts surface: the offline verifier.

``secmig-nova-manage receipts verify`` is what an auditor runs, long after
a migration, on files anybody could have edited. A pair must be signed by
a host of the source cloud and a host of the destination cloud, two
distinct hosts, each the host the grant names; and no input may crash it:
every hostile file ends in a one-line reason (or named FAILED checks) and
exit status 1, never a traceback. The broker's side (a migration is
completed only with verified pairs) is in tests/unit/broker/test_broker.
"""

import json
import os
import subprocess
import sys
import time

import fixtures
import testtools

from secmig_nova.authz import tokens
from secmig_nova.trust import store as trust_store
from secmig_nova.tunnel import receipts
from tests.fixtures import pki as pki_fixture
from tests.fixtures import receipts as receipt_fixture

ENDPOINT = '127.0.0.1:49400'


def manage(*args):
    return subprocess.run(
        [sys.executable, '-m', 'secmig_nova.cmd.manage'] + list(args),
        capture_output=True, text=True, timeout=60)


class ReceiptAttackBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.stores = {
            'cloud-a': trust_store.TrustStore.load(**self.pki.a.trust()),
            'cloud-b': trust_store.TrustStore.load(**self.pki.b.trust())}
        self.now = int(time.time())
        self.grant_token = self.pki.grant(ENDPOINT, now=self.now)
        self.grant = tokens.verify_grant(self.grant_token,
                                         self.stores['cloud-b'],
                                         now=self.now)
        self.host_a = self.pki.a.credentials('host-a')
        self.host_b = self.pki.b.credentials('host-b')
        self.cas = ['--ca', 'cloud-a=%s' % self.pki.a.ca.ca_file,
                    '--ca', 'cloud-b=%s' % self.pki.b.ca.ca_file]

    def pair(self, src_signer=None, dst_signer=None, **overrides):
        """One connection's receipts as two real tunnels sign them."""
        return receipt_fixture.pair(self.grant, src_signer or self.host_a,
                                    dst_signer or self.host_b, **overrides)

    def write(self, content, name='receipts.json'):
        path = os.path.join(self.dir, name)
        mode = 'wb' if isinstance(content, bytes) else 'w'
        with open(path, mode) as f:
            f.write(content if isinstance(content, (str, bytes))
                    else json.dumps(content))
        return path

    def verify(self, doc, *extra):
        return manage('receipts', 'verify', self.write(doc), *self.cas,
                      *extra)

    def assertNoTraceback(self, res):
        self.assertNotIn('Traceback', res.stdout + res.stderr)


class OneHostCannotSignBothTest(ReceiptAttackBase):

    def test_genuine_pair_verifies_with_its_grant(self):
        res = self.verify([self.pair()], '--grant',
                          self.write(self.grant_token, 'grant.jws'))
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)
        self.assertIn('[ok] distinct_hosts', res.stdout)
        self.assertIn('[ok] bound_to_grant', res.stdout)

    def test_destination_host_signs_both_receipts(self):
        # host-b signs the source receipt too, and claims to be both ends
        # (fingerprints and clouds consistent with itself).
        forged = self.pair(src_signer=self.host_b,
                           src_fingerprint=self.grant.dst_fingerprint,
                           src_cloud='cloud-b')
        result = receipts.verify_pair(forged['source_receipt'],
                                      forged['destination_receipt'],
                                      self.stores)
        self.assertFalse(result.ok)
        self.assertEqual(['distinct_hosts'],
                         [c.name for c in result.failed])
        res = self.verify([forged])
        self.assertEqual(1, res.returncode)
        self.assertIn('[FAILED] distinct_hosts: one host '
                      '(urn:secmig:cloud-b:host:host-b) signed both',
                      res.stdout)

    def test_source_receipt_signed_by_a_destination_cloud_host(self):
        # host-b2 (cloud-b) signs the source receipt: once naming host-a's
        # fingerprint, once its own but still claiming cloud-a.
        b2 = self.pki.b.credentials('host-b2')
        for forged, detail in (
                (self.pair(src_signer=b2), 'is not the source host the '
                 'receipt names'),
                (self.pair(src_signer=b2, src_fingerprint=b2.fingerprint),
                 'is a host of cloud cloud-b, but the receipt names source '
                 'cloud cloud-a')):
            res = self.verify([forged])
            self.assertEqual(1, res.returncode)
            self.assertIn('[FAILED] source_signature', res.stdout)
            self.assertIn(detail, res.stdout)

    def test_signer_cloud_must_match_the_role(self):
        # Both hosts of cloud-a, the receipts naming cloud-a for both
        # roles, but the grant says cloud-b: refused by the grant binding.
        other = self.pki.a.credentials('host-a2')
        forged = self.pair(
            dst_signer=other, dst_cloud='cloud-a',
            dst_fingerprint=self.pki.fingerprint(self.pki.a, 'host-a2'))
        res = self.verify([forged], '--grant',
                          self.write(self.grant_token, 'grant.jws'))
        self.assertEqual(1, res.returncode)
        self.assertIn('[FAILED] bound_to_grant', res.stdout)
        # And a signer whose cloud is not the one its role names.
        forged = self.pair(dst_signer=other)
        res = self.verify([forged])
        self.assertEqual(1, res.returncode)
        self.assertIn('[FAILED] destination_signature', res.stdout)

    def test_pair_bound_to_another_grant(self):
        other = self.pki.grant(ENDPOINT, now=self.now)
        res = self.verify([self.pair()], '--grant',
                          self.write(other, 'grant.jws'))
        self.assertEqual(1, res.returncode)
        self.assertIn('[FAILED] bound_to_grant', res.stdout)
        self.assertIn('grant_jti', res.stdout)

    def test_forged_grant_file_is_refused(self):
        head, body, sig = self.grant_token.split('.')
        res = self.verify([self.pair()], '--grant',
                          self.write('.'.join((head, body, sig[:-4] + 'AAAA')),
                                     'grant.jws'))
        self.assertEqual(1, res.returncode)
        self.assertIn('grant refused', res.stderr)
        self.assertNoTraceback(res)


class HostileFilesTest(ReceiptAttackBase):
    """Every hostile file: exit 1 with a reason, no traceback."""

    def hostile_docs(self):
        good = self.pair()
        nan_iat = tokens.sign(dict(receipts_claims(good['source_receipt']),
                                   iat=float('nan')), self.host_a,
                              tokens.TYP_RECEIPT)
        huge_iat = tokens.sign(dict(receipts_claims(good['source_receipt']),
                                    iat=1e308), self.host_a,
                               tokens.TYP_RECEIPT)
        return {
            'not json': 'this is not json',
            'invalid utf-8': b'\xff\xfe[1]',
            'a number': 5,
            'null': None,
            'a string': 'eyJ',
            'deep nesting': '[' * 100000 + ']' * 100000,
            'list of junk': [1, 'x', None, [], {}],
            'wrong types': [{'source_receipt': 5,
                             'destination_receipt': ['x']}],
            'receipts not a list': {'receipts': 5},
            'receipt rows of junk': {'receipts': [5, {'role': 'source',
                                                      'token': 7}]},
            'records of junk': {'records': 5, 'receipts': []},
            'records with junk': {'records': {'source': 'x'},
                                  'receipts': [{'role': 'source',
                                                'token': 'x'}]},
            'non-ascii token': [{'source_receipt': '\u00e9' * 10,
                                 'destination_receipt': 'a.b.c'}],
            'huge token': [{'source_receipt': 'a' * 10 ** 6,
                            'destination_receipt': 'b'}],
            'NaN iat': [dict(good, source_receipt=nan_iat)],
            'huge iat': [dict(good, source_receipt=huge_iat)],
            'control characters': [{
                'source_receipt': tokens.sign_receipt(self.host_a, {
                    'migration_id': 'm\nFORGED LINE', 'role': 'source',
                    'stream_kind': '\x1b[31m'}),
                'destination_receipt': None}],
        }

    def test_hostile_files(self):
        for name, doc in self.hostile_docs().items():
            res = self.verify(doc)
            self.assertEqual(1, res.returncode,
                             '%s: %s%s' % (name, res.stdout, res.stderr))
            self.assertNoTraceback(res)
            self.assertNotIn('\nFORGED LINE', res.stdout + res.stderr, name)
            self.assertNotIn('\x1b', res.stdout + res.stderr, name)
            if res.stderr:
                self.assertEqual(1, len(res.stderr.strip().splitlines()),
                                 '%s: %s' % (name, res.stderr))

    def test_hostile_grant_file(self):
        for content in (b'\xff', '', 'a.b.c', '[' * 10000):
            res = self.verify([self.pair()], '--grant',
                              self.write(content, 'grant.jws'))
            self.assertEqual(1, res.returncode, res.stdout + res.stderr)
            self.assertNoTraceback(res)


def receipts_claims(token):
    return tokens.unverified_claims(token)
