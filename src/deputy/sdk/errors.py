"""What the SDKs raise: part of Deputy's one error hierarchy, carrying what to fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deputy.errors import DeputyError


@dataclass(frozen=True, slots=True)
class DenialReason:
    """One failed policy rule, as the broker reported it."""

    rule: str
    message: str
    tool: str | None = None  # set when the rule refused one tool (the others may be fine)


class SdkError(DeputyError):
    """Root of the errors the agent and resource-server SDKs raise."""


class BrokerRefused(SdkError):
    """The broker answered with an OAuth error (4xx): ``error``, and every ``reasons`` entry."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        reasons: Sequence[DenialReason] = (),
        *,
        decision_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        detail = "; ".join(f"{r.rule}: {r.message}" for r in reasons)
        super().__init__(f"{status} {error}: {description}" + (f" ({detail})" if detail else ""))
        self.status = status
        self.error = error
        self.description = description
        self.reasons = tuple(reasons)
        self.decision_id = decision_id
        self.retry_after = retry_after  # seconds, from Retry-After (429)

    @classmethod
    def from_body(
        cls, status: int, body: object, *, retry_after: float | None = None
    ) -> BrokerRefused:
        """From an RFC 6749 §5.2 error body; a body that is not one still gives an error."""
        doc: Mapping[str, object] = body if isinstance(body, dict) else {}
        raw = doc.get("reasons")
        reasons = [
            DenialReason(
                str(r.get("rule", "")),
                str(r.get("message", "")),
                r["tool"] if isinstance(r.get("tool"), str) else None,
            )
            for r in (raw if isinstance(raw, list) else [])
            if isinstance(r, dict)
        ]
        error = str(doc.get("error", "unknown_error"))
        kind: type[BrokerRefused] = cls
        if status == 429:
            kind = RateLimited
        elif reasons or error == "access_denied":
            kind = PolicyDenied
        return kind(
            status,
            error,
            str(doc.get("error_description", "")),
            reasons,
            decision_id=str(doc["decision_id"]) if "decision_id" in doc else None,
            retry_after=retry_after,
        )


class PolicyDenied(BrokerRefused):
    """Policy said no (``access_denied``, ``invalid_target``, ``invalid_scope``...)."""


class RateLimited(BrokerRefused):
    """The user's daily limit for a tool category is reached (429)."""


class BrokerUnavailable(SdkError):
    """The broker could not answer now (503, or unreachable): retry after ``retry_after``."""

    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


class CredentialRejected(SdkError):
    """A resource server refuses a credential (RFC 6750 §3.1)."""

    def __init__(self, error: str, description: str, *, status: int = 401) -> None:
        super().__init__(f"{error}: {description}")
        # "invalid_token" | "insufficient_scope" | "invalid_request" | "temporarily_unavailable"
        self.error = error
        self.description = description
        self.status = status
