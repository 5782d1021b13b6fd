"""The ``keystone_role:`` oslo.policy check: roles as Keystone knows them now.

Registered under the ``oslo.policy.rule_checks`` entry point, so any
service's policy file can use it, for example nova's::

    "os_compute_api:os-migrate-server:migrate_live":
        "keystone_role:migration_operator or rule:context_is_admin"

Unlike ``role:``, which reads the roles frozen into the caller's token, the
check asks Keystone (through the ``[secmig_keystone]`` service user, cached
for ``cache_ttl`` seconds) for the caller's effective roles: direct, through
groups, inherited from the domain, implied. A revoked role stops working
within the TTL, not at the token's expiry.

Syntax: ``keystone_role:<role>`` or ``keystone_role:<role>@<scope>`` where
scope is ``project``, ``domain`` or ``system``. Without a scope, a
system-scoped caller is checked on the system, otherwise the target's
project (``target['project_id']``, the project that owns the resource),
else the caller's project, else the target's or caller's domain.
``@project`` and ``@domain`` use the same order within their kind;
``@domain`` also accepts the domain of the caller's project.

The check fails closed: a caller without a user id, a target without a
scope, Keystone unreachable or answering badly all return False (logged
with the reason); nothing is ever allowed for want of an answer.
"""

from oslo_log import log as logging
from oslo_policy import _checks

from secmig_nova.authz import keystone
from secmig_nova import conf as secmig_conf

LOG = logging.getLogger(__name__)

KIND = 'keystone_role'
AUTO = None
SCOPES = (keystone.PROJECT, keystone.DOMAIN, keystone.SYSTEM)


class NoSubject(Exception):
    """The credentials or target do not say whose roles on what to check."""


def _first(*values):
    for value in values:
        if value:
            return value
    return None


def subject(creds, target, scope_kind=AUTO):
    """``(user_id, Scope)`` whose roles a check looks at.

    :raises NoSubject: when the caller or the scope cannot be determined.
    """
    creds = creds or {}
    target = target or {}
    user_id = creds.get('user_id')
    if not user_id:
        raise NoSubject('the credentials carry no user_id')
    system = creds.get('system_scope') == keystone.SYSTEM_ALL
    if scope_kind == keystone.SYSTEM or (scope_kind is AUTO and system):
        return user_id, keystone.Scope.system()
    if scope_kind in (AUTO, keystone.PROJECT):
        project_id = _first(target.get('project_id'), creds.get('project_id'))
        if project_id:
            return user_id, keystone.Scope.project(project_id)
        if scope_kind == keystone.PROJECT:
            raise NoSubject('neither the target nor the credentials name a '
                            'project')
    domain_id = _first(target.get('domain_id'), creds.get('domain_id'),
                       creds.get('project_domain_id')
                       if scope_kind == keystone.DOMAIN else None)
    if domain_id:
        return user_id, keystone.Scope.domain(domain_id)
    raise NoSubject('neither the target nor the credentials name a project '
                    'or domain')


class KeystoneRoleCheck(_checks.Check):
    """``keystone_role:<role>[@project|@domain|@system]``."""

    def __init__(self, kind, match):
        super().__init__(kind, match)
        role, sep, scope = match.partition('@')
        self.role = role.strip()
        self.scope_kind = scope.strip().lower() if sep else AUTO
        self.valid = bool(self.role) and (self.scope_kind is AUTO
                                          or self.scope_kind in SCOPES)
        if not self.valid:
            LOG.error('Policy check %s:%s is malformed (expected '
                      'keystone_role:<role>[@%s]); it never passes',
                      kind, match, '|'.join(SCOPES))

    def __call__(self, target, creds, enforcer, current_rule=None):
        if not self.valid:
            return False
        try:
            user_id, scope = subject(creds, target, self.scope_kind)
        except (NoSubject, keystone.KeystoneError) as e:
            LOG.warning('%s refused for rule %s: %s', self, current_rule, e)
            return False
        try:
            roles = self.roles_of(user_id, scope, enforcer)
        except keystone.KeystoneError as e:
            LOG.error('%s refused for rule %s, user %s on %s: %s', self,
                      current_rule, user_id, scope, e)
            return False
        except Exception:
            LOG.exception('%s refused for rule %s, user %s on %s: '
                          'unexpected error', self, current_rule, user_id,
                          scope)
            return False
        allowed = self.role.lower() in {r.lower() for r in roles}
        LOG.debug('%s for rule %s, user %s on %s: %s', self, current_rule,
                  user_id, scope, 'passed' if allowed else 'not held')
        return allowed

    @staticmethod
    def roles_of(user_id, scope, enforcer):
        conf = getattr(enforcer, 'conf', None) or secmig_conf.CONF
        return keystone.get_client(conf).effective_roles(user_id, scope)


def _role_checks(check, rules, seen):
    """Yield the positive role checks of a rule tree (not under ``not``)."""
    if isinstance(check, (_checks.AndCheck, _checks.OrCheck)):
        for sub in check.rules:
            yield from _role_checks(sub, rules, seen)
    elif isinstance(check, _checks.RuleCheck):
        if check.match not in seen and check.match in rules:
            seen.add(check.match)
            yield from _role_checks(rules[check.match], rules, seen)
    elif isinstance(check, (KeystoneRoleCheck, _checks.RoleCheck)):
        yield check


def satisfied_roles(enforcer, rule, target, creds):
    """Names of the roles that satisfy role checks of ``rule`` for creds.

    After a policy decision allowed an action, this says which roles made
    it so (an authorization ticket carries them): every ``keystone_role:``
    check of the rule (following ``rule:`` references, ignoring negated
    checks) that passes, and every ``role:`` check matched by the token's
    roles. Keystone answers come from the same cache as the decision.
    """
    enforcer.load_rules()
    rules = enforcer.rules
    if rule not in rules:
        return []
    token_roles = {r.lower() for r in (creds or {}).get('roles') or ()}
    found = set()
    for check in _role_checks(rules[rule], rules, {rule}):
        if isinstance(check, KeystoneRoleCheck):
            if check(target, creds, enforcer, rule):
                found.add(check.role)
        elif '%(' not in check.match and check.match.lower() in token_roles:
            found.add(check.match)
    return sorted(found)
