"""The broker's audit log: records committed by a child writer process, answered per frame."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from deputy.audit.log import AuditFilter
from deputy.errors import CommitOutcomeUnknown, StoreUnavailable
from deputy.store.sqlite.audit_process import ProcessAuditLog
from deputy.store.sqlite.audit_reader import open_audit_reader
from tests.audit_records import IDP, make_record

pytestmark = pytest.mark.sqlite_only("the SQLite writer process")


def open_log(data_dir: Path) -> ProcessAuditLog:
    return ProcessAuditLog(data_dir, open_audit_reader(data_dir), "ES256")


async def test_concurrent_appends_commit_in_one_chain(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    await log.start()
    await asyncio.gather(*(log.append(make_record(i)) for i in range(300)))
    await log.aclose()
    report = open_audit_reader(tmp_path).verify()
    assert report.ok and report.records == 300
    assert [
        s.record["decision_id"] for s in open_audit_reader(tmp_path).query(AuditFilter(jti="jti-7"))
    ] == ["dec-7"]
    assert open_audit_reader(tmp_path).issued_counts(0) == {
        (IDP, f"user-{u}", "code"): 75 for u in range(4)
    }


async def test_duplicate_record_fails_alone(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    await log.append(make_record(1))
    results = await asyncio.gather(
        log.append(make_record(1)), log.append(make_record(2)), return_exceptions=True
    )
    await log.aclose()
    assert isinstance(results[0], StoreUnavailable) and results[1] == ()
    assert open_audit_reader(tmp_path).verify().records == 2


async def test_locked_store_fails_closed_and_recovers(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    await log.append(make_record(0))
    locker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            await log.append(make_record(1))
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await log.append(make_record(2))
    await log.aclose()
    assert (
        open_audit_reader(tmp_path).verify().ok
        and open_audit_reader(tmp_path).verify().records == 2
    )


async def test_killed_writer_fails_unanswered_records_then_restarts(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    await log.start()
    await log.append(make_record(0))
    child, answers = log._child, log._answers
    assert child is not None and answers is not None
    os.kill(child.pid, signal.SIGSTOP)  # the writer can no longer answer
    pending = asyncio.ensure_future(log.append(make_record(1)))
    for _ in range(3):
        await asyncio.sleep(0)  # the frame goes out on the next loop turn
    assert not pending.done()
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(StoreUnavailable) as refused:
        await pending  # sent, never answered, and not in the log: surely not committed
    assert not isinstance(refused.value, CommitOutcomeUnknown)
    await answers
    await log.append(make_record(2))  # a new writer, no restart of anything else
    assert log._child is not None and log._child.pid != child.pid
    await log.aclose()
    report = open_audit_reader(tmp_path).verify()
    assert report.ok
    assert [s.record["decision_id"] for s in open_audit_reader(tmp_path).query(AuditFilter())] == [
        "dec-0",
        "dec-2",
    ]


async def test_close_commits_what_was_sent(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    tasks = [asyncio.ensure_future(log.append(make_record(i))) for i in range(50)]
    await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    await log.aclose()
    with pytest.raises(StoreUnavailable):
        await log.append(make_record(99))
    assert open_audit_reader(tmp_path).verify().records == 50


async def test_stalled_writer_times_out_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deputy.store.sqlite import audit_process

    monkeypatch.setattr(audit_process, "COMMIT_TIMEOUT_SECONDS", 0.2)
    log = open_log(tmp_path)
    await log.start()
    child = log._child
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)
    try:
        with pytest.raises(CommitOutcomeUnknown):
            await log.append(make_record(1))
    finally:
        os.kill(child.pid, signal.SIGCONT)
    await log.append(make_record(2))
    await log.aclose()
    # the late record landed after all: "outcome unknown" was the honest answer
    ids = [s.record["decision_id"] for s in open_audit_reader(tmp_path).query(AuditFilter())]
    assert ids == ["dec-1", "dec-2"]


async def test_records_do_not_pile_up_behind_a_stalled_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deputy.store.sqlite import audit_process

    monkeypatch.setattr(audit_process, "MAX_UNSENT_BYTES", 0)
    monkeypatch.setattr(audit_process, "COMMIT_TIMEOUT_SECONDS", 0.2)
    log = open_log(tmp_path)
    await log.start()
    child = log._child
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)
    try:
        big = make_record(1, reasons=({"rule": "r", "message": "x" * 300_000},))
        stuck = asyncio.ensure_future(log.append(big))  # fills the pipe, then waits
        for _ in range(3):
            await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable) as refused:
            await log.append(make_record(2))  # refused at once: nothing more is queued
        assert not isinstance(refused.value, CommitOutcomeUnknown)
        with pytest.raises(CommitOutcomeUnknown):
            await stuck
    finally:
        os.kill(child.pid, signal.SIGCONT)
    await log.aclose()


async def test_credentials_are_signed_by_the_writer_after_the_commit(tmp_path: Path) -> None:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    from deputy.clock import SystemClock
    from deputy.store.key_files import FileKeyStore
    from deputy.tokens.key_ring import KeyRing

    log = open_log(tmp_path)
    claims = [{"sub": "alice", "jti": "jti-1"}, {"sub": "alice", "jti": "jti-1b"}]
    tokens = await log.append(make_record(1), claims)
    await log.aclose()
    ring = KeyRing(FileKeyStore(tmp_path / "keys"), SystemClock(), "ES256")
    ring.load()
    jwks = KeySet.import_key_set(ring.jwks())
    decoded = [jwt.decode(t, jwks, algorithms=["ES256"]) for t in tokens]
    assert [d.claims for d in decoded] == claims
    assert all(d.header["typ"] == "at+jwt" for d in decoded)
    assert open_audit_reader(tmp_path).committed("dec-1")


async def test_a_record_that_cannot_be_signed_stands_and_nothing_is_issued(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from deputy.store.key_files import FileKeyStore

    log = open_log(tmp_path)
    await log.start()  # creates the signing key
    store = FileKeyStore(tmp_path / "keys")
    [key] = store.load()
    store.save([replace(key, publish_until=1.0)])  # no key may sign any more
    with pytest.raises(CommitOutcomeUnknown):
        await log.append(make_record(1), [{"jti": "jti-1"}])
    await log.aclose()
    assert open_audit_reader(tmp_path).committed("dec-1")  # recorded, quota stays taken


async def test_the_writer_signs_with_a_rotated_key_without_restart(tmp_path: Path) -> None:
    from joserfc import jws

    from deputy.clock import SystemClock
    from deputy.store.key_files import FileKeyStore
    from deputy.tokens.key_ring import KeyRing

    log = open_log(tmp_path)
    [before] = await log.append(make_record(1), [{"jti": "a"}])
    ring = KeyRing(FileKeyStore(tmp_path / "keys"), SystemClock(), "ES256")
    ring.load()
    new = ring.rotate(activate_after=0, max_token_lifetime=300)  # as `deputy keys rotate`
    [after] = await log.append(make_record(2), [{"jti": "b"}])
    await log.aclose()
    assert jws.extract_compact(after.encode()).protected["kid"] == new.kid
    assert jws.extract_compact(before.encode()).protected["kid"] != new.kid
