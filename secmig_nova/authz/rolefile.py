"""Role assignments from a local file, in place of Keystone.

``secmig-migrate`` with its embedded broker (no Keystone, no message bus)
still decides every migration with the same oslo.policy rules and the same
``keystone_role:`` check as a real broker; only the source of the role
assignments differs. The file is JSON::

    {"users": {
        "operator": {"projects": {"lab": ["migration_operator",
                                          "cross_cloud_operator"]}},
        "auditor":  {"projects": {"lab": ["reader"]}}
    }}

It is read once (a broken file is an error at start-up, never an empty
allow list); a user or project it does not name has no roles. Tokens are
not supported: the embedded broker trusts the user and project given on
the command line, as a compute host's broker trusts nova-api's.
"""

import json
import os
import stat

from secmig_nova.authz import keystone

ROLE_FILE_INVALID = 'role_file_invalid'


class RoleFileError(keystone.KeystoneError):
    def __init__(self, message):
        super().__init__(ROLE_FILE_INVALID, message)


def _names(value, what):
    if not isinstance(value, dict):
        raise RoleFileError('%s must be an object' % what)
    for name in value:
        if not isinstance(name, str) or not name or len(name) > 255:
            raise RoleFileError('%s: %r is not a name' % (what, name))
    return value


class RoleFile:
    """Role lookups answered from a JSON file.

    Implements the :class:`~secmig_nova.authz.keystone.KeystoneClient`
    calls that the policy check and the broker make.
    """

    cache_ttl = 0

    def __init__(self, assignments, path='<memory>'):
        self.path = path
        self._roles = {}
        users = _names(assignments.get('users') if isinstance(
            assignments, dict) else None, '%s: "users"' % path)
        for user, entry in users.items():
            projects = _names(entry.get('projects') if isinstance(
                entry, dict) else None,
                '%s: users.%s.projects' % (path, user))
            for project, roles in projects.items():
                if not isinstance(roles, list) or not all(
                        isinstance(r, str) and r for r in roles):
                    raise RoleFileError('%s: users.%s.projects.%s must be a '
                                        'list of role names'
                                        % (path, user, project))
                self._roles[(user, 'project:%s' % project)] = \
                    sorted(set(roles))

    @classmethod
    def load(cls, path):
        """Read and check ``path``; it must not be writable by others.

        The file decides who may migrate what, as Keystone's role
        assignments do: a file that group or other users can change is
        refused, like an SSH key (chmod go-w it).
        """
        try:
            with open(path) as f:
                mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
                if mode & 0o022:
                    raise RoleFileError(
                        'role file %s has mode %04o: it must not be '
                        'writable by group or others (chmod go-w)'
                        % (path, mode))
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise RoleFileError('cannot read role file %s: %s' % (path, e))
        return cls(data, path)

    @property
    def projects(self):
        return sorted({scope.split(':', 1)[1] for _user, scope in self._roles})

    def effective_roles(self, user_id, scope):
        """Roles of ``user_id`` on a project scope; none for other scopes."""
        return list(self._roles.get((user_id, str(scope)), ()))

    def validate_token(self, token):
        raise keystone.KeystoneError(
            keystone.TOKEN_INVALID, 'the role file %s cannot validate '
            'Keystone tokens; give --user and --project, or configure a '
            'real broker' % self.path)

    def clear_cache(self):
        pass
