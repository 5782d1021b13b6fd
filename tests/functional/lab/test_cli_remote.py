"""``secmig-migrate`` with real brokers: RabbitMQ, Keystone, two clouds.

The lab's clouds lab-a and lab-b each run ``secmig-broker`` as a process
on their own RabbitMQ vhost (tests/functional/fixtures/broker_process.py)
with the lab's broker certificates; the brokers ask the real Keystone for
the user's roles or validate the user's token. ``secmig-migrate`` runs
with ``[secmig_migrate] broker = remote``: no role file, no broker
certificate, the hosts' clients talk to the brokers over RabbitMQ.
"""

import json
import os
import shutil
import tempfile
import types

import oslo_messaging as messaging

from secmig_nova.broker.db import api as db_api
from secmig_nova.broker import rpcapi
from tests.fixtures import brokers as broker_fixtures
from tests.functional.fixtures import broker_process
from tests.functional.fixtures import rabbitmq
from tests.functional.lab import base


def _lab_cloud(the_lab, name):
    """The lab cloud ``lab-<name>`` as broker_process.BrokerProcess wants."""
    return types.SimpleNamespace(
        cloud_id='lab-%s' % name,
        hosts={'broker-%s' % name: the_lab.pki.broker_files(name)},
        ca=types.SimpleNamespace(ca_file=the_lab.pki.trust(name)['ca_file']))


# The brokers' deadline for their peer, and the command's for its brokers:
# longer, so a broker answers by itself (peer_unavailable) before the
# command gives up on it. Both generous for a busy machine.
PEER_TIMEOUT = 10
HOST_TIMEOUT = 30


class RemoteBrokersTest(base.LabTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.brokers = {}
        cls.transports = {}
        cls.root = tempfile.mkdtemp(prefix='smlabrq-')
        try:
            cls.rabbit = rabbitmq.get_server()
            cls.ks = broker_process.Keystone()
            conf = broker_fixtures.make_conf()
            clouds = {n: _lab_cloud(cls.lab, n) for n in 'ab'}
            for name, peer in (('b', 'a'), ('a', 'b')):
                cloud = clouds[name].cloud_id
                cls.transports[name] = messaging.get_rpc_transport(
                    conf, url=cls.rabbit.vhost(cloud))
                cls.brokers[name] = broker_process.BrokerProcess(
                    cls.root, name, clouds[name], clouds[peer], cls.rabbit,
                    cls.ks, rpc_timeout=PEER_TIMEOUT)
                cls.brokers[name].start(rpcapi.BrokerAPI(
                    cls.transports[name], timeout=5))
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for broker in cls.brokers.values():
            broker.stop()
        for transport in cls.transports.values():
            transport.cleanup()
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def migrate(self, src, dst, name, args=()):
        conf = self.lab.migrate_conf(
            src, dst, path=os.path.join(self.root, 'remote-%s-%s.conf'
                                        % (src.name, dst.name)),
            broker='remote',
            hosts={host.name: {'broker_transport_url': self.rabbit.vhost(
                'lab-%s' % host.name), 'broker_timeout': HOST_TIMEOUT}
                for host in (src, dst)})
        rc, summary, err = self.lab.migrate_cli(src, dst, name, args=args,
                                                conf=conf)
        self.attach('secmig-migrate-%s' % name, summary)
        self.attach('secmig-migrate-%s-stderr' % name, err[-6000:])
        for cloud, broker in self.brokers.items():
            self.attach('broker-%s-log' % cloud, broker.log_tail(6000))
        return rc, summary

    def record(self, cloud, migration_id, side):
        db = db_api.Database(self.brokers[cloud].db_url)
        try:
            return db.get_migration(migration_id, side), \
                db.receipts(migration_id)
        finally:
            db.dispose()

    def test_user_token_across_clouds(self):
        """The brokers validate the user's Keystone token; A -> B."""
        a, b = self.a, self.b
        self.boot(a, 'remote')
        mark = self.mark(b, 'remote')
        token = self.ks.server.token(self.ks.operator_name,
                                     project_id=self.ks.alpha)
        rc, summary = self.migrate(a, b, 'remote', args=['--os-token', token])
        self.assertEqual((0, 'completed'), (rc, summary['status']),
                         json.dumps(summary))
        self.assertTrue(summary['digests_agree'])
        for side in ('source', 'destination'):
            self.assertEqual(('completed', True),
                             (summary['results'][side]['status'],
                              summary['results'][side]['recorded']))
        self.assertRunsOn('remote', b, a)
        self.assertContinued('remote', a, b, mark)
        # Each cloud's own broker database has its side and both receipts.
        mid = summary['migration_id']
        for cloud, side in (('a', 'source'), ('b', 'destination')):
            record, receipts = self.record(cloud, mid, side)
            self.assertEqual('completed', record['state'])
            self.assertEqual(self.ks.alpha, record['project_id'])
            self.assertEqual(2, len(receipts))
        self.assertNoTunnelLeft()

    def test_user_without_the_roles_refused_by_keystone_roles(self):
        """A member of the project without the migration roles."""
        a, b = self.a, self.b
        self.boot(a, 'remote-member')
        mark = self.mark(b, 'remote-member')
        rc, summary = self.migrate(
            a, b, 'remote-member',
            args=['--os-user-id', self.ks.member,
                  '--os-project-id', self.ks.alpha])
        self.assertEqual((1, 'refused', 'source', 'missing_role'),
                         (rc, summary['status'], summary['side'],
                          summary['reason']), json.dumps(summary))
        self.assertStillOnSource('remote-member', a, b, mark)
        self.assertNoTunnelLeft()

    def test_source_broker_down(self):
        """No answer from lab-a's broker: refused, the guest stays on a."""
        a, b = self.a, self.b
        self.boot(a, 'remote-down')
        mark = self.mark(b, 'remote-down')
        self.brokers['a'].stop()
        self.addCleanup(self.brokers['a'].start, rpcapi.BrokerAPI(
            self.transports['a'], timeout=5))
        rc, summary = self.migrate(
            a, b, 'remote-down',
            args=['--os-user-id', self.ks.operator,
                  '--os-project-id', self.ks.alpha])
        self.assertEqual((1, 'refused', 'source'),
                         (rc, summary['status'], summary['side']),
                         json.dumps(summary))
        self.assertIn('broker', summary['reason'])
        self.assertStillOnSource('remote-down', a, b, mark)
        self.assertNoTunnelLeft()
