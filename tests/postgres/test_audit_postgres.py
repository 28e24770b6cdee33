"""The PostgreSQL audit log: group commit, chains, tamper evidence, ledger, revocations, uses.

The essence of ``tests/integration/test_audit_sqlite.py``, against a real PostgreSQL. Global
ids (``seq`` in queries) start at 1 in each fresh database; a failed batch uses ids up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deputy.audit.chain import canonical_json
from deputy.audit.log import AuditFilter, ChainReport
from deputy.audit.record import DecisionRecord, IssuedCredential
from deputy.clock import FakeClock
from deputy.errors import StoreUnavailable
from deputy.store.postgres import PostgresAuditLog, PostgresAuditReader, PostgresAuditWriter
from deputy.store.postgres.chains import record_link
from tests.audit_records import (
    HOSTILE,
    IDP,
    KEY,
    T0,
    make_record,
    revocation_record,
    usage_record,
)
from tests.postgres.conftest import fetch, raw


@pytest.fixture
def log(pg_url: str) -> Iterator[PostgresAuditLog]:
    with PostgresAuditLog(pg_url, KEY, clock=FakeClock(T0)) as audit_log:
        yield audit_log


def seqs(audit_log: PostgresAuditLog, **filters: Any) -> list[int]:
    return [stored.seq for stored in audit_log.query(AuditFilter(**filters))]


def decisions(audit_log: PostgresAuditLog, **filters: Any) -> list[str]:
    return [stored.record["decision_id"] for stored in audit_log.query(AuditFilter(**filters))]


async def append_all(audit_log: PostgresAuditLog, records: list[DecisionRecord]) -> None:
    await asyncio.gather(*(audit_log.append(r) for r in records))


async def verify_after_tampering(
    url: str, records: list[DecisionRecord], statements: list[str]
) -> ChainReport:
    """Append ``records`` one by one (a verified chain), run raw SQL, verify again."""
    with PostgresAuditLog(url, KEY) as audit_log:
        for record in records:
            await audit_log.append(record)
        assert audit_log.verify().ok
    raw(url, *statements)
    with PostgresAuditReader(url, KEY) as reader:
        return reader.verify()


async def test_concurrent_appends_form_one_contiguous_chain(
    log: PostgresAuditLog, pg_url: str
) -> None:
    await append_all(log, [make_record(i) for i in range(500)])
    assert seqs(log, limit=1000) == list(range(1, 501))
    report = log.verify()
    assert report.ok and report.records == 500
    assert 1 <= log.commits < 250, "appends were not grouped into shared transactions"
    assert fetch(
        pg_url, "SELECT chain, min(chain_seq), max(chain_seq) FROM records GROUP BY 1"
    ) == [(log.chain, 1, 500)]


def test_appends_from_several_event_loops_keep_one_chain(log: PostgresAuditLog) -> None:
    def worker(base: int) -> None:
        asyncio.run(append_all(log, [make_record(base + i) for i in range(100)]))

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seqs(log, limit=1000)) == 400
    assert log.verify().ok


async def test_stored_record_is_the_decision_with_the_clock_time(pg_url: str) -> None:
    clock = FakeClock(T0)
    with PostgresAuditLog(pg_url, KEY, clock=clock) as audit_log:
        await audit_log.append(make_record(1))
        clock.advance(5)
        await audit_log.append(make_record(2))
        first, second = audit_log.query(AuditFilter())
    assert first.record == {**make_record(1).as_dict(), "logged_at": T0}
    assert second.record["logged_at"] == T0 + 5
    assert second.prev_hash == first.hash


async def test_hostile_text_round_trips_and_verifies(log: PostgresAuditLog, pg_url: str) -> None:
    """NUL, lone surrogates and backslashes cannot be PostgreSQL text; they are escaped."""
    odd = HOSTILE + "\ud800 \\0 \\\\ \\u0041"
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
    ((body,),) = fetch(pg_url, "SELECT body FROM records WHERE id = 1")
    assert isinstance(body, str) and body.isascii() and "\n" not in body and "\r" not in body


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["UPDATE records SET body = replace(body, 'req-4', 'req-X') WHERE id = 4"], 4, "edited"),
        (["UPDATE records SET body = body || ' ' WHERE id = 2"], 2, "edited"),
        (["UPDATE records SET body = replace(body, 'req-2', 'réq-2') WHERE id = 2"], 2, "edited"),
        (["UPDATE records SET hash = '" + "0" * 64 + "' WHERE id = 2"], 2, "edited"),
        (["DELETE FROM records WHERE id = 5"], 6, "chain 1 record 5 is missing"),
        (["DELETE FROM records WHERE id >= 8"], None, "ends at chain record 7"),
        (["DELETE FROM records"], None, "ends at chain record 0"),
        (["DELETE FROM chain_heads"], None, "head is missing"),
        (["UPDATE chain_heads SET mac = 'deadbeef'"], None, "forged"),
        (
            [
                "DELETE FROM records WHERE id > 7",
                "UPDATE chain_heads SET seq = 7, hash = (SELECT hash FROM records WHERE id = 7)",
            ],
            None,
            "forged",
        ),
        (
            [
                "UPDATE records SET chain_seq = -3 WHERE id = 3",
                "UPDATE records SET chain_seq = 3 WHERE id = 4",
                "UPDATE records SET chain_seq = 4 WHERE id = 3",
            ],
            3,
            "out of order",
        ),
        (
            [
                "UPDATE records SET id = -3 WHERE id = 3",
                "UPDATE records SET id = 3 WHERE id = 4",
                "UPDATE records SET id = 4 WHERE id = -3",
            ],
            3,
            "out of order",
        ),
        (
            # Renumbered in the global order (its chain order kept): the id is hashed too.
            ["UPDATE records SET id = 99 WHERE id = 10"],
            99,
            "edited",
        ),
        (
            [
                "INSERT INTO records SELECT 11, chain, 11, 'forged', time, outcome, execution_id,"
                " agent_instance, workload_id, user_id, body, hash, hash FROM records"
                " WHERE id = 10"
            ],
            11,
            "edited",
        ),
        (["UPDATE records SET chain = 2 WHERE id = 6"], 6, "never registered"),
        (["UPDATE records SET user_id = 'someone-else' WHERE id = 6"], 6, "column user_id"),
        (["UPDATE records SET time = 0 WHERE id = 9"], 9, "column time"),
        (["UPDATE records SET outcome = 'deny' WHERE id = 9"], 9, "column outcome"),
        (["DELETE FROM credentials WHERE record_id = 6"], 6, "credential rows of record 6"),
        (["UPDATE credentials SET category = 'none' WHERE record_id = 2"], 2, "credential rows"),
        (["UPDATE credentials SET record_id = 99 WHERE record_id = 10"], 10, "credential rows"),
        (["UPDATE credentials SET scope = 'repo:admin' WHERE record_id = 3"], 3, "credential"),
        (["UPDATE credentials SET workflow = 'other' WHERE record_id = 4"], 4, "credential"),
        (
            ["UPDATE credentials SET expires_at = expires_at + 1 WHERE record_id = 4"],
            4,
            "credential",
        ),
    ],
    ids=[
        "edit-body",
        "append-to-body",
        "non-ascii-body",
        "edit-hash",
        "delete-middle",
        "delete-tail-keep-head",
        "delete-all-records",
        "delete-head",
        "garbage-head-mac",
        "truncate-and-move-head",
        "swap-two-chain-seqs",
        "swap-two-ids",
        "renumber-global-id",
        "insert-after-head",
        "move-to-unregistered-chain",
        "edit-index-column",
        "edit-time-column",
        "edit-outcome-column",
        "delete-credential",
        "edit-credential",
        "orphan-credential",
        "edit-credential-scope",
        "edit-credential-workflow",
        "edit-credential-expiry",
    ],
)
async def test_raw_tampering_is_named(
    pg_url: str, statements: list[str], first_bad: int | None, words: str
) -> None:
    report = await verify_after_tampering(
        pg_url, [make_record(i) for i in range(1, 11)], statements
    )
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or ""), report.problem


@pytest.mark.parametrize(
    ("statements", "words"),
    [
        # The whole chain gone: its records and head. The registry still names it.
        (["DELETE FROM records", "DELETE FROM chain_heads"], "chain 1 head is missing"),
        # ... and its registry entries too: the registry head still counts them.
        (
            [
                "DELETE FROM records",
                "DELETE FROM chain_heads",
                "DELETE FROM chain_anchors",
                "DELETE FROM chain_registry",
            ],
            "chain registry ends at entry 0 but its head names entry 2",
        ),
        # An empty registry head, over a log that still has records: they belong to no chain.
        (
            [
                "DELETE FROM chain_anchors",
                "DELETE FROM chain_registry",
                "UPDATE chain_registry_head SET seq = NULL, hash = NULL, mac = NULL",
            ],
            "never registered",
        ),
        (["UPDATE chain_registry_head SET mac = 'x'"], "registry head signature does not verify"),
        (["DELETE FROM chain_registry_head"], "chain registry head is missing"),
        (["DELETE FROM chain_registry WHERE seq = 2"], "entries were cut"),
        (["DELETE FROM chain_registry WHERE seq = 1"], "entry 1 is missing"),
        (
            ["UPDATE chain_registry SET body = replace(body, '\"pid\"', '\"pId\"') WHERE seq = 1"],
            "chain registry entry 1 does not match its hash",
        ),
        (["UPDATE chain_registry SET time = 0 WHERE seq = 2"], "columns do not match"),
        (["UPDATE chain_anchors SET seq = 9"], "anchor rows of chain registry entry 2"),
        (["DELETE FROM chain_anchors"], "anchor rows of chain registry entry 2"),
        (["INSERT INTO chain_anchors VALUES (7, 1, 3, 'x')"], "belongs to no chain registry"),
        (
            ["INSERT INTO chain_heads SELECT 5, seq, hash, mac FROM chain_heads"],
            "chain 5 has a head but was never registered",
        ),
    ],
    ids=[
        "delete-a-chain",
        "delete-a-chain-and-its-registration",
        "empty-the-registry",
        "forge-registry-head",
        "delete-registry-head",
        "cut-registry-tail",
        "delete-registration",
        "edit-registration",
        "edit-registry-column",
        "edit-anchor",
        "delete-anchors",
        "orphan-anchor",
        "extra-head",
    ],
)
async def test_registry_tampering_is_named(pg_url: str, statements: list[str], words: str) -> None:
    """One writer registered chain 1 (registry entry 1) and retired it at close (entry 2)."""
    report = await verify_after_tampering(pg_url, [make_record(i) for i in range(1, 6)], statements)
    assert not report.ok
    assert words in (report.problem or ""), report.problem


async def test_a_retired_chain_cannot_grow(pg_url: str) -> None:
    """A record appended (with the key) after its chain retired is named: retirement is final."""
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.append(make_record(1))
        chain = audit_log.chain
    writer = PostgresAuditWriter(pg_url, KEY)
    try:
        writer.chain = chain  # as if someone with the key wrote on to the retired chain
        assert writer.write([make_record(2)]) == [None]
    finally:
        writer.close()
    with PostgresAuditReader(pg_url, KEY) as reader:
        report = reader.verify()
    assert report.problem == (
        f"chain {chain} was retired at chain record 1 but now ends at chain record 2"
    )


async def test_a_closed_reader_refuses_instead_of_opening_a_new_pool(
    log: PostgresAuditLog,
) -> None:
    await log.append(make_record(1))
    await log.aclose()  # closes its reader
    with pytest.raises(StoreUnavailable, match="the reader is closed"):
        list(log.reader.query(AuditFilter()))
    with pytest.raises(StoreUnavailable, match="the reader is closed"):
        await log.reader.credential("jti-1")
    assert log.reader._engine.pool.checkedin() == 0  # no connection left for nobody to close


async def test_well_linked_record_after_the_head_is_caught(
    log: PostgresAuditLog, pg_url: str
) -> None:
    await log.append(make_record(1))
    ((chain, prev),) = fetch(pg_url, "SELECT chain, hash FROM records WHERE id = 1")
    assert isinstance(chain, int) and isinstance(prev, str)
    body = canonical_json({"decision_id": "forged", "time": 0, "outcome": "allow"})
    hash_ = record_link(chain, 2, 2, prev, body)
    values = f"2, {chain}, 2, 'forged', 0, 'allow', '{body.decode()}', '{prev}', '{hash_}'"
    columns = "id, chain, chain_seq, decision_id, time, outcome, body, prev_hash, hash"
    raw(pg_url, f"INSERT INTO records ({columns}) VALUES ({values})")  # noqa: S608
    report = log.verify()
    assert report.first_bad_seq == 2
    assert report.problem == f"record 2 (chain {chain} record 2) lies beyond the authenticated head"
    with pytest.raises(StoreUnavailable):
        await log.append(make_record(3))


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM chain_heads", "UPDATE chain_heads SET mac = 'deadbeef'"],
    ids=["missing-head", "forged-head"],
)
async def test_writer_refuses_to_extend_a_chain_with_a_bad_head(
    log: PostgresAuditLog, pg_url: str, statement: str
) -> None:
    await log.append(make_record(1))
    raw(pg_url, statement)
    with pytest.raises(StoreUnavailable):
        await log.append(make_record(2))
    report = log.verify()
    assert not report.ok and "head" in (report.problem or "")


async def test_duplicate_decision_id_fails_alone(log: PostgresAuditLog) -> None:
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


async def test_duplicate_jti_fails_alone(log: PostgresAuditLog) -> None:
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
async def test_unwritable_record_fails_alone(log: PostgresAuditLog, bad: dict[str, Any]) -> None:
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
async def test_query_filters(
    log: PostgresAuditLog, filters: dict[str, Any], expected: list[int]
) -> None:
    for i in range(1, 13):
        await log.append(make_record(i))
    assert seqs(log, **filters) == expected
    assert decisions(log, **filters) == [f"dec-{i}" for i in expected]


async def test_issued_counts_per_user_and_category(log: PostgresAuditLog) -> None:
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


async def test_reopening_starts_a_new_chain_and_both_verify(pg_url: str) -> None:
    with PostgresAuditLog(pg_url, KEY, clock=FakeClock(T0)) as first:
        await append_all(first, [make_record(i) for i in range(3)])
    with PostgresAuditLog(pg_url, KEY) as second:
        await append_all(second, [make_record(i) for i in range(3, 5)])
        assert second.chain is not None and second.chain != first.chain
        assert seqs(second) == [1, 2, 3, 4, 5]
        assert second.verify().ok
    events = fetch(pg_url, "SELECT seq, event, chain FROM chain_registry ORDER BY seq")
    assert events == [
        (1, "register", 1),
        (2, "retire", 1),
        (3, "register", 3),
        (4, "retire", 3),
    ]


async def test_a_different_key_does_not_verify(pg_url: str) -> None:
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.append(make_record(1))
    other_key = b"another-key-of-thirty-two-bytes!"
    with PostgresAuditLog(pg_url, other_key) as other:
        assert other.verify().problem == (
            "chain registry head signature does not verify: the head was forged"
        )
        with pytest.raises(StoreUnavailable):
            await other.append(make_record(2))
        with pytest.raises(StoreUnavailable):
            await other.start()


async def test_close_commits_pending_appends_then_refuses_new_ones(
    log: PostgresAuditLog, pg_url: str
) -> None:
    tasks = [asyncio.create_task(log.append(make_record(i))) for i in range(50)]
    await asyncio.sleep(0)  # let every task enqueue its record
    await log.aclose()
    await asyncio.gather(*tasks)
    with PostgresAuditReader(pg_url, KEY) as reader:
        assert len(list(reader.query(AuditFilter()))) == 50
        assert reader.verify().ok
    with pytest.raises(StoreUnavailable):
        await log.append(make_record(99))


async def test_empty_log_verifies(pg_url: str) -> None:
    with PostgresAuditReader(pg_url, KEY) as reader:
        assert reader.verify() == ChainReport(ok=True, records=0)
        assert list(reader.query(AuditFilter())) == [] and reader.issued_counts(0) == {}
        assert list(reader.export()) == [] and reader.used_grants(0) is None
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.start()
        assert audit_log.verify() == ChainReport(ok=True, records=0)
    with PostgresAuditReader(pg_url, KEY) as reader:
        assert reader.verify() == ChainReport(ok=True, records=0)


def test_short_key_is_refused(pg_url: str) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PostgresAuditLog(pg_url, b"short")


async def test_log_signs_only_with_a_signer_and_only_after_commit(
    pg_url: str, tmp_path: Path
) -> None:
    from deputy.store.key_files import FileKeyStore
    from deputy.tokens.key_ring import KeyRing
    from deputy.tokens.mint import TokenSigner

    with PostgresAuditLog(pg_url, KEY) as unsigned, pytest.raises(ValueError, match="no signer"):
        await unsigned.append(make_record(1), [{"jti": "x"}])
    ring = KeyRing(FileKeyStore(tmp_path / "keys"), FakeClock(T0), "ES256")
    ring.load()
    with PostgresAuditLog(pg_url, KEY, signer=TokenSigner(ring)) as signed:
        [token] = await signed.append(make_record(2), [{"jti": "jti-2"}])
        assert token.count(".") == 2 and decisions(signed) == ["dec-2"]
        # Not committed (a duplicate): nothing is signed.
        with pytest.raises(StoreUnavailable):
            await signed.append(make_record(2), [{"jti": "jti-2"}])


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["DELETE FROM revocations WHERE record_id = 4"], 4, "revocation rows of record 4"),
        (["UPDATE revocations SET value = 'other' WHERE record_id = 4"], 4, "revocation rows"),
        (["UPDATE revocations SET issued_before = 0 WHERE record_id = 6"], 6, "revocation rows"),
        (
            [
                "INSERT INTO revocations (record_id, selector, value, issued_before, expires_at)"
                " VALUES (99, 'user_id', 'x', 1, 2)"
            ],
            None,
            "revocation of user_id belongs to no record",
        ),
    ],
    ids=["deleted", "value-edited", "cut-off-edited", "orphan"],
)
async def test_revocation_rows_are_checked_against_their_records(
    pg_url: str, statements: list[str], first_bad: int | None, words: str
) -> None:
    records = [
        revocation_record(i, f"exec-{i}") if i in (4, 6) else make_record(i) for i in range(1, 8)
    ]
    report = await verify_after_tampering(pg_url, records, statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or ""), report.problem


async def test_revocations_are_read_back_in_order_until_they_expire(pg_url: str) -> None:
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.append(revocation_record(1, "exec-a"))
        await audit_log.append(make_record(2))
        await audit_log.append(revocation_record(3, "exec-b"))
    with PostgresAuditReader(pg_url, KEY) as reader:
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


def tool_record(i: int) -> DecisionRecord:
    """Record ``i`` asks for github and jira and gets a github credential."""
    return make_record(i, tools_requested={"github": ["repo:read"], "jira": ["issues:write"]})


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["DELETE FROM record_tools WHERE record_id = 3 AND tool = 'jira'"], 3, "tool rows"),
        (["DELETE FROM record_tools WHERE record_id = 4"], 4, "tool rows of record 4"),
        (
            ["UPDATE record_tools SET tool = 'gitlab' WHERE record_id = 2 AND tool = 'github'"],
            2,
            "tool rows of record 2",
        ),
        (["UPDATE record_tools SET tool = tool || ' ' WHERE record_id = 5"], 5, "tool rows"),
        (["INSERT INTO record_tools VALUES ('payroll', 4)"], 4, "tool rows of record 4"),
        (
            ["DELETE FROM record_tools WHERE record_id = 3",
             "UPDATE record_tools SET record_id = 3 WHERE record_id = 2"],
            2,
            "tool rows of record 2",
        ),
        (["INSERT INTO record_tools VALUES ('crm', 0)"], 1, "tool crm before record 1"),
        (["INSERT INTO record_tools VALUES ('crm', 99)"], None, "tool crm belongs to no record"),
    ],
    ids=["one-deleted", "all-deleted", "renamed", "padded", "added", "moved", "orphan-before",
         "orphan-after"],
)  # fmt: skip
async def test_tool_rows_are_checked_against_their_records(
    pg_url: str, statements: list[str], first_bad: int | None, words: str
) -> None:
    report = await verify_after_tampering(pg_url, [tool_record(i) for i in range(1, 6)], statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or ""), report.problem


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["DELETE FROM uses WHERE record_id = 3 AND jti = 'jti-2'"], 3, "use rows of record 3"),
        (["UPDATE uses SET outcome = 500 WHERE record_id = 3 AND jti = 'jti-1'"], 3, "use rows"),
        (["UPDATE uses SET operation = 'DELETE /x' WHERE record_id = 5"], 5, "use rows"),
        (["UPDATE uses SET reported_by = 'client:other' WHERE record_id = 5"], 5, "use rows"),
        (["UPDATE uses SET time = time + 1 WHERE record_id = 5"], 5, "use rows"),
        (["UPDATE uses SET record_id = 4 WHERE record_id = 5"], 4, "use rows of record 4"),
        (
            [
                "INSERT INTO uses (record_id, jti, operation, outcome, time, reported_by)"
                " VALUES (99, 'jti-1', 'GET /', 200, 1, 'client:crm-api')"
            ],
            None,
            "use of jti-1 belongs to no record",
        ),
    ],
    ids=["deleted", "outcome-edited", "operation-edited", "reporter-edited", "time-edited", "moved",
         "orphan"],
)  # fmt: skip
async def test_use_rows_are_checked_against_their_records(
    pg_url: str, statements: list[str], first_bad: int | None, words: str
) -> None:
    records = [
        make_record(1),
        make_record(2),
        usage_record(3, ["jti-1", "jti-2"]),
        make_record(4),
        usage_record(5, ["jti-4"]),
    ]
    report = await verify_after_tampering(pg_url, records, statements)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problem
    assert words in (report.problem or ""), report.problem


async def test_uses_are_read_back_per_credential_in_time_order(pg_url: str) -> None:
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.append(make_record(1))
        await audit_log.append(usage_record(2, ["jti-1", "jti-1"]))
        await audit_log.append(usage_record(3, ["jti-1"]))
    with PostgresAuditReader(pg_url, KEY) as reader:
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


async def test_decision_and_committed_look_up_one_record(log: PostgresAuditLog) -> None:
    await log.append(make_record(1))
    stored = log.reader.decision("dec-1")
    assert stored is not None and stored.seq == 1 and stored.record["request_id"] == "req-1"
    assert log.reader.decision("dec-2") is None
    assert log.reader.committed("dec-1") and not log.reader.committed("dec-2")


async def test_pages_run_newest_first_below_a_cursor(log: PostgresAuditLog) -> None:
    for i in range(1, 7):
        await log.append(make_record(i, time=T0 + i))
    assert seqs(log, newest_first=True, limit=2) == [6, 5]
    assert seqs(log, newest_first=True, before_seq=5, limit=2) == [4, 3]
    assert seqs(log, before_seq=3) == [1, 2]
    assert seqs(log, since=T0 + 2, newest_first=True, before_seq=4) == [3, 2]


async def test_since_finds_a_late_record_by_its_time(log: PostgresAuditLog) -> None:
    for i in range(1, 7):
        await log.append(make_record(i, time=T0 + (2 if i == 6 else i)))
    assert seqs(log, since=T0 + 2) == [2, 3, 4, 5, 6]
    assert seqs(log, since=T0 + 2, limit=2) == [2, 3]
    assert seqs(log, since=T0 + 7) == []
    assert seqs(log, user_id="user-2", since=T0 + 2) == [2, 6]


async def test_export_streams_a_time_window_in_id_order(log: PostgresAuditLog) -> None:
    await append_all(log, [make_record(i) for i in range(1, 1201)])
    everything = list(log.reader.export())
    assert [s.seq for s in everything] == list(range(1, 1201))
    assert everything == list(log.query(AuditFilter(limit=2000)))
    window = [s.record["decision_id"] for s in log.reader.export(T0 + 10, T0 + 13)]
    assert window == ["dec-10", "dec-11", "dec-12"]
    assert list(log.reader.export(since=T0 + 1200)) == [everything[-1]]
    assert list(log.reader.export(until=T0 + 2)) == [everything[0]]


async def test_the_oldest_live_issue_bounds_the_ledger_window(log: PostgresAuditLog) -> None:
    for i in (1, 2, 3):
        await log.append(make_record(i))
    reader = log.reader
    # Record i issues one credential at T0 + i that expires at T0 + i + 300.
    assert reader.oldest_live_issue(T0) == T0 + 1
    assert reader.oldest_live_issue(T0 + 301.5) == T0 + 2
    assert reader.oldest_live_issue(T0 + 303) is None
