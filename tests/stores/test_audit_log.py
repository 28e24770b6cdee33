"""The audit log and its reader on every store: group commit, one linear chain per writer, the
record as decided, failures that stay alone, queries, the ledger, revocations and uses."""

from __future__ import annotations

import asyncio
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from deputy.audit.log import AuditFilter, ChainReport
from deputy.audit.record import IssuedCredential
from deputy.clock import FakeClock
from deputy.errors import StoreUnavailable
from tests.audit_records import (
    HOSTILE,
    IDP,
    T0,
    append_all,
    decisions,
    make_record,
    revocation_record,
    seqs,
    usage_record,
)
from tests.stores.conftest import Log, Store

LONE_SURROGATE = "\ud800"  # JSON can carry one; UTF-8 cannot


async def test_concurrent_appends_form_one_contiguous_chain(log: Log) -> None:
    await append_all(log, [make_record(i) for i in range(500)])
    assert seqs(log, limit=1000) == list(range(1, 501))
    report = log.verify()
    assert report.ok and report.records == 500
    assert 1 <= log.commits < 250, "appends were not grouped into shared transactions"


def test_appends_from_several_event_loops_keep_one_chain(log: Log) -> None:
    def worker(base: int) -> None:
        asyncio.run(append_all(log, [make_record(base + i) for i in range(100)]))

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seqs(log, limit=1000) == list(range(1, 401))
    assert log.verify().ok


async def test_stored_record_is_the_decision_with_the_clock_time(store: Store) -> None:
    clock = FakeClock(T0)
    with store.log(clock=clock) as audit_log:
        await audit_log.append(make_record(1))
        clock.advance(5)
        await audit_log.append(make_record(2))
        first, second = audit_log.query(AuditFilter())
    assert first.record == {**make_record(1).as_dict(), "logged_at": T0}
    assert second.record["logged_at"] == T0 + 5
    assert second.prev_hash == first.hash


async def test_hostile_text_round_trips_and_verifies(log: Log, store: Store) -> None:
    """Control characters, NUL and backslashes in every field (and on PostgreSQL, which
    escapes them, lone surrogates; SQLite refuses those: ``test_audit_sqlite.py``): stored,
    found by every filter, read back as they were, and the chain verifies."""
    odd = HOSTILE + (LONE_SURROGATE if store.backend == "postgres" else "") + " \\0 \\\\ \\u0041"
    record = make_record(
        1,
        user_id=odd,
        execution_id=odd,
        workload_id=odd,
        reasons=({"rule": "r", "message": odd},),
        tools_requested={odd: [odd]},
        credentials=(IssuedCredential(odd, odd, "https://aud", odd, odd, int(T0) + 300),),
    )
    await log.append(record)
    await log.append(make_record(2, user_id=HOSTILE[:5], workload_id=odd[:-3], credentials=()))
    await log.append(usage_record(3, [odd]))
    (stored,) = log.query(AuditFilter(user_id=odd))
    assert stored.record["reasons"] == [{"rule": "r", "message": odd}]
    assert stored.record["tools_requested"] == {odd: [odd]}
    assert seqs(log, execution_id=odd) == [1]
    assert seqs(log, tool=odd) == [1] and seqs(log, tool="github") == [3]
    assert seqs(log, jti=odd) == [1]
    assert seqs(log, workload_prefix=odd[:-3]) == [1, 2]
    assert seqs(log, workload_prefix=odd) == [1]
    assert seqs(log, user_id=HOSTILE[:5]) == [2]
    assert log.issued_counts(T0) == {(IDP, odd, odd): 1}
    assert log.reader.issued_grants(T0) == [("code-review", odd, odd, 1)]
    assert [u["operation"] for u in log.reader.uses_of([odd])[odd]] == ["GET /repos/0"]
    entry = await log.reader.credential(odd)
    assert entry is not None and entry.tool == odd and entry.user_id == odd
    assert log.verify().ok
    for (body,) in store.fetch("SELECT body FROM records"):
        assert isinstance(body, str) and body.isascii() and "\n" not in body and "\r" not in body


async def test_duplicate_decision_id_fails_alone(log: Log) -> None:
    await log.append(make_record(1))
    results = await asyncio.gather(
        log.append(make_record(2)),
        log.append(make_record(1, credentials=())),
        log.append(make_record(3)),
        return_exceptions=True,
    )
    assert results[0] == () and results[2] == ()
    assert isinstance(results[1], StoreUnavailable)
    assert decisions(log) == ["dec-1", "dec-2", "dec-3"] and log.verify().ok


async def test_duplicate_jti_fails_alone(log: Log) -> None:
    results = await asyncio.gather(
        log.append(make_record(1)),
        log.append(make_record(2, credentials=make_record(1).credentials)),
        return_exceptions=True,
    )
    assert results[0] == () and isinstance(results[1], StoreUnavailable)
    assert decisions(log) == ["dec-1"] and log.verify().ok


@pytest.mark.parametrize(
    "bad",
    [
        {"time": float("nan")},
        {"uses": ({"jti": "j", "tool": "t", "operation": "o", "outcome": 200.5, "time": T0},)},
        {"uses": ({"jti": "j", "tool": "t", "operation": "o", "time": T0},)},
        {"user_id": 5},
    ],
    ids=["nan", "float-outcome", "use-without-outcome", "number-as-user"],
)
async def test_unwritable_record_fails_alone(log: Log, bad: dict[str, Any]) -> None:
    results = await asyncio.gather(
        log.append(make_record(1)),
        log.append(make_record(2, **bad)),
        log.append(make_record(3)),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError | TypeError), results[1]
    assert results[0] == () and results[2] == ()
    assert decisions(log) == ["dec-1", "dec-3"] and log.verify().ok


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, list(range(1, 13))),
        ({"execution_id": "exec-2"}, [2, 7, 12]),
        ({"agent_instance": "inst-0"}, [3, 6, 9, 12]),
        ({"workload_id": "spiffe://example.org/agent/1"}, [1, 3, 5, 7, 9, 11]),
        ({"user_id": "user-1"}, [1, 5, 9]),
        ({"jti": "jti-7"}, [7]),
        ({"jti": "no-such-jti"}, []),
        ({"since": T0 + 10}, [10, 11, 12]),
        ({"user_id": "user-1", "since": T0 + 2}, [5, 9]),
        ({"limit": 2}, [1, 2]),
        ({"limit": 0}, []),
    ],
    ids=lambda v: ",".join(f"{k}" for k in v) if isinstance(v, dict) else None,
)
async def test_query_filters(log: Log, filters: dict[str, Any], expected: list[int]) -> None:
    for i in range(1, 13):
        await log.append(make_record(i))
    assert seqs(log, **filters) == expected
    assert decisions(log, **filters) == [f"dec-{i}" for i in expected]


async def test_issued_counts_per_user_and_category(log: Log) -> None:
    def cred(jti: str, category: str) -> IssuedCredential:
        return IssuedCredential(jti, "tool", "https://aud", "s", category, int(T0) + 600)

    await log.append(make_record(1, user_id="alice", credentials=(cred("a", "code"),)))
    await log.append(
        make_record(2, user_id="alice", credentials=(cred("b", "code"), cred("c", "mail")))
    )
    await log.append(make_record(3, user_id="bob", credentials=(cred("d", "code"),)))
    await log.append(make_record(4, outcome="deny", status=403, credentials=()))
    other = "spiffe://prod.example/agents/billing"
    await log.append(
        make_record(5, user_id="alice", user_issuer=other, credentials=(cred("e", "code"),))
    )
    assert log.issued_counts(T0) == {
        (IDP, "alice", "code"): 2,
        (IDP, "alice", "mail"): 1,
        (IDP, "bob", "code"): 1,
        (other, "alice", "code"): 1,
    }
    assert log.issued_counts(T0 + 2) == {
        (IDP, "alice", "code"): 1,
        (IDP, "alice", "mail"): 1,
        (IDP, "bob", "code"): 1,
        (other, "alice", "code"): 1,
    }
    assert log.issued_counts(T0 + 100) == {}
    assert sorted(log.reader.issued_grants(T0)) == [("code-review", "tool", "s", 5)]


FORGED_HEAD = {
    "sqlite": "chain head signature does not verify: the head was forged",
    "postgres": "chain registry head signature does not verify: the head was forged",
}


async def test_a_different_key_does_not_verify(store: Store) -> None:
    with store.log() as audit_log:
        await audit_log.append(make_record(1))
    with store.log(b"another-key-of-thirty-two-bytes!") as other:
        assert other.verify().problem == FORGED_HEAD[store.backend]
        with pytest.raises(StoreUnavailable):
            await other.append(make_record(2))


async def test_close_commits_pending_appends_then_refuses_new_ones(log: Log, store: Store) -> None:
    tasks = [asyncio.create_task(log.append(make_record(i))) for i in range(50)]
    await asyncio.sleep(0)  # let every task enqueue its record
    await log.aclose()
    await asyncio.gather(*tasks)
    with closing(store.reader()) as reader:
        assert seqs_of(reader.query(AuditFilter())) == list(range(1, 51))
        assert reader.verify().ok
    with pytest.raises(StoreUnavailable):
        await log.append(make_record(99))


def seqs_of(stored: Any) -> list[int]:
    return [s.seq for s in stored]


def test_an_empty_store_verifies_and_answers_nothing(store: Store) -> None:
    with closing(store.reader()) as reader:
        assert reader.verify() == ChainReport(ok=True, records=0)
        assert list(reader.query(AuditFilter())) == [] and reader.issued_counts(0) == {}
        assert list(reader.export()) == [] and reader.used_grants(0) is None
    with store.log() as audit_log:
        assert audit_log.verify() == ChainReport(ok=True, records=0)


def test_short_key_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        store.log(b"short")


async def test_log_signs_only_with_a_signer_and_only_after_commit(
    store: Store, tmp_path: Path
) -> None:
    from deputy.store.key_files import FileKeyStore
    from deputy.tokens.key_ring import KeyRing
    from deputy.tokens.mint import TokenSigner

    with store.log() as unsigned, pytest.raises(ValueError, match="no signer"):
        await unsigned.append(make_record(1), [{"jti": "x"}])
    ring = KeyRing(FileKeyStore(tmp_path / "keys"), FakeClock(T0), "ES256")
    ring.load()
    with store.log(signer=TokenSigner(ring)) as signed:
        [token] = await signed.append(make_record(2), [{"jti": "jti-2"}])
        assert token.count(".") == 2 and decisions(signed) == ["dec-2"]
        # Not committed (a duplicate): nothing is signed.
        with pytest.raises(StoreUnavailable):
            await signed.append(make_record(2), [{"jti": "jti-2"}])


async def test_revocations_are_read_back_in_order_until_they_expire(store: Store) -> None:
    with store.log() as audit_log:
        await audit_log.append(revocation_record(1, "exec-a"))
        await audit_log.append(make_record(2))
        await audit_log.append(revocation_record(3, "exec-b"))
    with closing(store.reader()) as reader:
        found = await reader.revocations_after(0, T0)
        assert [(r.value, r.id) for r in found] == [("exec-a", 1), ("exec-b", 2)]
        assert [r.value for r in await reader.revocations_after(1, T0)] == ["exec-b"]
        assert await reader.revocations_after(0, T0 + 2 + 86_400) == [
            r for r in found if r.value == "exec-b"
        ]
        entry = await reader.credential("jti-2")
        assert entry is not None and entry.user_id == "user-2" and entry.execution_id == "exec-2"
        assert entry.audience == "https://api.github.com" and entry.workflow == "code-review"
        assert await reader.credential("nope") is None
        live = await reader.live("execution_id", "exec-2", T0)
        assert (live.credentials, live.users, live.latest_expiry) == (1, 1, int(T0) + 2 + 300)
        live = await reader.live("jti", "jti-2", T0 + 2 + 300)
        assert (live.credentials, live.users, live.latest_expiry) == (0, 0, None)
        with pytest.raises(ValueError, match="unknown selector"):
            await reader.live("body", "x", T0)


async def test_uses_are_read_back_per_credential_in_time_order(store: Store) -> None:
    with store.log() as audit_log:
        await audit_log.append(make_record(1))
        await audit_log.append(usage_record(2, ["jti-1", "jti-1"]))
        await audit_log.append(usage_record(3, ["jti-1"]))
    with closing(store.reader()) as reader:
        found = reader.uses_of(["jti-1", "nope"])
        assert found["nope"] == [] and reader.uses_of([]) == {}
        assert [(u["time"], u["operation"], u["seq"]) for u in found["jti-1"]] == [
            (T0 + 2, "GET /repos/0", 2),
            (T0 + 2.1, "GET /repos/1", 2),
            (T0 + 3, "GET /repos/0", 3),
        ]
        assert {u["reported_by"] for u in found["jti-1"]} == {"client:crm-api"}
        assert reader.used_grants(T0) == {("code-review", "github")}
        assert reader.used_grants(T0 + 2.5) == set()  # used, but of a credential issued before
        assert reader.used_grants(T0 + 4) is None  # no use reported since
        entry = await reader.credential("jti-1")
        assert entry is not None and entry.audience == "https://api.github.com"


async def test_decision_and_committed_look_up_one_record(log: Log) -> None:
    await log.append(make_record(1))
    stored = log.reader.decision("dec-1")
    assert stored is not None and stored.seq == 1 and stored.record["request_id"] == "req-1"
    assert log.reader.decision("dec-2") is None
    assert log.reader.committed("dec-1") and not log.reader.committed("dec-2")


async def test_pages_run_newest_first_below_a_cursor(log: Log) -> None:
    for i in range(1, 7):
        await log.append(make_record(i, time=T0 + i))
    assert seqs(log, newest_first=True, limit=2) == [6, 5]
    assert seqs(log, newest_first=True, before_seq=5, limit=2) == [4, 3]
    assert seqs(log, before_seq=3) == [1, 2]
    assert seqs(log, since=T0 + 2, newest_first=True, before_seq=4) == [3, 2]


async def test_since_finds_a_late_record_by_its_time(log: Log) -> None:
    for i in range(1, 7):
        await log.append(make_record(i, time=T0 + (2 if i == 6 else i)))
    assert seqs(log, since=T0 + 2) == [2, 3, 4, 5, 6]
    assert seqs(log, since=T0 + 2, limit=2) == [2, 3]
    assert seqs(log, since=T0 + 7) == []
    assert seqs(log, user_id="user-2", since=T0 + 2) == [2, 6]


async def test_export_streams_a_time_window_in_seq_order(log: Log) -> None:
    await append_all(log, [make_record(i) for i in range(1, 1201)])
    everything = list(log.reader.export())
    assert [s.seq for s in everything] == list(range(1, 1201))
    queried = list(log.query(AuditFilter(limit=2000)))
    # The same records; an export also names each record's chain where the store has several.
    assert [(s.seq, s.record, s.prev_hash, s.hash) for s in everything] == [
        (s.seq, s.record, s.prev_hash, s.hash) for s in queried
    ]
    window = [s.record["decision_id"] for s in log.reader.export(T0 + 10, T0 + 13)]
    assert window == ["dec-10", "dec-11", "dec-12"]
    assert list(log.reader.export(since=T0 + 1200)) == [everything[-1]]
    assert list(log.reader.export(until=T0 + 2)) == [everything[0]]


async def test_the_oldest_live_issue_bounds_the_ledger_window(log: Log) -> None:
    for i in (1, 2, 3):
        await log.append(make_record(i))
    reader = log.reader
    # Record i issues one credential at T0 + i that expires at T0 + i + 300.
    assert reader.oldest_live_issue(T0) == T0 + 1
    assert reader.oldest_live_issue(T0 + 301.5) == T0 + 2
    assert reader.oldest_live_issue(T0 + 303) is None
