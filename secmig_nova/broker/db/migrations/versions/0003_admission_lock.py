"""The admission lock row: grants are admitted atomically.

Admission counted the migrations in flight in one transaction and granted
in another, so two broker workers (or two threads of one) could both see
the last free slot and both grant. A grant now locks this row first and
counts and grants in the same transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    table = op.create_table(
        'secmig_locks',
        sa.Column('name', sa.String(64), primary_key=True),
        sa.Column('counter', sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{'name': 'admission', 'counter': 0}])


def downgrade():
    op.drop_table('secmig_locks')
