"""The ``[secmig]`` group: this host's identity and the migration tunnel."""

from oslo_config import cfg

from secmig_nova.tunnel import tls_conf

GROUP_NAME = 'secmig'
# Upper bound of tunnel_max_preauth_connections: each unauthenticated
# connection holds a thread and two file descriptors in the tunnel process.
MAX_PREAUTH_CONNECTIONS = 1024

secmig_group = cfg.OptGroup(
    GROUP_NAME,
    title='Secure live migration',
    help="""
Options of this host's secure live migration: the cloud it belongs to, the
X.509 identity it presents to the peer host, the trust store it verifies peers
with, and the tunnel that carries QEMU's migration stream.
""")

identity_opts = [
    cfg.StrOpt('cloud_id',
               default='default',
               regex=r'^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z',
               help="""
Identifier of the cloud this host belongs to. It must equal the cloud id in
the ``urn:secmig:<cloud-id>:host:<hostname>`` URI of this host's certificate
and is the issuer of tickets and the audience of grants.
"""),
    cfg.StrOpt('cert_file',
               default='/etc/secmig/host.crt',
               help="""
PEM certificate chain of this host (leaf first, then any intermediates), as
issued by ``secmig-nova-manage ca issue host``. Presented to the peer host in
the tunnel's TLS handshake and embedded (``x5c``) in this host's receipts.
"""),
    cfg.StrOpt('key_file',
               default='/etc/secmig/host.key',
               secret=True,
               help="""
PEM private key of ``cert_file`` (ECDSA P-256). Must be readable by the
nova-compute user only (mode 0600).
"""),
    cfg.StrOpt('ca_file',
               default='/etc/secmig/ca.crt',
               help="""
PEM bundle of this cloud's CA certificates. Peer hosts of this cloud and this
cloud's broker must chain to one of them.
"""),
    cfg.StrOpt('crl_file',
               help="""
Optional PEM certificate revocation list issued by this cloud's CA. When set,
a revoked host or broker certificate is refused; when the CRL is set but
unreadable or not signed by the CA, everything is refused (fail closed).
"""),
    cfg.DictOpt('peer_ca_files',
                default={},
                help="""
Compute hosts only: the peer trust clouds this host live-migrates servers
to and from, as ``<cloud-id>:<PEM CA bundle>`` pairs (the same CA files as
the broker's ``[secmig_peer_<cloud-id>] ca_file``). A host learns which
cloud the other host of a migration belongs to from its placement trait
``CUSTOM_SECMIG_CLOUD_<CLOUD_ID>``; a host of a cloud not listed here (or
this host's own) is refused. Empty: migrations stay within this cloud.
"""),
]

tunnel_opts = [
    cfg.StrOpt('socket_dir',
               default='/run/secmig',
               help="""
Directory for the per-migration UNIX sockets that QEMU connects to on the
source host (``<socket_dir>/<migration-id>.sock``) and listens on at the
destination. Must exist on both hosts with the same path.
"""),
    cfg.StrOpt('grant_ledger_dir',
               default='/var/lib/secmig/used-grants',
               help="""
Directory where this host's destination tunnels record each grant
connection they accepted, so a grant is single-use for the host and not
only for one tunnel process (a restarted tunnel, or a second one, refuses
it with ``connection_replayed``). Created with mode 0700 if missing; a
tunnel that cannot use it refuses to start (``grant_ledger_unavailable``).
Entries are removed once their grant has expired. Keep it on a local file
system that survives a restart of nova-compute.
"""),
    cfg.HostAddressOpt('tunnel_listen_address',
                       default='127.0.0.1',
                       help="""
Address the destination tunnel listens on for the source host's TLS
connection. Set it to this host's address on the live-migration network.
"""),
    cfg.PortOpt('tunnel_port_min',
                default=49400,
                help='Lowest TCP port of the destination tunnel listener.'),
    cfg.PortOpt('tunnel_port_max',
                default=49499,
                help='Highest TCP port of the destination tunnel listener.'),
    cfg.IntOpt('checkpoint_bytes',
               default=64 * 1024 * 1024,
               min=64 * 1024,
               help="""
Every this many bytes of a stream direction the sender sends a checkpoint
with the SHA-256 of everything sent so far, which the peer must acknowledge
with an equal digest; a mismatch aborts the migration.
"""),
    cfg.StrOpt('tls_cipher',
               default=tls_conf.DEFAULT_CIPHER,
               choices=sorted(tls_conf.CIPHER_SUITES.items()),
               help='TLS 1.3 cipher suite of the migration tunnel.'),
    cfg.StrOpt('ecdh_curve',
               default=tls_conf.DEFAULT_CURVE,
               choices=sorted(tls_conf.GROUPS.items()),
               help='ECDHE group of the tunnel\'s TLS 1.3 key exchange.'),
    cfg.FloatOpt('handshake_timeout',
                 default=10.0,
                 min=0.1,
                 help="""
Seconds allowed for connecting to the peer, the TLS handshake and the
HELLO/HELLO_OK exchange of one tunnel connection.
"""),
    cfg.IntOpt('tunnel_max_preauth_connections',
               default=32,
               min=1,
               max=MAX_PREAUTH_CONNECTIONS,
               help="""
Most connections the destination tunnel holds at once before their peer is
authorized (TLS handshake with a certificate of the source cloud, then a
HELLO with a valid grant for the migration). Anyone who can reach the tunnel
port can open such connections; at this limit a new connection still gets in
and an older unauthenticated one is closed: one still in the TLS handshake
before one that completed it, from the peer address holding the most, oldest
first. Such connections never affect the migration: they are counted per
reason, logged rate-limited and listed in the tunnel's outcome. Each must
complete the handshake and HELLO within ``handshake_timeout``.
"""),
    cfg.FloatOpt('local_endpoint_timeout',
                 default=10.0,
                 min=0.0,
                 help="""
Seconds the destination tunnel keeps retrying to connect to the local QEMU
migration socket, which QEMU creates shortly after the migration starts.
"""),
    cfg.FloatOpt('idle_timeout',
                 default=120.0,
                 min=1.0,
                 help="""
A tunnel connection that makes no progress for this many seconds is aborted:
no payload moved in either direction and no checkpoint was acknowledged.
Bytes from the peer that complete no frame are not progress.
"""),
    cfg.FloatOpt('max_clock_skew',
                 default=30.0,
                 min=0.0,
                 help="""
Seconds of clock difference tolerated when checking the validity period of
grants and tickets.
"""),
]

ENFORCEMENT_MODES = ('required', 'preferred', 'disabled')

driver_opts = [
    cfg.StrOpt('enforcement',
               default='required',
               choices=[
                   ('required', 'every live migration from or to this host '
                    'goes through the secmig tunnel; one that cannot is '
                    'refused before anything moves'),
                   ('preferred', 'use the tunnel when both hosts offer '
                    'it, migrate plainly otherwise'),
                   ('disabled', 'behave exactly like the plain libvirt '
                    'driver'),
               ],
               help="""
Enforcement of secure live migration on this compute host
(``compute_driver = secmig.SecureLibvirtDriver``). A flavor extra spec
``secmig:enforcement`` replaces it for the flavor's servers; an image
property ``secmig:enforcement`` can only make it stricter. With
``disabled`` the driver neither loads certificates nor offers the tunnel,
but still refuses servers whose flavor or image requires it.
"""),
    cfg.FloatOpt('tunnel_ready_timeout',
                 default=30.0,
                 min=1.0,
                 help="""
Seconds a tunnel process may take to report that it listens (on the
destination: its TLS port; on the source: the QEMU sockets) before the
migration is refused.
"""),
    cfg.BoolOpt('tunnel_spare',
                default=True,
                help="""
Keep one ``secmig-tunnel`` process started ahead on this host, its
interpreter and libraries loaded, and hand it the next migration's
parameters, instead of starting a process when the migration begins (about
0.3 s off each side's setup on a 2-core host). Each process still serves
exactly one migration; the next spare starts once that migration's tunnel
has ended. The spare costs one idle process (about 50 MiB resident).
Migrations with a non-default ``tls_cipher`` or ``ecdh_curve`` always start
a fresh process.
"""),
    cfg.FloatOpt('tunnel_result_timeout',
                 default=60.0,
                 min=1.0,
                 help="""
Seconds to wait, after libvirt finished the migration, for the tunnel to
exchange the signed receipts and report its outcome. A tunnel still
running then is stopped and the migration is audited as failed.
"""),
]

broker_client_opts = [
    cfg.StrOpt('broker_transport_url',
               secret=True,
               help="""
oslo.messaging transport URL of the message bus this cloud's
``secmig-broker`` listens on. Unset: nova's own ``[DEFAULT]
transport_url``.
"""),
    cfg.StrOpt('broker_topic',
               default='secmig_broker',
               help="""
RPC topic of this cloud's broker; must equal the broker's
``[secmig_broker] topic``.
"""),
    cfg.IntOpt('broker_timeout',
               default=30,
               min=1,
               help="""
Seconds to wait for the broker's answer to a ticket, grant, registration or
receipt request; a broker that does not answer in time refuses the
migration (fail closed).
"""),
    cfg.StrOpt('broker_version_cap',
               help="""
Highest broker RPC API version this host sends (rolling upgrades: the
version of the oldest broker still running).
"""),
]

ALL_OPTS = identity_opts + tunnel_opts + driver_opts + broker_client_opts


def _group(template):
    # A fresh OptGroup per ConfigOpts: an OptGroup holds per-option state
    # (overrides), so sharing the module's one would leak overrides
    # between configuration objects.
    return cfg.OptGroup(template.name, title=template.title,
                        help=template.help)


def register_opts(conf):
    conf.register_group(_group(secmig_group))
    conf.register_opts(ALL_OPTS, group=GROUP_NAME)


def list_opts():
    return {secmig_group: ALL_OPTS}
