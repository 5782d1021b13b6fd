"""The ``[secmig_broker]`` group and one ``[secmig_peer_<cloud>]`` per peer.

A cloud runs one broker service (any number of workers sharing its
database). Peer clouds are listed in ``[secmig_broker] peers``; each has its
own group with the transport URL of its broker's message bus, its CA bundle
and what this cloud lets it do (inbound projects and roles, limits).
"""

from oslo_config import cfg

GROUP_NAME = 'secmig_broker'
PEER_GROUP_PREFIX = 'secmig_peer_'

broker_group = cfg.OptGroup(
    GROUP_NAME,
    title='secmig broker',
    help="""
The cloud's migration broker: it authorizes migrations against Keystone
roles and issues tickets (source side), and checks tickets and issues grants
(destination side), keeping an audit trail of every migration and receipt.
""")

broker_opts = [
    cfg.StrOpt('cert_file',
               default='/etc/secmig/broker.crt',
               help="""
PEM certificate chain of this cloud's broker (``secmig-nova-manage ca issue
broker``). Tickets, grants and envelopes are signed with it.
"""),
    cfg.StrOpt('key_file',
               default='/etc/secmig/broker.key',
               secret=True,
               help='PEM private key of ``cert_file`` (mode 0600).'),
    cfg.IntOpt('workers',
               default=1, min=1,
               help="""
Broker worker processes on this host. Several workers (or several broker
hosts) may serve one topic and share one database.
"""),
    cfg.StrOpt('topic',
               default='secmig_broker',
               help='RPC topic the broker listens on.'),
    cfg.StrOpt('database_connection',
               default='sqlite:////var/lib/secmig/broker.sqlite',
               secret=True,
               help="""
SQLAlchemy URL of the broker database (migration records, receipts, the
replay store). sqlite by default; use MySQL or PostgreSQL when several
broker hosts share it. Create or upgrade it with ``secmig-nova-manage db
sync``.
"""),
    cfg.ListOpt('peers',
                default=[],
                help="""
Cloud ids of the peer clouds this broker exchanges migrations with; each
needs a ``[secmig_peer_<cloud-id>]`` section.
"""),
    cfg.IntOpt('ticket_ttl',
               default=120, min=10, max=3600,
               help='Lifetime in seconds of the authorization tickets '
                    'issued here.'),
    cfg.IntOpt('grant_ttl',
               default=300, min=10, max=3600,
               help='Lifetime in seconds of the grants issued here; the '
                    'source must open its tunnel connections within it.'),
    cfg.IntOpt('registration_ttl',
               default=900, min=30,
               help="""
Seconds a destination tunnel registration (and an admitted migration that
never reports back) counts against admission limits before it expires.
"""),
    cfg.IntOpt('envelope_max_age',
               default=60, min=5, max=600,
               help="""
Largest accepted age (and clock difference) in seconds of a signed
envelope from a host or a peer broker; older ones are refused as stale.
"""),
    cfg.IntOpt('rpc_timeout',
               default=30, min=1,
               help="""
Seconds to wait for a peer broker's answer before the grant request fails
with peer_unavailable.
"""),
    cfg.StrOpt('rpc_version_cap',
               help="""
Highest broker RPC API version to send (for rolling upgrades: set it to the
version of the oldest broker still running).
"""),
    cfg.IntOpt('project_max_concurrent',
               default=10, min=0,
               help='Migrations of one project this cloud accepts at once '
                    'as a destination (0: unlimited).'),
    cfg.IntOpt('project_rate',
               default=60, min=0,
               help='Migrations of one project this cloud accepts per '
                    'minute as a destination (0: unlimited).'),
]

peer_opts = [
    cfg.StrOpt('transport_url',
               secret=True,
               help='oslo.messaging transport URL of the peer broker\'s '
                    'message bus.'),
    cfg.StrOpt('ca_file',
               help='PEM CA bundle of the peer cloud: its broker and '
                    'hosts must chain to it.'),
    cfg.StrOpt('crl_file',
               help='Optional PEM CRL of the peer cloud\'s CA.'),
    cfg.ListOpt('allowed_projects',
                default=[],
                help="""
Projects (ids, as named in the peer's tickets) whose migrations this cloud
accepts from the peer; ``*`` for any. Empty: none (inbound migrations from
this peer are refused).
"""),
    cfg.ListOpt('allowed_roles',
                default=['migration_operator'],
                help="""
A ticket from this peer is accepted only if the roles that satisfied the
peer's policy include one of these.
"""),
    cfg.IntOpt('max_concurrent',
               default=5, min=0,
               help='Migrations from this peer accepted at once '
                    '(0: unlimited).'),
    cfg.IntOpt('rate',
               default=30, min=0,
               help='Migrations from this peer accepted per minute '
                    '(0: unlimited).'),
]


def peer_group(cloud_id):
    return PEER_GROUP_PREFIX + cloud_id


def register_opts(conf):
    # A fresh OptGroup per ConfigOpts (see conf/secmig.py).
    conf.register_group(cfg.OptGroup(GROUP_NAME, title=broker_group.title,
                                     help=broker_group.help))
    conf.register_opts(broker_opts, group=GROUP_NAME)


def register_peer_opts(conf, cloud_id):
    """Register ``[secmig_peer_<cloud_id>]``; returns the group."""
    name = peer_group(cloud_id)
    conf.register_opts(peer_opts, group=name)
    return getattr(conf, name)


def list_opts():
    return {broker_group: broker_opts,
            PEER_GROUP_PREFIX + '<cloud-id>': peer_opts}
