"""Two clouds' brokers as real processes on RabbitMQ, with a real Keystone.

cloud-a and cloud-b each run ``secmig-broker`` (the console script's code,
as a subprocess) on their own RabbitMQ vhost with their own sqlite database;
hosts talk to them through BrokerAPI exactly as compute hosts do. Keystone
is the real one started by tests/functional/fixtures/keystone.py.
"""

import shutil
import tempfile
import time
import uuid

import oslo_messaging as messaging
import testtools

from secmig_nova.authz import tickets
from secmig_nova.authz import tokens
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker.db import models
from secmig_nova.broker import envelope
from secmig_nova.broker import rpcapi
from secmig_nova.trust import store
from tests.fixtures import brokers as broker_fixtures
from tests.fixtures import pki as pki_fixture
from tests.fixtures import receipts
from tests.functional.fixtures import broker_process
from tests.functional.fixtures import keystone as ks_fixture
from tests.functional.fixtures import mariadb
from tests.functional.fixtures import rabbitmq

BrokerProcess = broker_process.BrokerProcess
INSTANCE = broker_process.INSTANCE
# Host -> broker calls: longer than the brokers' own peer deadline, so a
# broker answers (or refuses) by itself before its host gives up.
API_TIMEOUT = 90


class BrokersOnRabbit(testtools.TestCase):
    """cloud-a and cloud-b broker processes; host clients in the test."""

    extra_peer_conf = ''
    project_limit = 2
    rpc_timeout = broker_process.RPC_TIMEOUT
    # cloud-b's database: its sqlite file, or 'mariadb' (a database on
    # the process's private MariaDB server).
    database = 'sqlite'

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pki = pki_fixture.get()
        cls.rabbit = rabbitmq.get_server()
        cls.ks = broker_process.Keystone()
        cls.root = tempfile.mkdtemp(prefix='smbrq-')
        cls.conf = broker_fixtures.make_conf()
        cls.transports = {
            c: messaging.get_rpc_transport(cls.conf,
                                           url=cls.rabbit.vhost(c))
            for c in ('cloud-a', 'cloud-b')}
        cls.a = BrokerProcess(cls.root, 'a', cls.pki.a, cls.pki.b,
                              cls.rabbit, cls.ks,
                              rpc_timeout=cls.rpc_timeout)
        cls.b = BrokerProcess(cls.root, 'b', cls.pki.b, cls.pki.a,
                              cls.rabbit, cls.ks, cls.extra_peer_conf,
                              cls.project_limit,
                              rpc_timeout=cls.rpc_timeout,
                              db_url=mariadb.get_server().database()
                              if cls.database == 'mariadb' else None)
        try:
            cls.b.start(cls.api('cloud-b'))
            cls.a.start(cls.api('cloud-a'))
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.a.stop()
        cls.b.stop()
        for transport in cls.transports.values():
            transport.cleanup()
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def api(cls, cloud, timeout=API_TIMEOUT):
        return rpcapi.BrokerAPI(cls.transports[cloud], timeout=timeout)

    def host(self, cloud, name):
        return rpcapi.HostClient(self.api(cloud),
                                 getattr(self.pki, cloud[-1]).credentials(
                                     name))

    def assertRefused(self, reason, func, *args, **kwargs):
        e = self.assertRaises(rpcapi.BrokerRefused, func, *args, **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e

    def token(self, project=None):
        return self.ks.server.token(self.ks.operator_name,
                                    project_id=project or self.ks.alpha)

    def register(self, mid=None, host=('cloud-b', 'host-b'),
                 endpoint='127.0.0.1:49400'):
        mid = mid or str(uuid.uuid4())
        self.host(*host).register_incoming(mid, endpoint, {'memory': 1},
                                           INSTANCE)
        return mid

    def authorize(self, mid, dst=('cloud-b', 'host-b'), project=None,
                  **kw):
        if 'user_id' not in kw and 'token' not in kw:
            kw['token'] = self.token(project)
        return self.host('cloud-a', 'host-a').authorize_migration(
            mid, INSTANCE, dst[1], dst[0], **kw)['ticket']

    def grant(self, mid, ticket):
        return self.host('cloud-a', 'host-a').request_grant(
            mid, ticket, {'memory': 1})['grant']


class TestBrokerFlows(BrokersOnRabbit):

    def test_cross_cloud_with_a_user_token(self):
        mid = self.register()
        ticket = self.authorize(mid)
        claims = tokens.unverified_claims(ticket)
        self.assertEqual('cloud-b', claims['aud'])
        self.assertEqual(self.ks.alpha, claims['project'])
        grant = tokens.verify_grant(self.grant(mid, ticket),
                                    store.TrustStore.load(
                                        'cloud-b', self.pki.b.ca.ca_file))
        self.assertEqual(self.pki.fingerprint(self.pki.b, 'host-b'),
                         grant.dst_fingerprint)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a'),
                         grant.src_fingerprint)
        b_db = db_api.Database(self.b.db_url)
        self.addCleanup(b_db.dispose)
        record = b_db.get_migration(mid, 'destination')
        self.assertEqual(models.GRANTED, record['state'])
        self.assertEqual(self.ks.operator, record['user_id'])

    def test_intra_cloud_with_a_service_context(self):
        mid = self.register(host=('cloud-a', 'host-a2'))
        ticket = self.authorize(mid, dst=('cloud-a', 'host-a2'),
                                user_id=self.ks.operator,
                                project_id=self.ks.alpha)
        grant = tokens.unverified_claims(self.grant(mid, ticket))
        self.assertEqual('cloud-a', grant['dst_cloud'])

    def test_receipts_recorded(self):
        mid = self.register()
        grant = tokens.verify_grant(
            self.grant(mid, self.authorize(mid)),
            store.TrustStore.load(**self.pki.b.trust()))
        conn = receipts.pair(grant, self.pki.a.credentials('host-a'),
                             self.pki.b.credentials('host-b'))
        out = self.host('cloud-b', 'host-b').record_receipt(
            mid, 'completed', [conn])
        self.assertEqual((2, models.COMPLETED),
                         (out['receipts_stored'], out['state']))

    def test_unknown_cloud(self):
        tok = envelope.seal(self.pki.rogue.credentials('broker-b'),
                            'cloud-b', 'forward_grant', {'x': 1})
        self.assertEqual('unknown_cloud',
                         self.api('cloud-b').forward_grant(tok)['error'])

    def test_bad_envelope_signature(self):
        tok = envelope.seal(self.pki.b.credentials('host-b'), 'cloud-b',
                            'register_incoming',
                            {'migration_id': 'bad', 'endpoint': '1.2.3.4:5'})
        head, body, sig = tok.split('.')
        sig = sig[:-4] + ('AAAA' if sig[-4:] != 'AAAA' else 'BBBB')
        self.assertEqual('bad_envelope', self.api('cloud-b').register_incoming(
            '.'.join((head, body, sig)))['error'])

    def test_replayed_request(self):
        tok = envelope.seal(self.pki.b.credentials('host-b'), 'cloud-b',
                            'register_incoming',
                            {'migration_id': str(uuid.uuid4()),
                             'endpoint': '1.2.3.4:5'})
        api = self.api('cloud-b')
        self.assertNotIn('error', api.register_incoming(tok))
        self.assertEqual('replayed', api.register_incoming(tok)['error'])

    def test_expired_ticket(self):
        mid = self.register()
        jti = tokens.unverified_claims(self.authorize(mid))['jti']
        old = tickets.issue_ticket(
            self.pki.a.credentials('broker-a'), user_id=self.ks.operator,
            project_id=self.ks.alpha, roles=[ks_fixture.ROLE],
            instance_uuid=INSTANCE, src_host='host-a', dst_host='host-b',
            dst_cloud='cloud-b', ttl=60, now=time.time() - 3600, jti=jti)
        self.assertRefused('token_expired', self.grant, mid, old)

    def test_missing_role(self):
        self.assertRefused('missing_role', self.authorize, str(uuid.uuid4()),
                           user_id=self.ks.member, project_id=self.ks.alpha)

    def test_invalid_user_token(self):
        self.assertRefused('keystone_token_invalid', self.authorize,
                           str(uuid.uuid4()), token='gAAAAA' + 'x' * 100)

    def test_over_project_limit(self):
        # project_max_concurrent = 2 at cloud-b; beta is used only here.
        for _ in range(2):
            mid = self.register()
            self.grant(mid, self.authorize(mid, project=self.ks.beta))
        mid = self.register()
        self.assertRefused('over_concurrency_limit', self.grant, mid,
                           self.authorize(mid, project=self.ks.beta))

    def test_destination_not_registered(self):
        mid = str(uuid.uuid4())
        self.assertRefused('not_registered', self.grant, mid,
                           self.authorize(mid))


class TestBrokerDownAndRestart(BrokersOnRabbit):

    # The deadline under test: short, so the down peer is found quickly.
    rpc_timeout = 8

    def test_peer_down_then_restarted_keeps_state_and_replay(self):
        mid = self.register()
        ticket = self.authorize(mid)
        self.grant(mid, ticket)
        # Peer broker down: a clear refusal after rpc_timeout, no hang.
        # broker-a's own answer (peer_unavailable) is the behaviour: had it
        # waited on, the host's call would end in its own timeout
        # (API_TIMEOUT, ten times rpc_timeout) as broker_unavailable.
        self.b.stop()
        mid2 = str(uuid.uuid4())
        ticket2 = self.authorize(mid2)
        self.assertRefused('peer_unavailable', self.grant, mid2, ticket2)
        # Restarted on the same database: state and replay store kept.
        self.b.start(self.api('cloud-b'))
        b_db = db_api.Database(self.b.db_url)
        self.addCleanup(b_db.dispose)
        self.assertEqual(models.GRANTED,
                         b_db.get_migration(mid, 'destination')['state'])
        tok = envelope.seal(
            self.pki.a.credentials('broker-a'), 'cloud-b', 'forward_grant',
            {'migration_id': mid, 'ticket': ticket, 'src_host': 'host-a',
             'src_fingerprint': self.pki.fingerprint(self.pki.a, 'host-a'),
             'streams': {'memory': 1}})
        self.assertEqual('token_replayed',
                         self.api('cloud-b').forward_grant(tok)['error'])
        # And it serves new migrations again.
        mid3 = self.register()
        self.assertTrue(self.grant(mid3, self.authorize(mid3)))


class TestTwoWorkers(BrokersOnRabbit):

    project_limit = 100

    def test_two_workers_share_topic_and_database(self):
        # Same cloud, topic and database (cloud-b.sqlite), its own log.
        second = BrokerProcess(self.root, 'b2', self.pki.b, self.pki.a,
                               self.rabbit, self.ks,
                               project_limit=self.project_limit)
        self.assertEqual(self.b.db_url, second.db_url)
        second.start(self.api('cloud-b'))
        self.addCleanup(second.stop)
        mids = []
        for _ in range(12):
            mid = self.register()
            self.grant(mid, self.authorize(mid))
            mids.append(mid)
        # Each flow is two requests to cloud-b (register, grant); RabbitMQ
        # hands them to the two workers in turn. Count both kinds.
        logs = (self.b.log(), second.log())
        per_worker = [
            sum(('Migration %s granted' % mid in log) +
                ('Migration %s: destination' % mid in log) for mid in mids)
            for log in logs]
        self.assertEqual(24, sum(per_worker), per_worker)
        self.assertTrue(all(per_worker), 'one worker served all: %s'
                        % per_worker)
