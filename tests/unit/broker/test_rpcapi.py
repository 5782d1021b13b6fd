"""Tests of secmig_nova/broker/rpcapi.py: HostClient and envelope sizes.

Receipts carry their signer's whole chain in ``x5c``. With an
intermediate CA in the chains, the two receipts of one connection no
longer fit in an envelope of ``tokens.MAX_TOKEN_BYTES``: the broker must
still accept them (record_receipt has its own, larger cap), and refuse
anything over that cap by name, before reading it.
"""

import time
from unittest import mock
import uuid

from cryptography.hazmat.primitives.asymmetric import rsa
import testtools

from secmig_nova.authz import tokens
from secmig_nova.broker.db import models
from secmig_nova.broker import envelope
from secmig_nova.broker import rpcapi
from secmig_nova.trust import ca
from secmig_nova.trust import certs
from tests.fixtures import brokers
from tests.fixtures import pki as pki_fixture

_INTERMEDIATES = {}


def intermediate_credentials(cloud, role, name):
    """Credentials whose chain is leaf <- intermediate <- cloud's CA.

    The intermediate has an RSA key, as many enterprise issuing CAs do
    (only the leaf must be ECDSA), and is built once per cloud.
    """
    if cloud.cloud_id not in _INTERMEDIATES:
        root, root_key = cloud.ca.load()
        _INTERMEDIATES[cloud.cloud_id] = pki_fixture.build_intermediate(
            root, root_key, cloud.cloud_id, key=rsa.generate_private_key(
                public_exponent=65537, key_size=2048))
    inter, inter_key = _INTERMEDIATES[cloud.cloud_id]
    leaf, key = ca.issue(inter, inter_key, cloud.cloud_id, role, name)
    return certs.Credentials([leaf, inter], key)


class RecordingAPI:
    """A BrokerAPI that remembers the size of each envelope it sends."""

    def __init__(self, api):
        self.api = api
        self.sizes = {}

    def __getattr__(self, method):
        def call(token):
            self.sizes.setdefault(method, []).append(len(token))
            return getattr(self.api, method)(token)
        return call


class TestRecordReceiptSize(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.t = brokers.TwoClouds()
        self.addCleanup(self.t.cleanup)
        self.t.keystone.grant('op', 'proj-1', 'migration_operator',
                              'cross_cloud_operator')
        pki = self.t.pki
        self.creds_a = intermediate_credentials(pki.a, 'host', 'host-ai')
        self.creds_b = intermediate_credentials(pki.b, 'host', 'host-bi')
        self.api_a = RecordingAPI(self.t.a.api())
        self.api_b = RecordingAPI(self.t.b.api())
        self.host_a = rpcapi.HostClient(self.api_a, self.creds_a)
        self.host_b = rpcapi.HostClient(self.api_b, self.creds_b)

    def migrate(self):
        mid = str(uuid.uuid4())
        self.host_b.register_incoming(mid, '127.0.0.1:49400', {'memory': 1},
                                      brokers.INSTANCE)
        ticket = self.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-bi', 'cloud-b', user_id='op',
            project_id='proj-1')['ticket']
        grant = tokens.verify_grant(
            self.host_a.request_grant(mid, ticket, {'memory': 1})['grant'],
            self.t.b.store)
        return mid, grant

    def receipts(self, mid, grant):
        """One connection's receipts, with the claims the tunnel signs."""
        now = round(time.time(), 3)
        claims = {
            'migration_id': mid, 'instance_uuid': grant.instance_uuid,
            'grant_jti': grant.jti, 'stream_kind': 'memory',
            'connection_index': 0,
            'src_to_dst': {'bytes': 8 << 30, 'sha256': 'ab' * 32},
            'dst_to_src': {'bytes': 65536, 'sha256': 'cd' * 32},
            'started_at': now - 30, 'ended_at': now,
            'src_fingerprint': grant.src_fingerprint,
            'dst_fingerprint': grant.dst_fingerprint,
            'src_cloud': grant.src_cloud, 'dst_cloud': grant.dst_cloud,
            'tls_version': 'TLSv1.3', 'tls_cipher': 'TLS_AES_256_GCM_SHA384'}
        src = tokens.sign_receipt(self.creds_a, dict(claims, role='source'))
        dst = tokens.sign_receipt(self.creds_b, dict(
            claims, role='destination',
            source_receipt_sha256=tokens.token_digest(src)))
        return {'source_receipt': src, 'destination_receipt': dst}

    def test_receipts_with_intermediate_chains_are_recorded(self):
        mid, grant = self.migrate()
        self.assertEqual(2, len(self.creds_b.chain))
        conn = self.receipts(mid, grant)
        for host in (self.host_b, self.host_a):
            out = host.record_receipt(mid, 'completed', [conn])
            self.assertEqual(2, out['receipts_stored'])
            self.assertEqual(models.COMPLETED, out['state'])
        for api in (self.api_a, self.api_b):
            [size] = api.sizes['record_receipt']
            # What the old cap, one token's, refused.
            self.assertGreater(size, tokens.MAX_TOKEN_BYTES)
            self.assertLessEqual(size, envelope.max_bytes('record_receipt'))
        stored = self.t.b.db.receipts(mid)
        self.assertEqual(['destination', 'source'],
                         sorted(r['role'] for r in stored))
        self.assertEqual(conn['destination_receipt'],
                         [r['token'] for r in stored
                          if r['role'] == 'destination'][0])

    def test_envelope_over_the_cap_refused_by_the_broker(self):
        mid, _grant = self.migrate()
        cap = envelope.max_bytes('record_receipt')
        token = envelope.seal(self.creds_b, 'cloud-b', 'record_receipt', {
            'migration_id': mid, 'status': 'failed', 'reason': 'x' * cap})
        self.assertGreater(len(token), cap)
        e = self.assertRaises(rpcapi.BrokerRefused, rpcapi.checked,
                              self.t.b.api().record_receipt(token))
        self.assertEqual(envelope.TOO_LARGE, e.reason)
        self.assertEqual(models.GRANTED, self.t.b.db.get_migration(
            mid, 'destination')['state'])

    def test_envelope_over_the_cap_is_not_sent(self):
        api = mock.Mock()
        host = rpcapi.HostClient(api, self.creds_b)
        e = self.assertRaises(
            rpcapi.BrokerRefused, host.record_receipt, 'm', 'failed',
            reason='x' * envelope.max_bytes('record_receipt'))
        self.assertEqual(envelope.TOO_LARGE, e.reason)
        self.assertIn('not sent', str(e))
        api.record_receipt.assert_not_called()
