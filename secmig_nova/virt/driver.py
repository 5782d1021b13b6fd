"""SecureLibvirtDriver: nova's libvirt driver, live migration through secmig.

Loaded by nova as ``compute_driver = secmig.SecureLibvirtDriver`` (through
the ``nova/virt/secmig`` re-export). Every override keeps the exact
signature of :class:`nova.virt.libvirt.driver.LibvirtDriver`, adds one step
and calls ``super()``; the migration work itself is done by
:class:`secmig_nova.virt.migration.SecureMigration`:

``init_host``
    check ``[secmig]``, the host certificate, key and CA; refuse
    ``[libvirt] live_migration_tunnelled`` and QEMU native TLS.
``update_provider_tree``
    report the ``CUSTOM_SECMIG_TUNNEL`` trait, how the peer of a migration
    learns that this host offers the tunnel, and
    ``CUSTOM_SECMIG_CLOUD_<CLOUD_ID>``, how it learns which trust cloud
    (broker, CA) this host belongs to.
``check_can_live_migrate_destination`` / ``check_can_live_migrate_source``
    enforcement (secmig_nova/virt/enforcement.py): a server that requires
    secmig is refused before anything moves when either host lacks it.
``pre_live_migration`` (destination)
    start the destination tunnel and register it with the broker;
    ``post_live_migration_at_destination`` and
    ``rollback_live_migration_at_destination`` stop it, verify and record.
``_live_migration_operation`` (source, nova's migration thread)
    ticket and grant, source tunnel, then nova's own operation with a guest
    whose ``migrate`` hands libvirt the tunnel's UNIX sockets; receipts
    verified and recorded at the end. ``post_live_migration`` waits for
    that, so the destination stops its tunnel only after the source's
    finished.

nova's monitor, abort, force-complete and rollback are untouched. A
refusal or tunnel failure is reported as the instance action event
``compute_secmig_live_migration`` and not raised into nova, whose monitor
then finds the guest still running here and rolls back: the server stays
ACTIVE on its source host.
"""

import contextlib
import json
import re
import threading

from nova.compute import utils as compute_utils
import nova.conf
from nova import exception
from nova import objects
from nova.scheduler.client import report
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import migration as libvirt_migrate
from oslo_log import log as logging
from oslo_utils import excutils

from secmig_nova import conf as secmig_conf  # noqa: F401 (registers [secmig])
from secmig_nova.tunnel import errors as tunnel_errors
from secmig_nova.tunnel import process as tunnel_process
from secmig_nova.virt import enforcement
from secmig_nova.virt import migration

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF

# Placement trait of a compute node that offers the secmig tunnel.
TRAIT = 'CUSTOM_SECMIG_TUNNEL'
# Prefix of the placement trait naming the node's trust cloud.
CLOUD_TRAIT_PREFIX = 'CUSTOM_SECMIG_CLOUD_'
# Instance action event of the secure part of a live migration (source).
EVENT = 'compute_secmig_live_migration'
# libvirt's virErrorNumber for "operation aborted: job ... canceled by
# client" (nova's test fakelibvirt does not define it).
VIR_ERR_OPERATION_ABORTED = 78
# Seconds between the destination's checks of a migration it prepared a
# tunnel for: nova tells the destination driver about a rollback only when
# it has something to clean up there (not with shared storage), so the
# destination also watches the migration's status.
WATCH_INTERVAL = 2.0
# nova migration statuses after which no stream can come any more.
FAILED_STATUSES = ('failed', 'error', 'cancelled')


def cloud_trait(cloud_id):
    """The placement trait of the hosts of trust cloud ``cloud_id``."""
    return CLOUD_TRAIT_PREFIX + re.sub('[^A-Z0-9_]', '_', cloud_id.upper())


class SecureMigrationFailed(exception.MigrationError):
    msg_fmt = 'Secure live migration failed: %(reason)s'


class SecureGuest:
    """nova's Guest for one migration; ``migrate`` goes through the tunnel.

    Everything but :meth:`migrate` is the wrapped guest's. nova builds the
    flags, the destination XML, the disks and the bandwidth as usual; the
    migrate URI nova would use is replaced by the source tunnel's socket
    and, for block migration, ``disks_uri`` is added (nova's
    ``Guest.migrate`` cannot pass it).
    """

    def __init__(self, guest, session):
        self._guest = guest
        self._session = session
        self.tunnel_failure = None
        # libvirt's error when its job ended without a tunnel verdict (the
        # operator aborted it, or the tunnel died without an outcome).
        self.libvirt_failure = None
        # libvirt said its job was cancelled (virDomainAbortJob: nova's
        # live_migration_abort, or its own completion timeout).
        self.cancelled = False

    def __getattr__(self, name):
        return getattr(self._guest, name)

    def _still_running_here(self):
        try:
            return bool(self._guest.is_active())
        except libvirt_driver.libvirt.libvirtError:
            return False

    def migrate(self, destination, migrate_uri=None, migrate_disks=None,
                destination_xml=None, flags=0, bandwidth=0, parallel=0):
        libvirt = libvirt_driver.libvirt
        session = self._session
        if flags & (libvirt.VIR_MIGRATE_TUNNELLED | libvirt.VIR_MIGRATE_TLS):
            raise SecureMigrationFailed(reason=(
                'libvirt flags ask for a tunnelled or native TLS migration; '
                'the secmig tunnel replaces both'))
        if flags & libvirt.VIR_MIGRATE_NON_SHARED_INC and not migrate_disks:
            # Same quirk as nova's Guest.migrate: NON_SHARED_INC with no
            # disk list would copy every writable disk, volumes included.
            flags &= ~libvirt.VIR_MIGRATE_NON_SHARED_INC
        disks = len(migrate_disks or ()) \
            if flags & libvirt.VIR_MIGRATE_NON_SHARED_INC else 0
        expected = migration.stream_counts(parallel, disks)
        if expected != session.streams:
            raise SecureMigrationFailed(reason=(
                'libvirt would open connections %s but the grant allows %s'
                % (expected, session.streams)))
        params = migration.libvirt_params(
            session.migrate_uri,
            disks_uri=session.disks_uri if disks else None,
            destination_xml=destination_xml,
            migrate_disks=migrate_disks if disks else None,
            bandwidth=bandwidth, parallel=parallel)
        LOG.info('Migration %s: libvirt migrates through the secmig tunnel '
                 '(migrate_uri %s%s instead of %s)', session.migration_id,
                 params[migration.PARAM_URI],
                 ', disks_uri %s' % params[migration.PARAM_DISKS_URI]
                 if migration.PARAM_DISKS_URI in params else '',
                 migrate_uri or 'the default')
        try:
            self._guest._domain.migrateToURI3(destination, params=params,
                                              flags=flags)
        except libvirt.libvirtError as e:
            self.cancelled = e.get_error_code() == VIR_ERR_OPERATION_ABORTED
            failure = session.tunnel_failure()
            if failure is None:
                if not self._still_running_here():
                    raise
                # libvirt ended the job and the guest runs here: an abort,
                # or a tunnel that died without saying why. Raising would
                # make nova put the server in ERROR (nova 34 re-raises the
                # operation's error after its monitor rolled back); the
                # monitor rolls back as for any failed job instead.
                self.libvirt_failure = str(e)
                LOG.error('Migration %s: libvirt ended the migration job '
                          'and the guest still runs here: %s',
                          session.migration_id, e)
                return
            self.tunnel_failure = failure
            if self.cancelled:
                # The operator's abort: QEMU closed its socket, so the
                # tunnel's failure is the consequence, not the cause.
                LOG.warning('Migration %s: libvirt cancelled the job (%s); '
                            'the %s tunnel then ended: %s: %s',
                            session.migration_id, e,
                            failure.get('side', 'source'),
                            failure.get('reason'), failure.get('message'))
                return
            # The tunnel aborted the stream (and said why); libvirt's error
            # is its consequence. The guest still runs here: nova's monitor
            # rolls back as for any failed job.
            LOG.error('Migration %s: the %s tunnel aborted the migration '
                      '(%s: %s); libvirt reported: %s', session.migration_id,
                      failure.get('side', 'source'), failure.get('reason'),
                      failure.get('message'), e)


class _MonitoredGuest:
    """The guest nova's migration monitor polls.

    nova tells a cancelled migration from a failed one only if a poll
    (every 0.5 s) lands while libvirt still reports the job CANCELLED;
    once the job is gone it finds the guest running here and calls the
    migration ``failed``. Through the tunnel the migrate call returns only
    after the tunnel's outcome is collected, so on a busy host the poll
    often misses the window. libvirt's migrate call said "cancelled"
    (``SecureGuest.cancelled``): once that call has returned and the
    guest still runs here, the job was cancelled, whenever nova looks.
    """

    def __init__(self, guest, cancelled):
        self._guest = guest
        self._cancelled = cancelled

    def __getattr__(self, name):
        return getattr(self._guest, name)

    def get_job_info(self):
        libvirt = libvirt_driver.libvirt
        info = self._guest.get_job_info()
        if info.type == libvirt.VIR_DOMAIN_JOB_NONE and self._cancelled():
            try:
                active = self._guest.is_active()
            except libvirt.libvirtError:
                active = False
            if active:
                return libvirt_guest.JobInfo(
                    type=libvirt.VIR_DOMAIN_JOB_CANCELLED)
        return info


def _tunnel_failure_text(failure, session, dest):
    """What the source tunnel's failure tells the operator.

    A source that saw its stream cut cannot tell a cut path from a
    destination that detected tampering (tunnel-protocol.rst, "What each
    side can know"); only the destination's record names the verdict.
    """
    text = '%s tunnel: %s: %s' % (failure.get('side', 'source'),
                                  failure.get('reason'),
                                  failure.get('message'))
    if failure.get('reason') in tunnel_errors.PEER_DETECTED_OR_CUT:
        text += ('; the destination %s may have detected tampering: its '
                 'verdict is in its nova-compute log and in the broker '
                 'record of migration %s in cloud %s'
                 % (dest, session.migration_id, session.grant.dst_cloud))
    return text


class SecureLibvirtDriver(libvirt_driver.LibvirtDriver):
    """The libvirt driver with secure live migration (secmig)."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        # Set by init_host unless [secmig] enforcement is disabled.
        self._secmig = None
        self._secmig_host = None
        self._secmig_lock = threading.Lock()
        self._secmig_incoming = {}
        self._secmig_outgoing = {}
        # Instances whose last secure migrate call libvirt cancelled.
        self._secmig_cancelled = set()

    # -- start-up --------------------------------------------------------

    def init_host(self, host):
        self._secmig_init(host)
        return super().init_host(host)

    def _secmig_init(self, host):
        self._secmig_host = host
        if CONF.secmig.enforcement == enforcement.DISABLED:
            LOG.info('secmig enforcement is disabled on %s: live migrations '
                     'from and to this host are plain libvirt migrations',
                     host)
            return
        problems = []
        if CONF.libvirt.live_migration_tunnelled:
            problems.append(
                '[libvirt] live_migration_tunnelled = True would send the '
                'migration stream through libvirtd instead of the secmig '
                'tunnel; set it to False')
        if CONF.libvirt.live_migration_with_native_tls:
            problems.append(
                '[libvirt] live_migration_with_native_tls = True: QEMU '
                'native TLS and the secmig tunnel are alternatives, never '
                'stacked; set it to False (the tunnel encrypts the stream)')
        if problems:
            raise exception.InvalidConfiguration(
                'secmig (enforcement %s) refuses to start: %s; or set '
                '[secmig] enforcement = disabled'
                % (CONF.secmig.enforcement, '; '.join(problems)))
        spares = None
        if CONF.secmig.tunnel_spare:
            spares = tunnel_process.SpareTunnels()
        try:
            self._secmig = migration.SecureMigration.from_conf(
                CONF, host=host,
                **({'tunnel_factory': spares} if spares else {}))
        except migration.SecureMigrationError as e:
            raise exception.InvalidConfiguration(
                'secmig (enforcement %s) refuses to start: %s'
                % (CONF.secmig.enforcement, e.args[0]))
        LOG.info('secmig enforcement %s on %s: host certificate %s '
                 '(fingerprint %s), sockets in %s',
                 CONF.secmig.enforcement, host,
                 self._secmig.identity.credentials.identity.urn,
                 self._secmig.identity.fingerprint,
                 self._secmig.settings.socket_dir)
        if spares is not None:
            # The first migration gets one ready too.
            spares.prepare()

    def cleanup_host(self, host):
        try:
            return super().cleanup_host(host)
        finally:
            with self._secmig_lock:
                sides = list(self._secmig_incoming.values()) + \
                    list(self._secmig_outgoing.values())
                self._secmig_incoming.clear()
                self._secmig_outgoing.clear()
            for side in sides:
                side.abort('nova-compute on %s stopped' % host)
            if self._secmig is not None:
                self._secmig.close()

    def update_provider_tree(self, provider_tree, nodename,
                             allocations=None):
        super().update_provider_tree(provider_tree, nodename,
                                     allocations=allocations)
        own = cloud_trait(CONF.secmig.cloud_id)
        stale = [t for t in provider_tree.data(nodename).traits
                 if t.startswith(CLOUD_TRAIT_PREFIX) and
                 (t != own or self._secmig is None)]
        if stale:
            provider_tree.remove_traits(nodename, *stale)
        if self._secmig is not None:
            provider_tree.add_traits(nodename, TRAIT, own)
        else:
            provider_tree.remove_traits(nodename, TRAIT)

    # -- enforcement -----------------------------------------------------

    def _secmig_mode(self, instance):
        """The server's wanted mode on this host; raises on a bad value."""
        try:
            flavor_mode = enforcement.parse(
                instance.flavor.extra_specs.get(enforcement.KEY),
                'flavor %s' % instance.flavor.flavorid)
            image_mode = enforcement.parse(
                (instance.system_metadata or {}).get(
                    enforcement.IMAGE_SYSTEM_METADATA_KEY),
                'image %s' % instance.image_ref)
        except enforcement.InvalidMode as e:
            raise exception.MigrationPreCheckError(reason=str(e))
        return enforcement.wanted(CONF.secmig.enforcement, flavor_mode,
                                  image_mode)

    def _secmig_providers_offer(self, context, rp_uuids):
        """Whether any of these resource providers offers the tunnel.

        None when placement could not tell (counts as not offered).
        """
        try:
            client = report.report_client_singleton()
            for rp_uuid in rp_uuids:
                if rp_uuid and TRAIT in client.get_provider_traits(
                        context, rp_uuid).traits:
                    return True
        except Exception as e:  # noqa: any placement error: not known
            LOG.warning('Could not read the traits of %s from placement: '
                        '%s', rp_uuids, e)
            return None
        return False

    def _secmig_peer_clouds(self):
        # {cloud_id: TrustStore} of [secmig] peer_ca_files (none: every
        # other host must be in this host's own cloud).
        return getattr(self._secmig, 'peer_stores', None) or {}

    def _secmig_providers_cloud(self, context, rp_uuids):
        """The peer trust cloud of the host owning these providers.

        From its ``CUSTOM_SECMIG_CLOUD_*`` trait: None for this host's own
        cloud (also for a host without the trait, an older driver), else
        one of ``[secmig] peer_ca_files``. Not looked up without peers.

        :raises SecureMigrationFailed: placement could not tell, or the
            host belongs to a cloud this host has no trust store for.
        """
        peers = self._secmig_peer_clouds()
        if not peers:
            return None
        try:
            client = report.report_client_singleton()
            traits = set()
            for rp_uuid in rp_uuids:
                if rp_uuid:
                    traits |= set(client.get_provider_traits(
                        context, rp_uuid).traits)
        except Exception as e:  # noqa: any placement error: refuse
            raise SecureMigrationFailed(reason=(
                'could not read the trust cloud of resource providers %s '
                'from placement: %s' % (rp_uuids, e)))
        if cloud_trait(self._secmig.cloud_id) in traits:
            return None
        for cloud_id in sorted(peers):
            if cloud_trait(cloud_id) in traits:
                return cloud_id
        unknown = sorted(t for t in traits
                         if t.startswith(CLOUD_TRAIT_PREFIX))
        if unknown:
            raise SecureMigrationFailed(reason=(
                'the other host belongs to trust cloud %s, which is neither '
                'this host\'s cloud %s nor one of its [secmig] '
                'peer_ca_files (%s)' % (
                    unknown[0][len(CLOUD_TRAIT_PREFIX):],
                    self._secmig.cloud_id, ', '.join(sorted(peers)))))
        return None

    def _secmig_source_cloud(self, context, instance):
        """The source host's peer cloud (None: this host's own)."""
        if not self._secmig_peer_clouds():
            return None
        try:
            node = objects.ComputeNode.get_by_host_and_nodename(
                context, instance.host, instance.node)
        except exception.NotFound as e:
            raise SecureMigrationFailed(reason=(
                'source node of %s not found: %s' % (instance.uuid, e)))
        return self._secmig_providers_cloud(context, [node.uuid])

    def _secmig_destination_cloud(self, context, instance):
        """The destination host's peer cloud (None: this host's own).

        The server's own allocations are on the destination during a
        live migration.
        """
        if not self._secmig_peer_clouds():
            return None
        try:
            allocations = report.report_client_singleton() \
                .get_allocations_for_consumer(context, instance.uuid)
        except Exception as e:  # noqa: any placement error: refuse
            raise SecureMigrationFailed(reason=(
                'could not read the allocations of %s from placement: %s'
                % (instance.uuid, e)))
        return self._secmig_providers_cloud(context, list(allocations))

    def _secmig_destination_offers(self, context, instance):
        """Whether the host the server is moving to offers the tunnel.

        During a live migration the server's own allocations are on the
        destination (the source's are held by the migration), so their
        providers are the destination's.
        """
        try:
            allocations = report.report_client_singleton() \
                .get_allocations_for_consumer(context, instance.uuid)
        except Exception as e:  # noqa: any placement error: not known
            LOG.warning('Could not read the allocations of %s from '
                        'placement: %s', instance.uuid, e)
            return None
        if not allocations:
            return None
        return self._secmig_providers_offer(context, list(allocations))

    def _secmig_destination_name(self, context, instance):
        """The destination's host name, for messages; never raises.

        nova does not tell the source where a server is going before
        ``pre_live_migration``; the compute node among its allocations'
        providers does.
        """
        try:
            allocations = report.report_client_singleton() \
                .get_allocations_for_consumer(context, instance.uuid)
            for rp_uuid in allocations or ():
                try:
                    return objects.ComputeNode.get_by_uuid(
                        context, rp_uuid).host
                except exception.ComputeHostNotFound:
                    continue  # a sharing or nested provider
        except Exception as e:  # noqa: only a name for a message
            LOG.debug('Destination of %s not found: %s', instance.uuid, e)
        return 'the destination host'

    def _secmig_source_offers(self, context, instance):
        try:
            node = objects.ComputeNode.get_by_host_and_nodename(
                context, instance.host, instance.node)
        except exception.NotFound as e:
            LOG.warning('Source node of %s not found: %s', instance.uuid, e)
            return None
        return self._secmig_providers_offer(context, [node.uuid])

    def _secmig_decide(self, context, instance, source_offers,
                       destination_offers, source, destination):
        mode = self._secmig_mode(instance)
        decision = enforcement.decide(mode, source_offers,
                                      destination_offers, source=source,
                                      destination=destination)
        LOG.debug('secmig decision for %s (%s -> %s, mode %s): %s',
                  instance.uuid, source, destination, mode, decision)
        return decision

    def check_can_live_migrate_destination(self, context, instance,
                                           src_compute_info, dst_compute_info,
                                           block_migration=False,
                                           disk_over_commit=False):
        if self._secmig is not None or self._secmig_mode(instance) != \
                enforcement.DISABLED:
            source = src_compute_info.get('host') or 'the source host'
            decision = self._secmig_decide(
                context, instance,
                self._secmig_providers_offer(
                    context, [src_compute_info.get('uuid')]),
                self._secmig is not None, source, self._secmig_host)
            if decision.refused:
                raise exception.MigrationPreCheckError(
                    reason=decision.refusal)
        return super().check_can_live_migrate_destination(
            context, instance, src_compute_info, dst_compute_info,
            block_migration=block_migration,
            disk_over_commit=disk_over_commit)

    def check_can_live_migrate_source(self, context, instance,
                                      dest_check_data,
                                      block_device_info=None):
        if self._secmig is not None or self._secmig_mode(instance) != \
                enforcement.DISABLED:
            offers = self._secmig_destination_offers(context, instance)
            # Named only where a message needs it (a second placement
            # read otherwise made on every pre-check).
            decision = self._secmig_decide(
                context, instance, self._secmig is not None, offers,
                self._secmig_host, 'the destination host' if offers
                else self._secmig_destination_name(context, instance))
            if decision.refused:
                raise exception.MigrationPreCheckError(
                    reason=decision.refusal)
        return super().check_can_live_migrate_source(
            context, instance, dest_check_data,
            block_device_info=block_device_info)

    # -- destination -----------------------------------------------------

    def pre_live_migration(self, context, instance, block_device_info,
                           network_info, disk_info, migrate_data):
        incoming = self._secmig_prepare_destination(context, instance,
                                                    disk_info, migrate_data)
        try:
            return super().pre_live_migration(
                context, instance, block_device_info, network_info,
                disk_info, migrate_data)
        except Exception:
            with excutils.save_and_reraise_exception():
                if incoming is not None:
                    self._secmig_end_incoming(
                        instance, False, 'pre_live_migration failed')

    def _secmig_migration_id(self, context, instance, migrate_data):
        if migrate_data is not None and 'migration' in migrate_data:
            return migrate_data.migration.uuid
        # The source sets migrate_data.migration only after
        # pre_live_migration: look the in-progress one up.
        found = [m for m in objects.MigrationList.get_in_progress_by_instance(
            context, instance.uuid, migration_type='live-migration')
            if m.dest_compute in (None, self._secmig_host)]
        if len(found) != 1:
            raise exception.MigrationError(reason=(
                'cannot tell which live migration of %s this is: %d in '
                'progress to %s' % (instance.uuid, len(found),
                                    self._secmig_host)))
        return found[0].uuid

    def _secmig_prepare_destination(self, context, instance, disk_info,
                                    migrate_data):
        if self._secmig is None and self._secmig_mode(instance) == \
                enforcement.DISABLED:
            return None
        decision = self._secmig_decide(
            context, instance, self._secmig_source_offers(context, instance),
            self._secmig is not None, instance.host, self._secmig_host)
        if decision.refused:
            raise SecureMigrationFailed(reason=decision.refusal)
        if not decision.secure:
            return None
        disks = 0
        if migrate_data is not None and migrate_data.obj_attr_is_set(
                'block_migration') and migrate_data.block_migration:
            try:
                disks = max(1, len(json.loads(disk_info or '[]')))
            except (TypeError, ValueError):
                disks = 1
        streams = migration.stream_counts(
            CONF.libvirt.live_migration_parallel_connections, disks)
        try:
            src_cloud = self._secmig_source_cloud(context, instance)
            mid = self._secmig_migration_id(context, instance, migrate_data)
            incoming = self._secmig.prepare_destination(
                mid, instance.uuid, streams,
                **({'src_cloud': src_cloud} if src_cloud else {}))
        except SecureMigrationFailed:
            raise
        except (migration.SecureMigrationError,
                exception.MigrationError) as e:
            raise SecureMigrationFailed(reason=str(e))
        with self._secmig_lock:
            stale = self._secmig_incoming.pop(instance.uuid, None)
            self._secmig_incoming[instance.uuid] = incoming
        if stale is not None:
            stale.abort('superseded by migration %s' % mid)
        self._secmig_watch(context.elevated(), instance.uuid, incoming)
        return incoming

    def _secmig_watch(self, context, instance_uuid, incoming):
        """Stop the destination tunnel once nova gives the migration up."""
        def watch():
            while not incoming.wait_done(WATCH_INTERVAL):
                try:
                    status = objects.Migration.get_by_uuid(
                        context, incoming.migration_id).status
                except Exception as e:  # noqa: keep watching
                    LOG.debug('Migration %s: status unknown: %s',
                              incoming.migration_id, e)
                    continue
                if status in FAILED_STATUSES:
                    LOG.info('Migration %s is %s: stopping its destination '
                             'tunnel', incoming.migration_id, status)
                    self._secmig_end_incoming_of(
                        instance_uuid, incoming, False,
                        'the migration is %s' % status)
                    return

        threading.Thread(target=watch, daemon=True,
                         name='secmig-watch-%s' % incoming.migration_id
                         ).start()

    def _secmig_end_incoming(self, instance, completed, reason=None):
        with self._secmig_lock:
            incoming = self._secmig_incoming.get(instance.uuid)
        if incoming is None:
            return None
        return self._secmig_end_incoming_of(instance.uuid, incoming,
                                            completed, reason)

    def _secmig_end_incoming_of(self, instance_uuid, incoming, completed,
                                reason):
        with self._secmig_lock:
            if self._secmig_incoming.get(instance_uuid) is incoming:
                del self._secmig_incoming[instance_uuid]
        result = incoming.finish(completed, reason)
        if completed and not result.ok:
            LOG.error('Migration %s of %s completed but its receipts were '
                      'not verified here: %s', result.migration_id,
                      instance_uuid, result.message)
        return result

    def post_live_migration_at_destination(self, context, instance,
                                           network_info,
                                           block_migration=False,
                                           block_device_info=None):
        try:
            return super().post_live_migration_at_destination(
                context, instance, network_info,
                block_migration=block_migration,
                block_device_info=block_device_info)
        finally:
            self._secmig_end_incoming(instance, True)

    def rollback_live_migration_at_destination(self, context, instance,
                                               network_info,
                                               block_device_info,
                                               destroy_disks=True,
                                               migrate_data=None):
        try:
            return super().rollback_live_migration_at_destination(
                context, instance, network_info, block_device_info,
                destroy_disks=destroy_disks, migrate_data=migrate_data)
        finally:
            self._secmig_end_incoming(instance, False, 'rolled back')

    # -- source ----------------------------------------------------------

    def _live_migration_operation(self, context, instance, dest,
                                  block_migration, migrate_data, guest,
                                  device_names):
        if self._secmig is None and self._secmig_mode(instance) == \
                enforcement.DISABLED:
            return super()._live_migration_operation(
                context, instance, dest, block_migration, migrate_data,
                guest, device_names)
        try:
            decision = self._secmig_decide(
                context, instance, self._secmig is not None,
                self._secmig_destination_offers(context, instance),
                self._secmig_host, dest)
        except exception.MigrationPreCheckError as e:
            decision = enforcement.Decision(False, enforcement.REQUIRED,
                                            refusal=e.kwargs.get('reason'))
        if not decision.secure and not decision.refused:
            if decision.lacking:
                # A security reviewer reads the logs for this one.
                LOG.warning('Live migration to %s is NOT encrypted: secmig '
                            'enforcement is "%s" for this server and %s '
                            '%s not offer secure live migration; libvirt '
                            'migrates plainly', dest, decision.mode,
                            ' and '.join(decision.lacking),
                            'does' if len(decision.lacking) == 1 else 'do',
                            instance=instance)
            return super()._live_migration_operation(
                context, instance, dest, block_migration, migrate_data,
                guest, device_names)
        try:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(compute_utils.EventReporter(
                        context, EVENT, self._secmig_host, instance.uuid,
                        graceful_exit=True))
                except exception.InstanceActionNotFound:
                    LOG.debug('No instance action to record %s in', EVENT,
                              instance=instance)
                self._secmig_migrate(context, instance, dest,
                                     block_migration, migrate_data, guest,
                                     device_names, decision)
        except SecureMigrationFailed as e:
            # Recorded as the instance action event; not raised, so nova's
            # monitor finds the guest still running here and rolls back.
            LOG.error('Live migration to %s through the secmig tunnel '
                      'failed: %s', dest, e.format_message(),
                      instance=instance)

    def _secmig_migrate(self, context, instance, dest, block_migration,
                        migrate_data, guest, device_names, decision):
        if decision.refused:
            raise SecureMigrationFailed(reason=decision.refusal)
        block = migrate_data.block_migration and bool(device_names)
        mid = migrate_data.migration.uuid
        dst_cloud = self._secmig_destination_cloud(context, instance)
        try:
            streams = migration.stream_counts(
                CONF.libvirt.live_migration_parallel_connections,
                len(device_names) if block else 0)
            session = self._secmig.start_source(
                mid, instance.uuid, dest, streams, user_id=context.user_id,
                project_id=context.project_id,
                **({'dst_cloud': dst_cloud} if dst_cloud else {}))
        except migration.SecureMigrationError as e:
            raise SecureMigrationFailed(reason=str(e))
        with self._secmig_lock:
            self._secmig_outgoing[instance.uuid] = session
            self._secmig_cancelled.discard(instance.uuid)
        secure_guest = SecureGuest(guest, session)
        completed, why = False, 'nova\'s migration operation raised'
        try:
            super()._live_migration_operation(
                context, instance, dest, block_migration, migrate_data,
                secure_guest, device_names)
            completed, why = self._secmig_job_outcome(guest, instance)
            if secure_guest.cancelled:
                # Before this thread ends: nova's monitor reads it then.
                with self._secmig_lock:
                    self._secmig_cancelled.add(instance.uuid)
                completed, why = False, 'the migration was cancelled (%s)' % (
                    secure_guest.libvirt_failure or _tunnel_failure_text(
                        secure_guest.tunnel_failure, session, dest))
            elif secure_guest.tunnel_failure is not None:
                failure = secure_guest.tunnel_failure
                completed, why = False, _tunnel_failure_text(
                    failure, session, dest)
            elif secure_guest.libvirt_failure is not None:
                completed, why = False, '%s: %s' % (
                    why or 'the libvirt job failed',
                    secure_guest.libvirt_failure)
        finally:
            result = session.finish(completed, why,
                                    cancelled=secure_guest.cancelled)
            with self._secmig_lock:
                if self._secmig_outgoing.get(instance.uuid) is session:
                    del self._secmig_outgoing[instance.uuid]
        if not result.ok:
            raise SecureMigrationFailed(reason='migration %s %s: %s' % (
                mid, 'completed but not verified' if completed
                else 'did not complete', result.message or result.reason))

    def _live_migration_monitor(self, context, instance, guest, dest,
                                post_method, recover_method, block_migration,
                                migrate_data, future, disk_paths):
        uuid = instance.uuid

        def cancelled():
            with self._secmig_lock:
                return future.done() and uuid in self._secmig_cancelled
        try:
            return super()._live_migration_monitor(
                context, instance, _MonitoredGuest(guest, cancelled), dest,
                post_method, recover_method, block_migration, migrate_data,
                future, disk_paths)
        finally:
            with self._secmig_lock:
                self._secmig_cancelled.discard(uuid)

    @staticmethod
    def _secmig_job_outcome(guest, instance):
        """(completed, why) once libvirt's migrate call returned."""
        libvirt = libvirt_driver.libvirt
        job = guest.get_job_info().type
        if job in (libvirt.VIR_DOMAIN_JOB_NONE,
                   libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
            job = libvirt_migrate.find_job_type(guest, instance,
                                                logging_ok=False)
        if job == libvirt.VIR_DOMAIN_JOB_COMPLETED:
            return True, None
        if job == libvirt.VIR_DOMAIN_JOB_CANCELLED:
            return False, 'the libvirt job was cancelled'
        return False, 'the libvirt job failed'

    def post_live_migration(self, context, instance, block_device_info,
                            migrate_data=None):
        with self._secmig_lock:
            session = self._secmig_outgoing.get(instance.uuid)
        if session is not None:
            # The destination stops its tunnel once nova calls it after
            # this: let the source's receipts exchange finish first.
            timeout = session.owner.settings.tunnel_result_timeout + \
                migration.STOP_TIMEOUT
            if not session.wait_done(timeout):
                LOG.warning('Migration %s: source tunnel still finishing '
                            'after %.0f s', session.migration_id, timeout,
                            instance=instance)
        return super().post_live_migration(
            context, instance, block_device_info, migrate_data=migrate_data)
