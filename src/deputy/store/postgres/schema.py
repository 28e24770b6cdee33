"""Schema migrations (Alembic, shipped in ``migrations/``): ``deputy db upgrade`` and the check
that refuses to run a store whose schema is not at the head revision."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from deputy.errors import ConfigError, StoreUnavailable
from deputy.store.postgres.connect import UNAVAILABLE, Timeouts, make_engine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
_MIGRATING = threading.Lock()


class SchemaOutOfDate(ConfigError):
    """The database schema is not the one this Deputy needs; ``deputy db upgrade`` fixes it."""


def alembic_config() -> Config:
    """The Alembic configuration of the shipped migrations (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("version_table", VERSION_TABLE)
    return config


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(conn: Connection) -> tuple[str, ...]:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return tuple(context.get_current_heads())


def check_schema(conn: Connection) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at the head revision."""
    current, heads = set(current_revisions(conn)), set(head_revisions())
    if current == heads:
        return
    if not current:
        raise SchemaOutOfDate(
            "the PostgreSQL database has no Deputy schema; run `deputy db upgrade` first"
        )
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current - known:
        raise SchemaOutOfDate(
            f"the PostgreSQL schema is at revision {', '.join(sorted(current))}, newer than this"
            " Deputy knows; upgrade Deputy"
        )
    raise SchemaOutOfDate(
        f"the PostgreSQL schema is at revision {', '.join(sorted(current))}, not"
        f" {', '.join(sorted(heads))}; run `deputy db upgrade`"
    )


def upgrade(url: str | URL, revision: str = "head", *, timeouts: Timeouts | None = None) -> str:
    """``alembic upgrade head`` on ``url``; returns the revision the database is then at.

    Safe to run from several replicas at once: the migration takes an advisory lock, and
    a database already at ``revision`` is left as it is. Statements have no time limit here.
    """
    return _migrate(command.upgrade, url, revision, timeouts)


def downgrade(url: str | URL, revision: str, *, timeouts: Timeouts | None = None) -> str:
    """``alembic downgrade <revision>`` (``base`` drops every table); for development."""
    return _migrate(command.downgrade, url, revision, timeouts)


def _migrate(
    step: Callable[[Config, str], None], url: str | URL, revision: str, timeouts: Timeouts | None
) -> str:
    limits = timeouts or Timeouts(statement=86_400.0, lock=600.0, call=86_400.0)
    engine = make_engine(url, limits, application_name="deputy db upgrade", pooled=False)
    try:
        # Alembic keeps its running context in module state: one migration per process.
        with _MIGRATING, engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            step(config, revision)
            return ", ".join(current_revisions(conn))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc.__class__.__name__).splitlines()[0]
        raise StoreUnavailable(f"{UNAVAILABLE}: schema migration failed: {reason}") from exc
    finally:
        engine.dispose()
