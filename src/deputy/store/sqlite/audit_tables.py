"""The audit tables: schema, record selection, and checks that rows agree with hashed bodies."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from deputy.audit.chain import ChainHead, ChainVerifier
from deputy.audit.log import AuditFilter
from deputy.audit.record import tools_of

SCHEMA_VERSION = 4

SCHEMA = (
    "CREATE TABLE records ("
    " seq INTEGER PRIMARY KEY, decision_id TEXT NOT NULL UNIQUE, time REAL NOT NULL,"
    " outcome TEXT NOT NULL, execution_id TEXT, agent_instance TEXT, workload_id TEXT,"
    " user_id TEXT, body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX records_execution_id ON records (execution_id)",
    "CREATE INDEX records_agent_instance ON records (agent_instance)",
    "CREATE INDEX records_workload_id ON records (workload_id)",
    "CREATE INDEX records_user_id ON records (user_id)",
    "CREATE INDEX records_time ON records (time)",
    "CREATE TABLE credentials ("
    " jti TEXT PRIMARY KEY, seq INTEGER NOT NULL, user_issuer TEXT, user_id TEXT,"
    " category TEXT, tool TEXT, expires_at INTEGER, issued_at REAL)",
    "CREATE INDEX credentials_user_category"
    " ON credentials (user_issuer, user_id, category, issued_at)",
    "CREATE TABLE chain_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER, hash TEXT, mac TEXT)",
)
# A migration step: an SQL statement, or a function run on the connection (same transaction).
Migration = str | Callable[[sqlite3.Connection], None]


def backfill_record_tools(conn: sqlite3.Connection) -> None:
    """Version 3 to 4: the tool rows of every stored record, found in its body by ``tools_of``.

    In Python rather than with SQLite's json_each: the one derivation verify also uses, so the
    two cannot disagree (SQLite 3.40 cuts a JSON string at an escaped NUL), and faster
    (about 21 s against 35 s for a million records). A body that is not a JSON object gets no
    rows; verify reports that record.
    """
    rows: list[tuple[int, str]] = []
    insert, one_row = conn.cursor(), insert_rows(INSERT_RECORD_TOOL, 1)
    for seq, body in conn.execute("SELECT seq, CAST(body AS BLOB) FROM records ORDER BY seq"):
        try:
            data = json.loads(body or b"")
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            rows += ((seq, tool) for tool in sorted(tools_of(data)))
        if len(rows) >= 10_000:
            insert.executemany(one_row, rows)
            rows.clear()
    insert.executemany(one_row, rows)


def backfill_credential_grants(conn: sqlite3.Connection) -> None:
    """Version 3 to 4: each credential row's workflow and scope, from its record's body."""
    rows: list[tuple[Any, Any, str]] = []
    update = "UPDATE credentials SET workflow = ?, scope = ? WHERE jti = ?"
    for body in conn.execute(
        "SELECT CAST(body AS BLOB) FROM records WHERE seq IN (SELECT seq FROM credentials)"
        " ORDER BY seq"
    ):
        try:
            data = json.loads(body[0] or b"")
        except (ValueError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        for cred in data.get("credentials") or ():
            if isinstance(cred, dict) and isinstance(cred.get("jti"), str):
                rows.append((data.get("workflow"), cred.get("scope"), cred["jti"]))
        if len(rows) >= 10_000:
            conn.executemany(update, rows)
            rows.clear()
    conn.executemany(update, rows)


# Steps that bring a store of the keyed version to the next one.
MIGRATIONS: dict[int, tuple[Migration, ...]] = {
    1: (
        "CREATE TABLE revocations ("
        " id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, selector TEXT NOT NULL,"
        " value TEXT NOT NULL, issued_before INTEGER NOT NULL, expires_at INTEGER NOT NULL)",
        "CREATE INDEX revocations_expires_at ON revocations (expires_at)",
    ),
    2: (
        "CREATE TABLE uses ("
        " id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, jti TEXT NOT NULL,"
        " operation TEXT NOT NULL, outcome INTEGER NOT NULL, time REAL NOT NULL,"
        " reported_by TEXT)",
        "CREATE INDEX uses_jti ON uses (jti, time)",
    ),
    3: (
        # The tools each record concerns (once each), for filters by tool.
        "CREATE TABLE record_tools (seq INTEGER NOT NULL, tool TEXT NOT NULL)",
        backfill_record_tools,  # before the index: building it once is faster than growing it
        "CREATE INDEX record_tools_tool ON record_tools (tool, seq)",
        "CREATE INDEX records_outcome ON records (outcome)",
        # What each credential granted under which workflow, for drift without reading bodies.
        "ALTER TABLE credentials ADD COLUMN workflow TEXT",
        "ALTER TABLE credentials ADD COLUMN scope TEXT",
        backfill_credential_grants,
        "CREATE INDEX credentials_grants ON credentials (issued_at, workflow, tool, scope)",
        "CREATE INDEX uses_seq ON uses (seq)",
        # Where the live credentials start: the oldest issue of an unexpired credential.
        "CREATE INDEX credentials_live ON credentials (expires_at, issued_at)",
    ),
}
INSERT_USE = (
    "INSERT INTO uses (seq, jti, operation, outcome, time, reported_by) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_REVOCATION = (
    "INSERT INTO revocations (seq, selector, value, issued_before, expires_at)"
    " VALUES (?, ?, ?, ?, ?)"
)

INSERT_RECORD = (
    "INSERT INTO records (seq, decision_id, time, outcome, execution_id, agent_instance,"
    " workload_id, user_id, body, prev_hash, hash) VALUES "
)
INSERT_CREDENTIAL = (
    "INSERT INTO credentials (jti, seq, user_issuer, user_id, category, tool, expires_at,"
    " issued_at, workflow, scope) VALUES "
)
INSERT_RECORD_TOOL = "INSERT INTO record_tools (seq, tool) VALUES "
_COLUMNS = {INSERT_RECORD: 11, INSERT_CREDENTIAL: 10, INSERT_RECORD_TOOL: 2}


@functools.lru_cache(maxsize=1024)
def insert_rows(prefix: str, rows: int) -> str:
    """A multi-row INSERT for ``rows`` rows of the table ``prefix`` inserts into."""
    row = "(" + ", ".join("?" * _COLUMNS[prefix]) + ")"
    return prefix + ", ".join([row] * rows)


WRITE_HEAD = (
    "INSERT INTO chain_head (id, seq, hash, mac) VALUES (1, ?, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac"
)
READ_HEAD = "SELECT seq, hash, mac FROM chain_head WHERE id = 1"


# Columns copied out of the hashed body so queries can use indexes; verify checks they agree.
INDEXED_COLUMNS = (
    "decision_id",
    "time",
    "outcome",
    "execution_id",
    "agent_instance",
    "workload_id",
    "user_id",
)
_EQUALITY_FILTERS = ("execution_id", "agent_instance", "workload_id", "user_id")

RECORD_ROWS_SQL = (
    "SELECT seq, body, prev_hash, hash, decision_id, time, outcome, execution_id,"
    " agent_instance, workload_id, user_id FROM records ORDER BY seq"
)
CREDENTIAL_ROWS_SQL = (
    "SELECT seq, jti, user_issuer, user_id, category, tool, expires_at, issued_at, workflow,"
    " scope FROM credentials"
    " ORDER BY seq, jti"
)
REVOCATION_ROWS_SQL = (
    "SELECT seq, selector, value, issued_before, expires_at FROM revocations ORDER BY seq, id"
)

USE_ROWS_SQL = "SELECT seq, jti, operation, outcome, time, reported_by FROM uses ORDER BY seq, id"

# A tool stored as anything but text (a BLOB of the same bytes, say) would no longer match a
# query's text parameter, hiding its record from the filter: such a row never verifies.
TOOL_ROWS_SQL = (
    "SELECT seq, CASE WHEN typeof(tool) = 'text' THEN tool END FROM record_tools ORDER BY seq, tool"
)


# The first seq at or after a time, from the time index alone (a covering range scan): without
# INDEXED BY, SQLite answers MIN(seq) by walking the whole table in seq order from the start.
# Reading from that seq on in primary key order then needs no sort; ``+time`` keeps the
# planner on that range (or on an equality index, whose entries are in seq order too).
_SINCE = (
    "seq >= (SELECT MIN(seq) FROM records INDEXED BY records_time WHERE time >= ?) AND +time >= ?"
)
_UNTIL = (
    "seq <= (SELECT MAX(seq) FROM records INDEXED BY records_time WHERE time < ?) AND +time < ?"
)


# Filters by tool and outcome. Every index lists its records in seq order, so the one that
# leads gives pages without a sort. A tool or outcome that does not lead is checked on each
# seq found with one search of its own index, before the record row is read.
# - An execution, agent instance, workload, user or jti leads when given: a bounded set.
# - Otherwise a tool leads, through its (tool, seq) index searched down from the page
#   cursor: a rare tool's records are found without a walk through the log (as EXISTS from
#   the records would need) and a common tool's first page without collecting all of its
#   records first (as ``IN`` would). The join keeps ``seq`` naming the records column for
#   the other clauses; the order is the index's own.
# - An outcome leads only alone. Beside another index SQLite cannot tell which one finds
#   fewer records, and takes the outcome's even over an execution's (seconds on a million).
_FROM_TOOL = (
    "(SELECT seq AS tool_seq FROM record_tools WHERE tool = ?) JOIN records ON seq = tool_seq"
)
_HAS_TOOL = "EXISTS (SELECT 1 FROM record_tools t WHERE t.tool = ? AND t.seq = records.seq)"
_HAS_OUTCOME = (  # {} is the seq the leading index found
    "EXISTS (SELECT 1 FROM records o INDEXED BY records_outcome WHERE o.outcome = ? AND o.seq = {})"
)


_LAST_CHAR = "\U0010ffff"  # sorts after any character (UTF-8 bytes compare as code points)


def select_records(audit_filter: AuditFilter) -> tuple[str, list[Any]]:
    """The SQL and parameters that select a filter's records in seq order (or newest first)."""
    source, order, lead_seq = "records", "seq", "records.seq"
    source_params: list[Any] = []
    clauses: list[str] = []
    params: list[Any] = []
    for column in _EQUALITY_FILTERS:
        value = getattr(audit_filter, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if audit_filter.jti is not None:
        clauses.append("seq IN (SELECT seq FROM credentials WHERE jti = ?)")
        params.append(audit_filter.jti)
    if audit_filter.workload_prefix:
        # A range of the workload index: every id that starts with the prefix sorts in it.
        clauses.append("workload_id >= ? AND workload_id < ?")
        params += [audit_filter.workload_prefix, audit_filter.workload_prefix + _LAST_CHAR]
    bounded = bool(clauses)
    if audit_filter.tool is not None:
        if bounded:
            clauses.append(_HAS_TOOL)
            params.append(audit_filter.tool)
        else:
            source, order, lead_seq = _FROM_TOOL, "tool_seq", "tool_seq"
            source_params.append(audit_filter.tool)
    if audit_filter.outcome is not None:
        if bounded or audit_filter.tool is not None:
            clauses.append(_HAS_OUTCOME.format(lead_seq))
        else:
            clauses.append("outcome = ?")
        params.append(audit_filter.outcome)
    if audit_filter.since is not None:
        clauses.append(_SINCE)
        params += [audit_filter.since, audit_filter.since]
    if audit_filter.before_seq is not None:
        clauses.append("seq < ?")
        params.append(audit_filter.before_seq)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    direction = " DESC" if audit_filter.newest_first else ""
    # Only fixed names and clauses are interpolated; every value is a bound parameter.
    sql = f"SELECT seq, body, prev_hash, hash FROM {source}{where}"  # noqa: S608
    sql += f" ORDER BY {order}{direction} LIMIT ?"
    return sql, [*source_params, *params, max(audit_filter.limit, 0)]


def select_export(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """The SQL and parameters that stream the records with ``since <= time < until`` by seq.

    The time index finds the first and last seq in the window; the records are then read
    in primary key order between them, so no sort is needed and memory stays constant.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(_SINCE)
        params += [since, since]
    if until is not None:
        clauses.append(_UNTIL)
        params += [until, until]
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    # Only fixed clauses are interpolated; every value is a bound parameter.
    sql = "SELECT seq, body, prev_hash, hash FROM records" + where + " ORDER BY seq"  # noqa: S608
    return sql, params


def _text(value: Any) -> Any:
    """Rows are read as bytes so a corrupt text column cannot abort verification."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _blob(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")
    return b""


class _DerivedRows:
    """Rows of a table derived from record bodies, read in step with the records (by seq)."""

    def __init__(self, rows: Iterable[tuple[Any, ...]], what: str) -> None:
        self._rows: Iterator[tuple[Any, ...]] = iter(rows)
        self._pending = next(self._rows, None)
        self.what = what

    def take(self, seq: int) -> tuple[Counter[tuple[Any, ...]], str | None]:
        """The rows of record ``seq`` (without seq), or a problem with the ones before it."""
        stored: Counter[tuple[Any, ...]] = Counter()
        while self._pending is not None and (
            not isinstance(self._pending[0], int) or self._pending[0] <= seq
        ):
            row = tuple(_text(value) for value in self._pending)
            self._pending = next(self._rows, None)
            if row[0] != seq:
                return stored, f"{self.what} {row[1]} before record {seq} belongs to no record"
            stored[row[1:]] += 1
        return stored, None

    def leftover(self) -> str | None:
        return None if self._pending is None else str(_text(self._pending[1]))


class RowChecker:
    """Feeds stored rows to the chain verifier and checks the tables derived from each body."""

    def __init__(
        self,
        verifier: ChainVerifier,
        credential_rows: Iterable[tuple[Any, ...]],
        revocation_rows: Iterable[tuple[Any, ...]] = (),
        use_rows: Iterable[tuple[Any, ...]] = (),
        tool_rows: Iterable[tuple[Any, ...]] = (),
    ) -> None:
        self._verifier = verifier
        self._credentials = _DerivedRows(credential_rows, "credential")
        self._revocations = _DerivedRows(revocation_rows, "revocation of")
        self._uses = _DerivedRows(use_rows, "use of")
        self._tools = _DerivedRows(tool_rows, "tool")
        self._last_seq = 0

    def check(self, row: tuple[Any, ...]) -> bool:
        """Check one records row; False once something is wrong (the verifier says what)."""
        seq, body, prev_hash, hash_ = row[:4]
        text_prev, text_hash = str(_text(prev_hash)), str(_text(hash_))
        if not self._verifier.feed(seq, _blob(body), text_prev, text_hash):
            return False
        self._last_seq = seq
        try:
            data = json.loads(_blob(body))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self._verifier.fail(seq, f"record {seq} body is not a JSON object")
            return False
        problem = (
            self._column_problem(seq, data, row[4:])
            or self._credential_problem(seq, data)
            or self._revocation_problem(seq, data)
            or self._use_problem(seq, data)
            or self._tool_problem(seq, data)
        )
        if problem is not None:
            self._verifier.fail(seq, problem)
            return False
        return True

    def finish(self) -> None:
        """Derived rows left over belong to no record."""
        for rows in (self._credentials, self._revocations, self._uses, self._tools):
            leftover = rows.leftover()
            if leftover is not None:
                self._verifier.fail(
                    self._last_seq + 1, f"{rows.what} {leftover} belongs to no record"
                )
                return

    @staticmethod
    def _column_problem(seq: int, data: dict[str, Any], columns: tuple[Any, ...]) -> str | None:
        for name, value in zip(INDEXED_COLUMNS, columns, strict=True):
            if data.get(name) != _text(value):
                return f"record {seq} column {name} does not match its hashed body"
        return None

    def _credential_problem(self, seq: int, data: dict[str, Any]) -> str | None:
        stored, problem = self._credentials.take(seq)
        if problem is not None:
            return problem
        expected: Counter[tuple[Any, ...]] = Counter()
        for cred in data.get("credentials") or ():
            if not isinstance(cred, dict):
                return f"record {seq} body holds a malformed credential"
            key = (
                cred.get("jti"),
                data.get("user_issuer"),
                data.get("user_id"),
                cred.get("category"),
                cred.get("tool"),
                cred.get("expires_at"),
                data.get("time"),
                data.get("workflow"),
                cred.get("scope"),
            )
            expected[key] += 1
        if stored != expected:
            return f"credential rows of record {seq} do not match its hashed body"
        return None

    def _revocation_problem(self, seq: int, data: dict[str, Any]) -> str | None:
        stored, problem = self._revocations.take(seq)
        if problem is not None:
            return problem
        expected: Counter[tuple[Any, ...]] = Counter()
        revocation = data.get("revocation")
        if isinstance(revocation, dict):
            names = ("selector", "value", "issued_before", "expires_at")
            expected[tuple(revocation.get(n) for n in names)] += 1
        if stored != expected:
            return f"revocation rows of record {seq} do not match its hashed body"
        return None

    def _use_problem(self, seq: int, data: dict[str, Any]) -> str | None:
        stored, problem = self._uses.take(seq)
        if problem is not None:
            return problem
        expected: Counter[tuple[Any, ...]] = Counter()
        for use in data.get("uses") or ():
            if not isinstance(use, dict):
                return f"record {seq} body holds a malformed use"
            names = ("jti", "operation", "outcome", "time")
            expected[(*(use.get(n) for n in names), data.get("requested_by"))] += 1
        if stored != expected:
            return f"use rows of record {seq} do not match its hashed body"
        return None

    def _tool_problem(self, seq: int, data: dict[str, Any]) -> str | None:
        stored, problem = self._tools.take(seq)
        if problem is not None:
            return problem
        if stored != Counter((tool,) for tool in tools_of(data)):
            return f"tool rows of record {seq} do not match its hashed body"
        return None


def head_from_row(row: tuple[Any, ...] | None) -> ChainHead | None:
    """The stored chain head, or None; a malformed row yields a head that will not verify."""
    if row is None or row[0] is None:
        return None
    seq, hash_, mac = (
        value.decode("ascii", "replace") if isinstance(value, bytes) else value for value in row
    )
    if not (isinstance(seq, int) and isinstance(hash_, str) and isinstance(mac, str)):
        return ChainHead(seq=-1, hash="", mac="")
    return ChainHead(seq=seq, hash=hash_, mac=mac)
