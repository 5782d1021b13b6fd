"""Schema upgrades with alembic (``secmig-nova-manage db sync``)."""

import os

from alembic import command
from alembic import config as alembic_config
from alembic import migration as alembic_migration
import sqlalchemy as sa

MIGRATIONS = os.path.join(os.path.dirname(__file__), 'migrations')


def _config(connection_url):
    cfg = alembic_config.Config()
    cfg.set_main_option('script_location', MIGRATIONS)
    cfg.set_main_option('sqlalchemy.url',
                        connection_url.replace('%', '%%'))
    return cfg


def _ensure_sqlite_dir(url):
    if url.startswith('sqlite:///') and not url.startswith('sqlite:///:'):
        directory = os.path.dirname(url[len('sqlite:///'):])
        if directory:
            os.makedirs(directory, exist_ok=True)


def sync(connection_url, revision='head'):
    """Upgrade the database to ``revision``; idempotent."""
    _ensure_sqlite_dir(connection_url)
    command.upgrade(_config(connection_url), revision)


def version(connection_url):
    """The current revision, or None for an empty database."""
    if connection_url.startswith('sqlite:///') and not os.path.exists(
            connection_url[len('sqlite:///'):]):
        return None
    engine = sa.create_engine(connection_url)
    try:
        with engine.connect() as conn:
            return alembic_migration.MigrationContext.configure(
                conn).get_current_revision()
    finally:
        engine.dispose()
