"""The user an agent acts for, established from a token of a configured user issuer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deputy.clock import Clock
from deputy.errors import TokenRejected
from deputy.identity.jose import (
    ALLOWED_ASYMMETRIC_ALGS,
    MAX_TOKEN_BYTES,
    check_subject,
    check_trust,
    check_type,
    client_safe,
    expiry,
    parse_compact,
    verify_for_issuer,
)
from deputy.identity.jwks import JwksCache
from deputy.identity.token_cache import VerifiedTokenCache
from deputy.identity.workload import index_unique

# A DPoP proof (RFC 9449 §4.2) is never a user's token.
USER_FORBIDDEN_TYPES = frozenset({"dpop+jwt", "application/dpop+jwt"})


@dataclass(frozen=True, slots=True)
class Principal:
    """The user; ``how`` is "user_token" (verified) or "asserted" (configured delegation)."""

    user_id: str
    issuer: str
    how: str  # "user_token" | "asserted" | "none" (the agent itself)
    tier: str | None = None
    expires_at: float | None = None
    may_act: str | None = None  # the one workload the token lets act for the user


def may_act_of(claims: Mapping[str, Any]) -> str | None:
    """RFC 8693 §4.4 ``may_act`` as a workload id: a SPIFFE ID, or ``iss#sub``."""
    value = claims.get("may_act")
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("sub"), str) or not value["sub"]:
        raise TokenRejected("may_act must be an object with a sub")
    sub: str = value["sub"]
    iss = value.get("iss")
    if iss is None or sub.startswith("spiffe://"):
        return sub
    if not isinstance(iss, str) or not iss or "#" in iss:
        raise TokenRejected("may_act iss is not an issuer")
    return f"{iss}#{sub}"


@dataclass(frozen=True)
class UserIssuerTrust:
    """One identity provider whose tokens name users; ``tier_claim`` names a string claim."""

    issuer: str
    audience: str
    keys: JwksCache
    tier_claim: str | None = None
    algorithms: frozenset[str] = ALLOWED_ASYMMETRIC_ALGS

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("issuer must not be empty")
        check_trust(self.audience, self.algorithms)


class UserVerifier:
    """Turns a user token into a :class:`Principal`, or raises :class:`TokenRejected`."""

    def __init__(
        self,
        issuers: Sequence[UserIssuerTrust],
        clock: Clock,
        *,
        cache: VerifiedTokenCache | None = None,
        reject_issuers: frozenset[str] = frozenset(),
    ) -> None:
        self._issuers = index_unique(issuers, lambda trust: trust.issuer, "issuer")
        self._clock = clock
        self._cache = cache
        self._reject_issuers = reject_issuers

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired, if any."""
        if self._cache is None:
            return None
        return self._cache.get_as(token, Principal, MAX_TOKEN_BYTES, count=False)

    async def verify(self, token: str) -> Principal:
        if self._cache is not None:
            hit = self._cache.get_as(token, Principal, MAX_TOKEN_BYTES)
            if hit is not None:
                return hit
        parsed = parse_compact(token)
        check_type(parsed.header, USER_FORBIDDEN_TYPES)
        claims = parsed.claims
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise TokenRejected("token has no iss")
        if iss in self._reject_issuers:
            raise TokenRejected("tokens issued by Deputy are not user tokens")
        # Exact match only: no prefix, trailing-slash or case folding (SECURITY.md).
        trust = self._issuers.get(iss)
        if trust is None:
            raise TokenRejected(f"unknown issuer {client_safe(iss)}")
        sub = check_subject(claims)
        tier = None
        if trust.tier_claim is not None and trust.tier_claim in claims:
            tier = claims[trust.tier_claim]
            if not isinstance(tier, str):
                raise TokenRejected(f"claim {trust.tier_claim!r} is not a string")
        await verify_for_issuer(
            parsed,
            audience=trust.audience,
            keys=trust.keys,
            algorithms=trust.algorithms,
            now=self._clock.now(),
        )
        expires_at = expiry(claims)
        principal = Principal(
            user_id=sub,
            issuer=iss,
            how="user_token",
            tier=tier,
            expires_at=expires_at,
            may_act=may_act_of(claims),
        )
        if self._cache is not None:
            self._cache.put(token, principal, expires_at)
        return principal
