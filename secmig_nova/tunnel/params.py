"""Parameters of one tunnel process (one side of one migration).

A tunnel process takes a JSON object (file or stdin). Tunables default to the
``[secmig]`` options so nova.conf, the CLI and the tunnel agree. Everything
is validated up front: a tunnel never starts half-configured.
"""

import dataclasses
import json
import os

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
    chunk_size: int = 256 * 1024
    test_hooks: dict = dataclasses.field(default_factory=dict)

    @property
    def source(self):
        return self.side == 'source'


_SIMPLE = {
    'listen_host': str, 'port_min': int, 'port_max': int,
    'checkpoint_bytes': int, 'tls_cipher': str, 'ecdh_curve': str,
    'handshake_timeout': (int, float), 'local_endpoint_timeout': (int, float),
    'idle_timeout': (int, float), 'max_clock_skew': (int, float),
    'deadline': (int, float), 'termination_grace': (int, float),
    'chunk_size': int, 'advertise_endpoint': str,
    'max_preauth_connections': int,
}


def _trust(obj, name):
    if not isinstance(obj, dict):
        raise _invalid('%s must be an object with cloud_id and ca_file',
                       name)
    cloud_id, ca_file = obj.get('cloud_id'), obj.get('ca_file')
    if not isinstance(cloud_id, str) or not certs.CLOUD_ID_RE.match(cloud_id):
        raise _invalid('%s.cloud_id is missing or invalid', name)
    if not isinstance(ca_file, str) or not os.path.isfile(ca_file):
        raise _invalid('%s.ca_file %r is not a readable file', name, ca_file)
    crl_file = obj.get('crl_file')
    if crl_file is not None and (not isinstance(crl_file, str)
                                 or not os.path.isfile(crl_file)):
        raise _invalid('%s.crl_file %r is not a readable file', name,
                       crl_file)
    return TrustParams(cloud_id, ca_file, crl_file)


def from_dict(obj, environ=None):
    """Validate a parameters object; raises TunnelError(config_invalid)."""
    environ = os.environ if environ is None else environ
    if not isinstance(obj, dict):
        raise _invalid('parameters must be a JSON object')
    known = {f.name for f in dataclasses.fields(TunnelParams)}
    known |= {'ca_file', 'crl_file'}
    unknown = set(obj) - known
    if unknown:
        raise _invalid('unknown parameters: %s', ', '.join(sorted(unknown)))
    side = obj.get('side')
    if side not in SIDES:
        raise _invalid('side must be one of %s', '/'.join(SIDES))
    for name in ('migration_id', 'cloud_id', 'cert_file', 'key_file'):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise _invalid('%s is required', name)
    if len(obj['migration_id']) > 255 or '/' in obj['migration_id']:
        raise _invalid('migration_id must be at most 255 characters '
                       'without "/"')
    trust = _trust({'cloud_id': obj['cloud_id'],
                    'ca_file': obj.get('ca_file'),
                    'crl_file': obj.get('crl_file')}, 'trust')
    peer = _trust(obj['peer'], 'peer') if 'peer' in obj else trust
    sockets = obj.get('sockets')
    if (not isinstance(sockets, dict) or not sockets
            or not set(sockets) <= set(KINDS)
            or not all(isinstance(p, str) and p for p in sockets.values())):
        raise _invalid('sockets must map %s to UNIX socket paths',
                       '/'.join(KINDS))
    kwargs = dict(side=side, migration_id=obj['migration_id'],
                  cloud_id=obj['cloud_id'], cert_file=obj['cert_file'],
                  key_file=obj['key_file'], trust=trust, peer=peer,
                  sockets=dict(sockets))
    for name, typ in _SIMPLE.items():
        if name in obj:
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, typ):
                raise _invalid('%s has the wrong type', name)
            kwargs[name] = value
    params = TunnelParams(**kwargs)
    if side == 'source':
        if not isinstance(obj.get('grant'), str):
            raise _invalid('a source tunnel needs the grant')
        params.grant = obj['grant']
    if 'socket_mode' in obj:
        mode = obj['socket_mode']
        try:
            if not isinstance(mode, str):
                raise ValueError(mode)
            params.socket_mode = int(mode, 8)
        except ValueError:
            raise _invalid('socket_mode must be an octal string like "0660"')
        if not 0 <= params.socket_mode <= 0o777:
            raise _invalid('socket_mode %s is outside 0000..0777', mode)
    if 'expect_connections' in obj and obj['expect_connections'] is not None:
        exp = obj['expect_connections']
        if (not isinstance(exp, dict) or not set(exp) <= set(KINDS) or
                not all(isinstance(n, int) and not isinstance(n, bool)
                        and 0 < n <= 64 for n in exp.values())):
            raise _invalid('expect_connections must map kinds to counts')
        params.expect_connections = dict(exp)
    if params.tls_cipher not in ('aes-256-gcm', 'aes-128-gcm'):
        raise _invalid('tls_cipher must be aes-256-gcm or aes-128-gcm')
    if params.ecdh_curve not in ('prime256v1', 'secp384r1'):
        raise _invalid('ecdh_curve must be prime256v1 or secp384r1')
    if params.checkpoint_bytes < 64 * 1024:
        raise _invalid('checkpoint_bytes must be at least 65536')
    for name in ('handshake_timeout', 'idle_timeout', 'deadline'):
        if getattr(params, name) <= 0:
            raise _invalid('%s must be positive', name)
    for name in ('local_endpoint_timeout', 'max_clock_skew',
                 'termination_grace'):
        if getattr(params, name) < 0:
            raise _invalid('%s must not be negative', name)
    if not 1 <= params.max_preauth_connections <= MAX_PREAUTH_CONNECTIONS:
        raise _invalid('max_preauth_connections must be within 1..%d',
                       MAX_PREAUTH_CONNECTIONS)
    if not 4096 <= params.chunk_size <= 1 << 20:
        raise _invalid('chunk_size must be within 4096..1048576')
    if not 0 < params.port_min <= params.port_max < 65536:
        raise _invalid('port range %s..%s is invalid', params.port_min,
                       params.port_max)
    hooks = obj.get('test_hooks') or {}
    if hooks:
        # Fault injection exists for the test suite only: a parameters
        # file alone can never switch it on.
        if environ.get(TEST_HOOKS_ENV) != '1':
            raise _invalid('test_hooks given but %s=1 is not set in the '
                           'environment', TEST_HOOKS_ENV)
        params.test_hooks = dict(hooks)
    return params


def load(path_or_stream):
    try:
        if hasattr(path_or_stream, 'read'):
            obj = json.load(path_or_stream)
        else:
            with open(path_or_stream) as f:
                obj = json.load(f)
    except (OSError, ValueError) as e:
        raise _invalid('cannot read parameters: %s', e)
    return from_dict(obj)
