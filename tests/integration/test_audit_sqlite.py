"""The embedded SQLite audit log: its file, schema migrations, query plans, tamper evidence
on its tables, locks and a full disk. What every audit store does is in
``tests/stores/test_audit_log.py``, which runs on this store too."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deputy.audit.chain import canonical_json, link_hash
from deputy.audit.log import AuditFilter, ChainReport
from deputy.audit.record import DecisionRecord
from deputy.clock import FakeClock
from deputy.errors import StoreUnavailable
from deputy.store.sqlite import SqliteAuditLog, open_audit_log
from deputy.store.sqlite.audit_tables import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from tests.audit_records import (
    HOSTILE,
    KEY,
    T0,
    append_all,
    make_record,
    revocation_record,
    seqs,
    usage_record,
)

pytestmark = pytest.mark.sqlite_only("the SQLite store: its file, schema and tables")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def log(db: Path) -> Iterator[SqliteAuditLog]:
    with SqliteAuditLog(db, KEY, clock=FakeClock(T0)) as audit_log:
        yield audit_log


async def verify_after_tampering(
    db: Path, records: list[DecisionRecord], statements: list[str]
) -> ChainReport:
    """Append ``records`` one by one (a verified chain), run raw SQL on the file, verify again."""
    with SqliteAuditLog(db, KEY) as audit_log:
        for record in records:
            await audit_log.append(record)
        assert audit_log.verify().ok
    raw(db, *statements)
    with SqliteAuditLog(db, KEY) as audit_log:
        return audit_log.verify()


def raw(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["UPDATE records SET body = replace(body, 'req-4', 'req-X') WHERE seq = 4"], 4, "edited"),
        (["UPDATE records SET hash = '" + "0" * 64 + "' WHERE seq = 2"], 2, "edited"),
        (["DELETE FROM records WHERE seq = 5"], 5, "missing"),
        (["DELETE FROM records WHERE seq >= 8"], 8, "ends at record 7"),
        (["DELETE FROM chain_head"], 11, "head is missing"),
        (["UPDATE chain_head SET mac = 'deadbeef'"], 11, "forged"),
        (
            [
                "DELETE FROM records WHERE seq > 7",
                "UPDATE chain_head SET seq = 7, hash = (SELECT hash FROM records WHERE seq = 7)",
            ],
            8,
            "forged",
        ),
        (
            [
                "UPDATE records SET seq = -3 WHERE seq = 3",
                "UPDATE records SET seq = 3 WHERE seq = 4",
                "UPDATE records SET seq = 4 WHERE seq = -3",
            ],
            3,
            "edited",
        ),
        (
            [
                "INSERT INTO records SELECT 11, 'forged', time, outcome, execution_id,"
                " agent_instance, workload_id, user_id, body, hash, hash FROM records"
                " WHERE seq = 10"
            ],
            11,
            "edited",
        ),
        (["UPDATE records SET user_id = 'someone-else' WHERE seq = 6"], 6, "column user_id"),
        (["UPDATE records SET time = 0 WHERE seq = 9"], 9, "column time"),
        (["DELETE FROM credentials WHERE seq = 6"], 6, "credential rows of record 6"),
        (["UPDATE credentials SET category = 'none' WHERE seq = 2"], 2, "credential rows"),
        (["UPDATE credentials SET seq = 99 WHERE seq = 10"], 10, "credential rows"),
        (["UPDATE credentials SET scope = 'repo:admin' WHERE seq = 3"], 3, "credential rows"),
        (["UPDATE credentials SET workflow = 'other' WHERE seq = 4"], 4, "credential rows"),
        (["UPDATE records SET body = CAST(X'FFFE00' AS TEXT) WHERE seq = 2"], 2, "edited"),
    ],
    ids=[
        "edit-body",
        "edit-hash",
        "delete-middle",
        "delete-tail-keep-head",
        "delete-head",
        "garbage-head-mac",
        "truncate-and-move-head",
        "swap-two-records",
        "insert-after-head",
        "edit-index-column",
        "edit-time-column",
        "delete-credential",
        "edit-credential",
        "orphan-credential",
        "edit-credential-scope",
        "edit-credential-workflow",
        "invalid-utf8-body",
    ],
)
async def test_raw_tampering_is_named(
    db: Path, statements: list[str], first_bad: int, words: str
) -> None:
    report = await verify_after_tampering(db, [make_record(i) for i in range(1, 11)], statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or "")


async def test_well_linked_record_after_the_head_is_caught(db: Path) -> None:
    with SqliteAuditLog(db, KEY) as audit_log:
        await audit_log.append(make_record(1))
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (prev,) = conn.execute("SELECT hash FROM records WHERE seq = 1").fetchone()
        body = canonical_json({"decision_id": "forged", "time": 0, "outcome": "allow"})
        conn.execute(
            "INSERT INTO records (seq, decision_id, time, outcome, body, prev_hash, hash)"
            " VALUES (2, 'forged', 0, 'allow', ?, ?, ?)",
            (body.decode(), prev, link_hash(2, prev, body)),
        )
    finally:
        conn.close()
    with SqliteAuditLog(db, KEY) as audit_log:
        report = audit_log.verify()
        with pytest.raises(StoreUnavailable):
            await audit_log.append(make_record(3))
    assert report.first_bad_seq == 2
    assert report.problem == "record 2 lies beyond the authenticated head"


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM chain_head", "UPDATE chain_head SET mac = 'deadbeef'"],
    ids=["missing-head", "forged-head"],
)
async def test_writer_refuses_to_extend_a_chain_with_a_bad_head(
    log: SqliteAuditLog, db: Path, statement: str
) -> None:
    await log.append(make_record(1))
    raw(db, statement)
    with pytest.raises(StoreUnavailable):
        await log.append(make_record(2))
    assert log.verify().first_bad_seq == 2


async def test_locked_store_fails_closed_then_recovers_without_restart(db: Path) -> None:
    with SqliteAuditLog(db, KEY, busy_timeout_ms=100) as audit_log:
        await audit_log.append(make_record(1))
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            results = await asyncio.gather(
                *(audit_log.append(make_record(i)) for i in (2, 3, 4)), return_exceptions=True
            )
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert all(isinstance(r, StoreUnavailable) for r in results)
        assert str(results[0]) == "audit store unavailable"
        await audit_log.append(make_record(5))
        assert [s.record["decision_id"] for s in audit_log.query(AuditFilter())] == [
            "dec-1",
            "dec-5",
        ]
        assert seqs(audit_log) == [1, 2]
        assert audit_log.verify().ok


async def test_full_disk_fails_closed_then_recovers(db: Path) -> None:
    writers: list[sqlite3.Connection] = []
    with SqliteAuditLog(db, KEY, on_connect=writers.append) as audit_log:
        await audit_log.append(make_record(1))
        writer = writers[-1]
        (pages,) = writer.execute("PRAGMA page_count").fetchone()
        writer.execute(f"PRAGMA max_page_count = {pages}")
        big = make_record(2, reasons=({"rule": "r", "message": "x" * 200_000},))
        with pytest.raises(StoreUnavailable):
            await audit_log.append(big)
        # the failed batch dropped its connection; the next one opens a fresh one
        await audit_log.append(big)
        assert len(writers) == 3 and writers[-1] is not writer
        await audit_log.append(make_record(3))
        assert seqs(audit_log) == [1, 2, 3]
        assert audit_log.verify().ok


async def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    audit_log = open_audit_log(data_dir, clock=FakeClock(T0))
    await append_all(audit_log, [make_record(i) for i in range(3)])
    audit_log.close()
    key = (data_dir / "audit.key").read_bytes()
    assert len(key) == 32
    assert stat.S_IMODE((data_dir / "audit.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert audit_log.verify().ok

    with open_audit_log(data_dir) as reopened:
        await append_all(reopened, [make_record(i) for i in range(3, 5)])
        assert seqs(reopened) == [1, 2, 3, 4, 5]
        assert reopened.verify().ok
    assert (data_dir / "audit.key").read_bytes() == key


def test_a_new_store_is_at_the_schema_version_in_wal_mode(log: SqliteAuditLog, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_a_lone_surrogate_is_refused_alone(log: SqliteAuditLog) -> None:
    """SQLite text is UTF-8, which a lone surrogate (that JSON can carry) is not: that record
    fails, its neighbours in the batch commit (PostgreSQL stores it escaped instead)."""
    lone = "user-\ud800"
    results = await asyncio.gather(
        log.append(make_record(1)),
        log.append(make_record(2, user_id=lone)),
        log.append(make_record(3, tools_requested={lone: []})),
        log.append(make_record(4)),
        return_exceptions=True,
    )
    assert results[0] == () and results[3] == ()
    assert all(isinstance(r, UnicodeEncodeError) for r in results[1:3]), results
    assert [s.record["decision_id"] for s in log.query(AuditFilter())] == ["dec-1", "dec-4"]
    assert seqs(log) == [1, 2] and log.verify().ok


def test_unknown_schema_version_is_refused(db: Path) -> None:
    raw(db, "PRAGMA user_version = 99")
    with pytest.raises(StoreUnavailable, match="schema version 99"):
        SqliteAuditLog(db, KEY)


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["DELETE FROM revocations WHERE seq = 4"], 4, "revocation rows of record 4"),
        (["UPDATE revocations SET value = 'other' WHERE seq = 4"], 4, "revocation rows"),
        (["UPDATE revocations SET issued_before = 0 WHERE seq = 6"], 6, "revocation rows"),
        (
            [
                "INSERT INTO revocations (seq, selector, value, issued_before, expires_at)"
                " VALUES (99, 'user_id', 'x', 1, 2)"
            ],
            8,
            "belongs to no record",
        ),
    ],
    ids=["deleted", "value-edited", "cut-off-edited", "orphan"],
)
async def test_revocation_rows_are_checked_against_their_records(
    db: Path, statements: list[str], first_bad: int, words: str
) -> None:
    records = [
        revocation_record(i, f"exec-{i}") if i in (4, 6) else make_record(i) for i in range(1, 8)
    ]
    report = await verify_after_tampering(db, records, statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or "")


def test_a_version_1_store_is_migrated(db: Path) -> None:
    raw(db, *SCHEMA, "PRAGMA user_version = 1")
    with SqliteAuditLog(db, KEY) as audit_log:
        assert audit_log.verify().ok
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT COUNT(*) FROM revocations").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM uses").fetchone() == (0,)
    finally:
        conn.close()


async def test_a_version_2_store_is_migrated_and_keeps_its_records(db: Path) -> None:
    raw(db, *SCHEMA, *MIGRATIONS[1], "PRAGMA user_version = 2")
    with SqliteAuditLog(db, KEY) as audit_log:
        await audit_log.append(make_record(1))
        await audit_log.append(usage_record(2, ["jti-1"]))
        assert audit_log.verify().ok
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT jti, outcome FROM uses").fetchall() == [("jti-1", 200)]
    finally:
        conn.close()


def test_schema_version_is_4_and_a_new_store_has_every_migration(db: Path, tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 4 and sorted(MIGRATIONS) == [1, 2, 3]
    SqliteAuditLog(db, KEY).close()
    old = tmp_path / "v3.db"
    raw(old, *SCHEMA, *MIGRATIONS[1], *MIGRATIONS[2], "PRAGMA user_version = 3")
    SqliteAuditLog(old, KEY).close()

    def schema(path: Path) -> list[tuple[str, str]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        finally:
            conn.close()

    assert schema(db) == schema(old)
    names = {name for name, _ in schema(db)}
    assert {"record_tools", "record_tools_tool", "records_outcome", "credentials_grants"} <= names


async def test_a_version_3_store_is_migrated_and_its_tool_rows_back_filled(db: Path) -> None:
    records = [
        make_record(1, tools_requested={"github": ["repo:read"], "jira": ["issues:write"]}),
        make_record(
            2, outcome="deny", status=403, credentials=(), tools_requested={"crm": ["a:w"]}
        ),
        usage_record(3, ["jti-1", "jti-1"]),
        revocation_record(4, "exec-1"),
        make_record(5, tools_requested={HOSTILE: ["x"]}),  # and a credential for github
    ]
    with SqliteAuditLog(db, KEY) as audit_log:
        for record in records:
            await audit_log.append(record)
    # What a version 3 writer leaves: the same records, no tool rows, no outcome index, no
    # workflow or scope on credential rows.
    raw(
        db,
        "DROP TABLE record_tools",
        "DROP INDEX records_outcome",
        "DROP INDEX credentials_grants",
        "DROP INDEX uses_seq",
        "DROP INDEX credentials_live",
        "ALTER TABLE credentials DROP COLUMN workflow",
        "ALTER TABLE credentials DROP COLUMN scope",
        "PRAGMA user_version = 3",
    )

    with SqliteAuditLog(db, KEY) as audit_log:
        assert audit_log.verify().ok
        await audit_log.append(make_record(6, credentials=()))
        assert audit_log.verify().ok
        assert seqs(audit_log, tool="github") == [1, 3, 5]
        assert seqs(audit_log, tool=HOSTILE) == [5]
        assert seqs(audit_log, outcome="deny") == [2]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
        assert conn.execute("SELECT seq, tool FROM record_tools ORDER BY seq, tool").fetchall() == [
            (1, "github"),
            (1, "jira"),
            (2, "crm"),
            (3, "github"),
            (5, HOSTILE),
            (5, "github"),
        ]
        grants = conn.execute("SELECT jti, workflow, scope FROM credentials ORDER BY jti")
        assert grants.fetchall() == [
            ("jti-1", records[0].workflow, records[0].credentials[0].scope),
            ("jti-5", records[4].workflow, records[4].credentials[0].scope),
        ]
    finally:
        conn.close()


def test_the_back_fill_skips_what_is_not_a_tool_and_verify_names_the_record(db: Path) -> None:
    raw(db, *SCHEMA, *MIGRATIONS[1], *MIGRATIONS[2], "PRAGMA user_version = 3")
    bodies = [
        '{"tools_requested":{"a":[],"b":[]},"credentials":[{"tool":"a"},{"tool":"c"},'
        '{"tool":5},{"tool":{"x":1}},{"jti":"j"}],"uses":[{"tool":"d"},{"tool":null}]}',
        '{"tools_requested":["x"],"credentials":{"k":{"tool":"z"}},"uses":"u"}',
        '{"tools_requested":{"a":[],"a":[]}}',
        "not json",
    ]
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for seq, body in enumerate(bodies, 1):
            conn.execute(
                "INSERT INTO records (seq, decision_id, time, outcome, body, prev_hash, hash)"
                " VALUES (?, ?, 0, 'allow', ?, '', '')",
                (seq, f"d{seq}", body),
            )
    finally:
        conn.close()
    SqliteAuditLog(db, KEY).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT seq, tool FROM record_tools ORDER BY seq, tool").fetchall() == [
            (1, "a"),
            (1, "b"),
            (1, "c"),
            (1, "d"),
            (3, "a"),
        ]
    finally:
        conn.close()


def tool_record(i: int) -> DecisionRecord:
    """Record ``i`` asks for github and jira and gets a github credential."""
    return make_record(i, tools_requested={"github": ["repo:read"], "jira": ["issues:write"]})


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["DELETE FROM record_tools WHERE seq = 3 AND tool = 'jira'"], 3, "tool rows of record 3"),
        (["DELETE FROM record_tools WHERE seq = 4"], 4, "tool rows of record 4"),
        (
            ["UPDATE record_tools SET tool = 'gitlab' WHERE seq = 2 AND tool = 'github'"],
            2,
            "tool rows of record 2",
        ),
        (["UPDATE record_tools SET tool = CAST(tool AS BLOB) WHERE seq = 5"], 5, "tool rows"),
        (
            ["INSERT INTO record_tools (seq, tool) VALUES (4, 'payroll')"],
            4,
            "tool rows of record 4",
        ),
        (["INSERT INTO record_tools (seq, tool) VALUES (2, 'github')"], 2, "tool rows of record 2"),
        (["UPDATE record_tools SET seq = 3 WHERE seq = 2"], 2, "tool rows of record 2"),
        (["INSERT INTO record_tools (seq, tool) VALUES (0, 'crm')"], 1, "tool crm before record 1"),
        (["INSERT INTO record_tools (seq, tool) VALUES (99, 'crm')"], 6, "tool crm belongs to no"),
    ],
    ids=[
        "one-deleted",
        "all-deleted",
        "renamed",
        "made-a-blob",
        "added",
        "duplicated",
        "moved",
        "orphan-before",
        "orphan-after",
    ],
)
async def test_tool_rows_are_checked_against_their_records(
    db: Path, statements: list[str], first_bad: int, words: str
) -> None:
    report = await verify_after_tampering(db, [tool_record(i) for i in range(1, 6)], statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or ""), report.problem


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["DELETE FROM uses WHERE seq = 3 AND jti = 'jti-2'"], 3, "use rows of record 3"),
        (["UPDATE uses SET outcome = 500 WHERE seq = 3 AND jti = 'jti-1'"], 3, "use rows"),
        (["UPDATE uses SET operation = 'DELETE /x' WHERE seq = 5"], 5, "use rows"),
        (["UPDATE uses SET reported_by = 'client:other' WHERE seq = 5"], 5, "use rows"),
        (["UPDATE uses SET seq = 4 WHERE seq = 5"], 4, "use rows of record 4"),
        (
            [
                "INSERT INTO uses (seq, jti, operation, outcome, time, reported_by)"
                " VALUES (99, 'jti-1', 'GET /', 200, 1, 'client:crm-api')"
            ],
            6,
            "use of jti-1 belongs to no record",
        ),
    ],
    ids=["deleted", "outcome-edited", "operation-edited", "reporter-edited", "moved", "orphan"],
)
async def test_use_rows_are_checked_against_their_records(
    db: Path, statements: list[str], first_bad: int, words: str
) -> None:
    records = [
        make_record(1),
        make_record(2),
        usage_record(3, ["jti-1", "jti-2"]),
        make_record(4),
        usage_record(5, ["jti-4"]),
    ]
    report = await verify_after_tampering(db, records, statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or "")


@pytest.mark.parametrize(
    "filters",
    [
        {"execution_id": "e"},
        {"agent_instance": "i"},
        {"user_id": "u"},
        {"workload_id": "w"},
        {"jti": "j"},
        {"since": T0},
        {"user_id": "u", "since": T0},
        {"before_seq": 10, "newest_first": True},
        {"user_id": "u", "before_seq": 10, "newest_first": True},
        {"since": T0, "before_seq": 10, "newest_first": True},
    ],
    ids=lambda f: ",".join(f),
)
def test_queries_use_an_index_and_need_no_sort(log: SqliteAuditLog, db: Path, filters: Any) -> None:
    from deputy.store.sqlite.audit_tables import select_records

    sql, params = select_records(AuditFilter(**filters))
    conn = sqlite3.connect(db)
    try:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()
    assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), plan
