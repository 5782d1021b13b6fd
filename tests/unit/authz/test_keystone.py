"""Unit tests for Keystone role lookup (secmig_nova.authz.keystone).

Keystone's answers are faked at the keystoneauth1 adapter: these tests
cover what a real Keystone will not readily produce (5xx, malformed,
truncated or off-topic answers, transport errors) and the cache with an
injected clock. tests/functional/test_keystone_authz.py runs the same code
against a real Keystone.
"""

import datetime

import fixtures
from keystoneauth1 import exceptions as ksa_exc
from oslo_config import cfg
import testtools

from secmig_nova.authz import keystone
from secmig_nova.conf import keystone as keystone_conf

USER = 'u1'
PROJECT = 'p1'


class FakeResponse:
    def __init__(self, status, body=None, text=None):
        self.status_code = status
        self._body = body
        self.text = text if text is not None else repr(body)

    def json(self):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


class FakeAdapter:
    """Answers GETs from a ``{path: response-or-exception}`` table."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def get(self, path, params=None, headers=None, raise_exc=True):
        self.calls.append((path, dict(params or {}), dict(headers or {})))
        answer = self.answers[path]
        if callable(answer) and not isinstance(answer, FakeResponse):
            answer = answer(params, headers)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def assignment(role, user=USER, scope=None, role_domain=None):
    scope = scope or {'project': {'id': PROJECT}}
    entry = {'role': {'id': role + '-id', 'name': role},
             'user': {'id': user}, 'scope': scope}
    if role_domain:
        entry['role']['domain'] = {'id': role_domain}
    return entry


def assignments(*entries, **extra):
    body = {'role_assignments': list(entries),
            'links': {'self': 'x', 'next': None, 'previous': None}}
    body.update(extra)
    return FakeResponse(200, body)


class KeystoneTestBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.clock = Clock()
        self.wall = Clock(1_800_000_000.0)

    def client(self, answers, ttl=30):
        self.adapter = FakeAdapter(answers)
        return keystone.KeystoneClient(self.adapter, cache_ttl=ttl,
                                       cache_size=8, clock=self.clock,
                                       wall_clock=self.wall)

    def assertRefused(self, reason, func, *args):
        e = self.assertRaises(keystone.KeystoneError, func, *args)
        self.assertEqual(reason, e.reason, str(e))
        return e


class EffectiveRolesTest(KeystoneTestBase):

    def test_project_roles_query(self):
        c = self.client({'/role_assignments': assignments(
            assignment('migration_operator'), assignment('reader'),
            assignment('reader'))})
        self.assertEqual({'migration_operator', 'reader'},
                         c.project_roles(USER, PROJECT))
        path, params, _headers = self.adapter.calls[0]
        self.assertEqual('/role_assignments', path)
        self.assertEqual({'effective': '1', 'include_names': '1',
                          'user.id': USER, 'scope.project.id': PROJECT},
                         params)

    def test_domain_roles_query(self):
        c = self.client({'/role_assignments': assignments(
            assignment('migration_operator',
                       scope={'domain': {'id': 'd1'}}))})
        self.assertEqual({'migration_operator'}, c.domain_roles(USER, 'd1'))
        self.assertEqual('d1', self.adapter.calls[0][1]['scope.domain.id'])

    def test_no_assignment_is_no_role(self):
        c = self.client({'/role_assignments': assignments()})
        self.assertEqual(frozenset(), c.project_roles(USER, PROJECT))

    def test_domain_specific_roles_are_not_global_names(self):
        c = self.client({'/role_assignments': assignments(
            assignment('admin', role_domain='d9'), assignment('reader'))})
        self.assertEqual({'reader'}, c.project_roles(USER, PROJECT))

    def test_inherited_assignment_counts(self):
        scope = {'project': {'id': PROJECT},
                 'OS-INHERIT:inherited_to': 'projects'}
        c = self.client({'/role_assignments': assignments(
            assignment('migration_operator', scope=scope))})
        self.assertEqual({'migration_operator'},
                         c.project_roles(USER, PROJECT))

    def test_system_roles_direct_group_and_implied(self):
        system = {'system': {'all': True}}
        c = self.client({
            '/role_assignments': assignments(
                assignment('migration_operator', scope=system),
                assignment('admin', user='someone-else', scope=system),
                {'role': {'name': 'member'}, 'group': {'id': 'g1'},
                 'scope': system},
                {'role': {'name': 'auditor'}, 'group': {'id': 'g-other'},
                 'scope': system}),
            '/users/u1/groups': FakeResponse(200, {'groups': [
                {'id': 'g1', 'name': 'ops'}], 'links': {}}),
            '/role_inferences': FakeResponse(200, {'role_inferences': [
                {'prior_role': {'id': 'a', 'name': 'admin'},
                 'implies': [{'id': 'm', 'name': 'member'}]},
                {'prior_role': {'id': 'm', 'name': 'member'},
                 'implies': [{'id': 'r', 'name': 'reader'}]},
            ]}),
        })
        self.assertEqual({'migration_operator', 'member', 'reader'},
                         c.system_roles(USER))
        self.assertEqual({'scope.system': 'all', 'include_names': '1'},
                         self.adapter.calls[0][1])

    def test_system_roles_of_unknown_user(self):
        c = self.client({
            '/role_assignments': assignments(),
            '/users/u1/groups': FakeResponse(404, {'error': {}})})
        self.assertEqual(frozenset(), c.system_roles(USER))

    def test_bad_input_is_refused_without_asking(self):
        c = self.client({})
        for user in ('', None, 'a/b', 'x' * 300, 'a\nb'):
            self.assertRefused(keystone.INVALID_REQUEST, c.project_roles,
                               user, PROJECT)
        self.assertRefused(keystone.INVALID_REQUEST, c.project_roles, USER,
                           '../p')
        self.assertRefused(keystone.INVALID_REQUEST, keystone.Scope,
                           'galaxy', 'x')
        self.assertRefused(keystone.INVALID_REQUEST, keystone.Scope,
                           'system', 'some')
        self.assertEqual([], self.adapter.calls)


class FailClosedTest(KeystoneTestBase):
    """Every way of not getting a trustworthy answer raises, by reason."""

    def roles_with(self, answer):
        c = self.client({'/role_assignments': answer})
        return c.project_roles, USER, PROJECT

    def test_unreachable(self):
        for exc in (ksa_exc.ConnectFailure('refused'),
                    ksa_exc.ConnectTimeout('timed out'),
                    ksa_exc.SSLError('bad cert')):
            e = self.assertRefused(keystone.UNAVAILABLE,
                                   *self.roles_with(exc))
            self.assertIn('cannot reach Keystone', str(e))

    def test_server_errors(self):
        for status in (500, 502, 503):
            self.assertRefused(keystone.SERVER_ERROR, *self.roles_with(
                FakeResponse(status, {'error': {}})))

    def test_service_user_refused(self):
        for status in (401, 403):
            e = self.assertRefused(keystone.REFUSED, *self.roles_with(
                FakeResponse(status, {'error': {}})))
            self.assertIn('service user', str(e))
        self.assertRefused(keystone.REFUSED, *self.roles_with(
            ksa_exc.Unauthorized('bad password')))

    def test_other_http_errors(self):
        self.assertRefused(keystone.FAILED, *self.roles_with(
            FakeResponse(400, {'error': {}})))

    def test_no_endpoint(self):
        self.assertRefused(keystone.MISCONFIGURED, *self.roles_with(
            ksa_exc.EndpointNotFound('no identity')))
        self.assertRefused(keystone.MISCONFIGURED, *self.roles_with(
            ksa_exc.DiscoveryFailure('no v3')))

    def test_not_json(self):
        self.assertRefused(keystone.BAD_RESPONSE, *self.roles_with(
            FakeResponse(200, ValueError('Expecting value'), text='<html>')))

    def test_malformed_answers(self):
        good = assignment('reader')
        for body in (
                [],
                {},
                {'role_assignments': None},
                {'role_assignments': ['reader']},
                {'role_assignments': [dict(good, role='reader')]},
                {'role_assignments': [dict(good, role={'id': 'x'})]},
                {'role_assignments': [dict(good, role={'name': ''})]},
                {'role_assignments': [dict(good, user=None)]},
                {'role_assignments': [dict(good, scope={'domain': {}})]},
        ):
            self.assertRefused(keystone.BAD_RESPONSE, *self.roles_with(
                FakeResponse(200, body)))

    def test_answer_about_someone_else(self):
        self.assertRefused(keystone.BAD_RESPONSE, *self.roles_with(
            assignments(assignment('admin', user='u2'))))
        self.assertRefused(keystone.BAD_RESPONSE, *self.roles_with(
            assignments(assignment('admin',
                                   scope={'project': {'id': 'p2'}}))))

    def test_partial_lists(self):
        self.assertRefused(keystone.BAD_RESPONSE, *self.roles_with(
            assignments(assignment('reader'), truncated=True)))
        self.assertRefused(keystone.BAD_RESPONSE, *self.roles_with(
            assignments(assignment('reader'),
                        links={'next': 'http://k/v3/role_assignments?p=2'})))

    def test_errors_are_not_cached(self):
        answers = [FakeResponse(503, {}), assignments(assignment('reader'))]
        c = self.client({'/role_assignments':
                         lambda params, headers: answers.pop(0)})
        self.assertRefused(keystone.SERVER_ERROR, c.project_roles, USER,
                           PROJECT)
        self.assertEqual({'reader'}, c.project_roles(USER, PROJECT))


class CacheTest(KeystoneTestBase):

    def test_answers_are_reused_within_ttl(self):
        c = self.client({'/role_assignments': assignments(
            assignment('reader'))}, ttl=30)
        c.project_roles(USER, PROJECT)
        self.clock.now = 29.9
        c.project_roles(USER, PROJECT)
        self.assertEqual(1, len(self.adapter.calls))
        self.clock.now = 30.0
        c.project_roles(USER, PROJECT)
        self.assertEqual(2, len(self.adapter.calls))

    def test_keys_include_user_and_scope(self):
        c = self.client({'/role_assignments': lambda p, h: assignments(
            assignment('reader', user=p['user.id'],
                       scope={'project': {'id': p['scope.project.id']}}))})
        c.project_roles(USER, PROJECT)
        c.project_roles(USER, 'p2')
        c.project_roles('u2', PROJECT)
        self.assertEqual(3, len(self.adapter.calls))

    def test_ttl_zero_never_caches(self):
        c = self.client({'/role_assignments': assignments()}, ttl=0)
        for _ in range(3):
            c.project_roles(USER, PROJECT)
        self.assertEqual(3, len(self.adapter.calls))

    def test_size_is_bounded(self):
        cache = keystone.TTLCache(60, 2, clock=self.clock)
        cache.put('a', 1)
        cache.put('b', 2)
        cache.get('a')
        cache.put('c', 3)
        self.assertEqual((1, None, 3),
                         (cache.get('a'), cache.get('b'), cache.get('c')))
        self.assertEqual(2, len(cache))

    def test_clear(self):
        c = self.client({'/role_assignments': assignments()})
        c.project_roles(USER, PROJECT)
        c.clear_cache()
        c.project_roles(USER, PROJECT)
        self.assertEqual(2, len(self.adapter.calls))


def _iso(ts):
    return datetime.datetime.fromtimestamp(
        ts, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.000000Z')


class ValidateTokenTest(KeystoneTestBase):

    def token_body(self, expires_in=3600, **overrides):
        token = {
            'user': {'id': USER, 'name': 'alice',
                     'domain': {'id': 'd1', 'name': 'lab'}},
            'project': {'id': PROJECT, 'name': 'alpha',
                        'domain': {'id': 'd1', 'name': 'lab'}},
            'roles': [{'id': 'r', 'name': 'member'}],
            'expires_at': _iso(self.wall.now + expires_in),
            'issued_at': _iso(self.wall.now - 10),
            'audit_ids': ['abc'],
            'methods': ['password'],
        }
        token.update(overrides)
        return FakeResponse(200, {'token': token})

    def test_valid_token(self):
        c = self.client({'/auth/tokens': self.token_body()})
        ticket = c.validate_token('gAAAAtoken')
        self.assertEqual(USER, ticket.user_id)
        self.assertEqual(PROJECT, ticket.project_id)
        self.assertEqual('d1', ticket.project_domain_id)
        self.assertIsNone(ticket.domain_id)
        self.assertEqual(frozenset({'member'}), ticket.roles)
        self.assertEqual(self.wall.now + 3600, ticket.expires_at)
        self.assertEqual({'X-Subject-Token': 'gAAAAtoken'},
                         self.adapter.calls[0][2])
        creds = ticket.policy_creds()
        self.assertEqual((USER, PROJECT, None, ['member']),
                         (creds['user_id'], creds['project_id'],
                          creds['system_scope'], creds['roles']))

    def test_system_and_domain_scoped_tokens(self):
        body = self.token_body()
        del body._body['token']['project']
        body._body['token']['system'] = {'all': True}
        c = self.client({'/auth/tokens': body})
        ticket = c.validate_token('sys')
        self.assertEqual('all', ticket.system_scope)
        body._body['token'].pop('system')
        body._body['token']['domain'] = {'id': 'd1', 'name': 'lab'}
        self.assertEqual('d1', c.validate_token('dom').domain_id)

    def test_unknown_expired_or_revoked_token(self):
        c = self.client({'/auth/tokens': FakeResponse(404, {'error': {}})})
        self.assertRefused(keystone.TOKEN_INVALID, c.validate_token, 'x')

    def test_not_a_token_is_refused_without_asking(self):
        c = self.client({})
        for token in ('', None, 'a b', 'a\r\nX-Evil: 1', 'é',
                      'x' * (keystone.MAX_TOKEN_LENGTH + 1)):
            self.assertRefused(keystone.TOKEN_INVALID, c.validate_token,
                               token)
        self.assertEqual([], self.adapter.calls)

    def test_expired_answer_is_refused(self):
        c = self.client({'/auth/tokens': self.token_body(expires_in=-1)})
        self.assertRefused(keystone.TOKEN_INVALID, c.validate_token, 't')

    def test_cached_token_expires_with_the_token(self):
        c = self.client({'/auth/tokens': self.token_body(expires_in=5)},
                        ttl=30)
        c.validate_token('t')
        c.validate_token('t')
        self.assertEqual(1, len(self.adapter.calls))
        self.wall.now += 5
        self.assertRefused(keystone.TOKEN_INVALID, c.validate_token, 't')

    def test_malformed_token_answers(self):
        for overrides in ({'user': None}, {'user': {'id': USER}},
                          {'expires_at': 'soon'}, {'expires_at': None},
                          {'roles': 'member'}, {'roles': [{'id': 'r'}]},
                          {'project': {'id': PROJECT}}):
            c = self.client({'/auth/tokens': self.token_body(**overrides)})
            self.assertRefused(keystone.BAD_RESPONSE, c.validate_token, 't')
        c = self.client({'/auth/tokens': FakeResponse(200, {'x': 1})})
        self.assertRefused(keystone.BAD_RESPONSE, c.validate_token, 't')

    def test_keystone_down_is_not_token_invalid(self):
        c = self.client({'/auth/tokens': ksa_exc.ConnectFailure('down')})
        self.assertRefused(keystone.UNAVAILABLE, c.validate_token, 't')


class FromConfTest(testtools.TestCase):

    def conf(self, **overrides):
        conf = cfg.ConfigOpts()
        keystone_conf.register_opts(conf)
        conf([], default_config_files=[])
        for name, value in overrides.items():
            conf.set_override(name, value, group='secmig_keystone')
        return conf

    def test_defaults(self):
        conf = self.conf()
        grp = conf.secmig_keystone
        self.assertEqual(30, grp.cache_ttl)
        self.assertEqual(5, grp.timeout)
        self.assertEqual('identity', grp.service_type)
        self.assertEqual(['internal', 'public'], grp.valid_interfaces)

    def test_no_auth_type_is_misconfigured(self):
        e = self.assertRaises(keystone.KeystoneError,
                              keystone.KeystoneClient.from_conf, self.conf())
        self.assertEqual(keystone.MISCONFIGURED, e.reason)

    def test_unknown_auth_type_is_misconfigured(self):
        e = self.assertRaises(keystone.KeystoneError,
                              keystone.KeystoneClient.from_conf,
                              self.conf(auth_type='no-such-plugin'))
        self.assertEqual(keystone.MISCONFIGURED, e.reason)

    def test_client_per_conf(self):
        self.addCleanup(keystone.reset_clients)
        path = self.useFixture(fixtures.TempDir()).join('secmig.conf')
        with open(path, 'w') as f:
            f.write('[secmig_keystone]\nauth_type = password\n'
                    'auth_url = http://127.0.0.1:9/v3\nusername = secmig\n'
                    'password = x\nuser_domain_id = default\n'
                    'system_scope = all\ncache_ttl = 7\n')
        conf = cfg.ConfigOpts()
        keystone_conf.register_opts(conf)
        conf([], default_config_files=[path])
        client = keystone.get_client(conf)
        self.assertIs(client, keystone.get_client(conf))
        self.assertEqual(7, client.cache_ttl)
        # Nothing leaks into another configuration object.
        other = self.conf()
        self.assertEqual(30, other.secmig_keystone.cache_ttl)
        self.assertRaises(keystone.KeystoneError, keystone.get_client, other)
        fake = object()
        keystone.set_client(other, fake)
        self.assertIs(fake, keystone.get_client(other))

    def test_list_opts(self):
        (group, opts), = keystone_conf.list_opts().items()
        names = {o.dest for o in opts}
        self.assertEqual('secmig_keystone', group.name)
        self.assertLessEqual({'cache_ttl', 'auth_type', 'auth_url',
                              'username', 'password', 'system_scope',
                              'timeout', 'valid_interfaces'}, names)
