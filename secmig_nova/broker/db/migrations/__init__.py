"""Alembic migrations of the broker database (db sync)."""
