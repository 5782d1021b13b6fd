"""Build and run a broker: its endpoint, RPC server and peer clients."""

import os

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_messaging.rpc import dispatcher
from oslo_policy import policy as oslo_policy
from oslo_service import service

from secmig_nova.authz import keystone
from secmig_nova.authz import policies
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker import manager
from secmig_nova.broker import rpcapi
from secmig_nova.conf import broker as broker_conf
from secmig_nova.trust import certs
from secmig_nova.trust import store

LOG = logging.getLogger(__name__)


def broker_credentials(cert_file, key_file, cloud_id, own_store):
    """A broker's credentials, checked to be this cloud's broker.

    :raises TrustError: the chain does not verify as a broker of the
        cloud's CA; ``ValueError``/``OSError``: unreadable, or another
        cloud's broker.
    """
    credentials = certs.Credentials.load(cert_file, key_file)
    own_store.verify(credentials.chain, 'client', role='broker')
    identity = credentials.identity
    if identity.role != 'broker' or identity.cloud_id != cloud_id:
        raise ValueError('%s is %s, not a broker of cloud %s'
                         % (cert_file, identity.urn, cloud_id))
    return credentials


def build_manager(conf, keystone_client=None, enforcer=None):
    """The BrokerManager described by ``conf``; fails on bad config."""
    b = conf.secmig_broker
    own = store.TrustStore.load(conf.secmig.cloud_id, conf.secmig.ca_file,
                                conf.secmig.crl_file)
    credentials = broker_credentials(b.cert_file, b.key_file,
                                     conf.secmig.cloud_id, own)
    peers = {}
    for cloud_id in b.peers:
        group = broker_conf.register_peer_opts(conf, cloud_id)
        if not group.ca_file or not group.transport_url:
            raise ValueError('[%s] needs ca_file and transport_url'
                             % broker_conf.peer_group(cloud_id))
        client = rpcapi.BrokerAPI(
            messaging.get_rpc_transport(conf, url=group.transport_url),
            topic=b.topic, version_cap=b.rpc_version_cap,
            timeout=b.rpc_timeout)
        peers[cloud_id] = manager.PeerConfig(
            cloud_id, store.TrustStore.load(cloud_id, group.ca_file,
                                            group.crl_file),
            allowed_projects=group.allowed_projects,
            allowed_roles=group.allowed_roles,
            max_concurrent=group.max_concurrent, rate=group.rate,
            client=client)
    db = db_api.Database(b.database_connection)
    if keystone_client is None:
        keystone_client = keystone.KeystoneClient.from_conf(conf)
    if enforcer is None:
        enforcer = oslo_policy.Enforcer(conf)
        enforcer.register_defaults(policies.list_rules())
    return manager.BrokerManager(
        credentials, own, db, keystone_client, enforcer, peers=peers,
        ticket_ttl=b.ticket_ttl, grant_ttl=b.grant_ttl,
        registration_ttl=b.registration_ttl,
        envelope_max_age=b.envelope_max_age,
        project_max_concurrent=b.project_max_concurrent,
        project_rate=b.project_rate)


def rpc_server(conf, endpoint, transport=None, topic=None):
    """An RPC server on the broker topic; only exposed methods callable."""
    transport = transport or messaging.get_rpc_transport(conf)
    target = messaging.Target(exchange=rpcapi.EXCHANGE,
                              topic=topic or conf.secmig_broker.topic,
                              server=conf.host if 'host' in conf
                              else os.uname().nodename)
    return messaging.get_rpc_server(
        transport, target, [endpoint],
        access_policy=dispatcher.ExplicitRPCAccessPolicy)


class BrokerService(service.Service):
    """oslo.service wrapper: start and stop the RPC server.

    Transports, database engines and the RPC server are created in
    :meth:`start`, which runs in the worker process: AMQP connections and
    sqlite handles must not cross the launcher's fork.
    """

    def __init__(self, conf):
        super().__init__()
        self.conf = conf
        self.endpoint = None
        self.server = None

    def start(self):
        super().start()
        self.endpoint = build_manager(self.conf)
        self.server = rpc_server(self.conf, self.endpoint)
        self.server.start()
        LOG.info('secmig broker of cloud %s serving topic %s (peers: %s)',
                 self.conf.secmig.cloud_id, self.conf.secmig_broker.topic,
                 ', '.join(self.conf.secmig_broker.peers) or 'none')

    def stop(self, graceful=True):
        if self.server is not None:
            self.server.stop()
            self.server.wait()
        if self.endpoint is not None:
            self.endpoint.db.dispose()
        super().stop(graceful)
