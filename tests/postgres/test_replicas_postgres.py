"""Several writers (replicas) on one PostgreSQL: no shared row, no lost or doubled record,
revocations seen in commit order, and a registry that witnesses every chain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deputy.audit.log import AuditFilter
from deputy.clock import FakeClock
from deputy.store.postgres import PostgresAuditLog, PostgresAuditReader, PostgresAuditWriter
from tests.audit_records import KEY, T0, make_record
from tests.postgres.conftest import fetch, raw
from tests.postgres.writer_process import record

ROOT = Path(__file__).resolve().parents[2]


def start_writer(url: str, prefix: str, count: int, revoke_every: int = 0) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.postgres.writer_process", url, prefix, str(count),
         str(revoke_every)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def go(*writers: subprocess.Popen[str]) -> None:
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()


def all_records(url: str) -> list[tuple[int, str]]:
    with PostgresAuditReader(url, KEY) as reader:
        return [
            (s.seq, s.record["decision_id"]) for s in reader.query(AuditFilter(limit=1_000_000))
        ]


def verify(url: str) -> int:
    with PostgresAuditReader(url, KEY) as reader:
        report = reader.verify()
    assert report.ok, report.problem
    return report.records


@pytest.mark.slow
def test_two_writer_processes_append_concurrently_without_loss_or_duplicates(
    pg_url: str,
) -> None:
    writers = [start_writer(pg_url, name, 1500) for name in ("a", "b")]
    go(*writers)
    outputs = [w.communicate(timeout=120)[0].split() for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    committed = [line for out in outputs for line in out]
    assert not [line for line in committed if line.startswith("failed")]
    stored = all_records(pg_url)
    assert sorted(d for _, d in stored) == sorted(committed)
    assert len(committed) == len(set(committed)) == 3000
    assert [seq for seq, _ in stored] == sorted({seq for seq, _ in stored})
    assert verify(pg_url) == 3000
    chains = fetch(
        pg_url, "SELECT chain, count(*), max(chain_seq) FROM records GROUP BY 1 ORDER BY 1"
    )
    assert [(n, top) for _, n, top in chains] == [(1500, 1500), (1500, 1500)]
    # They ran at once: each chain's records are spread over the other's in the global order.
    ((overlap,),) = fetch(
        pg_url,
        "SELECT count(*) FROM records a WHERE a.chain = (SELECT min(chain) FROM records)"
        " AND a.id > (SELECT min(id) FROM records b WHERE b.chain <> a.chain)"
        " AND a.id < (SELECT max(id) FROM records b WHERE b.chain <> a.chain)",
    )
    assert isinstance(overlap, int) and overlap > 100
    events = [e for (e,) in fetch(pg_url, "SELECT event FROM chain_registry ORDER BY seq")]
    assert events.count("register") == 2 and events.count("retire") == 2


async def test_two_logs_in_one_process_keep_two_chains(pg_url: str) -> None:
    with (
        PostgresAuditLog(pg_url, KEY, clock=FakeClock(T0)) as one,
        PostgresAuditLog(pg_url, KEY, clock=FakeClock(T0)) as two,
    ):
        await asyncio.gather(
            *(one.append(record("one", n)) for n in range(1, 301)),
            *(two.append(record("two", n)) for n in range(1, 301)),
        )
        assert one.chain != two.chain
        seqs = [s.seq for s in one.query(AuditFilter(limit=1000))]
        assert len(seqs) == 600 and seqs == sorted(set(seqs))
        # Pages newest first over both chains: every record once.
        paged: list[int] = []
        cursor = None
        while page := [
            s.seq for s in two.query(AuditFilter(newest_first=True, before_seq=cursor, limit=7))
        ]:
            paged += page
            cursor = page[-1]
        assert paged == seqs[::-1]
        assert one.verify().ok
    assert verify(pg_url) == 600


@pytest.mark.slow
def test_revocations_are_seen_in_commit_order_by_a_reader_polling_meanwhile(pg_url: str) -> None:
    """Ids of revocations follow commit order across writers: a poller that asks only for ids
    above the last it saw misses none, however the writers' transactions interleave."""
    writers = [start_writer(pg_url, name, 600, revoke_every=3) for name in ("a", "b", "c")]
    go(*writers)
    seen: dict[int, str] = {}

    async def poll() -> None:
        with PostgresAuditReader(pg_url, KEY) as reader:
            last = 0
            while True:
                done = all(w.poll() is not None for w in writers)
                for revocation in await reader.revocations_after(last, T0):
                    assert revocation.id not in seen
                    seen[revocation.id] = revocation.value
                    last = max(last, revocation.id)
                if done:
                    return

    asyncio.run(poll())
    outputs = [w.communicate(timeout=60)[0].split() for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0]
    revoked = {f"{p}-exec-{n}" for p in "abc" for n in range(3, 601, 3)}
    assert sorted(seen.values()) == sorted(revoked) and len(seen) == 600
    assert sum(len(out) for out in outputs) == 1800
    assert verify(pg_url) == 1800


@pytest.mark.slow
def test_a_killed_writer_leaves_a_chain_that_verifies(pg_url: str) -> None:
    writer = start_writer(pg_url, "k", 0)
    go(writer)
    assert writer.stdout is not None
    committed = [writer.stdout.readline().strip() for _ in range(300)]
    writer.send_signal(signal.SIGKILL)
    rest = writer.communicate(timeout=30)[0].split()
    answered = [line for line in committed + rest if not line.startswith("failed")]
    stored = {d for _, d in all_records(pg_url)}
    assert set(answered) <= stored  # every answered append is in the log
    assert verify(pg_url) == len(stored)
    events = [e for (e,) in fetch(pg_url, "SELECT event FROM chain_registry ORDER BY seq")]
    assert "register" in events and "retire" not in events
    # The next writer starts a chain of its own; both verify.
    survivor = start_writer(pg_url, "s", 10)
    go(survivor)
    assert survivor.communicate(timeout=60)[0].split() == [f"s-{n}" for n in range(1, 11)]
    assert verify(pg_url) == len(stored) + 10


async def test_checkpoints_witness_the_heads_of_every_chain(pg_url: str) -> None:
    with (
        PostgresAuditLog(pg_url, KEY, checkpoint_seconds=0.05) as one,
        PostgresAuditLog(pg_url, KEY, checkpoint_seconds=3600) as two,
    ):
        await one.append(record("one", 1))
        await two.append(record("two", 1))
        for n in range(2, 5):
            await asyncio.sleep(0.1)
            await one.append(record("one", n))
        await asyncio.sleep(0.2)
        anchors = fetch(
            pg_url,
            "SELECT r.event, a.chain, a.seq FROM chain_anchors a"
            " JOIN chain_registry r ON r.seq = a.registry_seq WHERE r.event = 'checkpoint'"
            " ORDER BY a.registry_seq, a.chain",
        )
        assert ("checkpoint", one.chain, 4) in anchors
        assert ("checkpoint", two.chain, 1) in anchors  # one's checkpoints witness two too
        assert one.verify().ok


def _rolled_back_chain(url: str, *, witnessed: bool) -> None:
    """Chain 1 writes 7 records, the intruder copies its (authentic) head, 3 more are written,
    then the intruder deletes those 3 and puts the old head back: a consistent, shorter chain.
    With ``witnessed``, another writer registered meanwhile and anchored the head at 10."""
    writer = PostgresAuditWriter(url, KEY, clock=FakeClock(T0))
    try:
        assert writer.write([make_record(i) for i in range(1, 8)]) == [None] * 7
        ((seq, hash_, mac),) = fetch(url, "SELECT seq, hash, mac FROM chain_heads")
        assert writer.write([make_record(i) for i in range(8, 11)]) == [None] * 3
        if witnessed:
            other = PostgresAuditWriter(url, KEY)
            try:
                other.open()
            finally:
                other.close()
    finally:
        writer.close()  # no retirement: as if the process died
    raw(
        url,
        "DELETE FROM records WHERE chain = 1 AND chain_seq > 7",
        "DELETE FROM credentials WHERE record_id NOT IN (SELECT id FROM records)",
        "DELETE FROM record_tools WHERE record_id NOT IN (SELECT id FROM records)",
        f"UPDATE chain_heads SET seq = {seq}, hash = '{hash_}', mac = '{mac}' WHERE chain = 1",  # noqa: S608
    )


def test_a_chain_rolled_back_below_a_witnessed_head_is_named(pg_url: str) -> None:
    _rolled_back_chain(pg_url, witnessed=True)
    with PostgresAuditReader(pg_url, KEY) as reader:
        report = reader.verify()
    assert not report.ok and report.first_bad_seq is None
    assert report.problem == (
        "chain 1 record 10 is not what chain registry entry 2 witnessed:"
        " the chain was rolled back or rewritten"
    )


def test_a_rollback_to_a_copied_head_nobody_witnessed_goes_unseen(pg_url: str) -> None:
    """The documented limit (docs/postgres-audit.md): between two checkpoints, an intruder who
    kept an old head row can cut a chain back to it. Retirement and checkpoints bound this."""
    _rolled_back_chain(pg_url, witnessed=False)
    assert verify(pg_url) == 7
