"""The PostgreSQL audit queries bind every value. What the queries select, on every store, is
in ``tests/stores/test_audit_filters.py``."""

from __future__ import annotations

from deputy.audit.log import AuditFilter
from deputy.store.postgres.reader import select_records


def test_values_are_bound_never_interpolated() -> None:
    hostile = "x' OR 1=1; DROP TABLE records; --"
    statement = select_records(
        AuditFilter(tool=hostile, outcome=hostile, user_id=hostile, newest_first=True)
    )
    compiled = statement.compile()
    assert hostile not in str(compiled)
    assert sorted(v for v in compiled.params.values() if v == hostile) == [hostile] * 3
