"""Audit queries by tool and by outcome, alone and with every other filter, paged newest
first, on every store: one mixed log, and an oracle that reads every record and matches it in
Python. How each store plans these queries is tested with the store (SQLite:
``tests/integration/test_audit_filters.py``; PostgreSQL: ``tests/postgres``)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from deputy.audit.log import AuditFilter
from deputy.audit.record import DecisionRecord, IssuedCredential
from deputy.clock import FakeClock
from tests.audit_records import T0, Queryable, make_record, seqs
from tests.stores.conftest import BACKENDS, Log, Store, new_store

COMMON = ("github", "jira", "crm")
RARE = "payroll"


def cred(i: int, k: int, tool: str) -> IssuedCredential:
    return IssuedCredential(f"jti-{i}-{k}", tool, f"https://{tool}", "s", "c", int(T0) + i + 300)


def record(i: int) -> DecisionRecord:
    """Record ``i`` of a mixed log: allows, denials, uses and revocations over a few tools."""
    asked = dict.fromkeys([COMMON[i % 3], COMMON[i // 3 % 3]] + ([RARE] if i % 13 == 0 else []))
    fields: dict[str, Any] = {
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
    return make_record(i, **fields)


RECORDS = [record(i) for i in range(1, 61)]


@pytest.fixture(scope="module", params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    """The mixed log, appended one record at a time, on each store."""
    directory = tmp_path_factory.mktemp("filters")
    with (
        new_store(request.param, directory, request) as store,
        store.log(clock=FakeClock(T0)) as audit_log,
    ):

        async def append_each() -> None:
            for item in RECORDS:
                await audit_log.append(item)

        asyncio.run(append_each())
        assert audit_log.verify().ok
        yield audit_log


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


def test_denials_are_found_by_the_tools_they_asked_for(log: Log) -> None:
    assert seqs(log, tool="crm", outcome="deny") == [5, 15, 20, 25, 35, 50, 60]
    assert seqs(log, tool="github", outcome="deny") == [10, 15, 20, 30, 45, 55, 60]
    (denied,) = log.query(AuditFilter(tool="crm", outcome="deny", before_seq=20, limit=1))
    assert denied.seq == 5 and denied.record["credentials"] == []
    assert seqs(log, tool="crm", outcome="deny", newest_first=True, limit=3) == [60, 50, 35]
    below = seqs(log, tool="crm", outcome="deny", newest_first=True, before_seq=35)
    assert below == [25, 20, 15, 5]


def test_tools_asked_for_issued_or_used_all_count_once(log: Log) -> None:
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


def test_paging_newest_first_by_tool_and_user(log: Log) -> None:
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
    log: Log, tool: str | None, outcome: str | None, extra: dict[str, Any]
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


def test_the_oracle_sees_records_in_and_out_of_each_filter(log: Log) -> None:
    everything = expected(log)
    assert len(everything) == len(RECORDS)
    for tool, outcome in itertools.product((*COMMON, RARE), ("allow", "usage")):
        assert 0 < len(expected(log, tool=tool, outcome=outcome)) < len(everything)
    for extra in EXTRAS[1:]:
        assert 0 < len(expected(log, **extra)) < len(everything)


def test_a_workload_prefix_selects_the_ids_that_start_with_it(log: Log) -> None:
    everyone = seqs(log, limit=10_000)
    agent_1 = seqs(log, workload_id="spiffe://example.org/agent/1", limit=10_000)
    assert seqs(log, workload_prefix="spiffe://example.org/agent/1", limit=10_000) == agent_1
    assert seqs(log, workload_prefix="spiffe://example.org/", limit=10_000) == everyone
    assert seqs(log, workload_prefix="spiffe://example.org/agent/2", limit=10_000) == []
    assert seqs(log, workload_prefix="spiffe://example.com/", limit=10_000) == []
    combined = seqs(log, workload_prefix="spiffe://example.org/agent/", user_id="user-1")
    assert combined == expected(log, user_id="user-1")


def test_a_large_batch_writes_every_row_in_one_transaction(store: Store) -> None:
    writer = store.writer(clock=FakeClock(T0))
    try:
        batch = [record(i) for i in range(1, 1001)]  # more tool rows than one INSERT carries
        assert writer.write(batch) == [None] * len(batch)
        assert writer.commits == 1
    finally:
        writer.close()
    with store.log() as audit_log:
        assert audit_log.verify().ok
        for tool in (*COMMON, RARE):
            found = seqs(audit_log, tool=tool, limit=10_000)
            assert found == expected(audit_log, tool=tool) and found
    ((rows,),) = store.fetch("SELECT COUNT(*) FROM record_tools")
    assert rows > 1000
