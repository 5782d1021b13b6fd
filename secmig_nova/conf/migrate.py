"""Options of ``secmig-migrate`` (its own configuration file).

``[secmig_migrate]`` says who asks and which broker decides;
``[secmig_migrate_source]`` and ``[secmig_migrate_destination]`` describe
the two hosts with the same options a compute host has in ``[secmig]``,
plus how to reach them (libvirt URI, the command prefix that runs a tunnel
process there).
"""

from oslo_config import cfg

from secmig_nova.conf import secmig as secmig_conf

GROUP_NAME = 'secmig_migrate'
SOURCE_GROUP = 'secmig_migrate_source'
DESTINATION_GROUP = 'secmig_migrate_destination'

EMBEDDED = 'embedded'
REMOTE = 'remote'

migrate_group = cfg.OptGroup(
    GROUP_NAME,
    title='secmig-migrate',
    help="""
Secure live migration of a libvirt domain outside nova. By default the
brokers run inside the command (``broker = embedded``) on an in-process
message bus and take role assignments from ``role_file``; with ``broker =
remote`` the clouds' own ``secmig-broker`` services decide (they ask
Keystone).
""")

migrate_opts = [
    cfg.StrOpt('broker',
               default=EMBEDDED,
               choices=[
                   (EMBEDDED, 'a broker per cloud inside this process, on '
                    'the in-process fake:// transport, with roles from '
                    'role_file; needs the clouds\' broker certificates'),
                   (REMOTE, 'the clouds\' secmig-broker services, reached '
                    'through each host group\'s broker_transport_url; '
                    'roles come from their Keystone'),
               ],
               help='Which broker authorizes and grants the migration.'),
    cfg.StrOpt('role_file',
               default='/etc/secmig-nova/roles.json',
               help="""
JSON role assignments used by the embedded broker instead of Keystone:
``{"users": {"<user>": {"projects": {"<project>": ["<role>", ...]}}}}``.
Same-cloud migrations need ``migration_operator`` (or ``admin``); across
clouds also ``cross_cloud_operator``. Unreadable, malformed, or
writable by group or others: every migration is refused.
"""),
    cfg.StrOpt('user_id',
               default='operator',
               help='User the migration is done for (checked against the '
                    'role file or Keystone).'),
    cfg.StrOpt('project_id',
               default='default',
               help='Project of the migrated domain.'),
    cfg.StrOpt('state_dir',
               default='/var/lib/secmig-migrate',
               help="""
Directory for the embedded brokers' audit databases
(``<cloud-id>.sqlite``) and the receipts of each migration
(``receipts/<migration-id>.json``, verifiable offline with
``secmig-nova-manage receipts verify``).
"""),
    cfg.IntOpt('parallel_connections',
               default=0,
               min=0,
               max=32,
               help="""
QEMU multifd channels (``VIR_MIGRATE_PARALLEL``); each is its own TLS
connection with its own receipts. 0 or 1: a single connection.
"""),
    cfg.IntOpt('bandwidth',
               default=0,
               min=0,
               help='Migration bandwidth cap in MiB/s (0: libvirt\'s '
                    'default).'),
    cfg.IntOpt('timeout',
               default=600,
               min=1,
               help='Seconds before the migration job is aborted (the '
                    'domain stays on the source).'),
    cfg.BoolOpt('persistent',
                default=False,
                help='Define the domain on the destination and undefine it '
                     'on the source (VIR_MIGRATE_PERSIST_DEST | '
                     'VIR_MIGRATE_UNDEFINE_SOURCE).'),
]

host_group_help = """
One end of the migration: the options a compute host has in ``[secmig]``
(its cloud, certificate, key, CA, socket directory, tunnel ports), how
``secmig-migrate`` reaches it (``libvirt_uri``, ``exec_prefix``) and, for
the embedded broker, its cloud's broker certificate.
"""

host_opts = [
    cfg.StrOpt('libvirt_uri',
               help="""
libvirt URI of this host's libvirtd (the destination URI is what the source
libvirtd connects to, peer to peer). Required.
"""),
    cfg.StrOpt('host',
               help="""
Host name as the broker and the peer know it. Unset: the name in the host
certificate's ``urn:secmig:<cloud>:host:<name>``.
"""),
    cfg.ListOpt('exec_prefix',
                default=[],
                help="""
Command prefix that runs this host's tunnel process on that host, e.g.
``ssh,root@host-b`` or ``nsenter,-t,<pid>,-m,-u`` (the lab). Empty: run it
here. The tunnel must run where this host's QEMU sockets are.
"""),
    cfg.StrOpt('python',
               help="""
Interpreter on that host that has secmig_nova installed (for the tunnel
process). Unset: this command's own interpreter.
"""),
    cfg.StrOpt('broker_cert_file',
               help="""
Embedded broker: this cloud's broker certificate (``secmig-nova-manage ca
issue broker``). It signs the tickets or grants of this cloud.
"""),
    cfg.StrOpt('broker_key_file',
               secret=True,
               help='Embedded broker: the key of ``broker_cert_file``.'),
]

_TIMEOUTS = [o for o in secmig_conf.driver_opts
             if o.name in ('tunnel_ready_timeout', 'tunnel_result_timeout')]

HOST_OPTS = (secmig_conf.identity_opts + secmig_conf.tunnel_opts + _TIMEOUTS
             + secmig_conf.broker_client_opts + host_opts)


def _group(name, title, help):
    return cfg.OptGroup(name, title=title, help=help)


def register_opts(conf):
    """Register every group on ``conf`` (fresh OptGroups per object)."""
    conf.register_group(_group(GROUP_NAME, migrate_group.title,
                               migrate_group.help))
    conf.register_opts(migrate_opts, group=GROUP_NAME)
    for name, title in ((SOURCE_GROUP, 'secmig-migrate source host'),
                        (DESTINATION_GROUP,
                         'secmig-migrate destination host')):
        conf.register_group(_group(name, title, host_group_help))
        conf.register_opts(HOST_OPTS, group=name)


def list_opts():
    return [
        (migrate_group, migrate_opts),
        (cfg.OptGroup(SOURCE_GROUP, title='secmig-migrate source host',
                      help=host_group_help), HOST_OPTS),
        (cfg.OptGroup(DESTINATION_GROUP,
                      title='secmig-migrate destination host',
                      help=host_group_help), HOST_OPTS),
    ]
