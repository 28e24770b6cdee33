"""The PostgreSQL audit log: a chain per writer and the registry of chains, tamper evidence
on its tables. What every audit store does is in ``tests/stores/test_audit_log.py``, which
runs on this store too. Global ids (``seq`` in queries) start at 1 in each fresh database; a
failed batch uses ids up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deputy.audit.chain import canonical_json
from deputy.audit.log import AuditFilter, ChainReport
from deputy.audit.record import DecisionRecord
from deputy.clock import FakeClock
from deputy.errors import StoreUnavailable
from deputy.store.postgres import PostgresAuditLog, PostgresAuditReader, PostgresAuditWriter
from deputy.store.postgres.chains import record_link
from tests.audit_records import (
    KEY,
    T0,
    append_all,
    make_record,
    revocation_record,
    seqs,
    usage_record,
)
from tests.postgres.conftest import fetch, raw


@pytest.fixture
def log(pg_url: str) -> Iterator[PostgresAuditLog]:
    with PostgresAuditLog(pg_url, KEY, clock=FakeClock(T0)) as audit_log:
        yield audit_log


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


async def test_one_writers_appends_form_one_chain_numbered_from_1(
    log: PostgresAuditLog, pg_url: str
) -> None:
    await append_all(log, [make_record(i) for i in range(100)])
    assert fetch(
        pg_url, "SELECT chain, min(chain_seq), max(chain_seq) FROM records GROUP BY 1"
    ) == [(log.chain, 1, 100)]
    assert log.verify().ok


async def test_a_registered_chain_without_records_verifies(pg_url: str) -> None:
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.start()
        assert audit_log.verify() == ChainReport(ok=True, records=0)
    with PostgresAuditReader(pg_url, KEY) as reader:
        assert reader.verify() == ChainReport(ok=True, records=0)


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


async def test_a_log_with_another_key_does_not_start(pg_url: str) -> None:
    with PostgresAuditLog(pg_url, KEY) as audit_log:
        await audit_log.append(make_record(1))
    other = PostgresAuditLog(pg_url, b"another-key-of-thirty-two-bytes!")
    with other, pytest.raises(StoreUnavailable):
        await other.start()


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
