"""Initial schema: migrations, replay store, receipts.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'secmig_migrations',
        sa.Column('id', sa.String(255), primary_key=True),
        sa.Column('side', sa.String(16), primary_key=True),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('reason', sa.Text),
        sa.Column('instance_uuid', sa.String(36)),
        sa.Column('project_id', sa.String(64), index=True),
        sa.Column('user_id', sa.String(64)),
        sa.Column('src_cloud', sa.String(64)),
        sa.Column('src_host', sa.String(255)),
        sa.Column('src_fingerprint', sa.String(64)),
        sa.Column('dst_cloud', sa.String(64)),
        sa.Column('dst_host', sa.String(255)),
        sa.Column('dst_fingerprint', sa.String(64)),
        sa.Column('dst_endpoint', sa.String(255)),
        sa.Column('streams', sa.JSON),
        sa.Column('ticket_jti', sa.String(64)),
        sa.Column('grant_jti', sa.String(64)),
        sa.Column('history', sa.JSON, nullable=False),
        sa.Column('created_at', sa.Float, nullable=False),
        sa.Column('updated_at', sa.Float, nullable=False),
        sa.Column('expires_at', sa.Float),
        sa.Column('granted_at', sa.Float, index=True),
    )
    op.create_table(
        'secmig_replay',
        sa.Column('key', sa.String(255), primary_key=True),
        sa.Column('expires_at', sa.Float, nullable=False, index=True),
    )
    op.create_table(
        'secmig_receipts',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('migration_id', sa.String(255), nullable=False,
                  index=True),
        sa.Column('role', sa.String(16), nullable=False),
        sa.Column('stream_kind', sa.String(16), nullable=False),
        sa.Column('connection_index', sa.Integer, nullable=False),
        sa.Column('signer', sa.String(255), nullable=False),
        sa.Column('token', sa.Text, nullable=False),
        sa.Column('sha256', sa.String(64), nullable=False, unique=True),
        sa.Column('created_at', sa.Float, nullable=False),
        sa.UniqueConstraint('migration_id', 'role', 'stream_kind',
                            'connection_index', name='uniq_receipt_conn'),
    )
