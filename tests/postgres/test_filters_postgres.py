"""Queries by tool and by outcome, alone and with every other filter, paged newest first.

``tests/integration/test_audit_filters.py`` against PostgreSQL: the same mixed log, the same
oracle (every record read and matched in Python), every filter on every page.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from deputy.audit.log import AuditFilter
from deputy.clock import FakeClock
from deputy.store.postgres import PostgresAuditLog, PostgresAuditWriter, upgrade
from deputy.store.postgres.reader import select_records
from tests.audit_records import KEY, T0
from tests.integration.test_audit_filters import (
    COMMON,
    EXTRAS,
    RARE,
    RECORDS,
    expected,
    newest_first_pages,
    record,
    seqs,
)
from tests.postgres.conftest import create_database, drop_database, fetch


@pytest.fixture(scope="module")
def log(postgres_server: str) -> Iterator[PostgresAuditLog]:
    url = create_database(postgres_server)
    try:
        upgrade(url)
        with PostgresAuditLog(url, KEY, clock=FakeClock(T0)) as audit_log:

            async def append_each() -> None:
                for item in RECORDS:
                    await audit_log.append(item)

            asyncio.run(append_each())
            assert audit_log.verify().ok
            yield audit_log
    finally:
        drop_database(url)


def test_denials_are_found_by_the_tools_they_asked_for(log: PostgresAuditLog) -> None:
    assert seqs(log, tool="crm", outcome="deny") == [5, 15, 20, 25, 35, 50, 60]
    assert seqs(log, tool="github", outcome="deny") == [10, 15, 20, 30, 45, 55, 60]
    (denied,) = log.query(AuditFilter(tool="crm", outcome="deny", before_seq=20, limit=1))
    assert denied.seq == 5 and denied.record["credentials"] == []
    assert seqs(log, tool="crm", outcome="deny", newest_first=True, limit=3) == [60, 50, 35]
    below = seqs(log, tool="crm", outcome="deny", newest_first=True, before_seq=35)
    assert below == [25, 20, 15, 5]


def test_tools_asked_for_issued_or_used_all_count_once(log: PostgresAuditLog) -> None:
    assert seqs(log, tool=RARE) == [7, 13, 21, 26, 39, 49, 52]
    assert seqs(log, tool=RARE, outcome="usage") == [7, 21, 49]
    assert seqs(log, tool="jira", outcome="usage") == [7, 14, 21, 28, 42, 49, 56]
    assert seqs(log, tool="crm", outcome="usage", newest_first=True) == [56, 14]
    assert seqs(log, outcome="revoke") == [11, 22, 33, 44]
    revocations = {11, 22, 33, 44}
    assert all(revocations.isdisjoint(seqs(log, tool=tool)) for tool in (*COMMON, RARE))
    assert seqs(log, tool="nope") == [] and seqs(log, outcome="nope") == []
    assert seqs(log, tool="Crm") == [] and seqs(log, tool="crm ") == []


def test_paging_newest_first_by_tool_and_user(log: PostgresAuditLog) -> None:
    pages = newest_first_pages(log, 2, tool="github", user_id="user-3")
    assert pages == [[55, 51], [47, 39], [27, 19], [15, 3]]
    pages = newest_first_pages(log, 4, tool=RARE, outcome="allow", since=T0 + 14)
    assert pages == [[52, 39, 26]]


@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: ",".join(e) or "alone")
@pytest.mark.parametrize("outcome", [None, "allow", "deny", "usage", "revoke"])
@pytest.mark.parametrize("tool", [None, *COMMON, RARE, "nope"])
def test_filters_select_exactly_their_records_on_every_page(
    log: PostgresAuditLog, tool: str | None, outcome: str | None, extra: dict[str, Any]
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
    if len(want) > 2:
        assert seqs(log, **filters, before_seq=want[2]) == want[:2]


def test_the_oracle_sees_records_in_and_out_of_each_filter(log: PostgresAuditLog) -> None:
    everything = expected(log)
    assert len(everything) == len(RECORDS)
    for tool, outcome in itertools.product((*COMMON, RARE), ("allow", "usage")):
        assert 0 < len(expected(log, tool=tool, outcome=outcome)) < len(everything)
    for extra in EXTRAS[1:]:
        assert 0 < len(expected(log, **extra)) < len(everything)


def test_values_are_bound_never_interpolated() -> None:
    hostile = "x' OR 1=1; DROP TABLE records; --"
    statement = select_records(
        AuditFilter(tool=hostile, outcome=hostile, user_id=hostile, newest_first=True)
    )
    compiled = statement.compile()
    assert hostile not in str(compiled)
    assert sorted(v for v in compiled.params.values() if v == hostile) == [hostile] * 3


def test_a_workload_prefix_selects_the_ids_that_start_with_it(log: PostgresAuditLog) -> None:
    everyone = seqs(log, limit=10_000)
    agent_1 = seqs(log, workload_id="spiffe://example.org/agent/1", limit=10_000)
    assert seqs(log, workload_prefix="spiffe://example.org/agent/1", limit=10_000) == agent_1
    assert seqs(log, workload_prefix="spiffe://example.org/", limit=10_000) == everyone
    assert seqs(log, workload_prefix="spiffe://example.org/agent/2", limit=10_000) == []
    assert seqs(log, workload_prefix="spiffe://example.com/", limit=10_000) == []
    combined = seqs(log, workload_prefix="spiffe://example.org/agent/", user_id="user-1")
    assert combined == expected(log, user_id="user-1")


def test_a_large_batch_writes_every_row_in_one_transaction(pg_url: str) -> None:
    writer = PostgresAuditWriter(pg_url, KEY, clock=FakeClock(T0))
    try:
        batch = [record(i) for i in range(1, 1001)]
        assert writer.write(batch) == [None] * len(batch)
        assert writer.commits == 1
    finally:
        writer.close()
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        assert audit_log.verify().ok
        for tool in (*COMMON, RARE):
            found = seqs(audit_log, tool=tool, limit=10_000)
            assert found == expected(audit_log, tool=tool) and found
    ((rows,),) = fetch(pg_url, "SELECT COUNT(*) FROM record_tools")
    assert isinstance(rows, int) and rows > 1000
