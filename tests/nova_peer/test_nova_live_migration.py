"""nova's functional libvirt live-migration tests, driver class swapped.

Every test class of the nova modules below runs unchanged twice, with
``nova.virt.libvirt.LibvirtDriver`` replaced by
:class:`~secmig_nova.virt.driver.SecureLibvirtDriver` before nova's
``setUp`` starts any compute service:

``Disabled<Name>``
    ``[secmig] enforcement = disabled``: must behave exactly like the plain
    libvirt driver.
``Required<Name>``
    ``[secmig] enforcement = required`` with a real broker and fake tunnel
    processes (tests/functional/nova/secmig_world.py): every live migration
    of these tests goes through ticket, grant, tunnels and receipts, and
    nova's own assertions (monitor, abort, rollback, NUMA claims, port
    bindings...) must still hold.

The nova modules: test_live_migration, test_numa_live_migration,
test_migration_addr (cold migration, resize and evacuation: untouched by
secmig) and the live-migration regression tests that run the libvirt
driver.
"""

import importlib
import inspect
import pkgutil
import sys
import unittest

import fixtures
# First: nova's test package sets up the process (eventlet or native
# threads) before anything else imports threading-sensitive modules.
from nova.tests import functional  # noqa: F401
from nova import context as nova_context  # noqa: H306,I100 (see above)
from nova import test as nova_test

from secmig_nova.virt import driver
from tests.functional.nova import secmig_world

NOVA_MODULES = (
    'nova.tests.functional.libvirt.test_live_migration',
    'nova.tests.functional.libvirt.test_numa_live_migration',
    'nova.tests.functional.libvirt.test_migration_addr',
    'nova.tests.functional.regressions.test_bug_1595962',
    'nova.tests.functional.regressions.test_bug_1741364',
    'nova.tests.functional.regressions.test_bug_1888395',
    'nova.tests.functional.regressions.test_bug_1899835',
    'nova.tests.functional.regressions.test_bug_1939545',
    'nova.tests.functional.regressions.test_bug_1944619',
    'nova.tests.functional.regressions.test_bug_2139351',
    'nova.tests.functional.regressions.test_bug_2152697',
    'nova.tests.functional.regressions.test_bug_2153425',
)


class SecureDriverMixin:
    """Swap the driver class (and set up secmig) before nova's setUp.

    Also counts the libvirt migrate calls that went plain (nova's
    ``Guest.migrate``) and through the tunnel (``SecureGuest.migrate``);
    after the test, :meth:`check_secmig_path` asserts the mode's path was
    the only one taken.

    One change to nova's test *infrastructure*, none to its tests, in both
    modes: nova's cell database fixture guards cell targeting with a
    writer-preferring reader/writer lock, and the NUMA tests' stubs
    (``NUMALiveMigrationRollbackTests._migrate_stub``, ``drop_move_claim``
    in ``_test_bug_1894095``, ``test_bug_1843639``) call
    ``_run_periodics()`` from nova's migration or RPC threads while they
    hold a read lock (``target_cell``) and wait for
    ``update_available_resource`` threads that need one too. If another
    thread asks for the write lock in between (the main thread polling
    the API, or switching cells), the threads wait on each other forever.
    How likely that is depends only on timing: with secmig the stubs run a
    little later (ticket, grant and tunnels come first); on a busy machine
    the plain driver hangs the same way (seen in
    ``Disabled_..._NUMALiveMigrationPositiveTests.test_bug_1843639`` and
    ``Disabled_..._NUMALiveMigrationRollbackTests.test_bug_1894095_*``
    beside two CPU hogs). A reader-preferring lock removes the deadlock and
    changes nothing else.

    A second change of the same kind: the test modules' own database reads
    (``context.get_admin_context()`` then, e.g., ``ComputeNode.
    get_by_nodename`` in ``_assert_host_consumed_cpus``, called from the
    migrate stub on nova's migration thread) are not targeted at a cell, so
    the fixture answers them from whichever cell another thread targeted
    last (its own FIXME, bug 1717000). On a busy machine the main thread
    polling the API has cell0 targeted at that moment and the read fails
    with ``ComputeHostNotFound`` (seen in ``Required_..._NUMALiveMigration
    PositiveTests.test_numa_live_migration_dest_pinned``). Every record
    these tests read lives in cell1, their only cell: the modules'
    ``context.get_admin_context`` returns a context targeted at cell1.
    """

    secmig_mode = None
    # The nova test module the class comes from (set by _define).
    nova_module = None

    def setUp(self):
        # By module object: the package nova.tests.fixtures has an
        # attribute "nova" that is nova itself, not its submodule.
        module = sys.modules['nova.tests.fixtures.nova']
        self.useFixture(fixtures.MockPatchObject(
            module, 'ReaderWriterLock',
            type('ReaderPreferringLock', (module.ReaderWriterLock,), {
                'has_pending_writers': property(lambda self: False)})))
        self.secmig = self.useFixture(
            secmig_world.SecmigWorld(mode=self.secmig_mode))
        self.secmig_calls = {'plain': 0, 'secure': 0}
        for target, kind in (
                ('nova.virt.libvirt.guest.Guest.migrate', 'plain'),
                ('secmig_nova.virt.driver.SecureGuest.migrate', 'secure')):
            self.useFixture(fixtures.MonkeyPatch(target, self._counting(
                pkgutil.resolve_name(target), kind)))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.LibvirtDriver', driver.SecureLibvirtDriver))
        if getattr(self.nova_module, 'context', None) is nova_context:
            self.useFixture(fixtures.MonkeyPatch(
                '%s.context' % self.nova_module.__name__,
                _Cell1Context(self)))
        # Runs after nova's own clean-up (clean-ups run last-in first-out),
        # which also deletes the test's attributes: pass what it needs.
        self.addCleanup(self.check_secmig_path, self.secmig,
                        self.secmig_calls)
        super().setUp()

    def _counting(self, func, kind):
        calls = self.secmig_calls

        def migrate(*args, **kwargs):
            calls[kind] += 1
            return func(*args, **kwargs)
        return migrate


class _Cell1Context:
    """``nova.context`` whose admin contexts are targeted at cell1."""

    def __init__(self, test):
        self._test = test

    def __getattr__(self, name):
        return getattr(nova_context, name)

    def get_admin_context(self, *args, **kwargs):
        ctxt = nova_context.get_admin_context(*args, **kwargs)
        cell1 = getattr(self._test, 'cell_mappings', {}).get(
            nova_test.CELL1_NAME)
        if cell1 is not None:
            # Not the fixture's target_cell: no global state, no lock.
            nova_context.set_target_cell(ctxt, cell1)
        return ctxt


class DisabledMixin(SecureDriverMixin):
    secmig_mode = 'disabled'

    def check_secmig_path(self, world, calls):
        self.assertEqual(0, calls['secure'])
        self.assertEqual([], world.tunnels.started)


class RequiredMixin(SecureDriverMixin):
    """Every live migration through the tunnel."""

    secmig_mode = 'required'

    def check_secmig_path(self, world, calls):
        self.assertEqual(0, calls['plain'],
                         'a live migration bypassed the tunnel')
        sources = world.tunnels.of('source')
        self.assertEqual(len(sources), calls['secure'])
        for tunnel in sources:
            mid = tunnel.migration_id
            self.assertEqual([], tunnel.sockets_left())
            records = world.records(mid)
            self.assertIn('source', records)
            self.assertIn(records['source']['state'],
                          ('completed', 'failed', 'aborted'), mid)


def nova_test_classes(module):
    """The concrete test classes a nova module defines."""
    for name, cls in sorted(vars(module).items()):
        if (inspect.isclass(cls) and issubclass(cls, unittest.TestCase)
                and cls.__module__ == module.__name__
                and any(n.startswith('test') for n in dir(cls))):
            yield name, cls


def _define():
    for module_name in NOVA_MODULES:
        module = importlib.import_module(module_name)
        short = module_name.rsplit('.', 1)[1]
        for name, cls in nova_test_classes(module):
            for prefix, mixin in (('Disabled', DisabledMixin),
                                  ('Required', RequiredMixin)):
                new = '%s_%s_%s' % (prefix, short, name)
                globals()[new] = type(new, (mixin, cls), {
                    '__module__': __name__,
                    'nova_module': module,
                    '__doc__': '%s with SecureLibvirtDriver (%s).'
                               % (cls.__name__, mixin.secmig_mode)})


_define()
