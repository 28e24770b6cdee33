"""Audit queries by tool and by outcome, alone and with every other filter, paged newest first."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from deputy.audit.log import AuditFilter
from deputy.audit.record import DecisionRecord, IssuedCredential, StoredRecord
from deputy.clock import FakeClock
from deputy.store.sqlite import SqliteAuditLog
from deputy.store.sqlite.audit_tables import select_records
from deputy.store.sqlite.audit_writer import SqliteAuditWriter

KEY = b"audit-head-key-for-tests-32bytes!"
T0 = 1_800_000_000.0
COMMON = ("github", "jira", "crm")
RARE = "payroll"


def cred(i: int, k: int, tool: str) -> IssuedCredential:
    return IssuedCredential(f"jti-{i}-{k}", tool, f"https://{tool}", "s", "c", int(T0) + i + 300)


def record(i: int) -> DecisionRecord:
    """Record ``i`` of a mixed log: allows, denials, uses and revocations over a few tools."""
    asked = dict.fromkeys([COMMON[i % 3], COMMON[i // 3 % 3]] + ([RARE] if i % 13 == 0 else []))
    fields: dict[str, Any] = {
        "decision_id": f"dec-{i}",
        "time": T0 + i,
        "endpoint": "/issue",
        "outcome": "allow",
        "status": 200,
        "request_id": f"req-{i}",
        "client_address": "127.0.0.1",
        "workload_id": f"spiffe://example.org/agent/{i % 2}",
        "agent_instance": f"inst-{i % 3}",
        "user_id": f"user-{i % 4}",
        "execution_id": f"exec-{i % 5}",
        "tools_requested": {tool: ["s"] for tool in asked},
        # The rare tool is asked for but never issued: such records are found by the asking.
        "credentials": tuple(cred(i, k, tool) for k, tool in enumerate(asked) if tool != RARE),
    }
    if i % 5 == 0:  # denied: asked for tools, issued none
        fields.update(outcome="deny", status=403, credentials=())
    elif i % 7 == 0:  # uses reported of credentials: their tools are in no other field
        tool = RARE if i % 2 else COMMON[i % 3]
        fields.update(
            outcome="usage",
            endpoint="/usage",
            tools_requested={},
            credentials=(),
            uses=tuple(
                {"jti": f"j{n}", "tool": name, "operation": "GET /", "outcome": 200, "time": T0 + i}
                for n, name in enumerate((tool, tool, "jira"))
            ),
        )
    elif i % 11 == 0:  # a revocation concerns no tool
        fields.update(outcome="revoke", endpoint="/revoke", tools_requested={}, credentials=())
    return DecisionRecord(**fields)


RECORDS = [record(i) for i in range(1, 61)]


async def append_each(audit_log: SqliteAuditLog, records: list[DecisionRecord]) -> None:
    for item in records:
        await audit_log.append(item)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteAuditLog]:
    path = tmp_path_factory.mktemp("filters") / "audit.db"
    with SqliteAuditLog(path, KEY, clock=FakeClock(T0)) as audit_log:
        asyncio.run(append_each(audit_log, RECORDS))
        assert audit_log.verify().ok
        yield audit_log


class Queryable(Protocol):
    """Any audit store: these helpers serve the SQLite and the PostgreSQL tests alike."""

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]: ...


def seqs(audit_log: Queryable, **filters: Any) -> list[int]:
    return [stored.seq for stored in audit_log.query(AuditFilter(**filters))]


def tools_of(body: dict[str, Any]) -> set[str]:
    return (
        set(body["tools_requested"])
        | {c["tool"] for c in body["credentials"]}
        | {u["tool"] for u in body["uses"]}
    )


def expected(audit_log: Queryable, **filters: Any) -> list[int]:
    """The seqs a filter must select, in seq order, found by reading every record."""
    found = []
    for stored in audit_log.query(AuditFilter(limit=10_000)):
        body = stored.record
        if (
            ("tool" not in filters or filters["tool"] in tools_of(body))
            and all(
                body[name] == filters[name]
                for name in ("outcome", "execution_id", "agent_instance", "workload_id", "user_id")
                if name in filters
            )
            and ("jti" not in filters or filters["jti"] in {c["jti"] for c in body["credentials"]})
            and ("since" not in filters or body["time"] >= filters["since"])
        ):
            found.append(stored.seq)
    return found


def newest_first_pages(audit_log: Queryable, page: int, **filters: Any) -> list[list[int]]:
    """Every page of a filter newest first, each below the last seq of the one before."""
    pages: list[list[int]] = []
    cursor: int | None = None
    while True:
        found = seqs(audit_log, **filters, newest_first=True, before_seq=cursor, limit=page)
        if not found:
            return pages
        assert len(found) <= page
        pages.append(found)
        cursor = found[-1]


def test_denials_are_found_by_the_tools_they_asked_for(log: SqliteAuditLog) -> None:
    assert seqs(log, tool="crm", outcome="deny") == [5, 15, 20, 25, 35, 50, 60]
    assert seqs(log, tool="github", outcome="deny") == [10, 15, 20, 30, 45, 55, 60]
    (denied,) = log.query(AuditFilter(tool="crm", outcome="deny", before_seq=20, limit=1))
    assert denied.seq == 5 and denied.record["credentials"] == []
    assert seqs(log, tool="crm", outcome="deny", newest_first=True, limit=3) == [60, 50, 35]
    below = seqs(log, tool="crm", outcome="deny", newest_first=True, before_seq=35)
    assert below == [25, 20, 15, 5]


def test_tools_asked_for_issued_or_used_all_count_once(log: SqliteAuditLog) -> None:
    # 13 and 26 asked for payroll and were not issued it; 7, 21 and 49 reported two uses of
    # it each (and one of jira): one row per tool, so one answer per record.
    assert seqs(log, tool=RARE) == [7, 13, 21, 26, 39, 49, 52]
    assert seqs(log, tool=RARE, outcome="usage") == [7, 21, 49]
    assert seqs(log, tool="jira", outcome="usage") == [7, 14, 21, 28, 42, 49, 56]
    assert seqs(log, tool="crm", outcome="usage", newest_first=True) == [56, 14]
    assert seqs(log, outcome="revoke") == [11, 22, 33, 44]
    revocations = {11, 22, 33, 44}
    assert all(revocations.isdisjoint(seqs(log, tool=tool)) for tool in (*COMMON, RARE))
    assert seqs(log, tool="nope") == [] and seqs(log, outcome="nope") == []
    assert seqs(log, tool="Crm") == [] and seqs(log, tool="crm ") == []


def test_paging_newest_first_by_tool_and_user(log: SqliteAuditLog) -> None:
    pages = newest_first_pages(log, 2, tool="github", user_id="user-3")
    assert pages == [[55, 51], [47, 39], [27, 19], [15, 3]]
    pages = newest_first_pages(log, 4, tool=RARE, outcome="allow", since=T0 + 14)
    assert pages == [[52, 39, 26]]


EXTRAS: list[dict[str, Any]] = [
    {},
    {"user_id": "user-1"},
    {"execution_id": "exec-3"},
    {"agent_instance": "inst-2"},
    {"workload_id": "spiffe://example.org/agent/0"},
    {"jti": "jti-26-0"},
    {"since": T0 + 30},
    {"user_id": "user-2", "since": T0 + 17},
]


@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: ",".join(e) or "alone")
@pytest.mark.parametrize("outcome", [None, "allow", "deny", "usage", "revoke"])
@pytest.mark.parametrize("tool", [None, *COMMON, RARE, "nope"])
def test_filters_select_exactly_their_records_on_every_page(
    log: SqliteAuditLog, tool: str | None, outcome: str | None, extra: dict[str, Any]
) -> None:
    filters = {**extra}
    if tool is not None:
        filters["tool"] = tool
    if outcome is not None:
        filters["outcome"] = outcome
    want = expected(log, **filters)
    assert seqs(log, **filters, limit=1000) == want
    assert seqs(log, **filters, limit=2) == want[:2]
    assert seqs(log, **filters, newest_first=True, limit=1000) == want[::-1]
    pages = newest_first_pages(log, 3, **filters)
    assert [seq for page in pages for seq in page] == want[::-1]
    assert all(len(page) == 3 for page in pages[:-1])
    if len(want) > 2:  # a cursor inside the answer, oldest first below it
        assert seqs(log, **filters, before_seq=want[2]) == want[:2]


def test_the_oracle_sees_records_in_and_out_of_each_filter(log: SqliteAuditLog) -> None:
    everything = expected(log)
    assert len(everything) == len(RECORDS)
    for tool, outcome in itertools.product((*COMMON, RARE), ("allow", "usage")):
        assert 0 < len(expected(log, tool=tool, outcome=outcome)) < len(everything)
    for extra in EXTRAS[1:]:
        assert 0 < len(expected(log, **extra)) < len(everything)


PLANNED: list[dict[str, Any]] = [
    {"tool": "t"},
    {"tool": "t", "newest_first": True, "before_seq": 10},
    {"tool": "t", "since": T0},
    {"tool": "t", "since": T0, "newest_first": True, "before_seq": 10},
    {"tool": "t", "outcome": "deny", "newest_first": True},
    {"tool": "t", "outcome": "deny", "since": T0, "newest_first": True, "before_seq": 10},
    {"outcome": "deny"},
    {"outcome": "deny", "newest_first": True, "before_seq": 10},
    {"outcome": "deny", "since": T0, "newest_first": True},
]
BOUNDED: list[dict[str, Any]] = [
    {"execution_id": "e"},
    {"agent_instance": "i"},
    {"workload_id": "w"},
    {"user_id": "u"},
    {"jti": "j"},
]


def plan(db: Path, audit_filter: AuditFilter) -> list[str]:
    sql, params = select_records(audit_filter)
    conn = sqlite3.connect(db)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


@pytest.fixture
def empty_db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    SqliteAuditLog(path, KEY).close()
    return path


@pytest.mark.parametrize("filters", PLANNED, ids=lambda f: ",".join(f))
def test_tool_or_outcome_leads_through_its_index_without_a_sort(
    empty_db: Path, filters: dict[str, Any]
) -> None:
    steps = plan(empty_db, AuditFilter(**filters))
    assert not any(s.startswith("SCAN") or "TEMP B-TREE" in s for s in steps), steps
    index = "record_tools_tool (tool=?" if "tool" in filters else "records_outcome (outcome=?"
    assert index in steps[0], steps
    if "tool" in filters and "outcome" in filters:  # searched per tool row, before the record
        assert "records_outcome (outcome=? AND rowid=?)" in " ".join(steps), steps
    if "before_seq" in filters:
        assert "seq<?" in steps[0] or "rowid<?" in steps[0], steps


@pytest.mark.parametrize("bounded", BOUNDED, ids=lambda f: ",".join(f))
@pytest.mark.parametrize(
    "filters",
    [{"tool": "t"}, {"outcome": "allow"}, {"tool": "t", "outcome": "deny", "since": T0}],
    ids=lambda f: ",".join(f),
)
def test_an_execution_user_or_jti_leads_over_tool_and_outcome(
    empty_db: Path, bounded: dict[str, Any], filters: dict[str, Any]
) -> None:
    """SQLite cannot tell the outcome index finds most of the log: it must not lead here."""
    audit_filter = AuditFilter(**bounded, **filters, newest_first=True, before_seq=10)
    steps = plan(empty_db, audit_filter)
    assert not any(s.startswith("SCAN") or "TEMP B-TREE" in s for s in steps), steps
    (column,) = bounded
    lead = "credentials USING" if column == "jti" else f"records_{column} ({column}=?"
    assert lead in " ".join(steps[:3]), steps
    # Tool and outcome are only searched for the seqs the lead finds.
    probes = [s for s in steps if "record_tools_tool" in s or "records_outcome" in s]
    assert probes and all("seq=?)" in s or "rowid=?)" in s for s in probes), steps


def test_values_are_bound_never_interpolated() -> None:
    hostile = "x' OR 1=1; DROP TABLE records; --"
    sql, params = select_records(
        AuditFilter(tool=hostile, outcome=hostile, user_id=hostile, newest_first=True)
    )
    assert hostile not in sql
    assert params == [hostile, hostile, hostile, 1000]


def test_a_large_batch_writes_every_tool_row_in_its_transaction(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writer = SqliteAuditWriter(path, KEY, clock=FakeClock(T0))
    try:
        batch = [record(i) for i in range(1, 301)]  # more tool rows than one INSERT carries
        assert writer.write(batch) == [None] * len(batch)
        assert writer.commits == 1
    finally:
        writer.close()
    with SqliteAuditLog(path, KEY) as audit_log:
        assert audit_log.verify().ok
        for tool in (*COMMON, RARE):
            found = seqs(audit_log, tool=tool, limit=1000)
            assert found == expected(audit_log, tool=tool) and found
    conn = sqlite3.connect(path)
    try:
        (rows,) = conn.execute("SELECT COUNT(*) FROM record_tools").fetchone()
    finally:
        conn.close()
    assert rows > 400


def test_a_workload_prefix_selects_the_ids_that_start_with_it(log: SqliteAuditLog) -> None:
    everyone = seqs(log, limit=10_000)
    agent_1 = seqs(log, workload_id="spiffe://example.org/agent/1", limit=10_000)
    assert seqs(log, workload_prefix="spiffe://example.org/agent/1", limit=10_000) == agent_1
    assert seqs(log, workload_prefix="spiffe://example.org/", limit=10_000) == everyone
    assert seqs(log, workload_prefix="spiffe://example.org/agent/2", limit=10_000) == []
    assert seqs(log, workload_prefix="spiffe://example.com/", limit=10_000) == []
    combined = seqs(log, workload_prefix="spiffe://example.org/agent/", user_id="user-1")
    assert combined == expected(log, user_id="user-1")
