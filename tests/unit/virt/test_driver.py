"""Unit tests of SecureLibvirtDriver: each override, with nova mocked.

The driver is built for real (``read_only``, no libvirtd connection); the
LibvirtDriver methods it extends and the orchestration object are mocks, so
each test shows the one step the override adds and that ``super()`` is
called with the same arguments. tests/functional/nova runs the same code
inside nova's own functional framework.
"""

import inspect
import logging
from unittest import mock

import fixtures
import libvirt
from nova.compute import provider_tree
from nova import exception
from nova import objects
from nova.scheduler.client import report
from nova.virt import driver as nova_driver
from nova.virt.libvirt import driver as libvirt_driver
from oslo_config import cfg
from oslo_config import fixture as config_fixture
import testtools

from secmig_nova.virt import driver
from secmig_nova.virt import enforcement
from secmig_nova.virt import migration

CONF = cfg.CONF
LIBVIRT = 'nova.virt.libvirt.driver.LibvirtDriver.'
MID = '11111111-2222-4333-8444-555555555555'
UUID = '6a1f5d7e-0000-4000-8000-0000000000bb'

objects.register_all()


def public_api(cls):
    return {name: value for name, value in inspect.getmembers(
        cls, inspect.isfunction) if not name.startswith('_')}


class TestSignatures(testtools.TestCase):
    """The driver's API is nova's ComputeDriver API, signature for signature.

    (nova's own libvirt tests do the same with assertPublicAPISignatures.)
    """

    def test_public_api_matches_compute_driver(self):
        base = public_api(nova_driver.ComputeDriver)
        ours = public_api(driver.SecureLibvirtDriver)
        self.assertEqual([], sorted(set(ours) - set(base)),
                         'public methods ComputeDriver does not have')
        mismatched = [
            name for name in sorted(ours)
            if inspect.getfullargspec(base[name])[:-1] !=
            inspect.getfullargspec(ours[name])[:-1]]
        self.assertEqual([], mismatched)

    def test_overrides_keep_libvirt_signatures(self):
        overrides = [name for name, value in
                     vars(driver.SecureLibvirtDriver).items()
                     if inspect.isfunction(value) and
                     hasattr(libvirt_driver.LibvirtDriver, name)]
        self.assertIn('_live_migration_operation', overrides)
        self.assertIn('pre_live_migration', overrides)
        for name in overrides:
            self.assertEqual(
                inspect.signature(getattr(libvirt_driver.LibvirtDriver,
                                          name)),
                inspect.signature(getattr(driver.SecureLibvirtDriver, name)),
                name)

    def test_reexport_for_nova(self):
        import nova.virt.secmig
        self.assertIs(driver.SecureLibvirtDriver,
                      nova.virt.secmig.SecureLibvirtDriver)
        # nova's own packages are still nova's.
        import nova.virt.libvirt
        self.assertIn('site-packages', nova.virt.libvirt.__file__)


class Instance:
    """Just what the driver reads from an instance."""

    def __init__(self, flavor_mode=None, image_mode=None):
        specs = {enforcement.KEY: flavor_mode} if flavor_mode else {}
        self.uuid = UUID
        self.host = 'host-a'
        self.node = 'node-a'
        self.image_ref = 'image-1'
        self.vm_state = 'active'
        self.flavor = mock.Mock(extra_specs=specs, flavorid='f1')
        self.system_metadata = (
            {enforcement.IMAGE_SYSTEM_METADATA_KEY: image_mode}
            if image_mode else {})


class DriverTestCase(testtools.TestCase):

    mode = 'required'

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.flags(enforcement=self.mode, group='secmig')
        self.driver = driver.SecureLibvirtDriver(mock.Mock(), read_only=True)
        self.driver._secmig_host = 'host-a'
        self.secmig = mock.Mock(spec=migration.SecureMigration)
        self.secmig.settings = migration.Settings(
            cloud_id='c', cert_file='x', key_file='y', ca_file='z',
            tunnel_result_timeout=1.0)
        if self.mode != 'disabled':
            self.driver._secmig = self.secmig
        self.context = mock.Mock(user_id='user-1', project_id='proj-1',
                                 request_id='req-1')
        self.offers = {}
        self.useFixture_patch('_secmig_source_offers',
                              lambda ctxt, inst: self.offers.get('source',
                                                                 True))
        self.useFixture_patch('_secmig_destination_offers',
                              lambda ctxt, inst: self.offers.get(
                                  'destination', True))

    def useFixture_patch(self, name, func):
        patcher = mock.patch.object(self.driver, name, side_effect=func)
        patcher.start()
        self.addCleanup(patcher.stop)

    def patch_libvirt(self, name, **kwargs):
        patcher = mock.patch(LIBVIRT + name, autospec=True, **kwargs)
        m = patcher.start()
        self.addCleanup(patcher.stop)
        return m

    def migrate_data(self, block=False, with_migration=True):
        data = objects.LibvirtLiveMigrateData(block_migration=block)
        if with_migration:
            data.migration = objects.Migration(uuid=MID)
        return data


class TestInitHost(DriverTestCase):

    def setUp(self):
        super().setUp()
        self.super_init = self.patch_libvirt('init_host')
        self.from_conf = self.useFixture_mock(
            'secmig_nova.virt.migration.SecureMigration.from_conf')
        self.spares = self.useFixture_mock(
            'secmig_nova.tunnel.process.SpareTunnels')
        self.driver._secmig = None

    def useFixture_mock(self, target):
        patcher = mock.patch(target)
        m = patcher.start()
        self.addCleanup(patcher.stop)
        return m

    def test_loads_identity_then_nova(self):
        self.driver.init_host('host-a')
        self.from_conf.assert_called_once_with(
            CONF, host='host-a', tunnel_factory=self.spares.return_value)
        self.assertIs(self.from_conf.return_value, self.driver._secmig)
        self.super_init.assert_called_once_with(self.driver, 'host-a')
        # The first migration's tunnel is started ahead too.
        self.spares.return_value.prepare.assert_called_once_with()

    def test_no_spare_tunnel_by_option(self):
        self.flags(tunnel_spare=False, group='secmig')
        self.driver.init_host('host-a')
        self.from_conf.assert_called_once_with(CONF, host='host-a')
        self.spares.assert_not_called()

    def test_cleanup_host_ends_the_spare(self):
        self.driver.init_host('host-a')
        self.patch_libvirt('cleanup_host')
        self.driver.cleanup_host('host-a')
        self.from_conf.return_value.close.assert_called_once_with()

    def test_disabled_loads_nothing(self):
        self.flags(enforcement='disabled', group='secmig')
        self.flags(live_migration_tunnelled=True, group='libvirt')
        self.driver.init_host('host-a')
        self.from_conf.assert_not_called()
        self.assertIsNone(self.driver._secmig)
        self.super_init.assert_called_once_with(self.driver, 'host-a')

    def test_refuses_tunnelled(self):
        self.flags(live_migration_tunnelled=True, group='libvirt')
        e = self.assertRaises(exception.InvalidConfiguration,
                              self.driver.init_host, 'host-a')
        self.assertIn('live_migration_tunnelled = True', str(e))
        self.assertIn('set it to False', str(e))
        self.super_init.assert_not_called()

    def test_refuses_native_tls(self):
        self.flags(live_migration_with_native_tls=True, group='libvirt')
        e = self.assertRaises(exception.InvalidConfiguration,
                              self.driver.init_host, 'host-a')
        self.assertIn('never stacked', str(e))
        self.super_init.assert_not_called()

    def test_bad_certificates(self):
        self.from_conf.side_effect = migration.SecureMigrationError(
            'config_invalid', '[secmig] key_file /k has mode 0644: chmod 600')
        e = self.assertRaises(exception.InvalidConfiguration,
                              self.driver.init_host, 'host-a')
        self.assertIn('chmod 600', str(e))
        self.super_init.assert_not_called()


class TestProviderTree(DriverTestCase):

    def test_trait(self):
        self.patch_libvirt('update_provider_tree')
        tree = provider_tree.ProviderTree()
        tree.new_root('node-a', 'c0000000-0000-4000-8000-000000000001')
        self.driver.update_provider_tree(tree, 'node-a')
        self.assertTrue(tree.has_traits('node-a', [driver.TRAIT]))
        self.driver._secmig = None
        self.driver.update_provider_tree(tree, 'node-a')
        self.assertFalse(tree.has_traits('node-a', [driver.TRAIT]))

    def tree(self, *traits):
        self.patch_libvirt('update_provider_tree')
        tree = provider_tree.ProviderTree()
        tree.new_root('node-a', 'c0000000-0000-4000-8000-000000000001')
        if traits:
            tree.update_traits('node-a', traits)
        return tree

    def cloud_traits(self, tree):
        return sorted(t for t in tree.data('node-a').traits
                      if t.startswith(driver.CLOUD_TRAIT_PREFIX))

    def test_cloud_trait(self):
        self.flags(cloud_id='cloud-a', group='secmig')
        tree = self.tree()
        self.driver.update_provider_tree(tree, 'node-a')
        self.assertEqual(['CUSTOM_SECMIG_CLOUD_CLOUD_A'],
                         self.cloud_traits(tree))
        self.assertTrue(tree.has_traits('node-a', [driver.TRAIT]))

    def test_stale_cloud_trait_removed(self):
        # [secmig] cloud_id changed: the old cloud's trait goes, nothing
        # else that is not secmig's is touched.
        self.flags(cloud_id='cloud-b', group='secmig')
        tree = self.tree('CUSTOM_SECMIG_CLOUD_CLOUD_A', 'CUSTOM_OTHER',
                         'COMPUTE_STATUS_DISABLED')
        self.driver.update_provider_tree(tree, 'node-a')
        self.assertEqual(['CUSTOM_SECMIG_CLOUD_CLOUD_B'],
                         self.cloud_traits(tree))
        self.assertTrue(tree.has_traits(
            'node-a', ['CUSTOM_OTHER', 'COMPUTE_STATUS_DISABLED']))

    def test_disabled_reports_no_cloud(self):
        self.flags(cloud_id='cloud-a', group='secmig')
        tree = self.tree('CUSTOM_SECMIG_CLOUD_CLOUD_A', driver.TRAIT,
                         'CUSTOM_OTHER')
        self.driver._secmig = None
        self.driver.update_provider_tree(tree, 'node-a')
        self.assertEqual([], self.cloud_traits(tree))
        self.assertFalse(tree.has_traits('node-a', [driver.TRAIT]))
        self.assertTrue(tree.has_traits('node-a', ['CUSTOM_OTHER']))


class TestCloudTraitName(testtools.TestCase):

    def test_cloud_trait(self):
        self.assertEqual('CUSTOM_SECMIG_CLOUD_CLOUD_A',
                         driver.cloud_trait('cloud-a'))
        # Placement trait names: upper case, digits and _ only.
        self.assertEqual('CUSTOM_SECMIG_CLOUD_EU_WEST_1_PROD',
                         driver.cloud_trait('eu-west.1_Prod'))
        self.assertTrue(driver.cloud_trait('x').startswith(
            driver.CLOUD_TRAIT_PREFIX))


class CrossCloudTestCase(DriverTestCase):
    """This host in cloud-a, with cloud-b as its one peer cloud.

    Placement is a mock: ``self.traits`` are the traits of each resource
    provider, ``self.allocations`` the server's allocations.
    """

    def setUp(self):
        super().setUp()
        self.secmig.cloud_id = 'cloud-a'
        self.secmig.peer_stores = {'cloud-b': mock.sentinel.cloud_b_store}
        self.traits = {}
        self.allocations = {}
        patcher = mock.patch.object(report, 'report_client_singleton')
        self.placement = patcher.start().return_value
        self.addCleanup(patcher.stop)
        self.placement.get_provider_traits.side_effect = \
            lambda ctxt, rp_uuid: mock.Mock(
                traits=set(self.traits.get(rp_uuid, ())))
        self.placement.get_allocations_for_consumer.side_effect = \
            lambda ctxt, consumer: dict(self.allocations)
        patcher = mock.patch.object(
            objects.ComputeNode, 'get_by_host_and_nodename',
            return_value=mock.Mock(uuid='rp-src'))
        self.get_node = patcher.start()
        self.addCleanup(patcher.stop)

    def on_cloud(self, rp_uuid, cloud_id):
        self.traits[rp_uuid] = {driver.TRAIT, driver.cloud_trait(cloud_id)}


class TestCrossCloudLookups(CrossCloudTestCase):

    def cloud_of(self, *rp_uuids):
        return self.driver._secmig_providers_cloud(self.context,
                                                   list(rp_uuids))

    def test_peer_cloud(self):
        self.on_cloud('rp-b', 'cloud-b')
        self.assertEqual('cloud-b', self.cloud_of('rp-b'))

    def test_own_cloud(self):
        self.on_cloud('rp-a', 'cloud-a')
        self.assertIsNone(self.cloud_of('rp-a'))

    def test_without_cloud_trait_is_own_cloud(self):
        # A host of an older driver: same cloud, as before.
        self.traits['rp-old'] = {driver.TRAIT}
        self.assertIsNone(self.cloud_of('rp-old'))

    def test_any_provider_of_the_host(self):
        # A sharing provider without the trait next to the compute node.
        self.on_cloud('rp-b', 'cloud-b')
        self.assertEqual('cloud-b', self.cloud_of(None, 'rp-disk', 'rp-b'))
        self.assertEqual(
            [mock.call(self.context, 'rp-disk'),
             mock.call(self.context, 'rp-b')],
            self.placement.get_provider_traits.call_args_list)

    def test_unknown_cloud_refused(self):
        self.on_cloud('rp-z', 'cloud-z')
        e = self.assertRaises(driver.SecureMigrationFailed, self.cloud_of,
                              'rp-z')
        self.assertIn('trust cloud CLOUD_Z, which is neither this host\'s '
                      'cloud cloud-a nor one of its [secmig] peer_ca_files '
                      '(cloud-b)', e.format_message())

    def test_placement_error_refused(self):
        # Fail closed: a host placement cannot place is not this cloud's.
        self.placement.get_provider_traits.side_effect = \
            exception.ResourceProviderTraitRetrievalFailed(uuid='rp-b')
        e = self.assertRaises(driver.SecureMigrationFailed, self.cloud_of,
                              'rp-b')
        self.assertIn('could not read the trust cloud of resource '
                      'providers [\'rp-b\'] from placement',
                      e.format_message())

    def test_without_peers_placement_is_not_asked(self):
        self.secmig.peer_stores = {}
        self.on_cloud('rp-z', 'cloud-z')
        self.assertIsNone(self.cloud_of('rp-z'))
        self.assertIsNone(self.driver._secmig_source_cloud(self.context,
                                                           Instance()))
        self.assertIsNone(self.driver._secmig_destination_cloud(
            self.context, Instance()))
        self.placement.get_provider_traits.assert_not_called()
        self.placement.get_allocations_for_consumer.assert_not_called()
        self.get_node.assert_not_called()

    def test_source_cloud(self):
        self.on_cloud('rp-src', 'cloud-b')
        self.assertEqual('cloud-b', self.driver._secmig_source_cloud(
            self.context, Instance()))
        self.get_node.assert_called_once_with(self.context, 'host-a',
                                              'node-a')

    def test_source_node_not_found_refused(self):
        self.get_node.side_effect = exception.ComputeHostNotFound(
            host='host-a')
        e = self.assertRaises(driver.SecureMigrationFailed,
                              self.driver._secmig_source_cloud,
                              self.context, Instance())
        self.assertIn('source node of %s not found' % UUID,
                      e.format_message())
        self.placement.get_provider_traits.assert_not_called()

    def test_destination_cloud(self):
        self.allocations = {'rp-dst': {'resources': {'VCPU': 1}}}
        self.on_cloud('rp-dst', 'cloud-b')
        self.assertEqual('cloud-b', self.driver._secmig_destination_cloud(
            self.context, Instance()))
        self.placement.get_allocations_for_consumer.assert_called_once_with(
            self.context, UUID)

    def test_destination_allocations_error_refused(self):
        self.placement.get_allocations_for_consumer.side_effect = \
            exception.ConsumerAllocationRetrievalFailed(
                consumer_uuid=UUID, error='503')
        e = self.assertRaises(driver.SecureMigrationFailed,
                              self.driver._secmig_destination_cloud,
                              self.context, Instance())
        self.assertIn('could not read the allocations of %s' % UUID,
                      e.format_message())


class TestChecks(DriverTestCase):

    def setUp(self):
        super().setUp()
        self.super_dst = self.patch_libvirt(
            'check_can_live_migrate_destination')
        self.super_src = self.patch_libvirt('check_can_live_migrate_source')
        self.providers = self.useFixture_traits()

    def useFixture_traits(self):
        patcher = mock.patch.object(self.driver, '_secmig_providers_offer',
                                    return_value=True)
        m = patcher.start()
        self.addCleanup(patcher.stop)
        return m

    def check_dst(self, instance):
        return self.driver.check_can_live_migrate_destination(
            self.context, instance, {'uuid': 'rp-src', 'host': 'host-b'},
            {'uuid': 'rp-dst'}, block_migration=False)

    def check_src(self, instance):
        return self.driver.check_can_live_migrate_source(
            self.context, instance, mock.sentinel.dest_check_data)

    def test_both_secure(self):
        self.assertIs(self.super_dst.return_value,
                      self.check_dst(Instance()))
        self.providers.assert_called_once_with(self.context, ['rp-src'])
        self.super_dst.assert_called_once_with(
            self.driver, self.context, mock.ANY,
            {'uuid': 'rp-src', 'host': 'host-b'}, {'uuid': 'rp-dst'},
            block_migration=False, disk_over_commit=False)
        self.assertIs(self.super_src.return_value, self.check_src(Instance()))

    def test_required_refuses_insecure_source(self):
        self.providers.return_value = False
        e = self.assertRaises(exception.MigrationPreCheckError,
                              self.check_dst, Instance())
        self.assertIn('host-b does not offer', str(e))
        self.super_dst.assert_not_called()

    def test_required_refuses_insecure_destination(self):
        self.offers['destination'] = False
        e = self.assertRaises(exception.MigrationPreCheckError,
                              self.check_src, Instance())
        self.assertIn('the destination host does not offer', str(e))
        self.super_src.assert_not_called()

    def test_source_refusal_names_the_destination(self):
        self.offers['destination'] = False
        reports = self.useFixture(fixtures.MockPatchObject(
            report, 'report_client_singleton')).mock
        reports.return_value.get_allocations_for_consumer.return_value = {
            'rp-shared': {}, 'rp-dst': {}}
        nodes = {'rp-dst': mock.Mock(host='host-b')}

        def get_by_uuid(context, uuid):
            if uuid not in nodes:
                raise exception.ComputeHostNotFound(host=uuid)
            return nodes[uuid]
        self.useFixture(fixtures.MockPatchObject(
            objects.ComputeNode, 'get_by_uuid', side_effect=get_by_uuid))
        e = self.assertRaises(exception.MigrationPreCheckError,
                              self.check_src, Instance(enforcement.REQUIRED))
        self.assertIn('but host-b does not offer', str(e))

    def test_unknown_destination_counts_as_insecure(self):
        self.offers['destination'] = None
        self.assertRaises(exception.MigrationPreCheckError, self.check_src,
                          Instance())

    def test_flavor_can_lower_the_mode(self):
        self.offers['destination'] = False
        self.check_src(Instance(flavor_mode='preferred'))
        self.super_src.assert_called_once()

    def test_image_cannot_lower_the_mode(self):
        self.offers['destination'] = False
        self.assertRaises(exception.MigrationPreCheckError, self.check_src,
                          Instance(image_mode='disabled'))

    def test_invalid_flavor_value(self):
        e = self.assertRaises(exception.MigrationPreCheckError,
                              self.check_src, Instance(flavor_mode='maybe'))
        self.assertIn('flavor f1 secmig:enforcement=', str(e))


class TestChecksPreferred(TestChecks):

    mode = 'preferred'

    def test_required_refuses_insecure_source(self):
        self.providers.return_value = False
        self.check_dst(Instance())
        self.super_dst.assert_called_once()

    def test_required_refuses_insecure_destination(self):
        self.offers['destination'] = False
        self.check_src(Instance())
        self.super_src.assert_called_once()

    def test_unknown_destination_counts_as_insecure(self):
        self.offers['destination'] = None
        self.check_src(Instance())

    def test_image_cannot_lower_the_mode(self):
        self.offers['destination'] = False
        self.assertRaises(exception.MigrationPreCheckError, self.check_src,
                          Instance(image_mode='required'))


class TestChecksDisabled(DriverTestCase):

    mode = 'disabled'

    def test_plain_unless_the_server_requires_it(self):
        super_src = self.patch_libvirt('check_can_live_migrate_source')
        self.offers['destination'] = True
        self.driver.check_can_live_migrate_source(self.context, Instance(),
                                                  None)
        super_src.assert_called_once()
        e = self.assertRaises(exception.MigrationPreCheckError,
                              self.driver.check_can_live_migrate_source,
                              self.context, Instance(flavor_mode='required'),
                              None)
        self.assertIn('host-a does not offer', str(e))


class TestDestination(DriverTestCase):

    def setUp(self):
        super().setUp()
        self.super_pre = self.patch_libvirt('pre_live_migration')
        self.super_post = self.patch_libvirt(
            'post_live_migration_at_destination')
        self.super_rollback = self.patch_libvirt(
            'rollback_live_migration_at_destination')
        self.incoming = self.secmig.prepare_destination.return_value

    def pre(self, instance=None, migrate_data=None, disk_info=None):
        return self.driver.pre_live_migration(
            self.context, instance or Instance(), mock.sentinel.bdi,
            mock.sentinel.network_info, disk_info,
            migrate_data or self.migrate_data())

    def test_starts_the_tunnel_then_nova(self):
        self.flags(live_migration_parallel_connections=4, group='libvirt')
        result = self.pre()
        self.secmig.prepare_destination.assert_called_once_with(
            MID, UUID, {'memory': 5})
        self.assertIs(self.super_pre.return_value, result)
        self.assertIs(self.incoming, self.driver._secmig_incoming[UUID])

    def test_block_migration_registers_disks(self):
        self.pre(migrate_data=self.migrate_data(block=True),
                 disk_info='[{"path": "/a"}, {"path": "/b"}]')
        self.secmig.prepare_destination.assert_called_once_with(
            MID, UUID, {'memory': 1, 'disk': 2})

    def test_migration_id_looked_up_while_in_progress(self):
        found = [objects.Migration(uuid='other', dest_compute='host-c'),
                 objects.Migration(uuid=MID, dest_compute='host-a')]
        with mock.patch.object(objects.MigrationList,
                               'get_in_progress_by_instance',
                               return_value=found) as get:
            self.pre(migrate_data=self.migrate_data(with_migration=False))
            get.assert_called_once_with(self.context, UUID,
                                        migration_type='live-migration')
            self.assertEqual(
                MID, self.secmig.prepare_destination.call_args[0][0])
            get.return_value = []
            e = self.assertRaises(
                driver.SecureMigrationFailed, self.pre,
                migrate_data=self.migrate_data(with_migration=False))
            self.assertIn('0 in progress to host-a', e.format_message())

    def test_tunnel_refused(self):
        self.secmig.prepare_destination.side_effect = \
            migration.SecureMigrationError('broker_unavailable', 'down')
        e = self.assertRaises(driver.SecureMigrationFailed, self.pre)
        self.assertIn('broker_unavailable: down', e.format_message())
        self.super_pre.assert_not_called()

    def test_required_refuses_insecure_source(self):
        self.offers['source'] = False
        self.assertRaises(driver.SecureMigrationFailed, self.pre)
        self.secmig.prepare_destination.assert_not_called()
        self.super_pre.assert_not_called()

    def test_nova_fails_after_the_tunnel_started(self):
        self.super_pre.side_effect = exception.MigrationError(reason='x')
        self.assertRaises(exception.MigrationError, self.pre)
        self.incoming.finish.assert_called_once_with(
            False, 'pre_live_migration failed')
        self.assertNotIn(UUID, self.driver._secmig_incoming)

    def test_post_finishes(self):
        self.pre()
        instance = Instance()
        self.driver.post_live_migration_at_destination(
            self.context, instance, mock.sentinel.nw, block_migration=False,
            block_device_info=None)
        self.super_post.assert_called_once_with(
            self.driver, self.context, instance, mock.sentinel.nw,
            block_migration=False, block_device_info=None)
        self.incoming.finish.assert_called_once_with(True, None)
        self.assertNotIn(UUID, self.driver._secmig_incoming)

    def test_rollback_aborts(self):
        self.pre()
        self.driver.rollback_live_migration_at_destination(
            self.context, Instance(), mock.sentinel.nw, None,
            destroy_disks=True, migrate_data=None)
        self.super_rollback.assert_called_once()
        self.incoming.finish.assert_called_once_with(False, 'rolled back')

    def test_rollback_without_tunnel(self):
        self.driver.rollback_live_migration_at_destination(
            self.context, Instance(), mock.sentinel.nw, None)
        self.super_rollback.assert_called_once()

    def test_cleanup_host_stops_tunnels(self):
        self.patch_libvirt('cleanup_host')
        self.pre()
        self.driver.cleanup_host('host-a')
        self.incoming.abort.assert_called_once_with(
            'nova-compute on host-a stopped')


class TestCrossCloudDestination(CrossCloudTestCase):
    """pre_live_migration: the source's cloud from its node's trait."""

    def setUp(self):
        super().setUp()
        self.super_pre = self.patch_libvirt('pre_live_migration')

    def pre(self):
        return self.driver.pre_live_migration(
            self.context, Instance(), mock.sentinel.bdi,
            mock.sentinel.network_info, None, self.migrate_data())

    def test_source_of_a_peer_cloud(self):
        self.on_cloud('rp-src', 'cloud-b')
        self.assertIs(self.super_pre.return_value, self.pre())
        self.secmig.prepare_destination.assert_called_once_with(
            MID, UUID, {'memory': 1}, src_cloud='cloud-b')
        self.get_node.assert_called_once_with(self.context, 'host-a',
                                              'node-a')

    def test_source_of_this_cloud(self):
        self.on_cloud('rp-src', 'cloud-a')
        self.pre()
        self.secmig.prepare_destination.assert_called_once_with(
            MID, UUID, {'memory': 1})

    def assertRefused(self, message):
        e = self.assertRaises(driver.SecureMigrationFailed, self.pre)
        self.assertIn(message, e.format_message())
        # Raised as it is, not wrapped in another SecureMigrationFailed.
        self.assertEqual(1, e.format_message().count('Secure live '
                                                     'migration failed'))
        self.secmig.prepare_destination.assert_not_called()
        self.super_pre.assert_not_called()
        self.assertEqual({}, self.driver._secmig_incoming)

    def test_source_of_an_unknown_cloud_refused(self):
        self.on_cloud('rp-src', 'cloud-z')
        self.assertRefused('trust cloud CLOUD_Z')

    def test_placement_error_refused(self):
        self.placement.get_provider_traits.side_effect = \
            exception.ResourceProviderTraitRetrievalFailed(uuid='rp-src')
        self.assertRefused('could not read the trust cloud')

    def test_source_node_not_found_refused(self):
        self.get_node.side_effect = exception.ComputeHostNotFound(
            host='host-a')
        self.assertRefused('source node of %s not found' % UUID)


class FakeGuest:
    """The parts of nova's Guest the source path touches."""

    def __init__(self, job=libvirt.VIR_DOMAIN_JOB_COMPLETED):
        self._domain = mock.Mock()
        self.job = job

    def get_job_info(self):
        return mock.Mock(type=self.job)

    def is_active(self):
        return self.job != libvirt.VIR_DOMAIN_JOB_COMPLETED

    def migrate(self, destination, migrate_uri=None, migrate_disks=None,
                destination_xml=None, flags=0, bandwidth=0, parallel=0):
        # nova's Guest.migrate, in short: what a plain migration does.
        self._domain.migrateToURI3(
            destination, params={'migrate_uri': migrate_uri}, flags=flags)


P2P = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER


def nova_operation(flags=P2P, parallel=0):
    """Stands in for LibvirtDriver._live_migration_operation."""
    def operation(self, context, instance, dest, block_migration,
                  migrate_data, guest, device_names):
        f = flags
        if migrate_data.block_migration:
            f |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        guest.migrate('qemu+tcp://%s/system' % dest,
                      migrate_uri='tcp://10.0.0.2', flags=f,
                      migrate_disks=device_names, destination_xml='<x/>',
                      bandwidth=0, parallel=parallel)
    return operation


class SourceTestCase(DriverTestCase):
    """The source side: a session, nova's operation, the event."""

    def setUp(self):
        super().setUp()
        self.session = self.secmig.start_source.return_value
        self.session.migration_id = MID
        self.session.streams = {'memory': 1}
        self.session.migrate_uri = 'unix:///run/secmig/%s.sock' % MID
        self.session.disks_uri = 'unix:///run/secmig/%s-disk.sock' % MID
        self.session.tunnel_failure.return_value = None
        self.session.finish.return_value = migration.Result(MID, 'source',
                                                            'completed')
        self.super_op = self.patch_libvirt('_live_migration_operation',
                                           side_effect=nova_operation())
        self.reporter = mock.patch('nova.compute.utils.EventReporter')
        self.events = self.reporter.start()
        self.addCleanup(self.reporter.stop)

    def operation(self, guest=None, block=False, device_names=(),
                  instance=None):
        guest = guest or FakeGuest()
        self.driver._live_migration_operation(
            self.context, instance or Instance(), 'host-b', block,
            self.migrate_data(block=block), guest, list(device_names))
        return guest

    def event_failure(self):
        """The exception the instance action event was finished with."""
        exit_args = self.events.return_value.__exit__.call_args[0]
        errors = [a for a in exit_args if isinstance(a, BaseException)]
        return errors[0] if errors else None


class TestSource(SourceTestCase):

    def test_through_the_tunnel(self):
        guest = self.operation()
        self.secmig.start_source.assert_called_once_with(
            MID, UUID, 'host-b', {'memory': 1}, user_id='user-1',
            project_id='proj-1')
        passed = self.super_op.call_args[0][6]
        self.assertIsInstance(passed, driver.SecureGuest)
        guest._domain.migrateToURI3.assert_called_once_with(
            'qemu+tcp://host-b/system',
            params={'migrate_uri': self.session.migrate_uri,
                    'destination_xml': '<x/>', 'persistent_xml': '<x/>'},
            flags=P2P)
        self.session.finish.assert_called_once_with(True, None,
                                                    cancelled=False)
        self.events.assert_called_once_with(
            self.context, driver.EVENT, 'host-a', UUID, graceful_exit=True)
        self.assertIsNone(self.event_failure())
        self.assertEqual({}, self.driver._secmig_outgoing)

    def test_block_migration_adds_disks_uri(self):
        self.session.streams = {'memory': 1, 'disk': 2}
        guest = self.operation(block=True, device_names=['vda', 'vdb'])
        self.assertEqual({'memory': 1, 'disk': 2},
                         self.secmig.start_source.call_args[0][3])
        params = guest._domain.migrateToURI3.call_args[1]['params']
        self.assertEqual(self.session.disks_uri, params['disks_uri'])
        self.assertEqual(['vda', 'vdb'], params['migrate_disks'])

    def test_parallel_connections(self):
        self.flags(live_migration_parallel_connections=3, group='libvirt')
        self.session.streams = {'memory': 4}
        self.super_op.side_effect = nova_operation(parallel=3)
        guest = self.operation()
        self.assertEqual({'memory': 4},
                         self.secmig.start_source.call_args[0][3])
        params = guest._domain.migrateToURI3.call_args[1]['params']
        self.assertEqual(3, params['parallel.connections'])

    def test_refused_before_anything_moves(self):
        self.secmig.start_source.side_effect = \
            migration.SecureMigrationError('missing_role', 'user-1 may not')
        guest = self.operation()
        self.super_op.assert_not_called()
        guest._domain.migrateToURI3.assert_not_called()
        failure = self.event_failure()
        self.assertIsInstance(failure, driver.SecureMigrationFailed)
        self.assertIn('missing_role: user-1 may not',
                      failure.format_message())

    def test_required_and_insecure_destination(self):
        self.offers['destination'] = False
        self.operation()
        self.secmig.start_source.assert_not_called()
        self.super_op.assert_not_called()
        self.assertIn('does not offer',
                      self.event_failure().format_message())

    def test_preferred_and_insecure_destination_is_plain(self):
        self.flags(enforcement='preferred', group='secmig')
        self.offers['destination'] = False
        log = self.useFixture(fixtures.FakeLogger(
            name='secmig_nova.virt.driver', level=logging.WARNING))
        guest = self.operation()
        self.secmig.start_source.assert_not_called()
        self.assertIs(guest, self.super_op.call_args[0][6])
        self.events.assert_not_called()
        self.assertIn('is NOT encrypted: secmig enforcement is "preferred" '
                      'for this server and', log.output)
        self.assertIn('does not offer secure live migration', log.output)

    def test_flavor_disabled_is_plain_without_warning(self):
        self.flags(enforcement='preferred', group='secmig')
        self.offers['destination'] = False
        log = self.useFixture(fixtures.FakeLogger(
            name='secmig_nova.virt.driver', level=logging.WARNING))
        guest = self.operation(instance=Instance(enforcement.DISABLED))
        self.secmig.start_source.assert_not_called()
        self.assertIs(guest, self.super_op.call_args[0][6])
        self.assertNotIn('NOT encrypted', log.output)

    def test_tunnel_failure_is_not_raised_into_nova(self):
        guest = FakeGuest(job=libvirt.VIR_DOMAIN_JOB_NONE)
        guest._domain.migrateToURI3.side_effect = libvirt.libvirtError(
            'operation failed: migration socket closed')
        self.session.tunnel_failure.return_value = {
            'side': 'source', 'status': 'failed',
            'reason': 'checkpoint_mismatch', 'message': 'digest differs'}
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'failed', 'checkpoint_mismatch', 'x')
        self.operation(guest)
        self.session.finish.assert_called_once_with(
            False, 'source tunnel: checkpoint_mismatch: digest differs',
            cancelled=False)
        self.assertIn('did not complete',
                      self.event_failure().format_message())

    def test_cut_stream_names_where_the_destinations_verdict_is(self):
        # The source cannot tell tampering detected by the destination from
        # a cut path: the error sends the operator to the destination.
        guest = FakeGuest(job=libvirt.VIR_DOMAIN_JOB_NONE)
        guest._domain.migrateToURI3.side_effect = libvirt.libvirtError(
            'operation failed: migration socket closed')
        self.session.grant.dst_cloud = 'cloud-b'
        self.session.tunnel_failure.return_value = {
            'side': 'source', 'status': 'failed', 'reason': 'truncated',
            'message': 'peer closed the connection'}
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'failed', 'truncated', 'x')
        self.operation(guest)
        why = self.session.finish.call_args[0][1]
        self.assertTrue(why.startswith(
            'source tunnel: truncated: peer closed the connection; the '
            'destination host-b may have detected tampering'), why)
        self.assertIn('migration %s in cloud cloud-b' % MID, why)

    def test_libvirt_error_with_the_guest_still_here_rolls_back(self):
        # No tunnel verdict (an abort, or a tunnel killed without an
        # outcome) and the guest runs here: not raised, so nova's monitor
        # rolls back instead of nova 34 putting the server in ERROR.
        guest = FakeGuest(job=libvirt.VIR_DOMAIN_JOB_NONE)
        # str() of a real libvirtError is the process's last libvirt error
        # (whatever an earlier test left), not the constructor's text.
        error = libvirt.libvirtError('x')
        guest._domain.migrateToURI3.side_effect = error
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'failed')
        self.operation(guest)
        self.session.finish.assert_called_once_with(
            False, 'the libvirt job failed: %s' % error, cancelled=False)
        self.assertEqual({}, self.driver._secmig_outgoing)

    def test_libvirt_error_with_the_guest_gone_is_nova_s(self):
        guest = FakeGuest(job=libvirt.VIR_DOMAIN_JOB_NONE)
        guest.is_active = lambda: False
        guest._domain.migrateToURI3.side_effect = libvirt.libvirtError('x')
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'aborted')
        self.assertRaises(libvirt.libvirtError, self.operation, guest)
        self.session.finish.assert_called_once_with(
            False, 'nova\'s migration operation raised', cancelled=False)
        self.assertEqual({}, self.driver._secmig_outgoing)

    def test_cancelled_job(self):
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'aborted')
        self.operation(FakeGuest(job=libvirt.VIR_DOMAIN_JOB_CANCELLED))
        self.session.finish.assert_called_once_with(
            False, 'the libvirt job was cancelled', cancelled=False)

    def test_libvirt_cancel_is_recorded_and_told_to_the_monitor(self):
        # libvirt said "canceled by client" (nova's abort): the session is
        # finished as cancelled and nova's monitor will be told so.
        guest = FakeGuest(job=libvirt.VIR_DOMAIN_JOB_NONE)
        error = libvirt.libvirtError('x')
        error.get_error_code = lambda: driver.VIR_ERR_OPERATION_ABORTED
        guest._domain.migrateToURI3.side_effect = error
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'aborted')
        self.operation(guest)
        args, kwargs = self.session.finish.call_args
        self.assertEqual({'cancelled': True}, kwargs)
        self.assertFalse(args[0])
        self.assertTrue(args[1].startswith('the migration was cancelled'),
                        args[1])
        self.assertEqual({UUID}, self.driver._secmig_cancelled)

    def test_monitor_sees_cancelled_once_the_operation_ended_so(self):
        guest = FakeGuest(job=libvirt.VIR_DOMAIN_JOB_NONE)
        said = [False]
        monitored = driver._MonitoredGuest(guest, lambda: said[0])
        # Before the operation ended (or when it did not end cancelled):
        # nova's own reading.
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE,
                         monitored.get_job_info().type)
        said[0] = True
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_CANCELLED,
                         monitored.get_job_info().type)
        # A job libvirt still reports is reported as it is.
        guest.job = libvirt.VIR_DOMAIN_JOB_UNBOUNDED
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                         monitored.get_job_info().type)
        # The guest is gone from here: not a cancel (nova decides).
        guest.job = libvirt.VIR_DOMAIN_JOB_NONE
        guest.is_active = lambda: False
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE,
                         monitored.get_job_info().type)

    def test_refuses_tunnelled_flags(self):
        self.super_op.side_effect = nova_operation(
            flags=libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_TUNNELLED)
        guest = self.operation()
        guest._domain.migrateToURI3.assert_not_called()
        self.assertIn('tunnelled',
                      self.event_failure().format_message())

    def test_receipts_not_verified_after_completion(self):
        self.session.finish.return_value = migration.Result(
            MID, 'source', 'failed', 'receipt_invalid', 'bad signature')
        self.operation()
        self.assertIn('completed but not verified',
                      self.event_failure().format_message())

    def test_disabled_is_plain_libvirt(self):
        self.flags(enforcement='disabled', group='secmig')
        self.driver._secmig = None
        guest = self.operation()
        self.assertIs(guest, self.super_op.call_args[0][6])
        self.secmig.start_source.assert_not_called()
        self.events.assert_not_called()
        guest._domain.migrateToURI3.assert_called_once_with(
            'qemu+tcp://host-b/system', params=mock.ANY, flags=mock.ANY)

    def test_post_live_migration_waits_for_the_source_tunnel(self):
        post = self.patch_libvirt('post_live_migration')
        self.driver._secmig_outgoing[UUID] = self.session
        self.session.owner.settings.tunnel_result_timeout = 1.0
        instance = Instance()
        self.driver.post_live_migration(self.context, instance, None,
                                        migrate_data=None)
        self.session.wait_done.assert_called_once_with(
            1.0 + migration.STOP_TIMEOUT)
        post.assert_called_once_with(self.driver, self.context, instance,
                                     None, migrate_data=None)


class TestCrossCloudSource(CrossCloudTestCase, SourceTestCase):
    """_live_migration_operation: the destination's cloud.

    From the server's allocations, on the destination during a live
    migration.
    """

    def setUp(self):
        super().setUp()
        self.allocations = {'rp-dst': {'resources': {'VCPU': 1}}}

    def test_destination_of_a_peer_cloud(self):
        self.on_cloud('rp-dst', 'cloud-b')
        guest = self.operation()
        self.secmig.start_source.assert_called_once_with(
            MID, UUID, 'host-b', {'memory': 1}, user_id='user-1',
            project_id='proj-1', dst_cloud='cloud-b')
        self.assertIsInstance(self.super_op.call_args[0][6],
                              driver.SecureGuest)
        guest._domain.migrateToURI3.assert_called_once()
        self.session.finish.assert_called_once_with(True, None,
                                                    cancelled=False)
        self.assertIsNone(self.event_failure())

    def test_destination_of_this_cloud(self):
        self.on_cloud('rp-dst', 'cloud-a')
        self.operation()
        self.secmig.start_source.assert_called_once_with(
            MID, UUID, 'host-b', {'memory': 1}, user_id='user-1',
            project_id='proj-1')

    def assertRefused(self, message):
        guest = self.operation()
        self.secmig.start_source.assert_not_called()
        self.super_op.assert_not_called()
        guest._domain.migrateToURI3.assert_not_called()
        failure = self.event_failure()
        self.assertIsInstance(failure, driver.SecureMigrationFailed)
        self.assertIn(message, failure.format_message())
        self.assertEqual({}, self.driver._secmig_outgoing)

    def test_destination_of_an_unknown_cloud_refused(self):
        self.on_cloud('rp-dst', 'cloud-z')
        self.assertRefused('trust cloud CLOUD_Z, which is neither')

    def test_traits_error_refused(self):
        self.placement.get_provider_traits.side_effect = \
            exception.ResourceProviderTraitRetrievalFailed(uuid='rp-dst')
        self.assertRefused('could not read the trust cloud')

    def test_allocations_error_refused(self):
        self.placement.get_allocations_for_consumer.side_effect = \
            exception.ConsumerAllocationRetrievalFailed(
                consumer_uuid=UUID, error='503')
        self.assertRefused('could not read the allocations of %s' % UUID)
