"""Keystone as the source of roles and of authentication tickets.

secmig authorizes a migration from the caller's *effective* role
assignments as Keystone knows them now, not from the roles frozen into the
caller's token: a role granted directly, through a group, inherited from
the domain (or a parent project), or implied by another role, on a
project, a domain or the system. Revoking a role therefore takes effect
within the cache TTL (``[secmig_keystone] cache_ttl``).

It also validates user tokens: the paper's *authentication ticket* is the
caller's Keystone token, validated here into an
:class:`AuthenticationTicket`.

Every failure to get a trustworthy answer (Keystone unreachable, an HTTP
error, the service user refused, a malformed or truncated answer) raises
:class:`KeystoneError` with a named reason; callers refuse the request.
Nothing here ever answers "allowed" for want of information.
"""

import collections
import dataclasses
import datetime
import hashlib
import threading
import time

from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import loading as ks_loading
from oslo_log import log as logging

from secmig_nova.conf import keystone as keystone_conf

LOG = logging.getLogger(__name__)

IDENTITY_VERSION = '3'
MAX_TOKEN_LENGTH = 16384
MAX_ID_LENGTH = 255

# Reasons of KeystoneError.
UNAVAILABLE = 'keystone_unavailable'
SERVER_ERROR = 'keystone_server_error'
REFUSED = 'keystone_refused'
BAD_RESPONSE = 'keystone_bad_response'
MISCONFIGURED = 'keystone_misconfigured'
FAILED = 'keystone_failed'
TOKEN_INVALID = 'keystone_token_invalid'
INVALID_REQUEST = 'keystone_invalid_request'

PROJECT = 'project'
DOMAIN = 'domain'
SYSTEM = 'system'
SCOPE_KINDS = (PROJECT, DOMAIN, SYSTEM)
SYSTEM_ALL = 'all'


class KeystoneError(Exception):
    """No trustworthy answer from Keystone; ``reason`` names why."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


def _check_id(name, value):
    if (not isinstance(value, str) or not value
            or len(value) > MAX_ID_LENGTH or not value.isprintable()
            or '/' in value):
        raise KeystoneError(INVALID_REQUEST, '%s %r is not a Keystone id'
                            % (name, value))
    return value


@dataclasses.dataclass(frozen=True)
class Scope:
    """What roles are asked about: a project, a domain or the system."""

    kind: str
    id: str

    def __post_init__(self):
        if self.kind not in SCOPE_KINDS:
            raise KeystoneError(INVALID_REQUEST, 'scope kind %r is not one '
                                'of %s' % (self.kind, ', '.join(SCOPE_KINDS)))
        if self.kind == SYSTEM and self.id != SYSTEM_ALL:
            raise KeystoneError(INVALID_REQUEST, 'the system scope is %r'
                                % SYSTEM_ALL)
        _check_id('%s id' % self.kind, self.id)

    @classmethod
    def project(cls, project_id):
        return cls(PROJECT, project_id)

    @classmethod
    def domain(cls, domain_id):
        return cls(DOMAIN, domain_id)

    @classmethod
    def system(cls):
        return cls(SYSTEM, SYSTEM_ALL)

    def __str__(self):
        return '%s:%s' % (self.kind, self.id)


@dataclasses.dataclass(frozen=True)
class AuthenticationTicket:
    """A user token Keystone has just confirmed as valid."""

    user_id: str
    user_name: str
    user_domain_id: str
    scope: object
    project_domain_id: str
    roles: frozenset
    expires_at: float
    issued_at: float
    audit_ids: tuple
    methods: tuple

    @property
    def project_id(self):
        return self.scope.id if self.scope and self.scope.kind == PROJECT \
            else None

    @property
    def domain_id(self):
        return self.scope.id if self.scope and self.scope.kind == DOMAIN \
            else None

    @property
    def system_scope(self):
        return SYSTEM_ALL if self.scope and self.scope.kind == SYSTEM \
            else None

    def policy_creds(self):
        """Credentials for oslo.policy, as keystonemiddleware would give."""
        return {
            'user_id': self.user_id,
            'user_domain_id': self.user_domain_id,
            'project_id': self.project_id,
            'project_domain_id': self.project_domain_id,
            'domain_id': self.domain_id,
            'system_scope': self.system_scope,
            'roles': sorted(self.roles),
        }


class TTLCache:
    """A small thread-safe LRU cache whose entries expire.

    Only successful answers are stored: an error is never cached, so the
    next decision asks Keystone again.
    """

    _MISSING = object()

    def __init__(self, ttl, size, clock=time.monotonic):
        self.ttl = float(ttl)
        self.size = int(size)
        self._clock = clock
        self._data = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        if self.ttl <= 0:
            return default
        with self._lock:
            entry = self._data.get(key, self._MISSING)
            if entry is self._MISSING:
                return default
            expires, value = entry
            if self._clock() >= expires:
                del self._data[key]
                return default
            self._data.move_to_end(key)
            return value

    def put(self, key, value, ttl=None):
        ttl = self.ttl if ttl is None else min(self.ttl, ttl)
        if ttl <= 0:
            return
        with self._lock:
            self._data[key] = (self._clock() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self):
        with self._lock:
            self._data.clear()

    def __len__(self):
        return len(self._data)


def _parse_time(value, what):
    if not isinstance(value, str):
        raise KeystoneError(BAD_RESPONSE, 'token %s is not a timestamp'
                            % what)
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise KeystoneError(BAD_RESPONSE, 'token %s %r is not ISO 8601'
                            % (what, value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _obj(value, what):
    if not isinstance(value, dict):
        raise KeystoneError(BAD_RESPONSE, '%s is not an object' % what)
    return value


def _str(value, what):
    if not isinstance(value, str) or not value:
        raise KeystoneError(BAD_RESPONSE, '%s is not a non-empty string'
                            % what)
    return value


class KeystoneClient:
    """Effective roles and token validation, through a keystoneauth1 adapter.

    :param adapter: a :class:`keystoneauth1.adapter.Adapter` for the
        identity v3 API, authenticated as secmig's service user.
    :param cache_ttl: seconds an answer is reused (0: never).
    :param clock: monotonic clock of the cache (tests inject one).
    :param wall_clock: POSIX clock for token expiry.
    """

    def __init__(self, adapter, cache_ttl=30, cache_size=4096,
                 clock=time.monotonic, wall_clock=time.time):
        self._adapter = adapter
        self._cache = TTLCache(cache_ttl, cache_size, clock=clock)
        self._wall_clock = wall_clock

    @property
    def cache_ttl(self):
        return self._cache.ttl

    @classmethod
    def from_conf(cls, conf, group=keystone_conf.GROUP_NAME, **kwargs):
        """Build a client from the ``[secmig_keystone]`` options."""
        grp = conf[group]
        try:
            auth = ks_loading.load_auth_from_conf_options(conf, group)
            if auth is None:
                raise KeystoneError(
                    MISCONFIGURED, '[%s] auth_type is not set: secmig '
                    'needs a service user to ask Keystone for roles'
                    % group)
            session = ks_loading.load_session_from_conf_options(
                conf, group, auth=auth, app_name='secmig-nova')
            adapter = ks_loading.load_adapter_from_conf_options(
                conf, group, session=session, auth=auth,
                version=IDENTITY_VERSION)
        except KeystoneError:
            raise
        except (ksa_exc.ClientException, TypeError, ValueError) as e:
            raise KeystoneError(MISCONFIGURED, 'cannot load [%s]: %s'
                                % (group, e))
        kwargs.setdefault('cache_ttl', grp.cache_ttl)
        kwargs.setdefault('cache_size', grp.cache_size)
        return cls(adapter, **kwargs)

    def clear_cache(self):
        self._cache.clear()

    # -- HTTP ---------------------------------------------------------------

    def _get(self, path, params=None, headers=None, allowed=()):
        """GET ``path``; the parsed body, or the status if in ``allowed``."""
        try:
            resp = self._adapter.get(path, params=params, headers=headers,
                                     raise_exc=False)
        except ksa_exc.ConnectionError as e:
            raise KeystoneError(UNAVAILABLE, 'cannot reach Keystone: %s'
                                % e)
        except ksa_exc.HttpError as e:
            # Raised while authenticating the service user or discovering
            # the identity endpoint.
            raise self._http_error(e.http_status, path, str(e))
        except (ksa_exc.CatalogException, ksa_exc.DiscoveryFailure) as e:
            raise KeystoneError(MISCONFIGURED, 'cannot find the identity '
                                'v3 endpoint: %s' % e)
        except ksa_exc.ClientException as e:
            raise KeystoneError(FAILED, 'request to Keystone failed: %s'
                                % e)
        status = resp.status_code
        if status in allowed:
            return status
        if status != 200:
            raise self._http_error(status, path, resp.text[:200])
        try:
            body = resp.json()
        except ValueError as e:
            raise KeystoneError(BAD_RESPONSE, 'Keystone answered GET %s '
                                'with something that is not JSON: %s'
                                % (path, e))
        return _obj(body, 'answer to GET %s' % path)

    @staticmethod
    def _http_error(status, path, detail):
        if status is not None and status >= 500:
            reason = SERVER_ERROR
        elif status in (401, 403):
            reason = REFUSED
        else:
            reason = FAILED
        msg = ('Keystone answered GET %s with HTTP %s: %s'
               % (path, status, detail))
        if reason == REFUSED:
            msg += (' (check the [secmig_keystone] service user and that '
                    'it has the reader role on the system)')
        return KeystoneError(reason, msg)

    @staticmethod
    def _list(body, key, path):
        items = body.get(key)
        if not isinstance(items, list):
            raise KeystoneError(BAD_RESPONSE, 'answer to GET %s has no %r '
                                'list' % (path, key))
        if body.get('truncated'):
            raise KeystoneError(BAD_RESPONSE, 'Keystone truncated the '
                                'answer to GET %s (list_limit); cannot '
                                'decide on a partial list' % path)
        links = body.get('links')
        if isinstance(links, dict) and links.get('next'):
            raise KeystoneError(BAD_RESPONSE, 'Keystone paginated the '
                                'answer to GET %s; cannot decide on a '
                                'partial list' % path)
        for item in items:
            _obj(item, 'an entry of %r' % key)
        return items

    # -- roles --------------------------------------------------------------

    def effective_roles(self, user_id, scope):
        """Names of the roles ``user_id`` effectively has on ``scope``.

        Direct, through groups, inherited and implied assignments all
        count. Domain-specific roles are not returned (their names are not
        global); Keystone already maps them to the global roles they imply.

        :returns: frozenset of role names (empty: no role).
        :raises KeystoneError: when Keystone gives no trustworthy answer.
        """
        _check_id('user id', user_id)
        if not isinstance(scope, Scope):
            raise KeystoneError(INVALID_REQUEST, 'scope must be a Scope')
        key = ('roles', user_id, scope.kind, scope.id)
        roles = self._cache.get(key)
        if roles is not None:
            return roles
        if scope.kind == SYSTEM:
            roles = self._system_roles(user_id)
        else:
            roles = self._scoped_roles(user_id, scope)
        self._cache.put(key, roles)
        LOG.debug('Keystone roles of user %s on %s: %s', user_id, scope,
                  ', '.join(sorted(roles)) or '(none)')
        return roles

    def project_roles(self, user_id, project_id):
        return self.effective_roles(user_id, Scope.project(project_id))

    def domain_roles(self, user_id, domain_id):
        return self.effective_roles(user_id, Scope.domain(domain_id))

    def system_roles(self, user_id):
        return self.effective_roles(user_id, Scope.system())

    @staticmethod
    def _role_name(assignment, what):
        role = _obj(assignment.get('role'), 'role of %s' % what)
        if role.get('domain'):
            return None
        return _str(role.get('name'), 'role name of %s (include_names)'
                    % what)

    def _scoped_roles(self, user_id, scope):
        path = '/role_assignments'
        params = {'effective': '1', 'include_names': '1',
                  'user.id': user_id,
                  'scope.%s.id' % scope.kind: scope.id}
        body = self._get(path, params=params, allowed=(404,))
        if body == 404:
            # Keystone knows no such user or target: no role there.
            LOG.info('Keystone knows no user %s or %s; no roles', user_id,
                     scope)
            return frozenset()
        roles = set()
        for item in self._list(body, 'role_assignments', path):
            what = 'a role assignment of user %s' % user_id
            user = _obj(item.get('user'), 'user of %s' % what)
            target = _obj(item.get('scope'), 'scope of %s' % what)
            target = _obj(target.get(scope.kind), '%s of %s'
                          % (scope.kind, what))
            if user.get('id') != user_id or target.get('id') != scope.id:
                # Keystone answered a question that was not asked.
                raise KeystoneError(BAD_RESPONSE, 'Keystone returned an '
                                    'assignment for user %r on %s %r when '
                                    'asked about user %s on %s'
                                    % (user.get('id'), scope.kind,
                                       target.get('id'), user_id, scope))
            name = self._role_name(item, what)
            if name:
                roles.add(name)
        return frozenset(roles)

    def _system_roles(self, user_id):
        # Keystone's "effective" listing leaves out system assignments, so
        # expand groups and implied roles here: the system assignments of
        # the user and of its groups, closed under role inference.
        path = '/role_assignments'
        body = self._get(path, params={'scope.system': SYSTEM_ALL,
                                       'include_names': '1'})
        assignments = self._list(body, 'role_assignments', path)
        groups_path = '/users/%s/groups' % user_id
        groups = self._get(groups_path, allowed=(404,))
        if groups == 404:
            return frozenset()
        group_ids = set()
        for group in self._list(groups, 'groups', groups_path):
            group_ids.add(_str(group.get('id'), 'group id'))
        roles = set()
        for item in assignments:
            what = 'a system role assignment'
            target = _obj(item.get('scope'), 'scope of %s' % what)
            system = _obj(target.get(SYSTEM), 'system of %s' % what)
            if system.get(SYSTEM_ALL) is not True:
                continue
            user = item.get('user')
            group = item.get('group')
            if isinstance(user, dict) and user.get('id') == user_id:
                pass
            elif isinstance(group, dict) and group.get('id') in group_ids:
                pass
            else:
                continue
            name = self._role_name(item, what)
            if name:
                roles.add(name)
        if roles:
            roles = self._implied_closure(roles)
        return frozenset(roles)

    def _role_inferences(self):
        cached = self._cache.get(('inferences',))
        if cached is not None:
            return cached
        path = '/role_inferences'
        body = self._get(path)
        implies = collections.defaultdict(set)
        for rule in self._list(body, 'role_inferences', path):
            prior = _obj(rule.get('prior_role'), 'prior_role')
            if prior.get('domain_id'):
                continue
            prior_name = _str(prior.get('name'), 'prior role name')
            implied = rule.get('implies')
            if not isinstance(implied, list):
                raise KeystoneError(BAD_RESPONSE, 'role inference of %s '
                                    'has no implies list' % prior_name)
            for role in implied:
                role = _obj(role, 'implied role')
                if role.get('domain_id'):
                    continue
                implies[prior_name].add(_str(role.get('name'),
                                             'implied role name'))
        implies = {k: frozenset(v) for k, v in implies.items()}
        self._cache.put(('inferences',), implies)
        return implies

    def _implied_closure(self, roles):
        implies = self._role_inferences()
        result = set(roles)
        todo = list(roles)
        while todo:
            for implied in implies.get(todo.pop(), ()):
                if implied not in result:
                    result.add(implied)
                    todo.append(implied)
        return result

    # -- tokens -------------------------------------------------------------

    def validate_token(self, token):
        """Validate a user's token: the paper's authentication ticket.

        :returns: :class:`AuthenticationTicket`.
        :raises KeystoneError: :data:`TOKEN_INVALID` when the token is not
            valid (unknown, expired, revoked); other reasons when Keystone
            gives no trustworthy answer.
        """
        if (not isinstance(token, str) or not token
                or len(token) > MAX_TOKEN_LENGTH
                or not token.isascii() or not token.isprintable()
                or ' ' in token):
            raise KeystoneError(TOKEN_INVALID, 'not a Keystone token')
        key = ('token', hashlib.sha256(token.encode('ascii')).hexdigest())
        ticket = self._cache.get(key)
        if ticket is None:
            path = '/auth/tokens'
            body = self._get(path, headers={'X-Subject-Token': token},
                             allowed=(404,))
            if body == 404:
                raise KeystoneError(TOKEN_INVALID, 'Keystone does not '
                                    'accept the token (unknown, expired or '
                                    'revoked)')
            ticket = self._ticket(_obj(body.get('token'), 'token'))
            self._cache.put(key, ticket,
                            ttl=ticket.expires_at - self._wall_clock())
        if ticket.expires_at <= self._wall_clock():
            raise KeystoneError(TOKEN_INVALID, 'the token expired at %s'
                                % datetime.datetime.fromtimestamp(
                                    ticket.expires_at,
                                    datetime.timezone.utc).isoformat())
        return ticket

    @staticmethod
    def _ticket(token):
        user = _obj(token.get('user'), 'token user')
        user_domain = _obj(user.get('domain'), 'token user domain')
        scope = None
        project_domain_id = None
        if token.get('project') is not None:
            project = _obj(token['project'], 'token project')
            scope = Scope.project(_str(project.get('id'), 'project id'))
            project_domain_id = _str(
                _obj(project.get('domain'), 'project domain').get('id'),
                'project domain id')
        elif token.get('domain') is not None:
            scope = Scope.domain(_str(_obj(token['domain'], 'token domain')
                                      .get('id'), 'domain id'))
        elif token.get('system') is not None:
            if _obj(token['system'], 'token system').get(SYSTEM_ALL) is True:
                scope = Scope.system()
        roles = token.get('roles', [])
        if not isinstance(roles, list):
            raise KeystoneError(BAD_RESPONSE, 'token roles is not a list')
        audit_ids = token.get('audit_ids', [])
        methods = token.get('methods', [])
        if not isinstance(audit_ids, list) or not isinstance(methods, list):
            raise KeystoneError(BAD_RESPONSE, 'token audit_ids or methods '
                                'is not a list')
        return AuthenticationTicket(
            user_id=_str(user.get('id'), 'token user id'),
            user_name=user.get('name') or '',
            user_domain_id=_str(user_domain.get('id'), 'user domain id'),
            scope=scope,
            project_domain_id=project_domain_id,
            roles=frozenset(_str(_obj(r, 'token role').get('name'),
                                 'token role name') for r in roles),
            expires_at=_parse_time(token.get('expires_at'), 'expires_at'),
            issued_at=_parse_time(token.get('issued_at'), 'issued_at'),
            audit_ids=tuple(str(a) for a in audit_ids),
            methods=tuple(str(m) for m in methods))


# -- one client per configuration --------------------------------------------

_CLIENTS = {}
_CLIENTS_LOCK = threading.Lock()


def get_client(conf):
    """The shared :class:`KeystoneClient` of ``conf`` (built on first use).

    One client (and so one cache) per configuration object and process;
    a configuration that cannot be loaded raises every time, it is never
    remembered as a client.
    """
    with _CLIENTS_LOCK:
        entry = _CLIENTS.get(id(conf))
        if entry is not None and entry[0] is conf:
            return entry[1]
        client = KeystoneClient.from_conf(conf)
        _CLIENTS[id(conf)] = (conf, client)
        return client


def set_client(conf, client):
    """Use ``client`` for ``conf`` (tools and tests)."""
    with _CLIENTS_LOCK:
        _CLIENTS[id(conf)] = (conf, client)


def forget_client(conf):
    """Drop the client of ``conf`` (a configuration that goes away)."""
    with _CLIENTS_LOCK:
        entry = _CLIENTS.get(id(conf))
        if entry is not None and entry[0] is conf:
            del _CLIENTS[id(conf)]


def reset_clients():
    with _CLIENTS_LOCK:
        _CLIENTS.clear()
