"""The hash chain detects every edit, deletion, insertion, reordering and truncation."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from deputy.audit.chain import (
    GENESIS_HASH,
    LOGGED_AT,
    ChainHead,
    canonical_json,
    link_hash,
    record_body,
    verify_chain,
)
from deputy.audit.record import DecisionRecord, IssuedCredential, StoredRecord

KEY = b"k" * 32


def build(n: int, key: bytes = KEY) -> tuple[list[StoredRecord], ChainHead | None]:
    records: list[StoredRecord] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        body = {"decision_id": f"d{seq}", "user_id": f"u{seq}", "outcome": "allow"}
        hash_ = link_hash(seq, prev, canonical_json(body))
        records.append(StoredRecord(seq=seq, record=body, prev_hash=prev, hash=hash_))
        prev = hash_
    head = ChainHead.sign(key, n, prev) if n else None
    return records, head


def relink(records: list[StoredRecord], start: int) -> list[StoredRecord]:
    """What an attacker without the head key can do: recompute every hash from ``start`` on."""
    out = list(records[: start - 1])
    prev = out[-1].hash if out else GENESIS_HASH
    for stored in records[start - 1 :]:
        hash_ = link_hash(stored.seq, prev, canonical_json(stored.record))
        out.append(dataclasses.replace(stored, prev_hash=prev, hash=hash_))
        prev = hash_
    return out


def test_intact_chain_verifies() -> None:
    records, head = build(5)
    report = verify_chain(records, head, KEY)
    assert report.ok and report.records == 5
    assert report.first_bad_seq is None and report.problem is None


def test_empty_log_without_head_is_ok() -> None:
    assert verify_chain([], None, KEY).ok


def test_empty_log_with_a_head_is_truncated() -> None:
    _, head = build(3)
    report = verify_chain([], head, KEY)
    assert not report.ok and report.first_bad_seq == 1
    assert "head names record 3" in (report.problem or "")


def edit_field(records: list[StoredRecord]) -> list[StoredRecord]:
    records[2] = dataclasses.replace(records[2], record={**records[2].record, "user_id": "eve"})
    return records


def delete_middle(records: list[StoredRecord]) -> list[StoredRecord]:
    del records[2]
    return records


def insert_forged_with_guessed_hash(records: list[StoredRecord]) -> list[StoredRecord]:
    forged = StoredRecord(
        seq=3, record={"decision_id": "x"}, prev_hash=records[1].hash, hash="f" * 64
    )
    return [*records[:2], forged, *records[2:]]


def insert_forged_with_valid_link(records: list[StoredRecord]) -> list[StoredRecord]:
    body: dict[str, Any] = {"decision_id": "forged"}
    hash_ = link_hash(3, records[1].hash, canonical_json(body))
    forged = StoredRecord(seq=3, record=body, prev_hash=records[1].hash, hash=hash_)
    return [*records[:2], forged, *records[2:]]


def swap_positions(records: list[StoredRecord]) -> list[StoredRecord]:
    records[2], records[3] = records[3], records[2]
    return records


def swap_contents(records: list[StoredRecord]) -> list[StoredRecord]:
    third, fourth = records[2], records[3]
    records[2] = dataclasses.replace(fourth, seq=3)
    records[3] = dataclasses.replace(third, seq=4)
    return records


def edit_and_relink(records: list[StoredRecord]) -> list[StoredRecord]:
    return relink(edit_field(records), 3)


def change_prev_hash(records: list[StoredRecord]) -> list[StoredRecord]:
    records[1] = dataclasses.replace(records[1], prev_hash="1" * 64)
    return records


@pytest.mark.parametrize(
    ("tamper", "first_bad", "words"),
    [
        (edit_field, 3, "edited"),
        (delete_middle, 3, "missing"),
        (insert_forged_with_guessed_hash, 3, "edited"),
        (insert_forged_with_valid_link, 4, "appears again"),
        (swap_positions, 3, "out of order"),
        (swap_contents, 3, "edited"),
        (change_prev_hash, 2, "edited"),
        (edit_and_relink, 5, "does not match the authenticated head"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_tampering_names_the_first_bad_record(tamper: Any, first_bad: int, words: str) -> None:
    records, head = build(5)
    report = verify_chain(tamper(records), head, KEY)
    assert not report.ok
    assert report.first_bad_seq == first_bad
    assert words in (report.problem or "")


def test_relinked_records_that_do_not_link_are_caught_at_the_seam() -> None:
    records, head = build(5)
    records[2] = dataclasses.replace(records[2], prev_hash="2" * 64)
    fixed = relink(records, 4)
    fixed[2] = dataclasses.replace(
        fixed[2], hash=link_hash(3, "2" * 64, canonical_json(fixed[2].record))
    )
    report = verify_chain(fixed, head, KEY)
    assert (report.first_bad_seq, report.ok) == (3, False)
    assert "does not link to record 2" in (report.problem or "")


def test_truncated_tail_is_caught_by_the_head() -> None:
    records, head = build(5)
    report = verify_chain(records[:3], head, KEY)
    assert not report.ok and report.first_bad_seq == 4
    assert "ends at record 3" in (report.problem or "")


def test_missing_head_with_records_is_truncation() -> None:
    records, _ = build(5)
    report = verify_chain(records, None, KEY)
    assert not report.ok and report.first_bad_seq == 6
    assert "head is missing" in (report.problem or "")


def test_head_forged_without_the_key_is_caught() -> None:
    records, _ = build(5)
    forged = ChainHead.sign(b"x" * 32, 3, records[2].hash)
    report = verify_chain(records[:3], forged, KEY)
    assert not report.ok and report.first_bad_seq == 4
    assert "forged" in (report.problem or "")


def test_head_with_a_garbage_mac_is_forged() -> None:
    records, head = build(2)
    assert head is not None
    bad = ChainHead(seq=head.seq, hash=head.hash, mac="zz\u00e9")
    assert not bad.is_authentic(KEY)
    assert verify_chain(records, bad, KEY).first_bad_seq == 3


def test_records_beyond_the_head_are_caught() -> None:
    records, _ = build(5)
    stale = ChainHead.sign(KEY, 3, records[2].hash)
    report = verify_chain(records, stale, KEY)
    assert not report.ok and report.first_bad_seq == 4
    assert "beyond the authenticated head" in (report.problem or "")


def test_head_authenticity_depends_on_the_key() -> None:
    head = ChainHead.sign(KEY, 7, "a" * 64)
    assert head.is_authentic(KEY)
    assert not head.is_authentic(b"j" * 32)
    assert not dataclasses.replace(head, seq=8).is_authentic(KEY)


def test_link_hash_encoding_is_unambiguous() -> None:
    base = link_hash(1, "ab", b"c")
    assert base != link_hash(1, "a", b"bc")
    assert base != link_hash(2, "ab", b"c")
    assert link_hash(1, GENESIS_HASH, b"{}") == link_hash(1, GENESIS_HASH, b"{}")
    assert len(base) == 64 and int(base, 16) >= 0


def test_canonical_json_is_sorted_compact_ascii() -> None:
    assert canonical_json({"b": 1, "a": [1, 2], "c": None}) == b'{"a":[1,2],"b":1,"c":null}'


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_canonical_json_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"time": value})


HOSTILE = 'line1\nline2\r\t\x00\x1b[31m\u2028\u2029 "quoted" \\ caf\u00e9 \U0001f916 \ud800'


def test_control_characters_and_unicode_never_break_the_format() -> None:
    body = canonical_json({"user_id": HOSTILE, HOSTILE: [HOSTILE]})
    text = body.decode("ascii")
    assert all(0x20 <= ord(ch) < 0x7F for ch in text)
    assert json.loads(body) == {"user_id": HOSTILE, HOSTILE: [HOSTILE]}


def test_hostile_fields_round_trip_and_verify() -> None:
    record = {"decision_id": "d1", "user_id": HOSTILE, "reasons": [{"message": HOSTILE}]}
    stored_body = canonical_json(record)
    hash_ = link_hash(1, GENESIS_HASH, stored_body)
    restored = json.loads(stored_body)
    assert restored == record
    stored = StoredRecord(seq=1, record=restored, prev_hash=GENESIS_HASH, hash=hash_)
    assert verify_chain([stored], ChainHead.sign(KEY, 1, hash_), KEY).ok


def test_unserialisable_record_is_reported_not_raised() -> None:
    records, head = build(3)
    records[1] = dataclasses.replace(records[1], record={"time": float("nan")})
    report = verify_chain(records, head, KEY)
    assert report.first_bad_seq == 2 and "canonically" in (report.problem or "")


def test_record_body_is_the_canonical_record_dict_plus_logged_at() -> None:
    record = DecisionRecord(
        decision_id="d1",
        time=1.5,
        endpoint="/issue",
        outcome="allow",
        status=200,
        request_id="r1",
        client_address="10.0.0.1",
        error=None,
        workload_id="spiffe://example.org/agent",
        workload_issuer="spiffe://example.org",
        agent_instance="i1",
        user_id=HOSTILE,
        user_issuer="https://idp",
        delegation="token",
        tier="gold",
        workflow="triage",
        execution_id="e1",
        tools_requested={"github": ["repo:read", "issues:write"]},
        ttl_seconds=300,
        credentials=(IssuedCredential("j1", "github", "https://api", "repo:read", "code", 9),),
        reasons=({"rule": "tier", "message": HOSTILE},),
        policy_version="v7",
    )
    expected = canonical_json({**record.as_dict(), LOGGED_AT: 2.5})
    assert record_body(record, 2.5) == expected
    assert json.loads(record_body(record, 2.5))[LOGGED_AT] == 2.5


def test_record_tuple_round_trip() -> None:
    from deputy.audit.record import DecisionRecord, IssuedCredential

    record = DecisionRecord(
        decision_id="d",
        time=1.0,
        endpoint="/issue",
        outcome="allow",
        status=200,
        request_id="r",
        client_address=None,
        tools_requested={"t": ["s"]},
        credentials=(IssuedCredential("j", "t", "a", "s", "c", 5),),
        reasons=({"rule": "x", "message": "y"},),
    )
    assert DecisionRecord.from_tuple(record.as_tuple()) == record
