"""Alembic migrations of the broker database (``secmig-nova-manage db sync``)."""
