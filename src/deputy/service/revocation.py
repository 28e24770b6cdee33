"""Revocation: the kill switch, the holder's own revocation, and the list every check reads."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deputy.audit.log import AuditLog, Ledger, LiveCredentials
from deputy.audit.record import DecisionRecord
from deputy.audit.revocation import SELECTORS, CredentialFacts, Revocation, RevocationList
from deputy.clock import Clock
from deputy.config.settings import MAX_TTL_SECONDS
from deputy.errors import (
    InvalidRequest,
    StoreUnavailable,
    TemporarilyUnavailable,
    TokenRejected,
    UnauthorizedClient,
)
from deputy.ids import IdSource
from deputy.service.context import RETRY_AFTER_UNAVAILABLE, RequestContext
from deputy.tokens.verify import CredentialVerifier

MAX_VALUE_LENGTH = 512
MAX_REASON_LENGTH = 512


@dataclass(frozen=True, slots=True)
class RevocationOutcome:
    """What a revocation did: its entry, and the live credentials the ledger says it covers."""

    decision_id: str
    revocation: Revocation
    live: LiveCredentials

    def body(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "revoked": self.revocation.as_dict(),
            "live_credentials": self.live.credentials,
            "users": self.live.users,
        }


@dataclass(frozen=True, slots=True)
class Feed:
    """The revocation feed document and its entity tag."""

    document: dict[str, Any]
    etag: str


class Revocations:
    """Revokes through the audit log, and keeps the unexpired revocations in memory.

    Every check first picks up revocations committed since the last one (by this or any other
    process on the same store), so a revocation is effective at once.
    """

    def __init__(
        self,
        *,
        issuer: str,
        ledger: Ledger,
        audit: AuditLog,
        credentials: CredentialVerifier,
        clock: Clock,
        ids: IdSource,
        max_ttl: int = MAX_TTL_SECONDS,
    ) -> None:
        self._max_ttl = max_ttl
        self._issuer = issuer
        self._credentials = credentials
        self._ledger = ledger
        self._audit = audit
        self._clock = clock
        self._ids = ids
        self._list = RevocationList()

    def cover_lifetime(self, max_ttl: int) -> None:
        """Make revocations outlive credentials of up to ``max_ttl`` seconds (a reloaded policy).

        Only ever lengthens: credentials issued under the previous policy may still be live.
        """
        self._max_ttl = max(self._max_ttl, max_ttl)

    async def sync(self) -> None:
        now = self._clock.now()
        try:
            self._list.add(await self._ledger.revocations_after(self._list.last_id, now))
        except StoreUnavailable:
            raise TemporarilyUnavailable(
                "the revocation list cannot be read; retry shortly",
                retry_after=RETRY_AFTER_UNAVAILABLE,
            ) from None
        self._list.prune(now)

    async def covering(self, claims: Mapping[str, Any]) -> Revocation | None:
        """The revocation that covers a credential with these verified claims, if any."""
        await self.sync()
        return self._list.covers(CredentialFacts.from_claims(claims))

    async def feed(self) -> Feed:
        await self.sync()
        entries = [r.as_dict() for r in self._list.entries(self._clock.now())]
        document = {"issuer": self._issuer, "revocations": entries}
        canonical = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
        return Feed(document, '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"')

    async def revoke_token(
        self, token: str, *, holder: str | None, requested_by: str, context: RequestContext
    ) -> RevocationOutcome | None:
        """RFC 7009 §2: revoke one credential. ``holder``, if given, must be its ``client_id``.

        A token that is not an unexpired Deputy credential is no error (§2.2): there is
        nothing to revoke.
        """
        try:
            credential = self._credentials.verify(token)
        except TokenRejected:
            return None
        if holder is not None and credential.claims.get("client_id") != holder:
            raise UnauthorizedClient("this credential was not issued to the authenticated agent")
        return await self.revoke(
            "jti",
            credential.jti,
            requested_by=requested_by,
            context=context,
            expires_at=credential.expires_at,
        )

    async def revoke(
        self,
        selector: str,
        value: str,
        *,
        requested_by: str,
        context: RequestContext,
        reason: str | None = None,
        expires_at: int | None = None,
    ) -> RevocationOutcome:
        """Revoke every credential ``selector`` names that was issued up to now; audited."""
        if selector not in SELECTORS:
            raise InvalidRequest(f"revoke by one of: {', '.join(SELECTORS)}")
        if not value or len(value) > MAX_VALUE_LENGTH or not value.isprintable():
            raise InvalidRequest(
                f"`{selector}` must be 1 to {MAX_VALUE_LENGTH} printable characters"
            )
        if reason is not None and (len(reason) > MAX_REASON_LENGTH or not reason.isprintable()):
            raise InvalidRequest(
                f"`reason` must be at most {MAX_REASON_LENGTH} printable characters"
            )
        now = self._clock.now()
        issued_before = math.floor(now)
        try:
            live = await self._ledger.live(selector, value, now)
        except StoreUnavailable:
            raise _unavailable() from None
        if expires_at is None:
            # What it covers expires by the latest credential the ledger shows (a sub-agent's
            # never outlives the one it came from), or, for one committed while this ran,
            # within the longest lifetime policy allows.
            expires_at = max(live.latest_expiry or 0, issued_before + self._max_ttl)
        revocation = Revocation(selector, value, issued_before, expires_at)
        decision_id = self._ids.prefixed("rev")

        # Filed under what it names, so a forensic query for that execution, instance,
        # workload or user finds its revocation too.
        def named(field: str) -> str | None:
            return value if selector == field else None

        record = DecisionRecord(
            decision_id=decision_id,
            time=now,
            endpoint=context.endpoint,
            outcome="revoke",
            status=200,
            request_id=context.request_id,
            client_address=context.client_address,
            requested_by=requested_by,
            execution_id=named("execution_id"),
            agent_instance=named("agent_instance"),
            workload_id=named("workload_id"),
            user_id=named("user_id"),
            revocation={
                "selector": selector,
                "value": value,
                "issued_before": issued_before,
                "expires_at": expires_at,
                "reason": reason,
                "live_credentials": live.credentials,
            },
        )
        try:
            await self._audit.append(record)
        except StoreUnavailable:
            raise _unavailable() from None
        await self.sync()
        return RevocationOutcome(decision_id, revocation, live)


def _unavailable() -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        "the audit store is unavailable; nothing was revoked, retry shortly",
        retry_after=RETRY_AFTER_UNAVAILABLE,
    )
