"""Parameters of one tunnel process (one side of one migration).

A tunnel process takes a JSON object (file or stdin). Tunables default to the
``[secmig]`` options so nova.conf, the CLI and the tunnel agree. Everything
is validated up front: a tunnel never starts half-configured.
"""

import dataclasses
import ipaddress
import math
import os
import re
import stat

from secmig_nova.conf import secmig as secmig_conf
from secmig_nova.trust import certs
from secmig_nova.tunnel import errors

SIDES = ('source', 'destination')
KINDS = ('memory', 'disk')
TEST_HOOKS_ENV = 'SECMIG_TUNNEL_TEST_HOOKS'
# Each unauthenticated connection holds a thread and two descriptors.
MAX_PREAUTH_CONNECTIONS = secmig_conf.MAX_PREAUTH_CONNECTIONS

_DEFAULTS = {opt.dest: opt.default for opt in secmig_conf.ALL_OPTS}


def _invalid(msg, *args):
    return errors.TunnelError(errors.CONFIG_INVALID, msg % args,
                              notify_peer=False)


@dataclasses.dataclass
class TrustParams:
    cloud_id: str
    ca_file: str
    crl_file: str = None


@dataclasses.dataclass
class TunnelParams:
    side: str
    migration_id: str
    cloud_id: str
    cert_file: str
    key_file: str
    trust: TrustParams
    peer: TrustParams
    # source: {kind: unix socket path to listen on}
    # destination: {kind: local QEMU unix socket path to connect to}
    sockets: dict
    grant: str = None
    # destination: the endpoint grants must name when the source reaches
    # this host through a NAT or port forward (default: the bound address).
    advertise_endpoint: str = None
    listen_host: str = _DEFAULTS['tunnel_listen_address']
    port_min: int = _DEFAULTS['tunnel_port_min']
    port_max: int = _DEFAULTS['tunnel_port_max']
    checkpoint_bytes: int = _DEFAULTS['checkpoint_bytes']
    tls_cipher: str = _DEFAULTS['tls_cipher']
    ecdh_curve: str = _DEFAULTS['ecdh_curve']
    handshake_timeout: float = _DEFAULTS['handshake_timeout']
    local_endpoint_timeout: float = _DEFAULTS['local_endpoint_timeout']
    idle_timeout: float = _DEFAULTS['idle_timeout']
    max_clock_skew: float = _DEFAULTS['max_clock_skew']
    # destination: unauthenticated connections held at once (preauth.py).
    max_preauth_connections: int = _DEFAULTS['tunnel_max_preauth_connections']
    expect_connections: dict = None
    deadline: float = 3600.0
    termination_grace: float = 5.0
    socket_mode: int = 0o660
    # destination: the host's ledger of used grant connections (ledger.py).
    grant_ledger_dir: str = _DEFAULTS['grant_ledger_dir']
    chunk_size: int = 256 * 1024
    test_hooks: dict = dataclasses.field(default_factory=dict)

    @property
    def source(self):
        return self.side == 'source'


# Longest UNIX socket path in bytes: ``sun_path`` holds 108 bytes with the
# terminating NUL that QEMU and libvirt write.
SOCKET_PATH_MAX = 107
# Longest timeout, deadline or grace period in seconds: longer is a
# mistake, and much longer overflows socket and thread timeouts.
MAX_SECONDS = 30 * 24 * 3600
# A checkpoint offset is a 64-bit field of the CHECKPOINT frame.
CHECKPOINT_BYTES_MAX = (1 << 63) - 1
# Fault injection hooks (connection.py) and their value types.
TEST_HOOKS = {'corrupt_tx_at': int}

_KNOWN = (frozenset(f.name for f in dataclasses.fields(TunnelParams))
          - {'trust'}) | {'ca_file', 'crl_file'}
_TRUST_KEYS = ('cloud_id', 'ca_file', 'crl_file')
_STRINGS = ('tls_cipher', 'ecdh_curve', 'advertise_endpoint')
_INTEGERS = ('port_min', 'port_max', 'checkpoint_bytes', 'chunk_size',
             'max_preauth_connections')
# Durations in seconds: name -> whether zero is allowed.
_SECONDS = {'handshake_timeout': False, 'idle_timeout': False,
            'deadline': False, 'local_endpoint_timeout': True,
            'max_clock_skew': True, 'termination_grace': True}
_OCTAL_MODE_RE = re.compile(r'[0-7]{1,4}\Z')
_HOSTNAME_RE = re.compile(
    r'(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
    r'(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z')
_JSON_TYPES = {dict: 'an object', list: 'an array', str: 'a string',
               bool: 'a boolean', int: 'an integer', float: 'a number',
               type(None): 'null'}


def _type(value):
    """The JSON name of ``value``'s type, for messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _show(value, limit=100):
    """A parameter value quoted for a message: escaped and cut short."""
    return '"%s"' % errors.peer_text(value, limit=limit)


def _names(names):
    names = sorted(errors.peer_text(n, limit=50) for n in names)
    more = len(names) - 10
    tail = ' and %d more' % more if more > 0 else ''
    return ', '.join(names[:10]) + tail


def _string(name, value):
    """``value`` if it is a non-empty printable string.

    Paths, ids and names never need a NUL byte (which the kernel cannot
    take), a control character or another non-printable one (which would
    forge or hide in a log line).
    """
    if not isinstance(value, str):
        raise _invalid('%s must be a string, not %s', name, _type(value))
    if not value:
        raise _invalid('%s must not be empty', name)
    if not value.isprintable():
        raise _invalid('%s %s contains a NUL byte, a control character or '
                       'another non-printable character', name, _show(value))
    return value


def _required_string(obj, name):
    if name not in obj:
        raise _invalid('%s is required', name)
    return _string(name, obj[name])


def _file(name, value):
    _string(name, value)
    if not os.path.isfile(value):
        raise _invalid('%s %s is not a readable file', name, _show(value))
    return value


def _integer(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid('%s must be an integer, not %s', name, _type(value))
    return value


def _seconds(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid('%s must be a number of seconds, not %s', name,
                       _type(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid('%s must be a finite number, not %s', name, value)
    return value


def _socket_path(name, value):
    _string(name, value)
    if not os.path.isabs(value):
        raise _invalid('%s %s is not an absolute path', name, _show(value))
    size = len(os.fsencode(value))
    if size > SOCKET_PATH_MAX:
        raise _invalid('%s %s is %d bytes long; a UNIX socket path has at '
                       'most %d', name, _show(value, limit=40), size,
                       SOCKET_PATH_MAX)
    return value


def _listen_host(value):
    _string('listen_host', value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.match(value):
            raise _invalid('listen_host %s is neither an IP address nor a '
                           'host name', _show(value))
    return value


def _trust(obj, prefix):
    """A trust store's parameters; ``prefix``: ``''`` or ``'peer.'``."""
    if not isinstance(obj, dict):
        raise _invalid('%s must be an object with cloud_id and ca_file, '
                       'not %s', prefix.rstrip('.'), _type(obj))
    unknown = set(obj) - set(_TRUST_KEYS)
    if unknown:
        raise _invalid('unknown %s parameters: %s', prefix.rstrip('.'),
                       _names(unknown))
    for name in ('cloud_id', 'ca_file'):
        if obj.get(name) is None:
            raise _invalid('%s%s is required', prefix, name)
    cloud_id = _string(prefix + 'cloud_id', obj['cloud_id'])
    if not certs.CLOUD_ID_RE.match(cloud_id):
        raise _invalid('%scloud_id %s is not a cloud id', prefix,
                       _show(cloud_id))
    ca_file = _file(prefix + 'ca_file', obj['ca_file'])
    crl_file = obj.get('crl_file')
    if crl_file is not None:
        _file(prefix + 'crl_file', crl_file)
    return TrustParams(cloud_id, ca_file, crl_file)


def _check_key_file(path):
    """Refuse a private key that group or others may access.

    Like ssh: a key others could read may have leaked, and a tunnel that
    accepted it would keep a misconfiguration alive unnoticed.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise _invalid('key_file %s is not readable: %s', _show(path),
                       e.strerror)
    if not stat.S_ISREG(st.st_mode):
        raise _invalid('key_file %s is not a regular file', _show(path))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise errors.TunnelError(
            errors.KEY_FILE_INSECURE,
            'key_file %s has mode %04o: a private key must be accessible to '
            'its owner only (chmod 600 it)' % (_show(path), mode),
            notify_peer=False)


def _sockets(sockets):
    if not isinstance(sockets, dict) or not sockets:
        raise _invalid('sockets must map %s to UNIX socket paths',
                       '/'.join(KINDS))
    unknown = set(sockets) - set(KINDS)
    if unknown:
        raise _invalid('sockets: unknown stream kinds %s (known: %s)',
                       _names(unknown), '/'.join(KINDS))
    for kind, path in sockets.items():
        _socket_path('sockets.%s' % kind, path)
    if len(set(sockets.values())) != len(sockets):
        raise _invalid('sockets must name a different path for each kind')
    return dict(sockets)


def _socket_mode(mode):
    if not isinstance(mode, str) or not _OCTAL_MODE_RE.match(mode):
        raise _invalid('socket_mode must be an octal string like "0660"')
    value = int(mode, 8)
    if value > 0o777:
        raise _invalid('socket_mode %s is outside 0000..0777', mode)
    return value


def _test_hooks(hooks, environ):
    if not isinstance(hooks, dict):
        raise _invalid('test_hooks must be an object, not %s', _type(hooks))
    if not hooks:
        return {}
    # Fault injection exists for the test suite only: a parameters
    # file alone can never switch it on.
    if environ.get(TEST_HOOKS_ENV) != '1':
        raise _invalid('test_hooks given but %s=1 is not set in the '
                       'environment', TEST_HOOKS_ENV)
    unknown = set(hooks) - set(TEST_HOOKS)
    if unknown:
        raise _invalid('unknown test_hooks: %s', _names(unknown))
    for name, value in hooks.items():
        if _integer('test_hooks.%s' % name, value) < 0:
            raise _invalid('test_hooks.%s must not be negative', name)
    return dict(hooks)


def from_dict(obj, environ=None):
    """Validate a parameters object.

    :raises TunnelError: ``config_invalid`` (whatever went wrong, even an
        unexpected exception: a bad parameter never becomes a traceback),
        ``key_file_insecure`` or ``socket_mode_insecure``.
    """
    environ = os.environ if environ is None else environ
    try:
        return _from_dict(obj, environ)
    except errors.TunnelError:
        raise
    except Exception as e:
        raise _invalid('parameters not usable: %s: %s', type(e).__name__,
                       errors.peer_text(str(e)))


def _from_dict(obj, environ):
    if not isinstance(obj, dict):
        raise _invalid('parameters must be a JSON object, not %s',
                       _type(obj))
    unknown = set(obj) - _KNOWN
    if unknown:
        raise _invalid('unknown parameters: %s', _names(unknown))
    side = obj.get('side')
    if not isinstance(side, str) or side not in SIDES:
        raise _invalid('side must be one of %s', '/'.join(SIDES))
    strings = {name: _required_string(obj, name)
               for name in ('migration_id', 'cloud_id', 'cert_file',
                            'key_file')}
    if len(obj['migration_id']) > 255 or '/' in obj['migration_id']:
        raise _invalid('migration_id must be at most 255 characters '
                       'without "/"')
    trust = _trust({'cloud_id': obj['cloud_id'],
                    'ca_file': obj.get('ca_file'),
                    'crl_file': obj.get('crl_file')}, '')
    peer = _trust(obj['peer'], 'peer.') if 'peer' in obj else trust
    _file('cert_file', strings['cert_file'])
    sockets = _sockets(obj.get('sockets'))
    kwargs = dict(side=side, trust=trust, peer=peer, sockets=sockets,
                  **strings)
    if 'listen_host' in obj:
        kwargs['listen_host'] = _listen_host(obj['listen_host'])
    if 'grant_ledger_dir' in obj:
        value = _string('grant_ledger_dir', obj['grant_ledger_dir'])
        if not os.path.isabs(value):
            raise _invalid('grant_ledger_dir %s is not an absolute path',
                           _show(value))
        kwargs['grant_ledger_dir'] = value
    for name in _STRINGS:
        if name in obj:
            kwargs[name] = _string(name, obj[name])
    for name in _INTEGERS:
        if name in obj:
            kwargs[name] = _integer(name, obj[name])
    for name in _SECONDS:
        if name in obj:
            kwargs[name] = _seconds(name, obj[name])
    params = TunnelParams(**kwargs)
    grant = obj.get('grant')
    if grant is not None:
        _string('grant', grant)
    if side == 'source':
        if grant is None:
            raise _invalid('a source tunnel needs the grant')
        params.grant = grant
    if 'socket_mode' in obj:
        params.socket_mode = _socket_mode(obj['socket_mode'])
    if params.socket_mode & 0o002:
        raise errors.TunnelError(
            errors.SOCKET_MODE_INSECURE,
            'socket_mode %04o lets every local user connect to the '
            'migration sockets; grant access through the group (e.g. 0660)'
            % params.socket_mode, notify_peer=False)
    if obj.get('expect_connections') is not None:
        exp = obj['expect_connections']
        if (not isinstance(exp, dict) or not set(exp) <= set(KINDS) or
                not all(isinstance(n, int) and not isinstance(n, bool)
                        and 0 < n <= 64 for n in exp.values())):
            raise _invalid('expect_connections must map kinds to counts '
                           'within 1..64')
        params.expect_connections = dict(exp)
    if params.tls_cipher not in ('aes-256-gcm', 'aes-128-gcm'):
        raise _invalid('tls_cipher must be aes-256-gcm or aes-128-gcm')
    if params.ecdh_curve not in ('prime256v1', 'secp384r1'):
        raise _invalid('ecdh_curve must be prime256v1 or secp384r1')
    if not 64 * 1024 <= params.checkpoint_bytes <= CHECKPOINT_BYTES_MAX:
        raise _invalid('checkpoint_bytes must be within 65536..%d',
                       CHECKPOINT_BYTES_MAX)
    for name, zero in _SECONDS.items():
        value = getattr(params, name)
        if value < 0 or (value == 0 and not zero):
            raise _invalid('%s must be %s', name,
                           'positive' if not zero else 'not negative')
        if value > MAX_SECONDS:
            raise _invalid('%s must be at most %d seconds', name,
                           MAX_SECONDS)
    if not 1 <= params.max_preauth_connections <= MAX_PREAUTH_CONNECTIONS:
        raise _invalid('max_preauth_connections must be within 1..%d',
                       MAX_PREAUTH_CONNECTIONS)
    if not 4096 <= params.chunk_size <= 1 << 20:
        raise _invalid('chunk_size must be within 4096..1048576')
    if not 0 < params.port_min <= params.port_max < 65536:
        raise _invalid('port range %s..%s is invalid', params.port_min,
                       params.port_max)
    if obj.get('test_hooks') is not None:
        params.test_hooks = _test_hooks(obj['test_hooks'], environ)
    # Last: only parameters that are otherwise usable get the file
    # system checked.
    _check_key_file(params.key_file)
    return params
