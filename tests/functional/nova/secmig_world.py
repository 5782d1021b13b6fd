"""secmig around nova's functional test framework: broker, PKI, tunnels.

:class:`SecmigWorld` is a fixture to set up *before* nova's own test
``setUp`` (it sets ``[secmig]`` before compute services start):

* the test PKI's cloud-a; every compute host nova starts gets a host
  certificate for its own name, issued on the fly by cloud-a's CA (a real
  deployment configures ``[secmig] cert_file`` per host; nova's functional
  tests run every host in one process with one configuration);
* cloud-a's real broker (BrokerManager, sqlite, oslo.policy with
  ``keystone_role:`` checks) on an in-process ``fake://`` transport; compute
  hosts reach it through real :class:`HostClient` envelopes signed with
  their certificates. Only Keystone is faked (:class:`Keystone`);
* tunnel processes replaced by tests/unit/virt/fakes.py, which record
  their parameters and sign real receipts (fakelibvirt cannot stream).

With ``cloud_b_hosts``, those hosts belong to the test PKI's cloud-b
instead, with cloud-b's own real broker, a peer of cloud-a's: each host gets
its own cloud's ``[secmig]`` (cloud_id, ca_file, and the other cloud in
peer_ca_files), what separate nova.conf files would give them.
"""

import os
import shutil
import tempfile

import fixtures
from oslo_config import cfg

from secmig_nova.authz import policies
from secmig_nova.broker import manager
from secmig_nova.broker import rpcapi
from secmig_nova.conf import secmig as secmig_conf
from secmig_nova.trust import ca
from secmig_nova.virt import driver
from secmig_nova.virt import migration
from tests.fixtures import brokers
from tests.fixtures import pki as pki_fixture
from tests.unit.virt import fakes

CONF = cfg.CONF
CLOUD = 'cloud-a'
CLOUD_B = 'cloud-b'
ROLE = 'migration_operator'


class Keystone(brokers.FakeKeystone):
    """Every user holds ``migration_operator`` everywhere, unless denied."""

    def __init__(self):
        super().__init__()
        self.denied = set()
        self.deny_all = False
        self.everyone = {ROLE}

    def effective_roles(self, user_id, scope):
        if self.deny_all or user_id in self.denied:
            return []
        return sorted(set(super().effective_roles(user_id, scope)) |
                      self.everyone)


class SecmigWorld(fixtures.Fixture):
    """[secmig] configured, a broker running, tunnels faked.

    :param mode: ``[secmig] enforcement`` of every compute host started.
    :param cloud_b_hosts: names of the compute hosts of cloud-b.
    """

    def __init__(self, mode='required', cloud_b_hosts=()):
        super().__init__()
        self.mode = mode
        self.cloud_b_hosts = set(cloud_b_hosts)

    def _setUp(self):
        self.pki = pki_fixture.get()
        self.cloud = self.pki.a
        self.dir = tempfile.mkdtemp(prefix='smnova-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.socket_dir = os.path.join(self.dir, 'sockets')
        os.mkdir(self.socket_dir)
        self.certs_dir = os.path.join(self.dir, 'certs')
        self.hosts = {}

        self.keystone = Keystone()
        self.broker = brokers.Cloud('nova', self.cloud, 'broker-a',
                                    'fake:///', self.keystone, self.dir)
        self.broker_b = None
        if self.cloud_b_hosts:
            self._start_cloud_b()
        else:
            self.broker.start({})
        self.addCleanup(self.broker.stop)
        self.tunnels = fakes.FakeTunnels()

        self._override('enforcement', self.mode)
        # Tunnels are faked here; spare processes are real processes
        # (tests/functional/test_tunnel_spare.py, the real cloud).
        self._override('tunnel_spare', False)
        self._override('cloud_id', CLOUD)
        self._override('ca_file', self.cloud.ca.ca_file)
        self._override('socket_dir', self.socket_dir)
        self._override('tunnel_ready_timeout', 5.0)
        self._override('tunnel_result_timeout', 5.0)

        world = self
        real_load = migration.HostIdentity.load.__func__

        def load(cls, settings, host=None):
            settings.cert_file, settings.key_file = world.host_files(host)
            return real_load(cls, settings, host)

        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.virt.migration.HostIdentity.load',
            classmethod(load)))

        def host_client(conf, credentials):
            broker = self.broker
            if credentials.identity.cloud_id == CLOUD_B:
                broker = self.broker_b
            return rpcapi.HostClient(broker.api(), credentials)

        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.virt.migration.host_client_from_conf', host_client))
        if self.cloud_b_hosts:
            self._per_host_clouds()
        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.tunnel.process.TunnelProcess', self.tunnels))

    def _start_cloud_b(self):
        b = self.pki.b
        self.keystone.everyone.add(policies.ROLE_CROSS_CLOUD_OPERATOR)
        self.broker_b = brokers.Cloud('nova-b', b, 'broker-b', 'fake:///',
                                      self.keystone, self.dir)
        self.broker_b.start({CLOUD: manager.PeerConfig(
            CLOUD, self.broker.store, allowed_projects=['*'],
            allowed_roles=[ROLE])})
        self.addCleanup(self.broker_b.stop)
        self.broker.start({CLOUD_B: manager.PeerConfig(
            CLOUD_B, self.broker_b.store, client=self.broker_b.api())})
        self._override('peer_ca_files', {CLOUD_B: b.ca.ca_file})

    def _per_host_clouds(self):
        # cloud-b's hosts: their own [secmig], as their nova.conf would say.
        conf_b = cfg.ConfigOpts()
        secmig_conf.register_opts(conf_b)
        conf_b([])
        for opt in secmig_conf.ALL_OPTS:
            conf_b.set_override(opt.dest, getattr(CONF.secmig, opt.dest),
                                'secmig')
        conf_b.set_override('cloud_id', CLOUD_B, 'secmig')
        conf_b.set_override('ca_file', self.pki.b.ca.ca_file, 'secmig')
        conf_b.set_override('peer_ca_files', {CLOUD: self.cloud.ca.ca_file},
                            'secmig')
        world = self
        real_from_conf = migration.SecureMigration.from_conf.__func__

        def from_conf(cls, conf, host=None, **kwargs):
            if host in world.cloud_b_hosts:
                conf = conf_b
            return real_from_conf(cls, conf, host=host, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.virt.migration.SecureMigration.from_conf',
            classmethod(from_conf)))
        # update_provider_tree names CONF's cloud: the one of cloud-a here.
        real_update = driver.SecureLibvirtDriver.update_provider_tree

        def update_provider_tree(drv, tree, nodename, allocations=None):
            real_update(drv, tree, nodename, allocations=allocations)
            if drv._secmig is not None and drv._secmig.cloud_id == CLOUD_B:
                tree.remove_traits(nodename, driver.cloud_trait(CLOUD))
                tree.add_traits(nodename, driver.cloud_trait(CLOUD_B))

        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.virt.driver.SecureLibvirtDriver.'
            'update_provider_tree', update_provider_tree))

    def cloud_of(self, host):
        return self.pki.b if host in self.cloud_b_hosts else self.cloud

    def _override(self, name, value):
        CONF.set_override(name, value, group='secmig')
        self.addCleanup(CONF.clear_override, name, group='secmig')

    def host_files(self, host):
        """(cert_file, key_file) of a compute host, issued on first use."""
        if host not in self.hosts:
            self.hosts[host] = self.cloud_of(host).ca.issue(
                'host', host, out_dir=self.certs_dir,
                days=ca.DEFAULT_CERT_DAYS)
        return self.hosts[host]

    def records(self, migration_id):
        """The broker's records of a migration, by side."""
        return self.broker.db.find_migration(migration_id)

    def receipts(self, migration_id):
        return self.broker.db.receipts(migration_id)
