"""nova's own policy machinery with ``keystone_role:`` and a real Keystone.

nova (34, a test requirement) loads its enforcer from a policy file that
says::

    "os_compute_api:os-migrate-server:migrate_live":
        "keystone_role:migration_operator or rule:context_is_admin"

exactly as an operator would write it; oslo.policy finds the check through
the ``oslo.policy.rule_checks`` entry point, and the check reads the
``[secmig_keystone]`` options from nova's own configuration (cfg.CONF).
The decision is then taken by ``nova.policy.authorize`` with nova request
contexts, as the os-migrateLive API handler does (target: the instance's
project).
"""

import fixtures
from keystoneauth1 import loading as ks_loading
import nova.conf  # noqa: F401  (registers nova's options on cfg.CONF)
from nova import context as nova_context
from nova import exception as nova_exception
from nova import policy as nova_policy
from oslo_config import cfg
from oslo_config import fixture as config_fixture
import testtools

from secmig_nova.authz import keystone
from secmig_nova import conf as secmig_conf
from tests.functional.fixtures import keystone as ks_fixture

CONF = cfg.CONF
MIGRATE_LIVE = 'os_compute_api:os-migrate-server:migrate_live'
MIGRATE_LIVE_HOST = 'os_compute_api:os-migrate-server:migrate_live:host'
POLICY = """\
"%s": "keystone_role:%s or rule:context_is_admin"
""" % (MIGRATE_LIVE, ks_fixture.ROLE)


class NovaPolicyTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.ks = self.useFixture(ks_fixture.KeystoneFixture()).server
        self.lab = self.ks.lab
        self.assertIs(CONF, secmig_conf.CONF)
        self.conf = self.useFixture(config_fixture.Config(CONF))
        # As nova's own tests do: no config file, nova's defaults.
        CONF([], project='nova', default_config_files=[])
        group = 'secmig_keystone'
        # Plugin options are registered when the plugin is loaded; register
        # the password plugin's now so they can be set here.
        self.conf.register_opts(
            ks_loading.get_auth_plugin_conf_options('password'), group=group)
        for name, value in self.ks.service_options().items():
            self.conf.config(group=group, **{name: value})
        self.conf.config(group=group, cache_ttl=0)
        policy_file = self.useFixture(fixtures.TempDir()).join(
            'policy.yaml')
        with open(policy_file, 'w') as f:
            f.write(POLICY)
        nova_policy.reset()
        self.addCleanup(nova_policy.reset)
        self.addCleanup(keystone.reset_clients)
        nova_policy.init(policy_file=policy_file,
                         suppress_deprecation_warnings=True)
        self.log = self.useFixture(fixtures.FakeLogger(
            name='secmig_nova.authz'))

    def context(self, user, project=None, roles=('member',)):
        return nova_context.RequestContext(
            user_id=self.lab.users.get(user, user),
            project_id=project or self.lab.alpha, roles=list(roles))

    def authorize(self, context, project=None, action=MIGRATE_LIVE):
        return nova_policy.authorize(
            context, action, target={'project_id': project or
                                     self.lab.alpha})

    def assertDenied(self, context, project=None, action=MIGRATE_LIVE):
        self.assertRaises(nova_exception.PolicyNotAuthorized,
                          self.authorize, context, project, action)

    def test_rule_comes_from_the_policy_file(self):
        rule = nova_policy.get_enforcer().rules[MIGRATE_LIVE]
        self.assertIn('keystone_role:%s' % ks_fixture.ROLE, str(rule))

    def test_user_with_the_role_is_allowed(self):
        self.assertTrue(self.authorize(self.context('alice')))

    def test_role_through_group_and_inheritance(self):
        self.assertTrue(self.authorize(self.context('bob')))
        self.assertTrue(self.authorize(self.context('carol',
                                                    self.lab.beta),
                                       self.lab.beta))

    def test_user_without_the_role_is_denied(self):
        self.assertDenied(self.context('dave'))

    def test_role_claimed_in_the_token_is_not_enough(self):
        self.assertDenied(self.context('dave', roles=('member',
                                                      ks_fixture.ROLE)))

    def test_instance_of_another_project_is_denied(self):
        # alice holds the role on alpha only; the server is in beta.
        self.assertDenied(self.context('alice'), project=self.lab.beta)

    def test_context_is_admin_still_applies(self):
        self.assertTrue(self.authorize(self.context('dave',
                                                    roles=('admin',))))

    def test_keystone_unreachable_denies(self):
        url = 'http://127.0.0.1:%d/v3' % ks_fixture.refusing_port(self)
        self.conf.config(group='secmig_keystone', auth_url=url,
                         endpoint_override=url)
        keystone.reset_clients()
        self.assertDenied(self.context('alice'))
        self.assertIn('keystone_unavailable', self.log.output)
