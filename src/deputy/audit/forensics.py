"""Forensic reads over the audit log: the live ledger, a window's activity, one execution.

Shared by the CLI and the web console; the reader is passed in, so either store serves.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from deputy.audit.log import AuditFilter, AuditReader
from deputy.audit.record import StoredRecord
from deputy.audit.revocation import Revocation
from deputy.config.settings import MAX_DELEGATION_DEPTH
from deputy.policy.blast_radius import LedgerCredential, LedgerSnapshot
from deputy.policy.drift import Issued, Used

MAX_TIMELINE = 100_000  # records of one execution shown
_ALL = 2**62  # no limit: every record of the window is read
_RELATIVE = re.compile(r"^(\d{1,9})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MOMENT_HELP = "use a duration like 30m, 2h, 7d, epoch seconds, or an ISO 8601 time"


def parse_moment(value: str, now: float) -> float:
    """``30m``, ``2h``, ``7d`` (before ``now``), epoch seconds, or an ISO 8601 time (UTC
    unless it names an offset), as epoch seconds; ``ValueError`` with :data:`MOMENT_HELP`."""
    m = _RELATIVE.match(value)
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(MOMENT_HELP)
        return seconds
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(MOMENT_HELP) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class ForensicReader(AuditReader, Protocol):
    """An audit reader that also knows revocations in force and reported uses."""

    async def revocations_after(self, last_id: int, now: float) -> list[Revocation]: ...

    def uses_of(self, jtis: Iterable[str]) -> dict[str, list[dict[str, Any]]]: ...

    def oldest_live_issue(self, now: float) -> float | None: ...


def _ledger_credentials(stored: StoredRecord) -> Iterator[LedgerCredential]:
    r = stored.record
    for c in r.get("credentials") or ():
        yield LedgerCredential(
            jti=c["jti"],
            tool=c["tool"],
            issued_at=int(r["time"]),
            expires_at=int(c["expires_at"]),
            workload_id=r.get("workload_id"),
            user_id=r.get("user_id"),
            execution_id=r.get("execution_id"),
            agent_instance=r.get("agent_instance"),
            parent_jti=r.get("parent_jti"),
            parent_actors=tuple(r.get("parent_actors") or ()),
        )


def literal_prefix(pattern: str) -> str:
    """The part of a workload-id glob before its first wildcard."""
    return pattern.split("*", 1)[0]


async def ledger_snapshot(
    reader: ForensicReader,
    now: float,
    *,
    workload: str | None = None,
    user: str | None = None,
) -> LedgerSnapshot:
    """The credentials of the records since the oldest credential still live was issued (no
    earlier record holds a live one), the workloads active since then, and the revocations
    in force.

    ``workload`` (an id or glob) or ``user`` narrows the read to the records that can matter
    for that question, through an index; the delegation ancestors of what is read are added,
    so a revoked parent still covers its children. A live child's ancestors are live too,
    hence inside the window.
    """
    since = await asyncio.to_thread(reader.oldest_live_issue, now)
    revocations = await reader.revocations_after(0, now)
    if since is None:
        return LedgerSnapshot(now, (), tuple(revocations), frozenset())
    credentials, seen = await asyncio.to_thread(_read_credentials, reader, since, workload, user)
    return LedgerSnapshot(now, credentials, tuple(revocations), seen)


def _read_credentials(
    reader: AuditReader, since: float, workload: str | None, user: str | None
) -> tuple[tuple[LedgerCredential, ...], frozenset[str]]:
    pattern = workload is not None and "*" in workload
    selection = AuditFilter(
        since=since,
        workload_id=None if pattern else workload,
        workload_prefix=literal_prefix(workload) if workload and pattern else None,
        user_id=user,
        limit=_ALL,
    )
    credentials: dict[str, LedgerCredential] = {}
    seen: set[str] = set()
    for stored in reader.query(selection):
        if isinstance(stored.record.get("workload_id"), str):
            seen.add(stored.record["workload_id"])
        credentials.update((c.jti, c) for c in _ledger_credentials(stored))
    wanted = {c.parent_jti for c in credentials.values() if c.parent_jti} - credentials.keys()
    for _ in range(MAX_DELEGATION_DEPTH):
        found: dict[str, LedgerCredential] = {}
        for jti in sorted(wanted):
            for stored in reader.query(AuditFilter(jti=jti, limit=1)):
                found.update((c.jti, c) for c in _ledger_credentials(stored))
        credentials.update(found)
        wanted = {c.parent_jti for c in found.values() if c.parent_jti} - credentials.keys()
        if not wanted:
            break
    return tuple(credentials.values()), frozenset(seen)


def activity_since(reader: AuditReader, since: float) -> tuple[list[Issued], list[Used] | None]:
    """What was issued since ``since`` (per workflow, tool and scope, counted), and the
    workflows' tools reported used (``None`` when no API reported any use in the window)."""
    issued = [
        Issued(workflow, tool, frozenset(scope.split()), count)
        for workflow, tool, scope, count in reader.issued_grants(since)
    ]
    used = reader.used_grants(since)
    if used is None:
        return issued, None
    return issued, [Used(workflow, tool) for workflow, tool in sorted(used)]


def timeline_of(reader: ForensicReader, execution: str) -> list[dict[str, Any]]:
    """The execution's records in order (with ``seq``), each credential with its uses."""
    records = [
        {**stored.record, "seq": stored.seq}
        for stored in reader.query(AuditFilter(execution_id=execution, limit=MAX_TIMELINE))
    ]
    jtis = [
        c["jti"]
        for r in records
        for c in r.get("credentials") or ()
        if isinstance(c, dict) and isinstance(c.get("jti"), str)
    ]
    uses = reader.uses_of(jtis)
    for r in records:
        r["credentials"] = [
            {**c, "uses": uses.get(str(c.get("jti")), [])} if isinstance(c, dict) else c
            for c in r.get("credentials") or ()
        ]
    return records
