"""One error hierarchy for Deputy.

Every error a client can see is an :class:`OAuthError` subclass that carries the OAuth
``error`` code, the HTTP status, a client-safe ``description`` and a ``debug`` string that
is logged but never sent. Mapping to HTTP happens in one place (``deputy.server.errors``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    """One failed policy rule: a stable rule name and a sentence saying what to fix."""

    rule: str
    message: str
    tool: str | None = None  # the tool a tool-level rule refused, for clients to act on

    def as_dict(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.tool is not None:
            out["tool"] = self.tool
        return out


class DeputyError(Exception):
    """Root of every error raised by Deputy."""


class ConfigError(DeputyError):
    """The configuration is invalid; the message names the key and what to fix."""


class OAuthError(DeputyError):
    """An error with an OAuth-style body (RFC 6749 §5.2)."""

    error: str = "server_error"
    status_code: int = 500

    def __init__(
        self,
        description: str,
        *,
        debug: str = "",
        reasons: tuple[Reason, ...] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.debug = debug
        self.reasons = reasons
        self.retry_after = retry_after
        self.challenge = "Bearer"  # the HTTP authentication scheme a 401 names

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.error, "error_description": self.description}
        if self.reasons:
            out["reasons"] = [r.as_dict() for r in self.reasons]
        return out


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2 ``invalid_request``: malformed or unacceptable request."""

    error = "invalid_request"
    status_code = 400


class InvalidToken(OAuthError):
    """RFC 6750 §3.1 ``invalid_token``: the bearer token is missing, malformed or unverifiable."""

    error = "invalid_token"
    status_code = 401


class InvalidClient(OAuthError):
    """RFC 6749 §5.2 ``invalid_client``: client authentication failed."""

    error = "invalid_client"
    status_code = 401


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2 ``unauthorized_client``: this client may not use this grant or target."""

    error = "unauthorized_client"
    status_code = 400


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2 ``unsupported_grant_type``."""

    error = "unsupported_grant_type"
    status_code = 400


class InvalidDpopProof(OAuthError):
    """RFC 9449 §5 ``invalid_dpop_proof``: the DPoP proof is missing where required, or invalid."""

    error = "invalid_dpop_proof"
    status_code = 400


class AccessDenied(OAuthError):
    """RFC 6749 §4.1.2.1 ``access_denied``: policy said no; ``reasons`` names every rule."""

    error = "access_denied"
    status_code = 403


class InvalidTarget(OAuthError):
    """RFC 8707 §2 ``invalid_target``: the requested resource is not allowed."""

    error = "invalid_target"
    status_code = 400


class InvalidScope(OAuthError):
    """RFC 6749 §5.2 ``invalid_scope``: the requested scope exceeds what may be granted."""

    error = "invalid_scope"
    status_code = 400


class RateLimited(OAuthError):
    """Daily issuance limit reached; answered with 429 and ``Retry-After``."""

    error = "rate_limited"
    status_code = 429


class ServerError(OAuthError):
    """RFC 6749 §4.1.2.1 ``server_error``: an unexpected fault; the decision is still audited."""

    error = "server_error"
    status_code = 500


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 §4.1.2.1 ``temporarily_unavailable``: a store is down; fail closed with 503."""

    error = "temporarily_unavailable"
    status_code = 503


class TokenRejected(DeputyError):
    """An incoming JWT failed verification. ``reason`` is client-safe; never holds the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreUnavailable(DeputyError):
    """A storage backend (audit log, counters, keys) could not complete the operation."""


class CommitOutcomeUnknown(StoreUnavailable):
    """An append ended without credentials, but its record may be (or is) committed.

    The writer went away or was too slow, or the record committed and could not be signed:
    nothing is issued, and whatever the record counts against (quota) stays counted.
    """
