"""Workload identity: JWT-SVIDs (SPIFFE JWT-SVID spec) and OIDC workload tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from deputy.clock import Clock
from deputy.errors import TokenRejected
from deputy.identity.jose import (
    ALLOWED_ASYMMETRIC_ALGS,
    MAX_TOKEN_BYTES,
    ParsedJwt,
    check_subject,
    check_trust,
    check_type,
    client_safe,
    expiry,
    parse_compact,
    verify_for_issuer,
)
from deputy.identity.jwks import JwksCache
from deputy.identity.spiffe import SpiffeId, check_trust_domain
from deputy.identity.token_cache import VerifiedTokenCache

# Deputy's own access tokens (RFC 9068 §2.1) and DPoP proofs (RFC 9449 §4.2) are not
# workload identities, whoever signed them.
WORKLOAD_FORBIDDEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "dpop+jwt"})
# JWT-SVID §2.2: typ, when present, is "JWT" or "JOSE".
_SVID_TYPES = frozenset({"jwt", "jose"})
MAX_POD_NAME_LENGTH = 253
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Workload:
    """A verified workload: a SPIFFE ID, or ``"{iss}#{sub}"`` for OIDC workload tokens."""

    id: str
    issuer: str
    kind: str  # "spiffe" | "oidc"
    expires_at: float
    instance: str | None = None
    sole_audience: bool = True  # its aud names one audience only (the one Deputy checked)


@dataclass(frozen=True)
class SpiffeTrust:
    """JWT-SVIDs of one trust domain, verified with that domain's bundle keys."""

    trust_domain: str
    audience: str
    keys: JwksCache
    algorithms: frozenset[str] = ALLOWED_ASYMMETRIC_ALGS

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_trust(self.audience, self.algorithms)


@dataclass(frozen=True)
class OidcWorkloadTrust:
    """Workload tokens of one OIDC issuer (e.g. Kubernetes service account tokens)."""

    issuer: str
    audience: str
    keys: JwksCache
    algorithms: frozenset[str] = ALLOWED_ASYMMETRIC_ALGS

    def __post_init__(self) -> None:
        # OIDC Core §2: issuers have no fragment, which keeps "{iss}#{sub}" unambiguous.
        if not self.issuer or "#" in self.issuer:
            raise ValueError("issuer must be a non-empty URL without '#'")
        check_trust(self.audience, self.algorithms)


class WorkloadVerifier:
    """Turns a workload token into a :class:`Workload`, or raises :class:`TokenRejected`."""

    def __init__(
        self,
        spiffe: Sequence[SpiffeTrust],
        oidc: Sequence[OidcWorkloadTrust],
        clock: Clock,
        *,
        cache: VerifiedTokenCache | None = None,
        reject_issuers: frozenset[str] = frozenset(),
    ) -> None:
        self._spiffe = index_unique(spiffe, lambda trust: trust.trust_domain, "trust domain")
        self._oidc = index_unique(oidc, lambda trust: trust.issuer, "issuer")
        self._clock = clock
        self._cache = cache
        self._reject_issuers = reject_issuers

    async def verify(self, token: str) -> Workload:
        if self._cache is not None:
            hit = self._cache.get_as(token, Workload, MAX_TOKEN_BYTES)
            if hit is not None:
                return hit
        parsed = parse_compact(token)
        check_type(parsed.header, WORKLOAD_FORBIDDEN_TYPES)
        iss = parsed.claims.get("iss")
        if isinstance(iss, str) and iss in self._reject_issuers:
            raise TokenRejected("tokens issued by Deputy are not workload tokens")
        sub = parsed.claims.get("sub")
        if isinstance(sub, str) and sub.startswith("spiffe://"):
            workload = await self._verify_svid(parsed, sub)
        elif not isinstance(iss, str):
            raise TokenRejected("token has no iss")
        elif iss in self._oidc:
            workload = await self._verify_oidc(parsed, self._oidc[iss])
        else:
            raise TokenRejected(f"unknown issuer {client_safe(iss)}")
        if self._cache is not None:
            self._cache.put(token, workload, workload.expires_at)
        return workload

    async def _verify_svid(self, parsed: ParsedJwt, sub: str) -> Workload:
        """JWT-SVID §3: sub is the workload's SPIFFE ID; aud and exp are required."""
        try:
            spiffe_id = SpiffeId(sub)
        except ValueError as exc:
            raise TokenRejected(f"sub is not a valid SPIFFE ID: {exc}") from None
        trust = self._spiffe.get(spiffe_id.trust_domain)
        if trust is None:
            raise TokenRejected(f"unknown trust domain {client_safe(spiffe_id.trust_domain)}")
        if not spiffe_id.path:
            raise TokenRejected("sub names a trust domain, not a workload")
        typ = parsed.header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _SVID_TYPES):
            raise TokenRejected("JWT-SVID typ must be JWT or JOSE")
        if parsed.kid is None:
            raise TokenRejected("JWT-SVID has no kid")
        await verify_for_issuer(
            parsed,
            audience=trust.audience,
            keys=trust.keys,
            algorithms=trust.algorithms,
            now=self._clock.now(),
        )
        return Workload(
            id=str(spiffe_id),
            issuer=f"spiffe://{spiffe_id.trust_domain}",
            kind="spiffe",
            expires_at=expiry(parsed.claims),
            instance=_pod_name(parsed.claims),
            sole_audience=_sole_audience(parsed.claims),
        )

    async def _verify_oidc(self, parsed: ParsedJwt, trust: OidcWorkloadTrust) -> Workload:
        sub = check_subject(parsed.claims)
        await verify_for_issuer(
            parsed,
            audience=trust.audience,
            keys=trust.keys,
            algorithms=trust.algorithms,
            now=self._clock.now(),
        )
        return Workload(
            id=f"{trust.issuer}#{sub}",
            issuer=trust.issuer,
            kind="oidc",
            expires_at=expiry(parsed.claims),
            instance=_pod_name(parsed.claims),
            sole_audience=_sole_audience(parsed.claims),
        )


def index_unique(items: Sequence[_T], name: Callable[[_T], str], what: str) -> dict[str, _T]:
    """``items`` by ``name``; a name configured twice is a ``ValueError`` naming it."""
    out: dict[str, _T] = {}
    for item in items:
        key = name(item)
        if key in out:
            raise ValueError(f"{what} {key!r} is configured twice")
        out[key] = item
    return out


def _sole_audience(claims: Mapping[str, Any]) -> bool:
    aud = claims.get("aud")
    return isinstance(aud, str) or (isinstance(aud, list) and len(aud) == 1)


def _pod_name(claims: Mapping[str, Any]) -> str | None:
    """The Kubernetes pod name of a projected service account token, if it has one."""
    kubernetes = claims.get("kubernetes.io")
    pod = kubernetes.get("pod") if isinstance(kubernetes, dict) else None
    name = pod.get("name") if isinstance(pod, dict) else None
    if isinstance(name, str) and 0 < len(name) <= MAX_POD_NAME_LENGTH:
        return name
    return None
