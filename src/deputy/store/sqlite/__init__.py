"""Embedded SQLite backend: the default store in the data directory."""

from deputy.store.sqlite.audit import SqliteAuditLog, open_audit_log

__all__ = ["SqliteAuditLog", "open_audit_log"]
