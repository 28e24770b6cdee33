"""Alembic revisions: one file each, applied in order by ``deputy db upgrade``."""
