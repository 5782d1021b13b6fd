"""Unit tests for the keystone_role: policy check and secmig's policies.

The Keystone client is a fake set for the enforcer's configuration; the
functional tests run the same check against a real Keystone.
"""

import os
import subprocess
import sys

import fixtures
from oslo_config import cfg
from oslo_context import context
from oslo_policy import _checks
from oslo_policy import _parser
from oslo_policy import policy
import testtools

from secmig_nova.authz import checks
from secmig_nova.authz import keystone
from secmig_nova.authz import policies
from secmig_nova.conf import keystone as keystone_conf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
POLICY_DIR = os.path.join(ROOT, 'etc', 'secmig-nova')


class FakeClient:
    """Roles by (user, scope); raises ``error`` when set."""

    def __init__(self, roles=None, error=None):
        self.roles = roles or {}
        self.error = error
        self.asked = []

    def effective_roles(self, user_id, scope):
        self.asked.append((user_id, str(scope)))
        if self.error:
            raise self.error
        return frozenset(self.roles.get((user_id, str(scope)), ()))


class CheckTestBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = cfg.ConfigOpts()
        keystone_conf.register_opts(self.conf)
        self.conf([], default_config_files=[])
        self.enforcer = policies.get_enforcer(self.conf)
        self.client = FakeClient({
            ('alice', 'project:p1'): {'migration_operator', 'reader'},
            ('sam', 'system:all'): {'migration_operator'},
            ('dora', 'domain:d1'): {'migration_operator'},
            ('xena', 'project:p1'): {'migration_operator',
                                     'cross_cloud_operator'},
            ('root', 'project:p1'): {'admin'},
        })
        keystone.set_client(self.conf, self.client)
        self.addCleanup(keystone.reset_clients)
        self.log = self.useFixture(fixtures.FakeLogger(
            name='secmig_nova.authz.checks'))

    def check(self, match, target, creds):
        return checks.KeystoneRoleCheck('keystone_role', match)(
            target, creds, self.enforcer, 'test-rule')


class KeystoneRoleCheckTest(CheckTestBase):

    def test_registered_through_entry_point(self):
        parsed = _parser.parse_rule('keystone_role:migration_operator or '
                                    'role:admin')
        self.assertIsInstance(parsed.rules[0], checks.KeystoneRoleCheck)
        self.assertEqual('migration_operator', parsed.rules[0].role)
        self.assertIn('keystone_role', _checks.get_extensions())

    def test_role_held_on_target_project(self):
        creds = {'user_id': 'alice', 'project_id': 'p1'}
        self.assertTrue(self.check('migration_operator',
                                   {'project_id': 'p1'}, creds))
        self.assertTrue(self.check('MIGRATION_OPERATOR',
                                   {'project_id': 'p1'}, creds))
        self.assertFalse(self.check('admin', {'project_id': 'p1'}, creds))
        self.assertEqual([('alice', 'project:p1')] * 3, self.client.asked)

    def test_target_project_wins_over_callers_project(self):
        # Scoped to p1 where she holds the role, but the server is in p2.
        creds = {'user_id': 'alice', 'project_id': 'p1'}
        self.assertFalse(self.check('migration_operator',
                                    {'project_id': 'p2'}, creds))
        self.assertEqual([('alice', 'project:p2')], self.client.asked)

    def test_callers_project_without_target(self):
        self.assertTrue(self.check('migration_operator', {},
                                   {'user_id': 'alice',
                                    'project_id': 'p1'}))

    def test_token_roles_are_not_trusted(self):
        creds = {'user_id': 'bob', 'project_id': 'p1',
                 'roles': ['migration_operator', 'admin']}
        self.assertFalse(self.check('migration_operator',
                                    {'project_id': 'p1'}, creds))

    def test_system_scoped_caller(self):
        creds = {'user_id': 'sam', 'system_scope': 'all'}
        self.assertTrue(self.check('migration_operator',
                                   {'project_id': 'p1'}, creds))
        self.assertEqual([('sam', 'system:all')], self.client.asked)
        self.assertFalse(self.check('migration_operator',
                                    {'project_id': 'p1'},
                                    {'user_id': 'sam', 'project_id': 'p1'}))

    def test_explicit_scopes(self):
        self.assertTrue(self.check('migration_operator@system', {},
                                   {'user_id': 'sam', 'project_id': 'p1'}))
        self.assertTrue(self.check('migration_operator@domain',
                                   {'project_id': 'p1'},
                                   {'user_id': 'dora', 'project_id': 'p1',
                                    'project_domain_id': 'd1'}))
        self.assertTrue(self.check('migration_operator@project',
                                   {'project_id': 'p1'},
                                   {'user_id': 'alice',
                                    'system_scope': 'all'}))
        self.assertTrue(self.check('migration_operator', {},
                                   {'user_id': 'dora', 'domain_id': 'd1'}))

    def test_no_subject_is_refused(self):
        for target, creds in (({'project_id': 'p1'}, {}),
                              ({'project_id': 'p1'}, {'user_id': None}),
                              ({}, {'user_id': 'alice'}),
                              ({'project_id': 'a/b'}, {'user_id': 'alice'})):
            self.assertFalse(self.check('migration_operator', target,
                                        creds))
        self.assertFalse(self.check('migration_operator@project', {},
                                    {'user_id': 'dora', 'domain_id': 'd1'}))
        self.assertEqual([], self.client.asked)
        self.assertIn('refused', self.log.output)

    def test_malformed_match_never_passes(self):
        for match in ('', '@project', 'migration_operator@galaxy'):
            check = checks.KeystoneRoleCheck('keystone_role', match)
            self.assertFalse(check.valid)
            self.assertFalse(check({'project_id': 'p1'},
                                   {'user_id': 'alice'}, self.enforcer))

    def test_keystone_error_refuses_with_reason(self):
        self.client.error = keystone.KeystoneError(
            keystone.UNAVAILABLE, 'cannot reach Keystone: refused')
        self.assertFalse(self.check('migration_operator',
                                    {'project_id': 'p1'},
                                    {'user_id': 'alice'}))
        self.assertIn('keystone_unavailable: cannot reach Keystone',
                      self.log.output)

    def test_unexpected_error_refuses(self):
        self.client.error = RuntimeError('boom')
        self.assertFalse(self.check('migration_operator',
                                    {'project_id': 'p1'},
                                    {'user_id': 'alice'}))
        self.assertIn('unexpected error', self.log.output)

    def test_misconfigured_keystone_refuses(self):
        keystone.reset_clients()
        self.assertFalse(self.check('migration_operator',
                                    {'project_id': 'p1'},
                                    {'user_id': 'alice'}))
        self.assertIn('keystone_misconfigured', self.log.output)


class PoliciesTest(CheckTestBase):

    def test_rules_are_documented(self):
        names = {r.name for r in policies.list_rules()}
        self.assertLessEqual({policies.MIGRATE_LIVE,
                              policies.MIGRATE_LIVE_CROSS_CLOUD,
                              policies.RECEIPTS_READ}, names)
        for rule in policies.list_rules():
            if rule.name != policies.ADMIN:
                self.assertIsInstance(rule, policy.DocumentedRuleDefault)
                self.assertEqual(['project'], rule.scope_types)

    def test_policy_sample_is_current(self):
        out = self.useFixture(fixtures.TempDir()).join('policy.yaml')
        subprocess.run(
            [sys.executable, '-c', 'from oslo_policy.generator import '
             'generate_sample; generate_sample()', '--config-file',
             os.path.join(POLICY_DIR, 'secmig-nova-policy-generator.conf'),
             '--output-file', out],
            check=True, cwd=ROOT, capture_output=True)
        with open(out) as f:
            generated = f.read()
        with open(os.path.join(POLICY_DIR, 'policy.yaml.sample')) as f:
            self.assertEqual(f.read(), generated,
                             'etc/secmig-nova/policy.yaml.sample is stale: '
                             'run oslopolicy-sample-generator --config-file '
                             'etc/secmig-nova/'
                             'secmig-nova-policy-generator.conf')

    def test_entry_point_lists_the_rules(self):
        from importlib import metadata
        (ep,) = metadata.entry_points(group='oslo.policy.policies',
                                      name='secmig_nova')
        self.assertIs(policies.list_rules, ep.load())

    def creds(self, user):
        return {'user_id': user, 'project_id': 'p1', 'roles': ['member']}

    def test_migrate_live(self):
        target = {'project_id': 'p1'}
        self.assertEqual(['migration_operator'], policies.authorize(
            self.enforcer, policies.MIGRATE_LIVE, target,
            self.creds('alice')))
        self.assertEqual(['admin'], policies.authorize(
            self.enforcer, policies.MIGRATE_LIVE, target,
            self.creds('root')))
        self.assertRaises(policy.PolicyNotAuthorized, policies.authorize,
                          self.enforcer, policies.MIGRATE_LIVE, target,
                          self.creds('bob'))

    def test_request_context_as_creds(self):
        ctx = context.RequestContext(user_id='alice', project_id='p1',
                                     roles=['member'])
        self.assertEqual(['migration_operator'], policies.authorize(
            self.enforcer, policies.MIGRATE_LIVE, {'project_id': 'p1'},
            ctx))

    def test_cross_cloud_needs_both_roles(self):
        target = {'project_id': 'p1'}
        self.assertRaises(policy.PolicyNotAuthorized, policies.authorize,
                          self.enforcer, policies.MIGRATE_LIVE_CROSS_CLOUD,
                          target, self.creds('alice'))
        self.assertEqual(
            ['cross_cloud_operator', 'migration_operator'],
            policies.authorize(self.enforcer,
                               policies.MIGRATE_LIVE_CROSS_CLOUD, target,
                               self.creds('xena')))

    def test_receipts_read(self):
        self.assertEqual(['reader'], policies.authorize(
            self.enforcer, policies.RECEIPTS_READ, {'project_id': 'p1'},
            self.creds('alice')))

    def test_keystone_down_denies(self):
        self.client.error = keystone.KeystoneError(keystone.SERVER_ERROR,
                                                   'HTTP 503')
        self.assertRaises(policy.PolicyNotAuthorized, policies.authorize,
                          self.enforcer, policies.MIGRATE_LIVE,
                          {'project_id': 'p1'}, self.creds('alice'))
        self.assertIn('keystone_server_error', self.log.output)

    def test_satisfied_roles_follow_rules_and_skip_negations(self):
        self.enforcer.set_rules(policy.Rules.from_dict({
            'base': 'role:member or keystone_role:reader',
            'r': 'rule:base and not keystone_role:admin and '
                 '(keystone_role:migration_operator or role:%(x)s)',
        }), overwrite=False, use_conf=False)
        roles = checks.satisfied_roles(self.enforcer, 'r',
                                       {'project_id': 'p1'},
                                       self.creds('alice'))
        self.assertEqual(['member', 'migration_operator', 'reader'], roles)
        self.assertEqual([], checks.satisfied_roles(
            self.enforcer, 'no-such-rule', {}, self.creds('alice')))
