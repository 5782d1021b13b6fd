"""Brokers inside one process, for ``secmig-migrate`` without a cloud.

One :class:`~secmig_nova.broker.manager.BrokerManager` per cloud, each
with its broker certificate, its own audit database and its own RPC
server, all on an in-process ``fake://`` oslo.messaging transport (a topic
per cloud). Role assignments come from a
:class:`~secmig_nova.authz.rolefile.RoleFile`; the policy rules, the
``keystone_role:`` check, tickets, grants, signed envelopes and receipts
are exactly those of ``secmig-broker``.
"""

import os

from oslo_config import cfg
import oslo_messaging as messaging
from oslo_policy import policy as oslo_policy

from secmig_nova.authz import keystone
from secmig_nova.authz import policies
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker.db import migration as db_migration
from secmig_nova.broker import manager
from secmig_nova.broker import rpcapi
from secmig_nova.broker import service
from secmig_nova.trust import errors as trust_errors

TRANSPORT_URL = 'fake://'


class EmbeddedBrokerError(Exception):
    pass


def topic(cloud_id):
    # Every cloud's broker listens on the one in-process transport: a
    # topic per cloud keeps them apart.
    return 'secmig_broker_%s' % cloud_id


def database_url(state_dir, cloud_id):
    return 'sqlite:///%s' % os.path.join(state_dir, '%s.sqlite' % cloud_id)


class EmbeddedBrokers:
    """The brokers of one or two clouds in this process.

    :param conf: ``cfg.CONF`` or a ConfigOpts prepared with
        oslo.messaging's ConfFixture (its transports read options that
        oslo.messaging registers on the global configuration only).
    :param clouds: ``{cloud_id: (TrustStore, broker_cert_file,
        broker_key_file)}``.
    :param roles: the role source (a RoleFile).
    :param state_dir: where ``<cloud_id>.sqlite`` audit databases live.
    """

    def __init__(self, conf, clouds, roles, state_dir, timeout=30):
        self.transport = messaging.get_rpc_transport(conf, url=TRANSPORT_URL)
        self.timeout = timeout
        self.stores = {cid: entry[0] for cid, entry in clouds.items()}
        self.databases = {}
        self.managers = {}
        self.servers = []
        self._policy_confs = []
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        try:
            for cloud_id, (store, cert_file, key_file) in clouds.items():
                self._start(conf, cloud_id, store, cert_file, key_file,
                            roles, state_dir)
        except BaseException:
            self.stop()
            raise

    def _credentials(self, cloud_id, store, cert_file, key_file):
        if not cert_file or not key_file:
            raise EmbeddedBrokerError(
                'the embedded broker of cloud %s needs broker_cert_file and '
                'broker_key_file (secmig-nova-manage ca issue broker)'
                % cloud_id)
        try:
            return service.broker_credentials(cert_file, key_file, cloud_id,
                                              store)
        except (trust_errors.TrustError, OSError, ValueError) as e:
            raise EmbeddedBrokerError('broker certificate %s of cloud %s: %s'
                                      % (cert_file, cloud_id, e))

    def _start(self, conf, cloud_id, store, cert_file, key_file, roles,
               state_dir):
        creds = self._credentials(cloud_id, store, cert_file, key_file)
        url = database_url(state_dir, cloud_id)
        db_migration.sync(url)
        db = db_api.Database(url)
        self.databases[cloud_id] = db
        # The keystone_role: check finds its role source through the
        # enforcer's configuration: one configuration per broker.
        policy_conf = cfg.ConfigOpts()
        policy_conf([])
        keystone.set_client(policy_conf, roles)
        self._policy_confs.append(policy_conf)
        enforcer = oslo_policy.Enforcer(policy_conf)
        enforcer.register_defaults(policies.list_rules())
        peers = {
            other: manager.PeerConfig(
                other, other_store, allowed_projects=roles.projects,
                client=self.api(other))
            for other, other_store in self.stores.items()
            if other != cloud_id}
        endpoint = manager.BrokerManager(creds, store, db, roles, enforcer,
                                         peers=peers)
        self.managers[cloud_id] = endpoint
        server = service.rpc_server(conf, endpoint, transport=self.transport,
                                    topic=topic(cloud_id))
        server.start()
        self.servers.append(server)

    def api(self, cloud_id):
        return rpcapi.BrokerAPI(self.transport, topic=topic(cloud_id),
                                timeout=self.timeout)

    def host_client(self, cloud_id, credentials):
        """A host's client of its cloud's embedded broker."""
        return rpcapi.HostClient(self.api(cloud_id), credentials)

    def stop(self):
        for server in self.servers:
            server.stop()
            server.wait()
        self.servers = []
        for db in self.databases.values():
            db.dispose()
        self.databases = {}
        for conf in self._policy_confs:
            keystone.forget_client(conf)
        self._policy_confs = []
        if self.transport is not None:
            self.transport.cleanup()
            self.transport = None
