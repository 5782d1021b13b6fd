"""Brokers of two clouds over oslo.messaging fake:// transports.

Keystone is faked here (roles in a dict); tests/functional has the same
flows on RabbitMQ with a real Keystone. Every refusal asserts its reason.
"""

import time
import uuid

import oslo_messaging as messaging
from oslo_messaging.rpc import dispatcher
import testtools

from secmig_nova.authz import tickets
from secmig_nova.authz import tokens
from secmig_nova.broker.db import models
from secmig_nova.broker import envelope
from secmig_nova.broker import manager
from secmig_nova.broker import rpcapi
from tests.fixtures import brokers
from tests.fixtures import receipts

OPS = ('migration_operator', 'cross_cloud_operator')


class BrokerTestCase(testtools.TestCase):

    b_limits = None

    def setUp(self):
        super().setUp()
        self.t = brokers.TwoClouds(b_limits=self.b_limits)
        self.addCleanup(self.t.cleanup)
        self.t.keystone.grant('op', 'proj-1', *OPS)
        self.pki = self.t.pki

    def assertRefused(self, reason, func, *args, **kwargs):
        e = self.assertRaises(rpcapi.BrokerRefused, func, *args, **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e

    def seal(self, creds, audience, method, payload, **kw):
        return envelope.seal(creds, audience, method, payload, **kw)


class TestFlows(BrokerTestCase):

    def test_cross_cloud_grant(self):
        mid, ticket, grant_token = self.t.migrate(streams={'memory': 2})
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        self.assertEqual(mid, grant.migration_id)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a'),
                         grant.src_fingerprint)
        self.assertEqual(self.pki.fingerprint(self.pki.b, 'host-b'),
                         grant.dst_fingerprint)
        self.assertEqual('127.0.0.1:49400', grant.dst_endpoint)
        self.assertEqual({'memory': 2}, grant.streams)
        a = self.t.a.db.get_migration(mid, 'source')
        b = self.t.b.db.get_migration(mid, 'destination')
        self.assertEqual((models.GRANTED, models.GRANTED),
                         (a['state'], b['state']))
        self.assertEqual(grant.jti, a['grant_jti'])
        self.assertEqual(['authorized', 'granted'],
                         [h['state'] for h in a['history']])
        self.assertEqual('proj-1', b['project_id'])

    def test_intra_cloud_grant_uses_the_same_path(self):
        mid = str(uuid.uuid4())
        self.t.a.host('host-a2').register_incoming(
            mid, '127.0.0.1:49401', {'memory': 1})
        ticket = self.t.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-a2', 'cloud-a', user_id='op',
            project_id='proj-1')['ticket']
        grant = self.t.host_a.request_grant(mid, ticket, {'memory': 1})
        g = tokens.verify_grant(grant['grant'], self.t.a.store)
        self.assertEqual('cloud-a', g.dst_cloud)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a2'),
                         g.dst_fingerprint)

    def test_intra_cloud_needs_only_migration_operator(self):
        self.t.keystone.grant('op2', 'proj-1', 'migration_operator')
        mid = str(uuid.uuid4())
        self.t.a.host('host-a2').register_incoming(mid, '127.0.0.1:1',
                                                   {'memory': 1})
        self.t.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-a2', 'cloud-a', user_id='op2',
            project_id='proj-1')
        self.assertRefused(
            'missing_role', self.t.host_a.authorize_migration,
            str(uuid.uuid4()), brokers.INSTANCE, 'host-b', 'cloud-b',
            user_id='op2', project_id='proj-1')

    def test_streams_are_the_smaller_of_asked_and_registered(self):
        mid = str(uuid.uuid4())
        self.t.host_b.register_incoming(mid, '127.0.0.1:2', {'memory': 2})
        ticket = self.t.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-b', 'cloud-b', user_id='op',
            project_id='proj-1')['ticket']
        grant = self.t.host_a.request_grant(mid, ticket, {'memory': 8,
                                                          'disk': 1})
        self.assertEqual({'memory': 2}, tokens.verify_grant(
            grant['grant'], self.t.b.store).streams)

    def test_receipts_recorded_and_listed(self):
        mid, _ticket, grant_token = self.t.migrate()
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        out = self.t.host_b.record_receipt(mid, 'completed',
                                           [self._receipts(mid, grant)])
        self.assertEqual(2, out['receipts_stored'])
        # The grant allowed two memory connections: one pair is not enough.
        self.assertEqual(models.INCOMPLETE, out['state'])
        self.assertIn('no verified receipt pair yet for memory#1',
                      self.t.b.db.get_migration(mid, 'destination')['reason'])
        out = self.t.host_b.record_receipt(
            mid, 'completed', [self._receipts(mid, grant, index=1)])
        self.assertEqual(models.COMPLETED, out['state'])
        record = self.t.host_b.get_migration(mid)
        self.assertEqual(['destination', 'destination', 'source', 'source'],
                         sorted(r['role'] for r in record['receipts']))
        self.assertEqual(models.COMPLETED,
                         record['records']['destination']['state'])
        listed = self.t.host_b.list_migrations(project_id='proj-1')
        self.assertIn(mid, [m['id'] for m in listed['migrations']])

    def _receipts(self, mid, grant, tamper=False, index=0, src_signer=None,
                  dst_signer=None, **overrides):
        """A connection's receipt pair, as two tunnels would sign it."""
        self.assertEqual(mid, grant.migration_id)
        conn = receipts.pair(
            grant, src_signer or self.pki.a.credentials('host-a'),
            dst_signer or self.pki.b.credentials('host-b'), index=index,
            **overrides)
        if tamper:
            head, body, sig = conn['destination_receipt'].split('.')
            conn['destination_receipt'] = '.'.join((head, body[:-3] + 'AAA',
                                                    sig))
        return conn

    def assertIncomplete(self, mid, conn, detail, host=None):
        """``conn`` is refused and leaves the record incomplete."""
        host = host or self.t.host_b
        e = self.assertRefused('receipt_invalid', host.record_receipt, mid,
                               'completed', [conn])
        self.assertIn(detail, str(e))
        side = 'destination' if host is self.t.host_b else 'source'
        db = self.t.b.db if host is self.t.host_b else self.t.a.db
        record = db.get_migration(mid, side)
        self.assertEqual(models.INCOMPLETE, record['state'])
        self.assertIn(detail, record['reason'])
        self.assertEqual([], db.receipts(mid))

    def test_receipt_with_bad_signature_refused(self):
        mid, _ticket, grant_token = self.t.migrate()
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        self.assertIncomplete(mid, self._receipts(mid, grant, tamper=True),
                              'destination_signature')

    def test_one_receipt_is_not_a_completed_migration(self):
        mid, _ticket, grant_token = self.t.migrate(streams={'memory': 1})
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        conn = self._receipts(mid, grant)
        for role in ('source', 'destination'):
            self.assertIncomplete(
                mid, {'%s_receipt' % role: conn['%s_receipt' % role]},
                'needs both its source and its destination receipt')
        out = self.t.host_b.record_receipt(mid, 'completed', [conn])
        self.assertEqual(models.COMPLETED, out['state'])

    def test_completed_without_receipts_is_incomplete(self):
        mid, _ticket, _grant = self.t.migrate(streams={'memory': 1})
        out = self.t.host_a.record_receipt(mid, 'completed')
        self.assertEqual(models.INCOMPLETE, out['state'])
        self.assertIn('memory#0', self.t.a.db.get_migration(
            mid, 'source')['reason'])

    def test_pair_signed_by_one_host_is_refused(self):
        # The destination host signs both receipts, claiming to be the
        # source as well: refused whichever fingerprints it claims.
        mid, _ticket, grant_token = self.t.migrate(streams={'memory': 1})
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        host_b = self.pki.b.credentials('host-b')
        self.assertIncomplete(mid, self._receipts(
            mid, grant, src_signer=host_b), 'source_signature')
        self.assertIncomplete(mid, self._receipts(
            mid, grant, src_signer=host_b,
            src_fingerprint=grant.dst_fingerprint, src_cloud='cloud-b'),
            'distinct_hosts')

    def test_receipts_the_host_made_up_are_refused(self):
        mid, _ticket, grant_token = self.t.migrate(streams={'memory': 1})
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        other = self.pki.a.credentials('host-a2')
        for conn, detail in (
                (self._receipts(mid, grant, grant_jti='f' * 32),
                 'bound_to_grant'),
                (self._receipts(mid, grant, instance_uuid=str(uuid.uuid4())),
                 'bound_to_grant'),
                (self._receipts(mid, grant, src_signer=other,
                                src_fingerprint=self.pki.fingerprint(
                                    self.pki.a, 'host-a2')),
                 'bound_to_grant'),
                (self._receipts(mid, grant, index=1),
                 'a connection the grant did not allow'),
                (self._receipts(mid, grant, stream_kind='disk'),
                 'a connection the grant did not allow')):
            self.assertIncomplete(mid, conn, detail)
        # The real pair still completes it.
        out = self.t.host_b.record_receipt(mid, 'completed',
                                           [self._receipts(mid, grant)])
        self.assertEqual(models.COMPLETED, out['state'])

    def test_source_side_needs_its_pairs_too(self):
        mid, _ticket, grant_token = self.t.migrate(streams={'memory': 1})
        grant = tokens.verify_grant(grant_token, self.t.b.store)
        self.assertIncomplete(mid, self._receipts(mid, grant, tamper=True),
                              'destination_signature', host=self.t.host_a)
        out = self.t.host_a.record_receipt(mid, 'completed',
                                           [self._receipts(mid, grant)])
        self.assertEqual(models.COMPLETED, out['state'])

    def test_list_migrations_limit_is_validated(self):
        self.t.migrate()
        for limit in (0, -1, -5, 1001, 10 ** 30, 1.5, '10', True, [10]):
            e = self.assertRefused('bad_request',
                                   self.t.host_b.list_migrations,
                                   limit=limit)
            self.assertIn('limit must be an integer from 1 to 1000', str(e))
        self.assertEqual(1, len(self.t.host_b.list_migrations(
            limit=1)['migrations']))
        self.assertRefused('bad_request', self.t.host_b.list_migrations,
                           state=['granted'])

    def test_failure_report_moves_to_failed(self):
        mid, _ticket, _grant = self.t.migrate()
        out = self.t.host_a.record_receipt(mid, 'failed',
                                           reason='stream_tampered')
        self.assertEqual(models.FAILED, out['state'])

    def test_only_exposed_methods_are_callable(self):
        client = messaging.get_rpc_client(
            self.t.a.transport,
            messaging.Target(exchange=rpcapi.EXCHANGE, topic=self.t.a.topic),
            timeout=5)
        # fake:// re-raises the server's exception, RabbitMQ wraps it.
        self.assertRaises((messaging.RemoteError, dispatcher.NoSuchMethod),
                          client.call, {}, '_stores')


class TestRefusals(BrokerTestCase):

    def test_unknown_cloud(self):
        tok = self.seal(self.pki.rogue.credentials('broker-b'), 'cloud-b',
                        'forward_grant', {'migration_id': 'x'})
        answer = self.t.b.api().forward_grant(tok)
        self.assertEqual('unknown_cloud', answer['error'])

    def test_host_of_another_cloud_cannot_register(self):
        tok = self.seal(self.pki.a.credentials('host-a'), 'cloud-b',
                        'register_incoming',
                        {'migration_id': 'x', 'endpoint': '1.2.3.4:5'})
        self.assertEqual('unknown_cloud',
                         self.t.b.api().register_incoming(tok)['error'])

    def test_bad_envelope_signature(self):
        tok = self.seal(self.pki.b.credentials('host-b'), 'cloud-b',
                        'register_incoming',
                        {'migration_id': 'x', 'endpoint': '1.2.3.4:5'})
        head, body, sig = tok.split('.')
        forged = '.'.join((head, body, sig[:-4] + ('AAAA' if sig[-4:] !=
                                                   'AAAA' else 'BBBB')))
        answer = self.t.b.api().register_incoming(forged)
        self.assertEqual('bad_envelope', answer['error'])
        self.assertEqual({}, self.t.b.db.find_migration('x'))

    def test_envelope_for_another_method(self):
        tok = self.seal(self.pki.b.credentials('host-b'), 'cloud-b',
                        'record_receipt', {'migration_id': 'x',
                                           'endpoint': '1.2.3.4:5'})
        self.assertEqual('wrong_method',
                         self.t.b.api().register_incoming(tok)['error'])

    def test_replayed_request(self):
        tok = self.seal(self.pki.b.credentials('host-b'), 'cloud-b',
                        'register_incoming',
                        {'migration_id': 'r1', 'endpoint': '1.2.3.4:5'})
        self.assertNotIn('error', self.t.b.api().register_incoming(tok))
        self.assertEqual('replayed',
                         self.t.b.api().register_incoming(tok)['error'])

    def test_stale_envelope(self):
        tok = self.seal(self.pki.b.credentials('host-b'), 'cloud-b',
                        'register_incoming',
                        {'migration_id': 's1', 'endpoint': '1.2.3.4:5'},
                        now=time.time() - 3600)
        self.assertEqual('stale_envelope',
                         self.t.b.api().register_incoming(tok)['error'])

    def _authorized(self, user='op', project='proj-1'):
        mid = str(uuid.uuid4())
        self.t.host_b.register_incoming(mid, '127.0.0.1:3', {'memory': 1})
        ticket = self.t.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-b', 'cloud-b', user_id=user,
            project_id=project)['ticket']
        return mid, ticket

    def test_expired_ticket(self):
        mid, ticket = self._authorized()
        claims = tokens.unverified_claims(ticket)
        old = tickets.issue_ticket(
            self.pki.a.credentials('broker-a'), user_id='op',
            project_id='proj-1', roles=list(OPS),
            instance_uuid=brokers.INSTANCE, src_host='host-a',
            dst_host='host-b', dst_cloud='cloud-b', ttl=60,
            now=time.time() - 3600, jti=claims['jti'])
        self.assertRefused('token_expired', self.t.host_a.request_grant,
                           mid, old, {'memory': 1})
        self.assertEqual(models.FAILED,
                         self.t.a.db.get_migration(
                             mid, 'source')['state'])

    def test_ticket_of_another_migration(self):
        mid, _ticket = self._authorized()
        _other, other_ticket = self._authorized()
        self.assertRefused('ticket_mismatch', self.t.host_a.request_grant,
                           mid, other_ticket, {'memory': 1})

    def test_missing_role(self):
        self.t.keystone.grant('nobody', 'proj-1', 'reader')
        self.assertRefused(
            'missing_role', self.t.host_a.authorize_migration,
            str(uuid.uuid4()), brokers.INSTANCE, 'host-b', 'cloud-b',
            user_id='nobody', project_id='proj-1')

    def test_keystone_down_is_a_refusal(self):
        self.t.keystone.down = True
        self.assertRefused(
            'missing_role', self.t.host_a.authorize_migration,
            str(uuid.uuid4()), brokers.INSTANCE, 'host-b', 'cloud-b',
            user_id='op', project_id='proj-1')

    def test_destination_not_registered(self):
        mid = str(uuid.uuid4())
        ticket = self.t.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-b', 'cloud-b', user_id='op',
            project_id='proj-1')['ticket']
        self.assertRefused('not_registered', self.t.host_a.request_grant,
                           mid, ticket, {'memory': 1})

    def test_ticket_for_another_destination_host(self):
        mid = str(uuid.uuid4())
        self.t.host_b.register_incoming(mid, '127.0.0.1:4', {'memory': 1})
        ticket = self.t.host_a.authorize_migration(
            mid, brokers.INSTANCE, 'host-b2', 'cloud-b', user_id='op',
            project_id='proj-1')['ticket']
        self.assertRefused('ticket_mismatch', self.t.host_a.request_grant,
                           mid, ticket, {'memory': 1})

    def test_project_not_allowed_inbound(self):
        self.t.keystone.grant('op', 'proj-9', *OPS)
        mid, ticket = self._authorized(project='proj-9')
        self.assertRefused('inbound_policy', self.t.host_a.request_grant,
                           mid, ticket, {'memory': 1})

    def test_wrong_source_host(self):
        mid, ticket = self._authorized()
        other = self.t.a.host('host-a2')
        self.assertRefused('wrong_host', other.request_grant, mid, ticket,
                           {'memory': 1})

    def test_peer_broker_down(self):
        dead = rpcapi.BrokerAPI(self.t.b.transport, topic='nobody',
                                timeout=1)
        self.t.a.manager.peers['cloud-b'].client = dead
        mid, ticket = self._authorized()
        started = time.monotonic()
        self.assertRefused('peer_unavailable', self.t.host_a.request_grant,
                           mid, ticket, {'memory': 1})
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(models.FAILED,
                         self.t.a.db.get_migration(
                             mid, 'source')['state'])

    def test_flood_of_invalid_requests_does_not_starve_valid_ones(self):
        api = self.t.b.api()
        for i in range(60):
            tok = self.seal(self.pki.rogue.credentials('broker-b'),
                            'cloud-b', 'forward_grant',
                            {'migration_id': 'flood-%d' % i})
            self.assertIn('error', api.forward_grant(tok))
        _mid, _ticket, grant = self.t.migrate()
        self.assertTrue(grant)

    def test_restart_keeps_state_and_replay_protection(self):
        mid, ticket, _grant = self.t.migrate()
        # Restart cloud-b's broker on the same database.
        self.t.b.server.stop()
        self.t.b.server.wait()
        peers = self.t.b.manager.peers
        self.t.b.db.dispose()
        self.t.b.start(peers)
        self.assertEqual(models.GRANTED,
                         self.t.b.db.get_migration(
                             mid, 'destination')['state'])
        # The same ticket again, in a fresh envelope from cloud-a's broker.
        tok = self.seal(self.pki.a.credentials('broker-a'), 'cloud-b',
                        'forward_grant',
                        {'migration_id': mid, 'ticket': ticket,
                         'src_host': 'host-a',
                         'src_fingerprint': self.pki.fingerprint(
                             self.pki.a, 'host-a'),
                         'streams': {'memory': 1}})
        self.assertEqual('token_replayed',
                         self.t.b.api().forward_grant(tok)['error'])


class TestLimits(BrokerTestCase):

    b_limits = {'max_concurrent': 1, 'rate': 100}

    def test_over_concurrency_limit(self):
        self.t.migrate()
        self.assertRefused('over_concurrency_limit', self.t.migrate)

    def test_completed_migration_frees_its_slot(self):
        mid, _ticket, _grant = self.t.migrate()
        self.t.host_b.record_receipt(mid, 'aborted', reason='test')
        self.t.migrate()


class TestRateLimit(BrokerTestCase):

    b_limits = {'max_concurrent': 0, 'rate': 2}

    def test_over_rate_limit(self):
        self.t.migrate()
        self.t.migrate()
        self.assertRefused('over_rate_limit', self.t.migrate)


class TestGrantedStreams(testtools.TestCase):

    def test_nothing_in_common_refused(self):
        self.assertRaises(manager.Refused, manager._granted_streams,
                          {'disk': 1}, {'memory': 1})
