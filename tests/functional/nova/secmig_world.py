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
"""

import os
import shutil
import tempfile

import fixtures
from oslo_config import cfg

from secmig_nova.broker import rpcapi
from secmig_nova.trust import ca
from secmig_nova.virt import migration
from tests.fixtures import brokers
from tests.fixtures import pki as pki_fixture
from tests.unit.virt import fakes

CONF = cfg.CONF
CLOUD = 'cloud-a'
ROLE = 'migration_operator'


class Keystone(brokers.FakeKeystone):
    """Every user holds ``migration_operator`` everywhere, unless denied."""

    def __init__(self):
        super().__init__()
        self.denied = set()
        self.deny_all = False

    def effective_roles(self, user_id, scope):
        if self.deny_all or user_id in self.denied:
            return []
        return sorted(set(super().effective_roles(user_id, scope)) | {ROLE})


class SecmigWorld(fixtures.Fixture):
    """[secmig] configured, a broker running, tunnels faked.

    :param mode: ``[secmig] enforcement`` of every compute host started.
    """

    def __init__(self, mode='required'):
        super().__init__()
        self.mode = mode

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
        self.broker.start({})
        self.addCleanup(self.broker.stop)
        self.tunnels = fakes.FakeTunnels()

        self._override('enforcement', self.mode)
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
        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.virt.migration.host_client_from_conf',
            lambda conf, credentials: rpcapi.HostClient(
                self.broker.api(), credentials)))
        self.useFixture(fixtures.MonkeyPatch(
            'secmig_nova.tunnel.process.TunnelProcess', self.tunnels))

    def _override(self, name, value):
        CONF.set_override(name, value, group='secmig')
        self.addCleanup(CONF.clear_override, name, group='secmig')

    def host_files(self, host):
        """(cert_file, key_file) of a compute host, issued on first use."""
        if host not in self.hosts:
            self.hosts[host] = self.cloud.ca.issue(
                'host', host, out_dir=self.certs_dir,
                days=ca.DEFAULT_CERT_DAYS)
        return self.hosts[host]

    def records(self, migration_id):
        """The broker's records of a migration, by side."""
        return self.broker.db.find_migration(migration_id)

    def receipts(self, migration_id):
        return self.broker.db.receipts(migration_id)
