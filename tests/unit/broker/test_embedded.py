"""Tests of secmig_nova/broker/embedded.py: both clouds' brokers in-process.

The real flow of ``secmig-migrate``'s embedded brokers over their
``fake://`` transport with the test PKI: the destination host registers,
the source host is authorized from a role file and gets cloud-b's grant.
Every refusal asserts its reason.
"""

import json
import os
import shutil
import stat
import tempfile
from unittest import mock
import uuid

from oslo_config import cfg
from oslo_messaging import conffixture
import testtools

from secmig_nova.authz import keystone
from secmig_nova.authz import rolefile
from secmig_nova.authz import tokens
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker.db import models
from secmig_nova.broker import embedded
from secmig_nova.broker import rpcapi
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store as trust_store
from tests.fixtures import pki as pki_fixture

INSTANCE = '6a1f5d7e-0000-4000-8000-000000000001'
OPS = ['migration_operator', 'cross_cloud_operator']
ROLES = {'users': {
    'op': {'projects': {'p1': OPS}},
    'local-op': {'projects': {'p1': ['migration_operator']}},
}}


class EmbeddedTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.dir = tempfile.mkdtemp(prefix='smeb-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.state_dir = os.path.join(self.dir, 'state')
        # oslo.messaging's transports read options it registers on the
        # global configuration only; the fixture registers them here.
        self.conf = cfg.ConfigOpts()
        self.useFixture(conffixture.ConfFixture(self.conf))
        self.conf([])
        self.stores = {
            'cloud-a': trust_store.TrustStore.load('cloud-a',
                                                   self.pki.a.ca.ca_file),
            'cloud-b': trust_store.TrustStore.load('cloud-b',
                                                   self.pki.b.ca.ca_file)}
        path = os.path.join(self.dir, 'roles.json')
        with open(path, 'w') as f:
            json.dump(ROLES, f)
        os.chmod(path, 0o600)
        self.roles = rolefile.RoleFile.load(path)

    def clouds(self, a=('cloud-a', 'broker-a'), b=('cloud-b', 'broker-b')):
        """``{cloud_id: (store, cert, key)}``; (cloud, credential name)."""
        result = {}
        for cloud_id, (pki_cloud, name) in (('cloud-a', a), ('cloud-b', b)):
            cloud = {'cloud-a': self.pki.a, 'cloud-b': self.pki.b,
                     'rogue': self.pki.rogue}[pki_cloud]
            cert, key = cloud.hosts[name]
            result[cloud_id] = (self.stores[cloud_id], cert, key)
        return result

    def start(self, clouds=None):
        brokers = embedded.EmbeddedBrokers(
            self.conf, clouds or self.clouds(), self.roles, self.state_dir,
            timeout=10)
        self.addCleanup(brokers.stop)
        return brokers

    def assertRefused(self, reason, func, *args, **kwargs):
        e = self.assertRaises(rpcapi.BrokerRefused, func, *args, **kwargs)
        self.assertEqual(reason, e.reason, str(e))
        return e


class TestFlow(EmbeddedTestCase):

    def setUp(self):
        super().setUp()
        self.brokers = self.start()
        self.host_a = self.brokers.host_client(
            'cloud-a', self.pki.a.credentials('host-a'))
        self.host_b = self.brokers.host_client(
            'cloud-b', self.pki.b.credentials('host-b'))
        self.mid = str(uuid.uuid4())

    def register(self):
        self.host_b.register_incoming(self.mid, '127.0.0.1:49400',
                                      {'memory': 1}, INSTANCE)

    def authorize(self, user_id='op', project_id='p1', token=None):
        return self.host_a.authorize_migration(
            self.mid, INSTANCE, 'host-b', 'cloud-b', token=token,
            user_id=user_id, project_id=project_id)

    def test_cross_cloud_grant(self):
        self.register()
        ticket = self.authorize()['ticket']
        answer = self.host_a.request_grant(self.mid, ticket, {'memory': 1})
        grant = tokens.verify_grant(answer['grant'], self.stores['cloud-b'])
        self.assertEqual(self.mid, grant.migration_id)
        self.assertEqual('cloud-a', grant.src_cloud)
        self.assertEqual('cloud-b', grant.dst_cloud)
        self.assertEqual(self.pki.fingerprint(self.pki.a, 'host-a'),
                         grant.src_fingerprint)
        self.assertEqual(self.pki.fingerprint(self.pki.b, 'host-b'),
                         grant.dst_fingerprint)
        self.assertEqual('127.0.0.1:49400', grant.dst_endpoint)
        self.assertEqual({'memory': 1}, grant.streams)
        # Signed by cloud-b's broker, so cloud-a's CA does not vouch for it.
        e = self.assertRaises(trust_errors.TrustError, tokens.verify_grant,
                              answer['grant'], self.stores['cloud-a'])
        self.assertEqual('certificate_untrusted', e.reason)

    def test_audit_databases_in_state_dir(self):
        self.register()
        ticket = self.authorize()['ticket']
        self.host_a.request_grant(self.mid, ticket, {'memory': 1})
        for cloud_id in ('cloud-a', 'cloud-b'):
            self.assertTrue(os.path.isfile(os.path.join(
                self.state_dir, '%s.sqlite' % cloud_id)))
        self.assertEqual(0o700, stat.S_IMODE(os.stat(self.state_dir)
                                             .st_mode))
        a = self.brokers.databases['cloud-a'].get_migration(self.mid,
                                                            'source')
        b = self.brokers.databases['cloud-b'].get_migration(self.mid,
                                                            'destination')
        self.assertEqual((models.GRANTED, models.GRANTED),
                         (a['state'], b['state']))
        self.assertEqual(('op', 'p1'), (a['user_id'], a['project_id']))
        self.assertEqual('p1', b['project_id'])

    def test_ticket_names_the_roles(self):
        self.register()
        answer = self.authorize()
        self.assertEqual(sorted(OPS), sorted(answer['roles']))

    def test_same_cloud_needs_only_migration_operator(self):
        self.brokers.host_client(
            'cloud-a', self.pki.a.credentials('host-a2')).register_incoming(
                self.mid, '127.0.0.1:49401', {'memory': 1}, INSTANCE)
        ticket = self.host_a.authorize_migration(
            self.mid, INSTANCE, 'host-a2', 'cloud-a', user_id='local-op',
            project_id='p1')['ticket']
        answer = self.host_a.request_grant(self.mid, ticket, {'memory': 1})
        grant = tokens.verify_grant(answer['grant'], self.stores['cloud-a'])
        self.assertEqual('cloud-a', grant.dst_cloud)

    def test_user_without_roles(self):
        self.register()
        self.assertRefused('missing_role', self.authorize, user_id='nobody')

    def test_user_without_roles_on_that_project(self):
        self.register()
        self.assertRefused('missing_role', self.authorize, project_id='p9')

    def test_cross_cloud_needs_cross_cloud_operator(self):
        self.register()
        e = self.assertRefused('missing_role', self.authorize,
                               user_id='local-op')
        self.assertIn('local-op', str(e))

    def test_tokens_are_refused(self):
        self.register()
        e = self.assertRefused(keystone.TOKEN_INVALID, self.authorize,
                               user_id=None, project_id=None,
                               token='gAAAAA-a-keystone-token')
        self.assertIn('role file', str(e))

    def test_no_grant_without_ticket(self):
        self.register()
        self.assertRefused('not_authorized', self.host_a.request_grant,
                           self.mid, 'no-ticket', {'memory': 1})

    def test_host_of_another_cloud_is_refused(self):
        # host-b's certificate is not one cloud-a's broker trusts.
        intruder = self.brokers.host_client(
            'cloud-a', self.pki.b.credentials('host-b'))
        e = self.assertRaises(rpcapi.BrokerRefused,
                              intruder.authorize_migration, self.mid,
                              INSTANCE, 'host-b', 'cloud-b', user_id='op',
                              project_id='p1')
        self.assertNotEqual('missing_role', e.reason)
        self.assertIsNone(self._migration('cloud-a', 'source'))

    def _migration(self, cloud_id, side):
        try:
            return self.brokers.databases[cloud_id].get_migration(self.mid,
                                                                  side)
        except db_api.NotFound:
            return None

    def test_stop(self):
        self.brokers.stop()
        self.assertEqual([], self.brokers.servers)
        self.assertEqual({}, self.brokers.databases)
        # Idempotent: the cleanup calls it again.
        self.brokers.stop()


class TestConstruction(EmbeddedTestCase):

    def assertStartRefused(self, clouds, *fragments):
        e = self.assertRaises(embedded.EmbeddedBrokerError,
                              embedded.EmbeddedBrokers, self.conf, clouds,
                              self.roles, self.state_dir, timeout=10)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        return e

    def test_broker_certificate_of_another_cloud(self):
        # cloud-b's broker certificate for cloud-a: cloud-a's CA refuses.
        self.assertStartRefused(self.clouds(a=('cloud-b', 'broker-b')),
                                'of cloud cloud-a', 'certificate_untrusted')

    def test_broker_certificate_for_the_wrong_cloud_id(self):
        # A valid cloud-b broker certificate and store, but configured as
        # cloud-a's broker.
        clouds = self.clouds()
        cert, key = self.pki.b.hosts['broker-b']
        clouds['cloud-a'] = (self.stores['cloud-b'], cert, key)
        self.assertStartRefused(
            clouds, 'is urn:secmig:cloud-b:broker:broker-b, not a broker of '
            'cloud cloud-a')

    def test_host_certificate_as_broker_certificate(self):
        self.assertStartRefused(self.clouds(b=('cloud-b', 'host-b')),
                                'of cloud cloud-b', 'wrong_role')

    def test_untrusted_broker_certificate(self):
        self.assertStartRefused(self.clouds(b=('rogue', 'broker-b')),
                                'of cloud cloud-b', 'certificate_untrusted')

    def test_missing_broker_certificate(self):
        clouds = self.clouds()
        clouds['cloud-b'] = (self.stores['cloud-b'], None, None)
        self.assertStartRefused(clouds, 'broker_cert_file')

    def test_unreadable_broker_certificate(self):
        clouds = self.clouds()
        clouds['cloud-b'] = (self.stores['cloud-b'],
                             os.path.join(self.dir, 'none.crt'),
                             os.path.join(self.dir, 'none.key'))
        self.assertStartRefused(clouds, 'none.crt')

    def test_started_brokers_are_stopped_on_failure(self):
        started = []
        real = embedded.service.rpc_server

        def rpc_server(*args, **kwargs):
            server = real(*args, **kwargs)
            server.stop = mock.Mock(wraps=server.stop)
            server.wait = mock.Mock(wraps=server.wait)
            started.append(server)
            return server

        with mock.patch.object(embedded.service, 'rpc_server', rpc_server):
            # cloud-a starts, then cloud-b's host certificate is refused.
            self.assertStartRefused(self.clouds(b=('cloud-b', 'host-b')))
        self.assertEqual(1, len(started))
        started[0].stop.assert_called_once_with()
        started[0].wait.assert_called_once_with()

    def test_the_same_topics_again_after_stop(self):
        first = self.start()
        first.stop()
        second = self.start()
        mid = str(uuid.uuid4())
        second.host_client('cloud-b', self.pki.b.credentials(
            'host-b')).register_incoming(mid, '127.0.0.1:49400',
                                         {'memory': 1}, INSTANCE)
        self.assertEqual(models.REQUESTED, second.databases[
            'cloud-b'].get_migration(mid, 'destination')['state'])


class TestRoleFileErrors(testtools.TestCase):

    def test_malformed_role_file(self):
        d = tempfile.mkdtemp(prefix='smeb-')
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, 'roles.json')
        with open(path, 'w') as f:
            json.dump({'users': {'op': {'projects': {'p1': 'admin'}}}}, f)
        os.chmod(path, 0o600)
        e = self.assertRaises(rolefile.RoleFileError, rolefile.RoleFile.load,
                              path)
        self.assertEqual(rolefile.ROLE_FILE_INVALID, e.reason)
        self.assertIn('users.op.projects.p1', str(e))
