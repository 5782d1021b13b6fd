"""Authorization against a real Keystone (tests/functional/fixtures).

The Keystone of this test process is started once (module singleton) and
holds the identities listed in fixtures/keystone.py. secmig talks to it the
way it does in production: a ``[secmig_keystone]`` config file, the
keystoneauth1 password plugin with a system-scoped service user that has
only the reader role, and the ``keystone_role:`` check loaded by
oslo.policy from its entry point.
"""

import time
import uuid

import fixtures
from oslo_config import cfg
from oslo_policy import policy
import testtools

from secmig_nova.authz import keystone
from secmig_nova.authz import policies
from secmig_nova.conf import keystone as keystone_conf
from tests.functional.fixtures import keystone as ks_fixture

ROLE = ks_fixture.ROLE


class KeystoneAuthzTestBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.ks = self.useFixture(ks_fixture.KeystoneFixture()).server
        self.lab = self.ks.lab
        self.tmp = self.useFixture(fixtures.TempDir())
        self.addCleanup(keystone.reset_clients)
        self.log = self.useFixture(fixtures.FakeLogger(
            name='secmig_nova.authz'))

    def conf(self, url=None, **extra):
        """A ConfigOpts loaded from a ``[secmig_keystone]`` file."""
        path = self.ks.write_service_config(
            self.tmp.join('secmig-%s.conf' % uuid.uuid4().hex), url=url,
            **extra)
        conf = cfg.ConfigOpts()
        keystone_conf.register_opts(conf)
        conf([], default_config_files=[path])
        return conf

    def client(self, url=None, **extra):
        return keystone.KeystoneClient.from_conf(self.conf(url, **extra))

    def enforcer(self, url=None, **extra):
        return policies.get_enforcer(self.conf(url, **extra))

    def user(self, name):
        return self.lab.users[name]

    def allowed(self, enforcer, user, target, action=policies.MIGRATE_LIVE,
                **creds):
        creds.setdefault('project_id', target.get('project_id'))
        creds['user_id'] = user
        return enforcer.enforce(action, target, creds)

    def new_user(self):
        """A user of its own for a test that changes assignments."""
        name = 'u-%s' % uuid.uuid4().hex[:10]
        user_id = self.ks.create_user(name, self.lab.domain)
        self.ks.grant(self.lab.roles['member'], user_id=user_id,
                      project_id=self.lab.alpha)
        return user_id


class EffectiveRolesTest(KeystoneAuthzTestBase):
    """Each assignment path, allowed where it applies, not elsewhere."""

    def setUp(self):
        super().setUp()
        self.keystone = self.client(cache_ttl=0)

    def roles(self, name, scope):
        return self.keystone.effective_roles(self.user(name), scope)

    def test_direct_project_assignment(self):
        alpha = keystone.Scope.project(self.lab.alpha)
        beta = keystone.Scope.project(self.lab.beta)
        self.assertIn(ROLE, self.roles('alice', alpha))
        self.assertNotIn(ROLE, self.roles('alice', beta))
        self.assertNotIn(ROLE, self.roles('dave', alpha))

    def test_project_assignment_through_group(self):
        self.assertIn(ROLE, self.roles('bob',
                                       keystone.Scope.project(
                                           self.lab.alpha)))
        self.assertNotIn(ROLE, self.roles('bob',
                                          keystone.Scope.project(
                                              self.lab.beta)))

    def test_assignment_inherited_from_domain(self):
        for project in (self.lab.alpha, self.lab.beta):
            self.assertIn(ROLE, self.roles('carol',
                                           keystone.Scope.project(project)))
        # Inherited to the projects only, not held on the domain itself.
        self.assertNotIn(ROLE, self.roles('carol',
                                          keystone.Scope.domain(
                                              self.lab.domain)))

    def test_domain_assignment(self):
        domain = keystone.Scope.domain(self.lab.domain)
        self.assertIn(ROLE, self.roles('erin', domain))
        self.assertNotIn(ROLE, self.roles('alice', domain))
        # Not inherited: it does not reach the domain's projects.
        self.assertNotIn(ROLE, self.roles('erin', keystone.Scope.project(
            self.lab.alpha)))

    def test_system_assignment_direct_and_through_group(self):
        system = keystone.Scope.system()
        self.assertIn(ROLE, self.roles('frank', system))
        self.assertIn(ROLE, self.roles('gina', system))
        self.assertNotIn(ROLE, self.roles('alice', system))
        self.assertNotIn(ROLE, self.roles('erin', system))

    def test_implied_roles(self):
        # member implies reader in a bootstrapped Keystone.
        self.assertIn('reader', self.roles('dave', keystone.Scope.project(
            self.lab.alpha)))
        user = self.new_user()
        self.ks.grant(self.lab.roles['member'], user_id=user, system=True)
        self.assertEqual({'member', 'reader'},
                         self.keystone.system_roles(user))

    def test_unknown_user_has_no_role(self):
        self.assertEqual(frozenset(), self.keystone.project_roles(
            uuid.uuid4().hex, self.lab.alpha))
        self.assertEqual(frozenset(), self.keystone.system_roles(
            uuid.uuid4().hex))


class PolicyCheckTest(KeystoneAuthzTestBase):
    """secmig's rules through oslo.policy and the entry-point check."""

    def setUp(self):
        super().setUp()
        self.enf = self.enforcer()
        self.alpha = {'project_id': self.lab.alpha}
        self.beta = {'project_id': self.lab.beta}

    def test_direct(self):
        self.assertTrue(self.allowed(self.enf, self.user('alice'),
                                     self.alpha))
        self.assertFalse(self.allowed(self.enf, self.user('alice'),
                                      self.beta))

    def test_group(self):
        self.assertTrue(self.allowed(self.enf, self.user('bob'), self.alpha))
        self.assertFalse(self.allowed(self.enf, self.user('bob'),
                                      self.beta))

    def test_inherited_from_domain(self):
        self.assertTrue(self.allowed(self.enf, self.user('carol'),
                                     self.beta))
        self.assertFalse(self.allowed(self.enf, self.user('dave'),
                                      self.beta))

    def test_domain(self):
        rule = 'keystone_role:%s@domain' % ROLE
        self.enf.set_rules(policy.Rules.from_dict({'dom': rule}),
                           overwrite=False, use_conf=False)
        target = {'domain_id': self.lab.domain}
        self.assertTrue(self.enf.enforce('dom', target, {
            'user_id': self.user('erin'), 'domain_id': self.lab.domain}))
        self.assertFalse(self.enf.enforce('dom', target, {
            'user_id': self.user('carol'), 'domain_id': self.lab.domain}))

    def test_system(self):
        rule = 'keystone_role:%s' % ROLE
        self.enf.set_rules(policy.Rules.from_dict({'sys': rule}),
                           overwrite=False, use_conf=False)
        for name, expected in (('frank', True), ('gina', True),
                               ('alice', False)):
            self.assertEqual(expected, self.enf.enforce(
                'sys', self.alpha, {'user_id': self.user(name),
                                    'system_scope': 'all'}), name)

    def test_roles_in_the_token_are_not_trusted(self):
        self.assertFalse(self.allowed(self.enf, self.user('dave'),
                                      self.alpha, roles=[ROLE]))

    def test_cross_cloud_and_satisfied_roles(self):
        user = self.new_user()
        self.ks.grant(self.lab.roles[ROLE], user_id=user,
                      project_id=self.lab.alpha)
        enf = self.enforcer(cache_ttl=0)
        creds = {'user_id': user, 'project_id': self.lab.alpha}
        self.assertEqual([ROLE], policies.authorize(
            enf, policies.MIGRATE_LIVE, self.alpha, creds))
        self.assertRaises(policy.PolicyNotAuthorized, policies.authorize,
                          enf, policies.MIGRATE_LIVE_CROSS_CLOUD,
                          self.alpha, creds)
        self.ks.grant(self.lab.roles[ks_fixture.CROSS_CLOUD_ROLE],
                      user_id=user, project_id=self.lab.alpha)
        self.assertEqual(
            [ks_fixture.CROSS_CLOUD_ROLE, ROLE],
            policies.authorize(enf, policies.MIGRATE_LIVE_CROSS_CLOUD,
                               self.alpha, creds))

    def test_authenticated_caller_end_to_end(self):
        # Authentication ticket (the user's token) -> policy creds ->
        # decision with roles from Keystone.
        client = self.client()
        ticket = client.validate_token(self.ks.token(
            'bob', project_id=self.lab.alpha))
        keystone.set_client(self.enf.conf, client)
        self.assertEqual([ROLE], policies.authorize(
            self.enf, policies.MIGRATE_LIVE, self.alpha,
            ticket.policy_creds()))


class RevocationTest(KeystoneAuthzTestBase):
    """A revoked role stops working within the cache TTL."""

    TTL = 2

    def wait_past_ttl(self, cached_at):
        """Sleep until the answer cached before ``cached_at`` expired."""
        time.sleep(max(0.0, cached_at + self.TTL + 0.1 - time.monotonic()))

    def test_revoked_direct_role(self):
        user = self.new_user()
        role = self.lab.roles[ROLE]
        self.ks.grant(role, user_id=user, project_id=self.lab.alpha)
        enf = self.enforcer(cache_ttl=self.TTL)
        target = {'project_id': self.lab.alpha}
        # The answer is cached after ``before`` (it expires after
        # before + TTL) and before ``cached_at`` (expired by cached_at +
        # TTL), however long the call took.
        before = time.monotonic()
        self.assertTrue(self.allowed(enf, user, target))
        cached_at = time.monotonic()
        self.ks.revoke(role, user_id=user, project_id=self.lab.alpha)
        still = self.allowed(enf, user, target)
        if time.monotonic() < before + self.TTL:
            # Asked within the TTL: the cached answer stands (documented).
            # Known only if the call returned within it, on a busy machine.
            self.assertTrue(still)
        self.wait_past_ttl(cached_at)
        self.assertFalse(self.allowed(enf, user, target))

    def test_removed_from_group(self):
        user = self.new_user()
        self.ks.add_to_group(user, self.lab.operators_group)
        enf = self.enforcer(cache_ttl=self.TTL)
        target = {'project_id': self.lab.alpha}
        self.assertTrue(self.allowed(enf, user, target))
        cached_at = time.monotonic()
        self.ks.remove_from_group(user, self.lab.operators_group)
        self.wait_past_ttl(cached_at)
        self.assertFalse(self.allowed(enf, user, target))

    def test_revoked_system_role(self):
        user = self.new_user()
        role = self.lab.roles[ROLE]
        self.ks.grant(role, user_id=user, system=True)
        enf = self.enforcer(cache_ttl=self.TTL)
        enf.set_rules(policy.Rules.from_dict({
            'sys': 'keystone_role:%s' % ROLE}), overwrite=False,
            use_conf=False)
        creds = {'user_id': user, 'system_scope': 'all'}
        self.assertTrue(enf.enforce('sys', {}, creds))
        cached_at = time.monotonic()
        self.ks.revoke(role, user_id=user, system=True)
        self.wait_past_ttl(cached_at)
        self.assertFalse(enf.enforce('sys', {}, creds))


class KeystoneDownTest(KeystoneAuthzTestBase):
    """Keystone stopped: refused with the reason, never allowed."""

    def test_keystone_stopped(self):
        replica = self.ks.start_replica()
        self.addCleanup(replica.stop)
        conf = self.conf(url=replica.url, endpoint_override=replica.url,
                         cache_ttl=1)
        enf = policies.get_enforcer(conf)
        target = {'project_id': self.lab.alpha}
        alice = self.user('alice')
        self.assertTrue(self.allowed(enf, alice, target))
        cached_at = time.monotonic()
        replica.stop()
        time.sleep(max(0.0, cached_at + 1.1 - time.monotonic()))
        self.assertFalse(self.allowed(enf, alice, target))
        self.assertIn('keystone_unavailable: cannot reach Keystone',
                      self.log.output)
        e = self.assertRaises(keystone.KeystoneError,
                              keystone.get_client(conf).project_roles,
                              alice, self.lab.alpha)
        self.assertEqual(keystone.UNAVAILABLE, e.reason)
        e = self.assertRaises(keystone.KeystoneError,
                              keystone.get_client(conf).validate_token,
                              'gAAAAAsome-token')
        self.assertEqual(keystone.UNAVAILABLE, e.reason)

    def test_nothing_listening(self):
        url = 'http://127.0.0.1:%d/v3' % ks_fixture.refusing_port(self)
        enf = self.enforcer(url=url, endpoint_override=url)
        self.assertFalse(self.allowed(enf, self.user('alice'),
                                      {'project_id': self.lab.alpha}))
        self.assertIn('keystone_unavailable', self.log.output)

    def test_wrong_service_password(self):
        client = self.client(password='not-the-password')
        e = self.assertRaises(keystone.KeystoneError, client.project_roles,
                              self.user('alice'), self.lab.alpha)
        self.assertEqual(keystone.REFUSED, e.reason)

    def test_service_user_without_reader_role(self):
        # dave is a real user, but has no role on the system.
        client = self.client(username='dave',
                             user_domain_id=self.lab.domain,
                             system_scope='', project_id=self.lab.alpha)
        e = self.assertRaises(keystone.KeystoneError, client.project_roles,
                              self.user('alice'), self.lab.alpha)
        self.assertEqual(keystone.REFUSED, e.reason)


class TokenValidationTest(KeystoneAuthzTestBase):
    """The authentication ticket: the caller's Keystone token."""

    def setUp(self):
        super().setUp()
        self.keystone = self.client()

    def test_valid_project_token(self):
        ticket = self.keystone.validate_token(
            self.ks.token('alice', project_id=self.lab.alpha))
        self.assertEqual(self.user('alice'), ticket.user_id)
        self.assertEqual(self.lab.alpha, ticket.project_id)
        self.assertEqual(self.lab.domain, ticket.project_domain_id)
        self.assertIn(ROLE, ticket.roles)
        self.assertGreater(ticket.expires_at, time.time() + 600)

    def test_valid_system_token(self):
        ticket = self.keystone.validate_token(
            self.ks.token('frank', system=True))
        self.assertEqual('all', ticket.system_scope)

    def test_invalid_token(self):
        token = self.ks.token('alice', project_id=self.lab.alpha)
        for bad in ('gAAAAABnot-a-real-token', token[:-4] + 'AAAA'):
            e = self.assertRaises(keystone.KeystoneError,
                                  self.keystone.validate_token, bad)
            self.assertEqual(keystone.TOKEN_INVALID, e.reason)

    def test_revoked_token(self):
        token = self.ks.token('alice', project_id=self.lab.alpha)
        client = self.client(cache_ttl=0)
        client.validate_token(token)
        self.ks.admin.delete(self.ks.url + '/auth/tokens',
                             headers={'X-Subject-Token': token})
        e = self.assertRaises(keystone.KeystoneError, client.validate_token,
                              token)
        self.assertEqual(keystone.TOKEN_INVALID, e.reason)

    def test_expired_token(self):
        # A Keystone process issuing tokens that live 8 s (both clients
        # must validate it before it expires, on a busy machine too), on
        # the same database and keys: the shared one validates them.
        replica = self.ks.start_replica(token_expiration=8)
        self.addCleanup(replica.stop)
        token = self.ks.token('alice', project_id=self.lab.alpha,
                              url=replica.url)
        uncached = self.client(cache_ttl=0)
        cached = self.client(cache_ttl=60)
        ticket = cached.validate_token(token)
        uncached.validate_token(token)
        time.sleep(max(0.0, ticket.expires_at + 0.2 - time.time()))
        for client in (uncached, cached):
            e = self.assertRaises(keystone.KeystoneError,
                                  client.validate_token, token)
            self.assertEqual(keystone.TOKEN_INVALID, e.reason)
