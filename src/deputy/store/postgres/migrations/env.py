"""Alembic environment of the PostgreSQL store.

Run through :func:`deputy.store.postgres.schema.upgrade`, which passes an open connection
(``config.attributes["connection"]``); plain ``alembic -x url=postgresql://...`` works too.
Each run holds an advisory lock for its transaction, so replicas upgrading at once take
turns, and the second finds the work done. DDL is transactional in PostgreSQL: a failed
migration leaves the schema as it was.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from deputy.store.postgres.connect import Timeouts, make_engine

MIGRATION_LOCK = 0x6465707574790002  # pg_advisory_xact_lock key: one migration at a time


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=context.config.get_main_option("version_table") or "alembic_version",
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


def _online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database as -x url=postgresql://...")
    limits = Timeouts(statement=86_400.0, lock=600.0, call=86_400.0)
    engine = make_engine(url, limits, application_name="deputy migrations", pooled=False)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url") or "postgresql://",
        literal_binds=True,
        version_table=context.config.get_main_option("version_table") or "alembic_version",
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    _online()
