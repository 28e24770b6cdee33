"""The storage protocol behind the audit trail."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from deputy.audit.record import DecisionRecord, StoredRecord
from deputy.audit.revocation import Revocation


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records a query selects; fields left ``None`` do not filter."""

    execution_id: str | None = None
    agent_instance: str | None = None
    workload_id: str | None = None
    workload_prefix: str | None = None  # records whose workload id starts with it
    user_id: str | None = None
    jti: str | None = None
    tool: str | None = None  # records that requested, were issued or reported a use of it
    outcome: str | None = None  # allow, deny, revoke or usage
    since: float | None = None
    before_seq: int | None = None  # only records with a lower seq (a page cursor)
    newest_first: bool = False
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of verifying the hash chain: ``ok`` or the first bad record and why."""

    ok: bool
    records: int
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An issued credential as its committed record tells it."""

    jti: str
    tool: str
    expires_at: int
    user_issuer: str | None
    user_id: str | None
    tier: str | None
    delegation: str | None
    workflow: str | None
    execution_id: str | None
    workload_id: str | None
    may_act: str | None = None
    audience: str | None = None  # the API the credential was minted for


@dataclass(frozen=True, slots=True)
class LiveCredentials:
    """How many unexpired credentials a selector names, for how many users, until when."""

    credentials: int
    users: int
    latest_expiry: int | None


class Ledger(Protocol):
    """The issued credentials and the revocations made of them."""

    async def credential(self, jti: str) -> LedgerEntry | None: ...

    async def live(self, selector: str, value: str, now: float) -> LiveCredentials: ...

    async def revocations_after(self, last_id: int, now: float) -> list[Revocation]:
        """Unexpired revocations with an id above ``last_id``, in id order."""
        ...


class AuditReader(Protocol):
    """Queries over the decision log."""

    def issued_counts(self, since: float) -> dict[tuple[str, str, str], int]:
        """Credentials issued since ``since`` per (user issuer, user id, tool category)."""
        ...

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]: ...

    def issued_grants(self, since: float) -> list[tuple[str, str, str, int]]:
        """(workflow, tool, scope, credentials) issued since ``since``."""
        ...

    def used_grants(self, since: float) -> set[tuple[str, str]] | None:
        """(workflow, tool) of credentials issued since ``since`` that were reported used
        since then; ``None`` when no use at all was reported in that time."""
        ...

    def export(
        self, since: float | None = None, until: float | None = None
    ) -> Iterator[StoredRecord]:
        """Every record with ``since <= time < until`` in seq order, streamed."""
        ...

    def verify(self) -> ChainReport: ...


class AuditLog(Protocol):
    """Append-only, hash-chained decision log."""

    async def append(
        self, record: DecisionRecord, claims: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[str, ...]:
        """Commit ``record`` durably, then sign the ``claims`` of its credentials.

        Returns the signed tokens, in order, only once the record is committed; raises
        ``StoreUnavailable`` if it is not (``CommitOutcomeUnknown`` if it may yet be).
        Signing after the commit is what makes "no credential without its record" hold.
        """
        ...

    async def aclose(self) -> None:
        """Commit what was appended, then release the store."""
        ...
