"""The audit store a configuration names: SQLite in the data dir, or PostgreSQL by URL.

The PostgreSQL backend is an extra (``deputy[postgres]``): it is imported only when the
configuration asks for it, and its absence is a configuration error that says what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from deputy.audit.log import AuditLog
from deputy.clock import Clock
from deputy.config.settings import Settings
from deputy.errors import ConfigError
from deputy.store.sqlite.audit_process import ProcessAuditLog
from deputy.store.sqlite.audit_reader import (
    DB_FILE,
    SqliteAuditReader,
    open_audit_reader,
    open_head_key,
)
from deputy.tokens.key_ring import KeyRing

if TYPE_CHECKING:
    from deputy.store.postgres import PostgresAuditReader

    AuditReaderStore = SqliteAuditReader | PostgresAuditReader
else:
    AuditReaderStore = SqliteAuditReader


class AuditStore(AuditLog, Protocol):
    """An audit log a broker starts (and, as every ``AuditLog``, closes)."""

    async def start(self) -> None: ...


def require_postgres() -> None:
    """Raise a ``ConfigError`` naming the extra to install unless the backend is importable."""
    try:
        import deputy.store.postgres  # noqa: F401
    except ImportError:
        raise ConfigError(
            "storage: a postgresql:// URL needs the PostgreSQL backend: "
            "pip install 'deputy[server,postgres]'"
        ) from None


def has_audit_log(settings: Settings) -> bool:
    """Whether there can be records to read (a SQLite file exists, or a database is named)."""
    return settings.storage is not None or (settings.data_dir / DB_FILE).exists()


def open_reader(settings: Settings) -> AuditReaderStore:
    """The audit reader of the configured store (for the CLI and the broker)."""
    if settings.storage is None:
        return open_audit_reader(settings.data_dir)
    require_postgres()
    from deputy.store.postgres import PostgresAuditReader

    reader = PostgresAuditReader(settings.storage, open_head_key(settings.data_dir))
    try:
        reader.check_schema()
    except BaseException:
        reader.close()
        raise
    return reader


def open_audit_store(
    settings: Settings, clock: Clock, private_keys: KeyRing | None
) -> tuple[AuditStore, AuditReaderStore]:
    """The broker's audit log and reader. SQLite signs in its writer process; PostgreSQL
    signs in the broker with ``private_keys`` (every replica holds the keys; without them
    the log records but cannot sign, as a revocation from the CLI needs)."""
    if settings.storage is None:
        reader = open_audit_reader(settings.data_dir)
        return ProcessAuditLog(settings.data_dir, reader, settings.signing_alg), reader
    require_postgres()
    from deputy.store.postgres import PostgresAuditLog
    from deputy.tokens.mint import TokenSigner

    signer = TokenSigner(private_keys) if private_keys is not None else None
    log = PostgresAuditLog(
        settings.storage, open_head_key(settings.data_dir), signer=signer, clock=clock
    )
    return log, log.reader


def upgrade_schema(settings: Settings) -> str:
    """Bring the configured database to the schema this Deputy needs; the revision."""
    if settings.storage is None:
        raise ConfigError("storage: not set; the SQLite audit log migrates itself on start")
    require_postgres()
    from deputy.store.postgres import upgrade

    return str(upgrade(settings.storage))


__all__ = [
    "AuditStore",
    "has_audit_log",
    "open_audit_store",
    "open_reader",
    "require_postgres",
    "upgrade_schema",
]
