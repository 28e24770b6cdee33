"""How SQLite plans the audit queries by tool and by outcome: through their indexes, without
a sort, led by the most selective filter, with every value bound. What the queries select, on
every store, is in ``tests/stores/test_audit_filters.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from deputy.audit.log import AuditFilter
from deputy.store.sqlite import SqliteAuditLog
from deputy.store.sqlite.audit_tables import select_records
from tests.audit_records import KEY, T0

pytestmark = pytest.mark.sqlite_only("query plans of the SQLite store")


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
