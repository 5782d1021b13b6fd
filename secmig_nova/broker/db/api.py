"""Database access of the broker through oslo.db's enginefacade.

sqlite by default (a file path in ``[secmig_broker] database_connection``),
any SQLAlchemy URL for MySQL or PostgreSQL. Several broker workers may share
one database: the replay store relies on the primary key for atomicity, and
state transitions are checked inside one transaction.
"""

import sqlite3
import time

from oslo_db import exception as db_exc
from oslo_db.sqlalchemy import enginefacade
from oslo_log import log as logging
import sqlalchemy as sa

from secmig_nova.authz import replay
from secmig_nova.broker.db import models

LOG = logging.getLogger(__name__)


class InvalidTransition(Exception):
    def __init__(self, migration_id, old, new):
        super().__init__('migration %s cannot go from %s to %s'
                         % (migration_id, old, new))
        self.old = old
        self.new = new


class NotFound(Exception):
    pass


class AdmissionRefused(Exception):
    """A limit of :meth:`Database.grant` is reached; ``reason`` names it."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class Unsynced(Exception):
    """The database lacks a row or table ``secmig-broker`` needs."""


class _Context:
    """What enginefacade attaches its session to."""


class Database:
    """One broker's database."""

    def __init__(self, connection, clock=time.time):
        self.connection = connection
        self._clock = clock
        self._tc = enginefacade.transaction_context()
        self._tc.configure(connection=connection, sqlite_fk=True,
                           max_retries=0)
        if connection.startswith('sqlite'):
            engine = self._tc.writer.get_engine()
            _serialize_sqlite(engine)
            _use_wal(engine)

    def writer(self):
        return self._tc.writer.using(_Context())

    def reader(self):
        return self._tc.reader.using(_Context())

    def create_schema(self):
        """Create tables directly (tests); production uses db sync."""
        models.Base.metadata.create_all(self._tc.writer.get_engine())
        try:
            with self.writer() as session:
                session.add(models.Lock(name=models.ADMISSION_LOCK,
                                        counter=0))
        except db_exc.DBDuplicateEntry:
            pass

    def dispose(self):
        try:
            self._tc.writer.get_engine().dispose()
        except Exception:  # noqa: nothing to dispose
            pass

    # -- migrations ------------------------------------------------------

    def create_migration(self, migration_id, side, state, **fields):
        now = self._clock()
        record = models.Migration(
            id=migration_id, side=side, state=state, created_at=now,
            updated_at=now,
            history=[{'state': state, 'at': now,
                      'reason': fields.pop('reason', None)}],
            **fields)
        try:
            with self.writer() as session:
                session.add(record)
        except db_exc.DBDuplicateEntry:
            raise InvalidTransition(migration_id, 'existing', state)
        return self.get_migration(migration_id, side)

    def get_migration(self, migration_id, side):
        with self.reader() as session:
            record = session.get(models.Migration, (migration_id, side))
            if record is None:
                raise NotFound('no %s migration %s' % (side, migration_id))
            return _as_dict(record)

    def find_migration(self, migration_id):
        """Both sides' records of a migration: ``{side: record}``."""
        with self.reader() as session:
            query = sa.select(models.Migration).where(
                models.Migration.id == migration_id)
            return {r.side: _as_dict(r) for r in session.scalars(query)}

    def list_migrations(self, project_id=None, state=None, limit=100):
        with self.reader() as session:
            query = sa.select(models.Migration).order_by(
                models.Migration.created_at.desc()).limit(limit)
            if project_id:
                query = query.where(models.Migration.project_id == project_id)
            if state:
                query = query.where(models.Migration.state == state)
            return [_as_dict(r) for r in session.scalars(query)]

    def transition(self, migration_id, side, new_state, reason=None,
                   **fields):
        """Move a migration to ``new_state`` if the state machine allows."""
        if new_state not in models.STATES:
            raise ValueError('unknown state %r' % new_state)
        now = self._clock()
        with self.writer() as session:
            record = session.get(models.Migration, (migration_id, side),
                                 with_for_update=True)
            if record is None:
                raise NotFound('no %s migration %s' % (side, migration_id))
            _move(record, new_state, now, reason, fields)
        return self.get_migration(migration_id, side)

    def grant(self, migration_id, limits, now, window, reason, **fields):
        """Admit and grant a destination migration in one transaction.

        Locks the admission row, counts the migrations in flight and
        granted within ``window`` seconds for each limit, and moves the
        destination record from REQUESTED or AUTHORIZED to GRANTED with
        ``fields`` (``granted_at`` among them), all before commit.
        Concurrent grants, from threads or broker workers on the same
        database, run one after the other, so a limit of N never lets an
        N+1st through.

        :param now: the broker's time, what the counts are taken at.
        :param limits: ``[(label, where, concurrent, rate)]``: ``where``
            selects the migrations a limit counts (e.g. ``{'project_id':
            'p'}``); 0 means unlimited.
        :raises AdmissionRefused: ``over_concurrency_limit`` or
            ``over_rate_limit``; nothing is changed.
        :raises NotFound, InvalidTransition: as :meth:`transition`.
        :raises Unsynced: the admission row is missing (``db sync`` not
            run).
        """
        cols = models.Migration
        with self.writer() as session:
            locked = session.execute(
                sa.update(models.Lock)
                .where(models.Lock.name == models.ADMISSION_LOCK)
                .values(counter=models.Lock.counter + 1)).rowcount
            if not locked:
                raise Unsynced('the broker database has no admission lock '
                               'row: run "secmig-nova-manage db sync"')
            for label, where, concurrent, rate in limits:
                base = [cols.side == 'destination'] + [
                    getattr(cols, name) == value
                    for name, value in where.items()]
                active = session.scalar(sa.select(sa.func.count()).where(
                    *base, cols.state.in_((models.GRANTED,
                                           models.TRANSFERRING)),
                    sa.or_(cols.expires_at.is_(None),
                           cols.expires_at > now)))
                if concurrent and active >= concurrent:
                    raise AdmissionRefused(
                        'over_concurrency_limit', '%s has %d migrations in '
                        'flight (limit %d)' % (label, active, concurrent))
                recent = session.scalar(sa.select(sa.func.count()).where(
                    *base, cols.granted_at >= now - window))
                if rate and recent >= rate:
                    raise AdmissionRefused(
                        'over_rate_limit', '%s started %d migrations in the '
                        'last %.0f s (limit %d)'
                        % (label, recent, window, rate))
            record = session.get(models.Migration,
                                 (migration_id, 'destination'),
                                 with_for_update=True)
            if record is None:
                raise NotFound('no destination migration %s'
                               % migration_id)
            _move(record, models.GRANTED, self._clock(), reason, fields)
        return self.get_migration(migration_id, 'destination')

    # -- receipts --------------------------------------------------------

    def add_receipt(self, migration_id, role, stream_kind, connection_index,
                    signer, token, sha256):
        try:
            with self.writer() as session:
                session.add(models.Receipt(
                    migration_id=migration_id, role=role,
                    stream_kind=stream_kind,
                    connection_index=connection_index, signer=signer,
                    token=token, sha256=sha256, created_at=self._clock()))
        except db_exc.DBDuplicateEntry:
            return False
        return True

    def receipts(self, migration_id):
        with self.reader() as session:
            query = sa.select(models.Receipt).where(
                models.Receipt.migration_id == migration_id).order_by(
                models.Receipt.stream_kind,
                models.Receipt.connection_index, models.Receipt.role)
            return [{'role': r.role, 'stream_kind': r.stream_kind,
                     'connection_index': r.connection_index,
                     'signer': r.signer, 'token': r.token,
                     'sha256': r.sha256, 'created_at': r.created_at}
                    for r in session.scalars(query)]


def _move(record, new_state, now, reason, fields):
    """Move a locked record to ``new_state`` if the state machine allows."""
    if new_state not in models.TRANSITIONS.get(record.state, ()):
        raise InvalidTransition(record.id, record.state, new_state)
    record.state = new_state
    record.reason = reason
    record.updated_at = now
    record.history = list(record.history) + [
        {'state': new_state, 'at': now, 'reason': reason}]
    for name, value in fields.items():
        setattr(record, name, value)


SQLITE_BUSY_TIMEOUT_MS = 30000


def _serialize_sqlite(engine):
    """Make concurrent sqlite transactions wait instead of failing.

    A transaction that reads and then writes must upgrade its lock; when
    another one is waiting to write, SQLite answers "database is locked" at
    once (its busy handler is not used, to avoid a deadlock). Taking the
    write lock at BEGIN (IMMEDIATE) serializes transactions, and the busy
    timeout makes them queue: several broker workers share one file.

    Only per-connection settings belong in the connect listener: the
    journal mode is a property of the file, set once by _use_wal().
    """
    @sa.event.listens_for(engine, 'connect')
    def _connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute('PRAGMA busy_timeout = %d' % SQLITE_BUSY_TIMEOUT_MS)
        cursor.close()

    # oslo.db emits a plain (deferred) BEGIN for sqlite; replace it with
    # BEGIN IMMEDIATE, keeping its in_transaction mark (which oslo.db
    # clears on commit and rollback).
    for listener in list(engine.dispatch.begin):
        if getattr(listener, '__name__', '') == '_sqlite_emit_begin':
            sa.event.remove(engine, 'begin', listener)

    @sa.event.listens_for(engine, 'begin')
    def _begin(connection):
        if 'in_transaction' not in connection.info:
            connection.exec_driver_sql('BEGIN IMMEDIATE')
            connection.info['in_transaction'] = True


def _use_wal(engine, clock=time.monotonic, sleep=time.sleep):
    """Switch the sqlite file to write-ahead logging, once per Database.

    WAL lets readers run beside the one writer. The mode is stored in the
    file, so connections opened later use it without asking again. Asking
    on every new connection (NullPool: every transaction) raced with the
    writers: switching reads the file header, then takes the write lock,
    and that upgrade is refused at once, busy timeout or not, while another
    connection holds the write lock. Here the refusal is retried until the
    busy timeout.

    The pragma cannot run inside a transaction, so it goes through a raw
    DBAPI connection: through engine.connect() the begin listener above
    would wrap it in BEGIN IMMEDIATE. A failure is logged and not raised:
    the rollback journal is slower but just as correct, and an unreachable
    database fails closed at its first use.
    """
    deadline = clock() + SQLITE_BUSY_TIMEOUT_MS / 1000.0
    delay = 0.01
    while True:
        try:
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute('PRAGMA journal_mode = WAL')
                mode = cursor.fetchone()[0]
                cursor.close()
            finally:
                raw.close()
        except Exception as e:
            if _busy(e) and clock() + delay < deadline:
                sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            LOG.warning('Could not switch %s to WAL journal mode, keeping '
                        'its current mode: %s', engine.url, e)
            return None
        if mode != 'wal':
            LOG.debug('%s keeps journal mode %s', engine.url, mode)
        return mode


def _busy(error):
    """Whether a DBAPI error is sqlite's "database is locked"."""
    error = getattr(error, 'orig', None) or error
    code = getattr(error, 'sqlite_errorcode', None)
    if code is not None:
        return code & 0xff in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return 'locked' in str(error)


def _as_dict(record):
    return {c.name: getattr(record, c.name)
            for c in models.Migration.__table__.columns}


class DatabaseReplayStore(replay.ReplayStore):
    """The replay store of secmig_nova.authz.replay, in the database.

    Inserting the key is the check: the primary key makes a second insert
    fail, in this worker or another. Expired keys are purged as we go.
    """

    def __init__(self, database, clock=time.time):
        self.db = database
        self._clock = clock
        self._last_purge = 0.0

    def check_and_remember(self, key, expires_at):
        if not isinstance(key, str) or not key:
            raise ValueError('replay key must be a non-empty string')
        now = self._clock()
        try:
            if now - self._last_purge > 60:
                self._purge(now)
            with self.db.writer() as session:
                existing = session.get(models.ReplayEntry, key)
                if existing is not None:
                    # Remembered through expires_at inclusive (see
                    # ReplayStore.check_and_remember).
                    if existing.expires_at >= now:
                        LOG.warning('Replay of %s refused', key)
                        return False
                    session.delete(existing)
                    session.flush()
                session.add(models.ReplayEntry(
                    key=key, expires_at=replay.expiry(expires_at)))
        except db_exc.DBDuplicateEntry:
            LOG.warning('Replay of %s refused (concurrent use)', key)
            return False
        except (db_exc.DBError, sa.exc.SQLAlchemyError) as e:
            raise replay.ReplayStoreError(
                replay.STORE_UNAVAILABLE,
                'replay store database unavailable: %s' % e)
        return True

    def _purge(self, now):
        with self.db.writer() as session:
            session.execute(sa.delete(models.ReplayEntry).where(
                models.ReplayEntry.expires_at < now))
        self._last_purge = now
