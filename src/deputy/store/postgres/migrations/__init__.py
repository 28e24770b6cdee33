"""Alembic migrations of the PostgreSQL store (run with ``deputy db upgrade``)."""
