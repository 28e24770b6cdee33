"""Audit query benchmark: forensic look-ups on a large audit log, against a 50 ms target.

Usage: python bench/audit_query_bench.py [--records 1000000] [--queries 300] [--limit 100]

Builds, in a temporary directory, an ``audit.db`` through the real writer
(``SqliteAuditWriter.write`` in large batches, so the hash chain, the head and the
credential rows are exactly what the service writes): about 1,000 users, 200 workloads,
20,000 agent instances, one execution per record, 1-3 credentials per allowed record and
5% denials without any; every 1,000th record also concerns a rare tool. Then, per query
kind (execution, agent instance, user, jti), it answers ``--queries`` random keys, each with
a fresh ``SqliteAuditReader`` (a new connection, as the CLI makes) and the first ``--limit``
records, and reports p50/p99/max. ``since`` (random times; the first page after each) is
shown too, without a target. The console's kinds (a common tool, the rare tool, the
``deny`` outcome) ask for a page of 50 newest first below a random cursor, as its pager does.
The database has just been written, so it is in the OS page cache: these are warm figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deputy.audit.log import AuditFilter
from deputy.audit.record import DecisionRecord, IssuedCredential
from deputy.clock import FakeClock
from deputy.store.sqlite.audit_reader import SqliteAuditReader
from deputy.store.sqlite.audit_tables import select_records
from deputy.store.sqlite.audit_writer import SqliteAuditWriter

KEY = b"audit-query-bench-head-key-32by!"
T0 = 1_800_000_000.0
USERS = 1000
WORKLOADS = 200
INSTANCES = 20_000
TARGET_MS = 50.0
CONSOLE_PAGE = 50
IDP = "https://login.example.com"
TOOLS = (
    ("github", "https://api.github.com", "repo:read", "code"),
    ("jira", "https://jira.example.com", "issues:write", "tickets"),
    ("crm", "https://crm.internal", "accounts:read", "customer"),
    ("gmail", "https://gmail.googleapis.com", "mail.send", "mail"),
    ("pricing_api", "https://pricing.internal", "prices:read", "finance"),
)
# Every 1,000th record also concerns this tool (an issued credential, or a denied request):
# the rare tool of the tool filter. Chosen by position, so the random stream is unchanged.
RARE_TOOL = ("payroll", "https://payroll.internal", "payslips:read", "hr")
RARE_EVERY = 1000
WORKFLOWS = ("support-triage", "code-review", "billing-research", "sales-assist")


def execution_id(i: int) -> str:
    return f"exe_{i:08d}{(i * 2654435761) % 2**32:08x}"


def jti_of(i: int, k: int) -> str:
    return f"{(i * 0x9E3779B97F4A7C15 + k * 0xBF58476D1CE4E5B9) % 2**96:024x}"


def make_record(i: int, rng: random.Random) -> DecisionRecord:
    """Record ``i``: a realistic /issue decision with full attribution."""
    instance = rng.randrange(INSTANCES)
    workload = f"spiffe://prod.example.com/agents/{WORKFLOWS[instance % 4]}/{instance % WORKLOADS}"
    user = f"user-{rng.randrange(USERS):04d}@example.com"
    when = T0 + i * 0.05
    allow = rng.random() >= 0.05
    credentials: tuple[IssuedCredential, ...] = ()
    reasons: tuple[dict[str, str], ...] = ()
    requested: dict[str, list[str]] = {}
    if allow:
        for k, (tool, audience, scope, category) in enumerate(rng.sample(TOOLS, rng.randint(1, 3))):
            credentials += (
                IssuedCredential(jti_of(i, k), tool, audience, scope, category, int(when) + 900),
            )
            requested[tool] = [scope]
    else:
        reasons = ({"rule": "workflow.tools", "message": "tool crm is not in this workflow"},)
        requested = {"crm": ["accounts:write"]}
    if i % RARE_EVERY == RARE_EVERY - 1:
        tool, audience, scope, category = RARE_TOOL
        requested[tool] = [scope]
        if allow:
            credentials += (
                IssuedCredential(jti_of(i, 3), tool, audience, scope, category, int(when) + 900),
            )
    return DecisionRecord(
        decision_id=f"dec_{i:016d}",
        time=when,
        endpoint="/issue",
        outcome="allow" if allow else "deny",
        status=200 if allow else 403,
        request_id=f"req_{i:016d}",
        client_address=f"10.0.{instance % 256}.{instance // 256 % 256}",
        workload_id=workload,
        workload_issuer="spiffe://prod.example.com",
        agent_instance=f"inst-{instance:05d}",
        user_id=user,
        user_issuer=IDP,
        claimed_user_id=user,
        delegation="user_token",
        tier="pro",
        workflow=WORKFLOWS[instance % 4],
        execution_id=execution_id(i),
        tools_requested=requested,
        ttl_seconds=900,
        credentials=credentials,
        reasons=reasons,
        policy_version="2026-05-01",
    )


def batch_size() -> int:
    """Records per write: the writer binds 11 values per record and 8 per credential."""
    conn = sqlite3.connect(":memory:")
    try:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        conn.close()
    return max(1, min(5000, limit // (11 + 3 * 10)))


def fast_bulk_load(conn: sqlite3.Connection) -> None:
    # Building the fixture only: the service keeps synchronous = FULL.
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")


def build(path: Path, count: int, seed: int) -> tuple[float, int]:
    """Write ``count`` records; seconds taken and credentials written."""
    rng = random.Random(seed)
    writer = SqliteAuditWriter(path, KEY, clock=FakeClock(T0), on_connect=fast_bulk_load)
    size = batch_size()
    credentials = 0
    started = time.perf_counter()
    try:
        for start in range(0, count, size):
            batch = [make_record(i, rng) for i in range(start, min(start + size, count))]
            credentials += sum(len(r.credentials) for r in batch)
            errors = [e for e in writer.write(batch) if e is not None]
            if errors:
                raise SystemExit(f"write failed: {errors[0]!r}")
            done = start + len(batch)
            if done % 100_000 < size:
                print(f"  {done:>9,} records  {time.perf_counter() - started:6.1f} s", flush=True)
    finally:
        writer.close()
    return time.perf_counter() - started, credentials


def sample_keys(
    path: Path, count: int, queries: int, seed: int, limit: int
) -> dict[str, list[AuditFilter]]:
    """Random existing keys of each kind (instances and users as the records hold them)."""
    rng = random.Random(seed + 1)
    conn = sqlite3.connect(path)
    try:
        seqs = [rng.randint(1, count) for _ in range(queries)]

        def column(sql: str) -> list[str]:
            return [conn.execute(sql, (seq,)).fetchone()[0] for seq in seqs]

        rng.shuffle(seqs)
        instances = column("SELECT agent_instance FROM records WHERE seq = ?")
        rng.shuffle(seqs)
        users = column("SELECT user_id FROM records WHERE seq = ?")
        rng.shuffle(seqs)
        jtis = column(
            "SELECT jti FROM credentials WHERE seq >= ? ORDER BY seq LIMIT 1",
        )
    finally:
        conn.close()
    keys: dict[str, list[Any]] = {
        "execution_id": [execution_id(rng.randrange(count)) for _ in range(queries)],
        "agent_instance": instances,
        "user_id": users,
        "jti": jtis,
        # Times anywhere in the log: the first page after each.
        "since": [T0 + rng.randrange(count) * 0.05 for _ in range(queries)],
    }
    filters = {
        kind: [AuditFilter(**{kind: key}, limit=limit) for key in values]
        for kind, values in keys.items()
    }

    def pages(field: str, values: list[Any]) -> list[AuditFilter]:
        # Below a cursor anywhere past the first rare record: every page finds something.
        cursors = [rng.randint(RARE_EVERY + 1, count + 1) for _ in values]
        return [
            AuditFilter(**{field: value}, newest_first=True, before_seq=cursor, limit=CONSOLE_PAGE)
            for value, cursor in zip(values, cursors, strict=True)
        ]

    filters["tool"] = pages("tool", [rng.choice(TOOLS)[0] for _ in range(queries)])
    filters["tool (rare)"] = pages("tool", [RARE_TOOL[0]] * queries)
    filters["outcome"] = pages("outcome", ["deny"] * queries)
    return filters


def plans(path: Path, keys: dict[str, list[AuditFilter]]) -> Iterator[tuple[str, list[str]]]:
    conn = sqlite3.connect(path)
    try:
        for kind, filters in keys.items():
            sql, params = select_records(filters[0])
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            yield kind, [row[3] for row in rows]
    finally:
        conn.close()


def time_queries(path: Path, kind: str, keys: list[AuditFilter]) -> tuple[list[float], int]:
    """Milliseconds per query (a fresh reader each) and the records returned in all."""
    timings: list[float] = []
    returned = 0
    for key in keys:
        started = time.perf_counter()
        reader = SqliteAuditReader(path, KEY)
        found = list(reader.query(key))
        timings.append((time.perf_counter() - started) * 1000)
        if not found:
            raise SystemExit(f"{kind}: {key} found nothing: the fixture is wrong")
        returned += len(found)
    return timings, returned


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"# {platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="Random keys per query kind.")
    parser.add_argument("--limit", type=int, default=100, help="Records per answer (a page).")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.records < 1 or args.queries < 1 or args.limit < 1:
        parser.error("--records, --queries and --limit must be positive")
    print(machine())
    with tempfile.TemporaryDirectory(prefix="deputy-audit-bench-") as tmp:
        path = Path(tmp) / "audit.db"
        print(f"building {args.records:,} records in {path} (batches of {batch_size():,})")
        seconds, credentials = build(path, args.records, args.seed)
        megabytes = path.stat().st_size / 2**20
        print(
            f"built {args.records:,} records, {credentials:,} credentials in {seconds:.1f} s "
            f"({args.records / seconds:,.0f} records/s), audit.db {megabytes:,.0f} MiB"
        )
        keys = sample_keys(path, args.records, args.queries, args.seed, args.limit)
        for kind, plan in plans(path, keys):
            print(f"plan {kind:<15} " + " | ".join(plan))
        print(
            f"\n{args.queries} random keys per kind, fresh reader each, first {args.limit} "
            f"records (tool and outcome: {CONSOLE_PAGE} newest first below a random cursor);"
            f" target < {TARGET_MS:.0f} ms"
        )
        print(f"{'query':<16}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'rows/q':>8}  target")
        missed = False
        for kind, values in keys.items():
            timings, returned = time_queries(path, kind, values)
            p99, worst = percentile(timings, 0.99), max(timings)
            met = p99 < TARGET_MS
            verdict = "no target" if kind == "since" else ("met" if met else "NOT met") + " (p99)"
            missed |= not met and kind != "since"
            print(
                f"{kind:<16}{statistics.median(timings):>9.2f}{p99:>9.2f}{worst:>9.2f}"
                f"{returned / len(values):>8.1f}  {verdict}"
            )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
