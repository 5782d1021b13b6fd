"""secmig's policy rules, defaults in code, and the decision helper.

Exposed through the ``oslo.policy.policies`` entry point (namespace
``secmig_nova``) so ``oslopolicy-sample-generator`` writes
``etc/secmig-nova/policy.yaml.sample`` and operators override rules in the
broker's policy file. The defaults use the ``keystone_role:`` check: the
roles come from Keystone at decision time, not from the caller's token.
"""

from oslo_log import log as logging
from oslo_policy import policy

from secmig_nova.authz import checks

LOG = logging.getLogger(__name__)

ROLE_MIGRATION_OPERATOR = 'migration_operator'
ROLE_CROSS_CLOUD_OPERATOR = 'cross_cloud_operator'

ADMIN = 'secmig:admin'
MIGRATE_LIVE = 'secmig:migrate_live'
MIGRATE_LIVE_CROSS_CLOUD = 'secmig:migrate_live:cross_cloud'
RECEIPTS_READ = 'secmig:receipts:read'

_LIVE_MIGRATE_OP = [{'method': 'POST',
                     'path': '/servers/{server_id}/action (os-migrateLive)'}]

rules = [
    policy.RuleDefault(
        name=ADMIN,
        check_str='keystone_role:admin',
        description='A cloud administrator, for secmig: the caller holds '
                    'the admin role in Keystone on the target project (or '
                    'on the system, for a system-scoped caller).'),
    policy.DocumentedRuleDefault(
        name=MIGRATE_LIVE,
        check_str='keystone_role:%s or rule:%s'
                  % (ROLE_MIGRATION_OPERATOR, ADMIN),
        description='Have this cloud\'s broker issue an authorization '
                    'ticket for a secure live migration of a server of the '
                    'target project to another host of this cloud.',
        operations=_LIVE_MIGRATE_OP,
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=MIGRATE_LIVE_CROSS_CLOUD,
        check_str='(keystone_role:%s and keystone_role:%s) or rule:%s'
                  % (ROLE_MIGRATION_OPERATOR, ROLE_CROSS_CLOUD_OPERATOR,
                     ADMIN),
        description='Have this cloud\'s broker issue an authorization '
                    'ticket for a secure live migration of a server of the '
                    'target project to a host of another cloud; the ticket '
                    'is then also checked by the destination cloud.',
        operations=_LIVE_MIGRATE_OP,
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=RECEIPTS_READ,
        check_str='keystone_role:reader or rule:%s' % ADMIN,
        description='Read the signed receipts of the migrations of the '
                    'target project\'s servers.',
        operations=[{'method': 'GET',
                     'path': '/secmig/receipts/{migration_id}'}],
        scope_types=['project']),
]


def list_rules():
    return rules


def get_enforcer(conf, policy_file=None):
    """An oslo.policy enforcer with secmig's defaults registered."""
    enforcer = policy.Enforcer(conf, policy_file=policy_file)
    enforcer.register_defaults(list_rules())
    return enforcer


def authorize(enforcer, action, target, creds):
    """Decide ``action``; return the roles that satisfied it.

    :param creds: oslo.policy credentials (a dict or an oslo.context
        RequestContext), e.g.
        :meth:`~secmig_nova.authz.keystone.AuthenticationTicket.policy_creds`
        of the caller's validated token.
    :returns: sorted list of role names (what an authorization ticket
        carries in its ``roles`` claim).
    :raises oslo_policy.policy.PolicyNotAuthorized: refused (also when
        Keystone could not answer; the check logs why).
    :raises oslo_policy.policy.InvalidScope: wrong token scope.
    """
    if hasattr(creds, 'to_policy_values'):
        creds = creds.to_policy_values()
    enforcer.authorize(action, target, creds, do_raise=True)
    roles = checks.satisfied_roles(enforcer, action, target, creds)
    LOG.info('Policy %s allowed user %s on project %s by roles %s', action,
             creds.get('user_id'), target.get('project_id'),
             ', '.join(roles) or '(none)')
    return roles
