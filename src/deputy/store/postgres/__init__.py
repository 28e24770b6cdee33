"""PostgreSQL backend for the audit log, ledger and revocations (several replicas, one store).

Each broker process appends to a hash chain of its own, registered in a MAC'd registry, so
replicas never serialise on one row; see ``docs/postgres-audit.md``. Create or upgrade the
schema with :func:`upgrade` (``deputy db upgrade``) before starting a broker on it.
"""

from deputy.store.postgres.audit import PostgresAuditLog
from deputy.store.postgres.connect import Timeouts, engine_url
from deputy.store.postgres.reader import PostgresAuditReader
from deputy.store.postgres.schema import SchemaOutOfDate, check_schema, upgrade
from deputy.store.postgres.writer import PostgresAuditWriter

__all__ = [
    "PostgresAuditLog",
    "PostgresAuditReader",
    "PostgresAuditWriter",
    "SchemaOutOfDate",
    "Timeouts",
    "check_schema",
    "engine_url",
    "upgrade",
]
