"""Epoch times in double-precision columns.

``sa.Float`` is MySQL/MariaDB's single-precision FLOAT, which reads an
epoch time back rounded to six significant digits (up to about an hour
off): registrations, grants and replay entries expired at random on a
server database. SQLite stores both as REAL, so there this changes
nothing but the declared type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# (table, column, nullable) of every epoch-time column.
TIME_COLUMNS = [
    ('secmig_migrations', 'created_at', False),
    ('secmig_migrations', 'updated_at', False),
    ('secmig_migrations', 'expires_at', True),
    ('secmig_migrations', 'granted_at', True),
    ('secmig_replay', 'expires_at', False),
    ('secmig_receipts', 'created_at', False),
]


def _retype(old, new):
    for table in sorted({t for t, _c, _n in TIME_COLUMNS}):
        with op.batch_alter_table(table) as batch:
            for t, column, nullable in TIME_COLUMNS:
                if t == table:
                    batch.alter_column(column, type_=new,
                                       existing_type=old,
                                       existing_nullable=nullable)


def upgrade():
    _retype(sa.Float, sa.Double)
