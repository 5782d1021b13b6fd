"""Tests for the replay stores (secmig_nova.authz.replay)."""

import threading

import testtools

from secmig_nova.authz import replay


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class MemoryReplayStoreTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.clock = FakeClock()
        self.store = replay.MemoryReplayStore(max_entries=3,
                                              clock=self.clock)

    def test_first_use_then_replay(self):
        self.assertTrue(self.store.check_and_remember('t:a:1', 1100))
        self.assertFalse(self.store.check_and_remember('t:a:1', 1100))
        self.assertTrue(self.store.check_and_remember('t:a:2', 1100))

    def test_forgets_after_expiry(self):
        self.assertTrue(self.store.check_and_remember('k', 1010))
        self.clock.now = 1009.9
        self.assertFalse(self.store.check_and_remember('k', 1010))
        # Remembered through its expiry instant inclusive: a token still
        # verifies at exactly exp + leeway.
        self.clock.now = 1010.0
        self.assertFalse(self.store.check_and_remember('k', 1010))
        self.clock.now = 1010.001
        self.assertTrue(self.store.check_and_remember('k', 1020))
        self.assertEqual(1, len(self.store))

    def test_non_finite_expiry_is_refused(self):
        for value in (float('nan'), float('inf'), float('-inf'), '1010',
                      None, True):
            self.assertRaises(ValueError, self.store.check_and_remember,
                              'k-%r' % (value,), value)
        self.assertEqual(0, len(self.store))

    def test_full_store_refuses_instead_of_evicting(self):
        for i in range(3):
            self.assertTrue(self.store.check_and_remember('k%d' % i, 2000))
        e = self.assertRaises(replay.ReplayStoreError,
                              self.store.check_and_remember, 'k3', 2000)
        self.assertEqual(replay.STORE_FULL, e.reason)
        # Nothing was evicted: every remembered key is still a replay.
        for i in range(3):
            self.assertFalse(self.store.check_and_remember('k%d' % i, 2000))

    def test_space_comes_back_when_keys_expire(self):
        self.store.check_and_remember('old', 1001)
        self.store.check_and_remember('k1', 2000)
        self.store.check_and_remember('k2', 2000)
        self.clock.now = 1002
        self.assertTrue(self.store.check_and_remember('new', 2000))

    def test_key_must_be_a_string(self):
        self.assertRaises(ValueError, self.store.check_and_remember, None, 1)
        self.assertRaises(ValueError, self.store.check_and_remember, '', 1)

    def test_concurrent_uses_of_one_key_accept_exactly_one(self):
        store = replay.MemoryReplayStore()
        results = []
        barrier = threading.Barrier(8)

        def use():
            barrier.wait()
            results.append(store.check_and_remember('same', 2e9))

        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(1, results.count(True))
        self.assertEqual(7, results.count(False))

    def test_is_a_replay_store(self):
        self.assertIsInstance(self.store, replay.ReplayStore)
        self.assertRaises(TypeError, replay.ReplayStore)
