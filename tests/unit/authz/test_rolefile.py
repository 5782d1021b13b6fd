"""Tests of secmig_nova/authz/rolefile.py: role assignments from a file.

The role file stands in for Keystone in ``secmig-migrate``'s embedded
broker: a user or project it does not name has no roles, tokens are always
refused, and a broken file is an error at load time (never an empty allow
list).
"""

import json
import os
import shutil
import tempfile

import testtools

from secmig_nova.authz import keystone
from secmig_nova.authz import rolefile

OPS = ['migration_operator', 'cross_cloud_operator']

ASSIGNMENTS = {'users': {
    'op': {'projects': {'p1': OPS, 'p2': ['migration_operator']}},
    'auditor': {'projects': {'p3': ['reader', 'reader']}},
}}


class RoleFileTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='smrf-')
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, content, name='roles.json'):
        path = os.path.join(self.dir, name)
        with open(path, 'w') as f:
            f.write(content if isinstance(content, str)
                    else json.dumps(content))
        os.chmod(path, 0o644)
        return path

    def assertInvalid(self, assignments, *fragments):
        e = self.assertRaises(rolefile.RoleFileError, rolefile.RoleFile,
                              assignments, 'roles.json')
        self.assertEqual(rolefile.ROLE_FILE_INVALID, e.reason)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        return e


class TestLookups(RoleFileTestCase):

    def setUp(self):
        super().setUp()
        self.roles = rolefile.RoleFile(ASSIGNMENTS)

    def test_effective_roles_on_a_project(self):
        self.assertEqual(sorted(OPS), self.roles.effective_roles(
            'op', keystone.Scope.project('p1')))
        self.assertEqual(['migration_operator'], self.roles.effective_roles(
            'op', keystone.Scope.project('p2')))
        # The scope as a string, as the keystone_role: check may pass it.
        self.assertEqual(sorted(OPS),
                         self.roles.effective_roles('op', 'project:p1'))

    def test_duplicate_roles_count_once(self):
        self.assertEqual(['reader'], self.roles.effective_roles(
            'auditor', keystone.Scope.project('p3')))

    def test_unknown_user_or_project_has_no_roles(self):
        self.assertEqual([], self.roles.effective_roles(
            'nobody', keystone.Scope.project('p1')))
        self.assertEqual([], self.roles.effective_roles(
            'op', keystone.Scope.project('p3')))
        self.assertEqual([], self.roles.effective_roles(
            'auditor', keystone.Scope.project('p1')))

    def test_roles_are_on_projects_only(self):
        # A domain or the system named like a project gets nothing.
        self.assertEqual([], self.roles.effective_roles(
            'op', keystone.Scope.domain('p1')))
        self.assertEqual([], self.roles.effective_roles(
            'op', keystone.Scope.system()))

    def test_answers_are_copies(self):
        roles = self.roles.effective_roles('op', 'project:p1')
        roles.append('admin')
        self.assertNotIn('admin',
                         self.roles.effective_roles('op', 'project:p1'))

    def test_projects(self):
        self.assertEqual(['p1', 'p2', 'p3'], self.roles.projects)
        self.assertEqual([], rolefile.RoleFile({'users': {}}).projects)

    def test_tokens_are_refused(self):
        e = self.assertRaises(keystone.KeystoneError,
                              self.roles.validate_token, 'a-token')
        self.assertEqual(keystone.TOKEN_INVALID, e.reason)
        self.assertIn('<memory>', str(e))

    def test_no_cache(self):
        self.assertEqual(0, self.roles.cache_ttl)
        self.roles.clear_cache()
        self.assertEqual(sorted(OPS),
                         self.roles.effective_roles('op', 'project:p1'))


class TestLoad(RoleFileTestCase):

    def test_load(self):
        path = self.write(ASSIGNMENTS)
        roles = rolefile.RoleFile.load(path)
        self.assertEqual(path, roles.path)
        self.assertEqual(sorted(OPS), roles.effective_roles(
            'op', keystone.Scope.project('p1')))
        e = self.assertRaises(keystone.KeystoneError, roles.validate_token,
                              'a-token')
        self.assertIn(path, str(e))

    def test_writable_by_others_refused(self):
        # Whoever can edit the file could grant themselves any role.
        path = self.write(ASSIGNMENTS)
        for mode in (0o664, 0o646):
            os.chmod(path, mode)
            e = self.assertRaises(rolefile.RoleFileError,
                                  rolefile.RoleFile.load, path)
            self.assertIn('must not be writable by group or others',
                          str(e))
            self.assertIn('%04o' % mode, str(e))
        os.chmod(path, 0o600)
        self.assertEqual(sorted(OPS), rolefile.RoleFile.load(
            path).effective_roles('op', keystone.Scope.project('p1')))

    def test_missing_file(self):
        path = os.path.join(self.dir, 'absent.json')
        e = self.assertRaises(rolefile.RoleFileError, rolefile.RoleFile.load,
                              path)
        self.assertEqual(rolefile.ROLE_FILE_INVALID, e.reason)
        self.assertIn('cannot read role file %s' % path, str(e))

    def test_not_json(self):
        path = self.write('{"users": {"op": ')
        e = self.assertRaises(rolefile.RoleFileError, rolefile.RoleFile.load,
                              path)
        self.assertEqual(rolefile.ROLE_FILE_INVALID, e.reason)
        self.assertIn(path, str(e))

    def test_malformed_file_names_its_path(self):
        path = self.write({'users': []})
        e = self.assertRaises(rolefile.RoleFileError, rolefile.RoleFile.load,
                              path)
        self.assertIn('%s: "users" must be an object' % path, str(e))

    def test_a_broken_file_fails_closed(self):
        # RoleFileError is a KeystoneError: the keystone_role: check and
        # the broker refuse instead of treating it as "no roles".
        self.assertTrue(issubclass(rolefile.RoleFileError,
                                   keystone.KeystoneError))


class TestMalformed(RoleFileTestCase):

    def test_not_an_object(self):
        self.assertInvalid([], '"users" must be an object')
        self.assertInvalid('users', '"users" must be an object')

    def test_users_missing_or_not_an_object(self):
        self.assertInvalid({}, '"users" must be an object')
        self.assertInvalid({'users': ['op']}, '"users" must be an object')

    def test_user_name(self):
        self.assertInvalid({'users': {'': {'projects': {}}}},
                           "'' is not a name")
        self.assertInvalid({'users': {'u' * 256: {'projects': {}}}},
                           'is not a name')
        # 255 characters is still a name.
        roles = rolefile.RoleFile({'users': {'u' * 255: {'projects': {
            'p1': OPS}}}})
        self.assertEqual(sorted(OPS),
                         roles.effective_roles('u' * 255, 'project:p1'))

    def test_user_entry(self):
        self.assertInvalid({'users': {'op': ['p1']}},
                           'users.op.projects must be an object')
        self.assertInvalid({'users': {'op': {}}},
                           'users.op.projects must be an object')
        self.assertInvalid({'users': {'op': {'projects': ['p1']}}},
                           'users.op.projects must be an object')

    def test_project_name(self):
        self.assertInvalid({'users': {'op': {'projects': {'': OPS}}}},
                           'users.op.projects', 'is not a name')

    def test_roles(self):
        for roles in ('migration_operator', {'r': 1}, None, [''], [1],
                      ['reader', None]):
            self.assertInvalid(
                {'users': {'op': {'projects': {'p1': roles}}}},
                'users.op.projects.p1 must be a list of role names')

    def test_one_bad_entry_rejects_the_whole_file(self):
        assignments = {'users': {
            'op': {'projects': {'p1': OPS}},
            'bad': {'projects': {'p2': 'reader'}}}}
        self.assertInvalid(assignments, 'users.bad.projects.p2')

    def test_no_roles_is_valid(self):
        roles = rolefile.RoleFile({'users': {'op': {'projects': {
            'p1': []}}}})
        self.assertEqual([], roles.effective_roles('op', 'project:p1'))
        self.assertEqual(['p1'], roles.projects)
