"""The decision records the audit store tests append, whichever store they test, and how
they read them back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, Protocol

from deputy.audit.chain import GENESIS_HASH, canonical_json, link_hash
from deputy.audit.log import AuditFilter
from deputy.audit.record import DecisionRecord, IssuedCredential, StoredRecord
from deputy.store.postgres.chains import record_link

KEY = b"audit-head-key-for-tests-32bytes!"
IDP = "https://idp.example"
T0 = 1_800_000_000.0
HOSTILE = 'a\nb\r\x00\x1b[2J\u2028 "q" \\ caf\u00e9 \U0001f916 \'); DROP TABLE records;--'


def make_record(i: int, **overrides: Any) -> DecisionRecord:
    fields: dict[str, Any] = {
        "decision_id": f"dec-{i}",
        "time": T0 + i,
        "endpoint": "/issue",
        "outcome": "allow",
        "status": 200,
        "request_id": f"req-{i}",
        "client_address": "127.0.0.1",
        "workload_id": f"spiffe://example.org/agent/{i % 2}",
        "agent_instance": f"inst-{i % 3}",
        "user_id": f"user-{i % 4}",
        "user_issuer": IDP,
        "execution_id": f"exec-{i % 5}",
        "credentials": (
            IssuedCredential(
                jti=f"jti-{i}",
                tool="github",
                audience="https://api.github.com",
                scope="repo:read",
                category="code",
                expires_at=int(T0) + i + 300,
            ),
        ),
        "policy_version": "v1",
        "workflow": "code-review",
    }
    fields.update(overrides)
    return DecisionRecord(**fields)


def revocation_record(i: int, value: str) -> DecisionRecord:
    return make_record(
        i,
        outcome="revoke",
        credentials=(),
        requested_by="client:security-team",
        revocation={
            "selector": "execution_id",
            "value": value,
            "issued_before": int(T0) + i,
            "expires_at": int(T0) + i + 86_400,
            "reason": None,
            "live_credentials": 1,
        },
    )


def usage_record(i: int, jtis: list[str]) -> DecisionRecord:
    return make_record(
        i,
        endpoint="/usage",
        outcome="usage",
        credentials=(),
        execution_id=None,
        requested_by="client:crm-api",
        uses=tuple(
            {
                "jti": jti,
                "tool": "github",
                "operation": f"GET /repos/{n}",
                "outcome": 200,
                "time": T0 + i + n / 10,
            }
            for n, jti in enumerate(jtis)
        ),
    )


class Queryable(Protocol):
    """An audit log or reader of any store."""

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]: ...


class Appendable(Protocol):
    """An audit log of any store."""

    async def append(self, record: DecisionRecord) -> tuple[str, ...]: ...


def seqs(audit_log: Queryable, **filters: Any) -> list[int]:
    return [stored.seq for stored in audit_log.query(AuditFilter(**filters))]


def decisions(audit_log: Queryable, **filters: Any) -> list[str]:
    return [stored.record["decision_id"] for stored in audit_log.query(AuditFilter(**filters))]


async def append_all(audit_log: Appendable, records: list[DecisionRecord]) -> None:
    """Append ``records`` concurrently (the log groups them into shared transactions)."""
    await asyncio.gather(*(audit_log.append(r) for r in records))


CHAIN_FIELDS = ("seq", "hash", "prev_hash", "chain", "chain_seq")  # what export adds


def check_lines(lines: list[str]) -> None:
    """What a SIEM can do with the export alone: recompute every link hash, and check each
    record links to the one before it in its chain (one chain on SQLite; one per writer on
    PostgreSQL, where the link also binds the chain and the record's place in it)."""
    last: dict[int | None, tuple[int, str]] = {}
    for line in lines:
        entry = json.loads(line)
        body = canonical_json({k: v for k, v in entry.items() if k not in CHAIN_FIELDS})
        chain = entry.get("chain")
        place, prev = last.get(chain, (0, GENESIS_HASH))
        assert entry["prev_hash"] == prev, f"record {entry['seq']} does not follow {prev}"
        if chain is None:
            assert link_hash(entry["seq"], prev, body) == entry["hash"], entry["seq"]
        else:
            assert entry["chain_seq"] == place + 1, entry["seq"]
            link = record_link(chain, entry["chain_seq"], entry["seq"], prev, body)
            assert link == entry["hash"], entry["seq"]
        last[chain] = (entry.get("chain_seq", 0), entry["hash"])
    assert last
