"""Alembic environment: runs migrations on the configured connection."""

from alembic import context
import sqlalchemy as sa

from secmig_nova.broker.db import models

config = context.config
target_metadata = models.Base.metadata


def run_migrations_online():
    connectable = config.attributes.get('connection')
    if connectable is None:
        connectable = sa.create_engine(config.get_main_option(
            'sqlalchemy.url'))
    with connectable.connect() as connection:
        context.configure(connection=connection,
                          target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
