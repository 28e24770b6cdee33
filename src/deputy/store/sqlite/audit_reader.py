"""Reading the embedded audit log: forensic queries, chain verification, quota seeding."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from deputy.audit.chain import ChainVerifier
from deputy.audit.log import AuditFilter, ChainReport, LedgerEntry, LiveCredentials
from deputy.audit.record import StoredRecord
from deputy.audit.revocation import Revocation
from deputy.errors import StoreUnavailable
from deputy.store.key_files import open_secret_file
from deputy.store.sqlite.audit_tables import (
    CREDENTIAL_ROWS_SQL,
    READ_HEAD,
    RECORD_ROWS_SQL,
    REVOCATION_ROWS_SQL,
    TOOL_ROWS_SQL,
    USE_ROWS_SQL,
    RowChecker,
    head_from_row,
    select_export,
    select_records,
)

KEY_BYTES = 32
DB_FILE = "audit.db"
KEY_FILE = "audit.key"
UNAVAILABLE = "audit store unavailable"
_RECORD_SELECTORS = frozenset({"execution_id", "agent_instance", "workload_id", "user_id"})


class SqliteAuditReader:
    """Read-only access to ``audit.db``; each call uses its own short-lived connection."""

    def __init__(self, path: Path, head_key: bytes, *, busy_timeout_ms: int = 2000) -> None:
        self._path = path
        self._head_key = head_key
        self._timeout = busy_timeout_ms / 1000

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]:
        """Records matching the filter, in seq order."""
        sql, params = select_records(audit_filter)
        with closing(self._reader()) as conn:
            try:
                for seq, body, prev_hash, hash_ in conn.execute(sql, params):
                    yield StoredRecord(
                        seq=seq, record=json.loads(body), prev_hash=prev_hash, hash=hash_
                    )
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc

    def export(
        self, since: float | None = None, until: float | None = None
    ) -> Iterator[StoredRecord]:
        """Every record with ``since <= time < until``, in seq order, one at a time.

        Rows come from one cursor over one read snapshot: memory does not grow with the log.
        """
        sql, params = select_export(since, until)
        with closing(self._reader()) as conn:
            try:
                for seq, body, prev_hash, hash_ in conn.execute(sql, params):
                    yield StoredRecord(
                        seq=seq, record=json.loads(body), prev_hash=prev_hash, hash=hash_
                    )
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc

    def verify(self) -> ChainReport:
        """Stream every record in seq order from one snapshot and check the chain and head."""
        with closing(self._reader()) as conn:
            conn.text_factory = bytes
            try:
                conn.execute("BEGIN")
                head_row = conn.execute(READ_HEAD).fetchone()
                verifier = ChainVerifier(self._head_key)
                checker = RowChecker(
                    verifier,
                    conn.execute(CREDENTIAL_ROWS_SQL),
                    conn.cursor().execute(REVOCATION_ROWS_SQL),
                    conn.cursor().execute(USE_ROWS_SQL),
                    conn.cursor().execute(TOOL_ROWS_SQL),
                )
                for row in conn.execute(RECORD_ROWS_SQL):
                    if not checker.check(row):
                        break
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc
        head = head_from_row(head_row)
        if verifier.finish(head).ok:
            # A cut tail also orphans credential rows; the head names that problem better.
            checker.finish()
        return verifier.finish(head)

    def decision(self, decision_id: str) -> StoredRecord | None:
        """The record of ``decision_id`` (unique index), or ``None``."""
        rows = self._rows(
            "SELECT seq, body, prev_hash, hash FROM records WHERE decision_id = ?", (decision_id,)
        )
        if not rows:
            return None
        seq, body, prev_hash, hash_ = rows[0]
        return StoredRecord(seq=seq, record=json.loads(body), prev_hash=prev_hash, hash=hash_)

    def committed(self, decision_id: str) -> bool:
        """Whether the record of ``decision_id`` is in the log."""
        with closing(self._reader()) as conn:
            try:
                row = conn.execute(
                    "SELECT 1 FROM records WHERE decision_id = ?", (decision_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc
        return row is not None

    def issued_counts(self, since: float) -> dict[tuple[str, str, str], int]:
        """Credentials issued since ``since`` per (user issuer, user id, tool category)."""
        sql = (
            "SELECT user_issuer, user_id, category, COUNT(*) FROM credentials"
            " WHERE issued_at >= ? AND user_issuer IS NOT NULL AND user_id IS NOT NULL"
            " AND category IS NOT NULL GROUP BY user_issuer, user_id, category"
        )
        with closing(self._reader()) as conn:
            try:
                rows = conn.execute(sql, (since,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc
        return {(issuer, user, category): n for issuer, user, category, n in rows}

    def oldest_live_issue(self, now: float) -> float | None:
        """When the oldest credential still unexpired at ``now`` was issued (one index)."""
        # Named: beside the grants index (issued_at first), the planner would walk every
        # expired credential from the oldest on.
        sql = (
            "SELECT MIN(issued_at) FROM credentials INDEXED BY credentials_live"
            " WHERE expires_at > ?"
        )
        rows = self._rows(sql, (now,))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def issued_grants(self, since: float) -> list[tuple[str, str, str, int]]:
        """(workflow, tool, scope, credentials) issued since ``since``, from one index."""
        sql = (
            "SELECT workflow, tool, scope, COUNT(*) FROM credentials"
            " WHERE issued_at >= ? AND workflow IS NOT NULL GROUP BY workflow, tool, scope"
        )
        return [(w, t, s, n) for w, t, s, n in self._rows(sql, (since,))]

    def used_grants(self, since: float) -> set[tuple[str, str]] | None:
        """(workflow, tool) of credentials issued since ``since`` that APIs reported a use of
        in records since then; ``None`` when no API reported any use in that time."""
        first = "(SELECT MIN(seq) FROM records INDEXED BY records_time WHERE time >= ?)"
        reported = self._rows(
            f"SELECT 1 FROM records WHERE outcome = 'usage' AND seq >= {first} LIMIT 1",  # noqa: S608
            (since,),
        )
        if not reported:
            return None
        sql = (  # only the fixed subquery is interpolated
            "SELECT DISTINCT c.workflow, c.tool FROM uses u JOIN credentials c ON c.jti = u.jti"  # noqa: S608
            f" WHERE u.seq >= {first} AND c.issued_at >= ? AND c.workflow IS NOT NULL"
        )
        return {(w, t) for w, t in self._rows(sql, (since, since))}

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with closing(self._reader()) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc

    async def credential(self, jti: str) -> LedgerEntry | None:
        """The credential ``jti`` with what its record says of its user and execution."""
        rows = await asyncio.to_thread(
            self._rows,
            "SELECT c.tool, c.expires_at, r.body FROM credentials c"
            " JOIN records r ON r.seq = c.seq WHERE c.jti = ?",
            (jti,),
        )
        if not rows:
            return None
        tool, expires_at, body = rows[0]
        data = json.loads(body)
        audiences = [
            c.get("audience")
            for c in data.get("credentials") or ()
            if isinstance(c, dict) and c.get("jti") == jti
        ]
        return LedgerEntry(
            jti=jti,
            tool=tool,
            expires_at=expires_at,
            user_issuer=data.get("user_issuer"),
            user_id=data.get("user_id"),
            tier=data.get("tier"),
            delegation=data.get("delegation"),
            workflow=data.get("workflow"),
            execution_id=data.get("execution_id"),
            workload_id=data.get("workload_id"),
            may_act=data.get("may_act"),
            audience=audiences[0] if audiences else None,
        )

    def uses_of(self, jtis: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The reported uses of each credential in ``jtis``, in time order (index on jti)."""
        found: dict[str, list[dict[str, Any]]] = {}
        sql = (
            "SELECT jti, operation, outcome, time, reported_by, seq FROM uses"
            " WHERE jti = ? ORDER BY time, id"
        )
        with closing(self._reader()) as conn:
            try:
                for jti in dict.fromkeys(jtis):
                    found[jti] = [
                        {
                            "operation": operation,
                            "outcome": outcome,
                            "time": time,
                            "reported_by": reported_by,
                            "seq": seq,
                        }
                        for _, operation, outcome, time, reported_by, seq in conn.execute(
                            sql, (jti,)
                        )
                    ]
            except sqlite3.Error as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc
        return found

    async def live(self, selector: str, value: str, now: float) -> LiveCredentials:
        """Unexpired credentials whose record (or, for ``jti``, which itself) ``selector`` names."""
        if selector == "jti":
            where = "c.jti = ?"
        elif selector in _RECORD_SELECTORS:
            where = f"r.{selector} = ?"
        else:
            raise ValueError(f"unknown selector {selector!r}")
        (count, users, latest), *_ = await asyncio.to_thread(
            self._rows,
            "SELECT COUNT(*), COUNT(DISTINCT r.user_id), MAX(c.expires_at)"  # noqa: S608 - fixed names
            " FROM credentials c JOIN records r ON r.seq = c.seq"
            f" WHERE {where} AND c.expires_at > ?",
            (value, now),
        )
        return LiveCredentials(count, users, latest)

    async def revocations_after(self, last_id: int, now: float) -> list[Revocation]:
        rows = await asyncio.to_thread(
            self._rows,
            "SELECT id, selector, value, issued_before, expires_at FROM revocations"
            " WHERE id > ? AND expires_at > ? ORDER BY id",
            (last_id, now),
        )
        return [Revocation(sel, value, before, exp, id_) for id_, sel, value, before, exp in rows]

    def _reader(self) -> sqlite3.Connection:
        uri = self._path.resolve().as_uri() + "?mode=ro"
        try:
            return sqlite3.connect(uri, uri=True, timeout=self._timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(UNAVAILABLE) from exc


def open_head_key(data_dir: Path) -> bytes:
    """The chain head key in ``data_dir`` (0600), created with the directory (0700) if new."""
    return open_secret_file(data_dir / KEY_FILE, KEY_BYTES)


def open_audit_reader(data_dir: Path) -> SqliteAuditReader:
    """A reader for the audit log in ``data_dir``."""
    return SqliteAuditReader(data_dir / DB_FILE, open_head_key(data_dir))
