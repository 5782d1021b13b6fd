"""The ``[secmig_keystone]`` group: how secmig asks Keystone about roles.

The standard keystoneauth1 session, auth plugin and adapter options (the
service user secmig authenticates as, and where Keystone is), plus the
role cache. The service user needs to list role assignments and validate
tokens: the ``reader`` role on the system (``system_scope = all``) is enough
with Keystone's default policies.
"""

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

GROUP_NAME = 'secmig_keystone'
DEFAULT_SERVICE_TYPE = 'identity'
DEFAULT_TIMEOUT = 5

# The identity API version is something the code knows, not the operator.
_ADAPTER_VERSION_OPTS = ('version', 'min_version', 'max_version')

keystone_group = cfg.OptGroup(
    GROUP_NAME,
    title='Keystone role lookup for secmig authorization',
    help="""
Credentials of the service user secmig authenticates to Keystone as, and the
cache of role assignments. Authorization decisions (the ``keystone_role:``
policy check, authorization tickets) pull the caller's effective roles from
Keystone rather than trusting the roles in the caller's token, so a revoked
role stops working within ``cache_ttl`` seconds. Keystone unreachable, an
error answer or a malformed answer refuses the request (fail closed).
""")

cache_opts = [
    cfg.IntOpt('cache_ttl',
               default=30,
               min=0,
               help="""
Seconds an answer from Keystone (a user's effective roles on a project, a
domain or the system; a validated token) is reused. This bounds how long a
revoked role or token keeps working. 0 disables the cache: every decision
asks Keystone.
"""),
    cfg.IntOpt('cache_size',
               default=4096,
               min=1,
               help="""
Most answers kept in the cache of each process; the least recently used one
is dropped first.
"""),
]


def _session_opts():
    opts = ks_loading.get_session_conf_options()
    # A hanging Keystone must refuse promptly rather than block an API
    # worker; keystoneauth1 has no timeout by default.
    cfg.set_defaults(opts, timeout=DEFAULT_TIMEOUT)
    return opts


def _adapter_opts():
    opts = [o for o in ks_loading.get_adapter_conf_options(
        include_deprecated=False) if o.dest not in _ADAPTER_VERSION_OPTS]
    cfg.set_defaults(opts, valid_interfaces=['internal', 'public'],
                     service_type=DEFAULT_SERVICE_TYPE)
    return opts


def _dummy_opt(name):
    # Present so keystoneauth1's adapter loading finds it, but not settable.
    return cfg.Opt(name, type=lambda x: None)


# Built once: registering the very same option objects again (on another
# ConfigOpts sharing the group) is then not a duplicate.
session_opts = _session_opts()
adapter_opts = _adapter_opts()
_version_dummies = [_dummy_opt(name) for name in _ADAPTER_VERSION_OPTS]


def register_opts(conf):
    # A fresh OptGroup per configuration object: an OptGroup keeps the
    # registered options (and their overrides) itself, so sharing one
    # between ConfigOpts would leak settings from one to the other.
    conf.register_group(cfg.OptGroup(GROUP_NAME, title=keystone_group.title,
                                     help=keystone_group.help))
    conf.register_opts(cache_opts, group=GROUP_NAME)
    conf.register_opts(session_opts, group=GROUP_NAME)
    ks_loading.register_auth_conf_options(conf, GROUP_NAME)
    conf.register_opts(adapter_opts, group=GROUP_NAME)
    conf.register_opts(_version_dummies, group=GROUP_NAME)


def list_opts():
    return {keystone_group: (
        cache_opts + session_opts +
        ks_loading.get_auth_common_conf_options() +
        ks_loading.get_auth_plugin_conf_options('password') +
        adapter_opts)}
