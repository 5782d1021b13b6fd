"""The broker database: schema migrations, state machine, replay store."""

import shutil
import sqlite3
import tempfile
import threading
import time

from alembic.autogenerate import compare_metadata
from alembic import migration as alembic_migration
from oslo_db import exception as db_exc
import sqlalchemy as sa
import testtools

from secmig_nova.broker.db import api
from secmig_nova.broker.db import migration
from secmig_nova.broker.db import models


class DbTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='smdb-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.url = 'sqlite:///%s/sub/broker.sqlite' % self.dir


class TestMigrations(DbTestCase):

    def test_sync_is_idempotent_and_matches_the_models(self):
        self.assertIsNone(migration.version(self.url.replace(
            '/sub/', '/')))
        migration.sync(self.url)
        migration.sync(self.url)
        self.assertEqual('0003', migration.version(self.url))
        engine = sa.create_engine(self.url)
        self.addCleanup(engine.dispose)
        with engine.connect() as conn:
            diff = compare_metadata(
                alembic_migration.MigrationContext.configure(conn),
                models.Base.metadata)
        self.assertEqual([], diff)


class TestJournalMode(DbTestCase):
    """WAL is set once per Database, and a held write lock is waited for."""

    def setUp(self):
        super().setUp()
        migration.sync(self.url)  # a new file, in rollback-journal mode
        self.path = self.url[len('sqlite:///'):]

    def _hold_write_lock(self):
        holder = sqlite3.connect(self.path, isolation_level=None,
                                 check_same_thread=False)
        self.addCleanup(holder.close)
        holder.execute('BEGIN IMMEDIATE')
        return holder

    def _journal_mode(self):
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute('PRAGMA journal_mode').fetchone()[0]
        finally:
            conn.close()

    def test_wal_is_set_when_the_database_is_created(self):
        self.assertEqual('delete', self._journal_mode())
        db = api.Database(self.url)
        self.addCleanup(db.dispose)
        self.assertEqual('wal', self._journal_mode())

    def test_journal_switch_waits_for_a_writer(self):
        # Another worker is writing while this one starts. SQLite refuses
        # the switch's lock upgrade at once instead of queueing it; it
        # used to run in every new connection and fail its transaction
        # with "database is locked".
        holder = self._hold_write_lock()
        timer = threading.Timer(0.3, holder.execute, ('COMMIT',))
        timer.start()
        self.addCleanup(timer.cancel)
        db = api.Database(self.url)
        self.addCleanup(db.dispose)
        store = api.DatabaseReplayStore(db)
        self.assertTrue(store.check_and_remember('k', time.time() + 60))
        self.assertEqual('wal', self._journal_mode())

    def test_workers_starting_together(self):
        # Broker workers start at once on a new file: each switches it to
        # WAL while others are already writing. No refusal, and each key
        # is accepted once.
        barrier = threading.Barrier(8)
        results, errors, databases = [], [], []

        def worker(n):
            try:
                barrier.wait()
                db = api.Database(self.url)
                databases.append(db)
                results.append(api.DatabaseReplayStore(db).check_and_remember(
                    'key-%d' % (n % 4), time.time() + 60))
            except Exception as e:  # noqa: collected and asserted
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(n,))
                   for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for db in databases:
            db.dispose()
        self.assertEqual([], errors)
        self.assertEqual([True] * 4 + [False] * 4, sorted(results,
                                                          reverse=True))
        self.assertEqual('wal', self._journal_mode())

    def test_journal_switch_gives_up_after_the_busy_timeout(self):
        self._hold_write_lock()
        now = [0.0]
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            now[0] += seconds
        engine = sa.create_engine(self.url)
        self.addCleanup(engine.dispose)
        self.assertIsNone(api._use_wal(engine, clock=lambda: now[0],
                                       sleep=sleep))
        self.assertLessEqual(sum(slept), api.SQLITE_BUSY_TIMEOUT_MS / 1000)
        self.assertGreater(sum(slept), api.SQLITE_BUSY_TIMEOUT_MS / 2000)
        self.assertEqual('delete', self._journal_mode())

    def test_unreachable_database_is_created_and_fails_at_use(self):
        db = api.Database('sqlite:////nonexistent/dir/x.sqlite')
        self.assertRaises(db_exc.DBError, db.list_migrations)


class TestDatabase(DbTestCase):

    def setUp(self):
        super().setUp()
        migration.sync(self.url)
        self.db = api.Database(self.url)
        self.addCleanup(self.db.dispose)

    def test_state_machine(self):
        self.db.create_migration('m', 'source', models.AUTHORIZED)
        self.db.transition('m', 'source', models.GRANTED)
        self.assertRaises(api.InvalidTransition, self.db.transition, 'm',
                          'source', models.AUTHORIZED)
        self.db.transition('m', 'source', models.COMPLETED)
        for state in models.STATES:
            self.assertRaises(api.InvalidTransition, self.db.transition,
                              'm', 'source', state)
        record = self.db.get_migration('m', 'source')
        self.assertEqual(['authorized', 'granted', 'completed'],
                         [h['state'] for h in record['history']])

    def test_both_sides_of_one_migration(self):
        self.db.create_migration('m', 'source', models.AUTHORIZED)
        self.db.create_migration('m', 'destination', models.REQUESTED)
        self.assertEqual({'source', 'destination'},
                         set(self.db.find_migration('m')))
        self.assertRaises(api.InvalidTransition, self.db.create_migration,
                          'm', 'source', models.AUTHORIZED)

    def test_replay_store_is_shared_and_survives_restart(self):
        store = api.DatabaseReplayStore(self.db)
        self.assertTrue(store.check_and_remember('k', time.time() + 60))
        self.assertFalse(store.check_and_remember('k', time.time() + 60))
        other = api.DatabaseReplayStore(api.Database(self.url))
        self.assertFalse(other.check_and_remember('k', time.time() + 60))

    def test_concurrent_writers_wait_instead_of_failing(self):
        # Two "workers" (two Database objects on one file), several
        # threads each: no 'database is locked' refusal, and each key is
        # accepted exactly once.
        stores = [api.DatabaseReplayStore(self.db),
                  api.DatabaseReplayStore(api.Database(self.url))]
        results, errors = [], []

        def worker(store, n):
            for i in range(25):
                try:
                    results.append(store.check_and_remember(
                        'key-%d' % ((n + i) % 40), time.time() + 60))
                except Exception as e:  # noqa: collected and asserted
                    errors.append(e)
        threads = [threading.Thread(target=worker, args=(stores[n % 2], n))
                   for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        keys = {(n + i) % 40 for n in range(8) for i in range(25)}
        self.assertEqual([], errors)
        self.assertEqual(len(keys), results.count(True))
        self.assertEqual(200 - len(keys), results.count(False))

    def _requested(self, n, project='p'):
        mids = ['m%d' % i for i in range(n)]
        for mid in mids:
            self.db.create_migration(mid, 'destination', models.REQUESTED,
                                     project_id=project)
        return mids

    def test_grant_is_refused_at_the_limit_and_changes_nothing(self):
        a, b = self._requested(2)
        now = time.time()
        limits = [('project p', {'project_id': 'p'}, 1, 0)]
        self.db.grant(a, limits, now, 60, 'ok', project_id='p',
                      granted_at=now, expires_at=now + 60, grant_jti='j1')
        e = self.assertRaises(api.AdmissionRefused, self.db.grant, b,
                              limits, now, 60, 'ok', project_id='p',
                              granted_at=now, expires_at=now + 60)
        self.assertEqual('over_concurrency_limit', e.reason)
        self.assertEqual(models.REQUESTED,
                         self.db.get_migration(b, 'destination')['state'])
        record = self.db.get_migration(a, 'destination')
        self.assertEqual((models.GRANTED, 'j1'),
                         (record['state'], record['grant_jti']))
        # A grant of a migration already granted is refused too.
        self.assertRaises(api.InvalidTransition, self.db.grant, a, [], now,
                          60, 'again')

    def test_rate_limit_counts_grants_in_the_window(self):
        a, b = self._requested(2)
        now = time.time()
        limits = [('project p', {'project_id': 'p'}, 0, 1)]
        self.db.grant(a, limits, now, 60, 'ok', granted_at=now)
        e = self.assertRaises(api.AdmissionRefused, self.db.grant, b,
                              limits, now + 30, 60, 'ok')
        self.assertEqual('over_rate_limit', e.reason)
        self.db.grant(b, limits, now + 61, 60, 'ok', granted_at=now + 61)

    def test_simultaneous_grants_from_two_workers(self):
        mids = self._requested(12)
        dbs = [self.db, api.Database(self.url)]
        self.addCleanup(dbs[1].dispose)
        limits = [('project p', {'project_id': 'p'}, 4, 0)]
        barrier = threading.Barrier(len(mids))
        results = {}

        def grant(i, mid):
            barrier.wait(30)
            now = time.time()
            try:
                dbs[i % 2].grant(mid, limits, now, 60, 'ok',
                                 granted_at=now, expires_at=now + 60)
                results[mid] = 'granted'
            except api.AdmissionRefused as e:
                results[mid] = e.reason
        threads = [threading.Thread(target=grant, args=(i, mid))
                   for i, mid in enumerate(mids)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(4, list(results.values()).count('granted'),
                         results)
        self.assertEqual(8, list(results.values()).count(
            'over_concurrency_limit'), results)

    def test_grant_without_the_lock_row_fails_closed(self):
        [mid] = self._requested(1)
        with self.db.writer() as session:
            session.execute(sa.delete(models.Lock))
        self.assertRaises(api.Unsynced, self.db.grant, mid, [], time.time(),
                          60, 'ok')
        self.assertEqual(models.REQUESTED,
                         self.db.get_migration(mid, 'destination')['state'])

    def test_expired_key_may_be_used_again(self):
        now = [1000.0]
        store = api.DatabaseReplayStore(self.db, clock=lambda: now[0])
        self.assertTrue(store.check_and_remember('k', 1010.0))
        now[0] = 1020.0
        self.assertTrue(store.check_and_remember('k', 1080.0))

    def test_database_unreachable_fails_closed(self):
        from secmig_nova.authz import replay
        broken = api.Database('sqlite:////nonexistent/dir/x.sqlite')
        store = api.DatabaseReplayStore(broken)
        e = self.assertRaises(replay.ReplayStoreError,
                              store.check_and_remember, 'k',
                              time.time() + 60)
        self.assertEqual(replay.STORE_UNAVAILABLE, e.reason)
