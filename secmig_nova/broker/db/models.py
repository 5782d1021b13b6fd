"""SQLAlchemy models of the broker's audit trail and replay store."""

import sqlalchemy as sa
from sqlalchemy import orm

# A migration's life; final states never change again.
REQUESTED = 'requested'
AUTHORIZED = 'authorized'
GRANTED = 'granted'
TRANSFERRING = 'transferring'
COMPLETED = 'completed'
FAILED = 'failed'
ABORTED = 'aborted'
# Reported completed, but a verified receipt pair is missing for some of
# the grant's connections (or one was refused): not final, the missing
# pairs may still arrive (hosts send one connection per request).
INCOMPLETE = 'incomplete'
FINAL_STATES = (COMPLETED, FAILED, ABORTED)
STATES = (REQUESTED, AUTHORIZED, GRANTED, TRANSFERRING, INCOMPLETE) + \
    FINAL_STATES
TRANSITIONS = {
    REQUESTED: {AUTHORIZED, GRANTED, FAILED, ABORTED},
    AUTHORIZED: {GRANTED, FAILED, ABORTED},
    GRANTED: {TRANSFERRING, COMPLETED, INCOMPLETE, FAILED, ABORTED},
    TRANSFERRING: {COMPLETED, INCOMPLETE, FAILED, ABORTED},
    INCOMPLETE: {COMPLETED, INCOMPLETE},
}


# Times are epoch seconds in DOUBLE columns: a plain Float is MySQL's
# single-precision FLOAT, which reads epoch times back rounded to six
# significant digits (up to ~1.4 hours off), so registrations, grants and
# replay entries expired at random on MariaDB.


class Base(orm.DeclarativeBase):
    pass


class Migration(Base):
    """One migration as this broker saw it (source or destination side)."""

    __tablename__ = 'secmig_migrations'

    # An intra-cloud migration has both records in one broker's database.
    id = sa.Column(sa.String(255), primary_key=True)
    side = sa.Column(sa.String(16), primary_key=True)
    state = sa.Column(sa.String(16), nullable=False)
    reason = sa.Column(sa.Text)
    instance_uuid = sa.Column(sa.String(36))
    project_id = sa.Column(sa.String(64), index=True)
    user_id = sa.Column(sa.String(64))
    src_cloud = sa.Column(sa.String(64))
    src_host = sa.Column(sa.String(255))
    src_fingerprint = sa.Column(sa.String(64))
    dst_cloud = sa.Column(sa.String(64))
    dst_host = sa.Column(sa.String(255))
    dst_fingerprint = sa.Column(sa.String(64))
    dst_endpoint = sa.Column(sa.String(255))
    streams = sa.Column(sa.JSON)
    ticket_jti = sa.Column(sa.String(64))
    grant_jti = sa.Column(sa.String(64))
    history = sa.Column(sa.JSON, nullable=False, default=list)
    created_at = sa.Column(sa.Double, nullable=False)
    updated_at = sa.Column(sa.Double, nullable=False)
    expires_at = sa.Column(sa.Double)
    granted_at = sa.Column(sa.Double, index=True)


# The row every grant locks first (Lock.name): admission counts and the
# grant are one serialized transaction across broker workers.
ADMISSION_LOCK = 'admission'


class Lock(Base):
    """A row to serialize a kind of transaction across broker workers.

    ``SELECT ... FOR UPDATE`` of rows that do not exist yet locks nothing
    portable, so concurrent admissions lock this row instead (an UPDATE:
    a row lock on MySQL/MariaDB/PostgreSQL; sqlite serializes every
    transaction anyway). ``counter`` counts the transactions it guarded.
    """

    __tablename__ = 'secmig_locks'

    name = sa.Column(sa.String(64), primary_key=True)
    counter = sa.Column(sa.BigInteger, nullable=False, default=0)


class ReplayEntry(Base):
    """A single-use id (ticket jti, envelope nonce) until it expires."""

    __tablename__ = 'secmig_replay'

    key = sa.Column(sa.String(255), primary_key=True)
    expires_at = sa.Column(sa.Double, nullable=False, index=True)


class Receipt(Base):
    """A verified signed receipt of one tunnel connection."""

    __tablename__ = 'secmig_receipts'
    __table_args__ = (
        sa.UniqueConstraint('migration_id', 'role', 'stream_kind',
                            'connection_index', name='uniq_receipt_conn'),
    )

    id = sa.Column(sa.Integer, primary_key=True, autoincrement=True)
    migration_id = sa.Column(sa.String(255), nullable=False, index=True)
    role = sa.Column(sa.String(16), nullable=False)
    stream_kind = sa.Column(sa.String(16), nullable=False)
    connection_index = sa.Column(sa.Integer, nullable=False)
    signer = sa.Column(sa.String(255), nullable=False)
    token = sa.Column(sa.Text, nullable=False)
    sha256 = sa.Column(sa.String(64), nullable=False, unique=True)
    created_at = sa.Column(sa.Double, nullable=False)
