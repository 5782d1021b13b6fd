"""Tests of the host's grant ledger (secmig_nova.tunnel.ledger)."""

import multiprocessing
import os

import fixtures
import testtools

from secmig_nova.tunnel import errors
from secmig_nova.tunnel import ledger


def _consume(directory, barrier, results):
    barrier.wait()
    try:
        ledger.GrantLedger(directory).consume('jti-1', 'memory', 0,
                                              4102444800.0)
        results.put('ok')
    except errors.TunnelError as e:
        results.put(e.reason)


class GrantLedgerTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                'used-grants')
        self.now = [1000.0]
        self.ledger = ledger.GrantLedger(self.dir,
                                         clock=lambda: self.now[0]).open()

    def assertReason(self, reason, func, *args):
        e = self.assertRaises(errors.TunnelError, func, *args)
        self.assertEqual(reason, e.reason, str(e))
        return e

    def test_created_private(self):
        self.assertEqual(0o700, os.stat(self.dir).st_mode & 0o777)

    def test_each_connection_once(self):
        self.ledger.consume('jti-1', 'memory', 0, 1100.0)
        self.ledger.consume('jti-1', 'memory', 1, 1100.0)
        self.ledger.consume('jti-1', 'disk', 0, 1100.0)
        self.ledger.consume('jti-2', 'memory', 0, 1100.0)
        e = self.assertReason('connection_replayed', self.ledger.consume,
                              'jti-1', 'memory', 0, 1100.0)
        self.assertIn('already used on this host', str(e))
        # Another process's view of the same directory.
        other = ledger.GrantLedger(self.dir, clock=lambda: self.now[0])
        self.assertReason('connection_replayed', other.consume,
                          'jti-2', 'memory', 0, 1100.0)

    def test_kept_through_expiry_inclusive(self):
        self.ledger.consume('jti-1', 'memory', 0, 1100.0)
        self.assertEqual(0, self.ledger.purge(1100.0))
        self.assertReason('connection_replayed', self.ledger.consume,
                          'jti-1', 'memory', 0, 1100.0)
        self.assertEqual(1, self.ledger.purge(1100.5))
        self.assertEqual([], os.listdir(self.dir))

    def test_unreadable_entry_counts_as_used(self):
        self.ledger.consume('jti-1', 'memory', 0, 1100.0)
        (name,) = os.listdir(self.dir)
        with open(os.path.join(self.dir, name), 'w') as f:
            f.write('garbage')
        self.assertEqual(0, self.ledger.purge(5000.0))
        self.assertReason('connection_replayed', self.ledger.consume,
                          'jti-1', 'memory', 0, 1100.0)

    def test_concurrent_processes_exactly_one_wins(self):
        ctx = multiprocessing.get_context('fork')
        barrier = ctx.Barrier(6)
        results = ctx.Queue()
        procs = [ctx.Process(target=_consume,
                             args=(self.dir, barrier, results))
                 for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(results.get(timeout=10) for _ in procs)
        self.assertEqual(['connection_replayed'] * 5 + ['ok'], got)

    def test_unusable_directory_fails_closed(self):
        path = os.path.join(self.dir, 'file')
        open(path, 'w').close()
        self.assertReason('grant_ledger_unavailable',
                          ledger.GrantLedger(path).open)
        os.chmod(self.dir, 0o777)
        self.assertReason('grant_ledger_unavailable',
                          ledger.GrantLedger(self.dir).open)
        os.chmod(self.dir, 0o700)
        os.rmdir(self.dir) if not os.listdir(self.dir) else None
