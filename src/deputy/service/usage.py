"""Usage reports: resource servers tell the broker each use of a credential, and it is audited.

The audit then joins issuance with use: an execution's decision, the credentials it minted,
and every downstream call made with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deputy.audit.log import AuditLog, Ledger, LedgerEntry
from deputy.audit.record import DecisionRecord
from deputy.clock import Clock
from deputy.errors import InvalidRequest, StoreUnavailable, TemporarilyUnavailable
from deputy.ids import IdSource
from deputy.service.context import RETRY_AFTER_UNAVAILABLE, RequestContext

MAX_USES = 500
MAX_JTI_LENGTH = 256
MAX_OPERATION_LENGTH = 256
USE_FIELDS = frozenset({"jti", "operation", "outcome", "time"})


@dataclass(frozen=True, slots=True)
class Use:
    """One reported use of a credential."""

    jti: str
    operation: str
    outcome: int
    time: float


@dataclass(frozen=True, slots=True)
class Reporter:
    """The authenticated client that reports: what it may report on."""

    name: str
    audiences: frozenset[str]
    admin: bool


@dataclass(frozen=True, slots=True)
class UsageOutcome:
    """How many uses were recorded (in the record ``decision_id``) and how many refused."""

    recorded: int
    refused: int
    decision_id: str | None

    def body(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "refused": self.refused,
            "decision_id": self.decision_id,
        }


def parse_uses(body: object) -> list[Use]:
    """``{"uses": [{"jti", "operation", "outcome", "time"}, ...]}``, strictly."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(k for k in body if k != "uses")
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}")
    entries = body.get("uses")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_USES:
        raise InvalidRequest(f"`uses` must be a list of 1 to {MAX_USES} entries")
    return [_use(index, entry) for index, entry in enumerate(entries)]


def _use(index: int, entry: object) -> Use:
    where = f"`uses[{index}]`"
    if not isinstance(entry, dict):
        raise InvalidRequest(f"{where} must be an object")
    if set(entry) != USE_FIELDS:
        raise InvalidRequest(f"{where} must have exactly: {', '.join(sorted(USE_FIELDS))}")
    jti, operation, outcome, when = (entry[k] for k in ("jti", "operation", "outcome", "time"))
    if not _text(jti, MAX_JTI_LENGTH):
        raise InvalidRequest(f"{where}.jti must be 1 to {MAX_JTI_LENGTH} printable characters")
    if not _text(operation, MAX_OPERATION_LENGTH):
        raise InvalidRequest(
            f"{where}.operation must be 1 to {MAX_OPERATION_LENGTH} printable characters"
        )
    if isinstance(outcome, bool) or not isinstance(outcome, int) or not 100 <= outcome <= 599:
        raise InvalidRequest(f"{where}.outcome must be an HTTP status, 100 to 599")
    if (
        isinstance(when, bool)
        or not isinstance(when, int | float)
        or not math.isfinite(when)
        or when <= 0
    ):
        raise InvalidRequest(f"{where}.time must be epoch seconds")
    return Use(jti, operation, outcome, float(when))


def _text(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


class UsageReports:
    """Records the uses a client reports of credentials minted for its own APIs."""

    def __init__(self, *, ledger: Ledger, audit: AuditLog, clock: Clock, ids: IdSource) -> None:
        self._ledger = ledger
        self._audit = audit
        self._clock = clock
        self._ids = ids

    async def report(
        self, uses: list[Use], *, reporter: Reporter, context: RequestContext
    ) -> UsageOutcome:
        """Commit the uses ``reporter`` may report as one audit record; refuse the rest.

        A use is accepted when its credential is in the ledger and was minted for one of the
        reporter's audiences (an admin client may report any).
        """
        entries: dict[str, LedgerEntry | None] = {}
        try:
            for jti in dict.fromkeys(u.jti for u in uses):
                entries[jti] = await self._ledger.credential(jti)
        except StoreUnavailable:
            raise _unavailable() from None
        accepted: list[dict[str, Any]] = []
        for use in uses:
            entry = entries[use.jti]
            if entry is None or not (reporter.admin or entry.audience in reporter.audiences):
                continue
            accepted.append(
                {
                    "jti": use.jti,
                    "tool": entry.tool,
                    "operation": use.operation,
                    "outcome": use.outcome,
                    "time": use.time,
                }
            )
        refused = len(uses) - len(accepted)
        if not accepted:
            return UsageOutcome(0, refused, None)
        decision_id = self._ids.prefixed("use")
        record = DecisionRecord(
            decision_id=decision_id,
            time=self._clock.now(),
            endpoint=context.endpoint,
            outcome="usage",
            status=200,
            request_id=context.request_id,
            client_address=context.client_address,
            requested_by=f"client:{reporter.name}",
            uses=tuple(accepted),
        )
        try:
            await self._audit.append(record)
        except StoreUnavailable:
            raise _unavailable() from None
        return UsageOutcome(len(accepted), refused, decision_id)


def _unavailable() -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        "the audit store is unavailable; no use was recorded, retry shortly",
        retry_after=RETRY_AFTER_UNAVAILABLE,
    )
