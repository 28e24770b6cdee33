"""A credential the broker issued for one tool, and when to renew it."""

from __future__ import annotations

from dataclasses import dataclass, field

from deputy.sdk.dpop import DpopKey

BEARER = "Bearer"
DPOP = "DPoP"


@dataclass(frozen=True, slots=True)
class Credential:
    """One short-lived credential for one tool.

    ``issued_at`` and ``expires_at`` are on the SDK's clock: the moment the answer arrived,
    plus the broker's ``expires_in``. Clock skew between agent and broker therefore never
    makes a credential look fresher than it is. ``access_token`` is left out of ``repr``.

    ``token_type`` is ``Bearer``, or ``DPoP`` for a credential bound to ``dpop_key`` (RFC
    9449): it is then only ever sent with ``Authorization: DPoP`` and a proof signed by that
    key, and ``jkt`` is the key's thumbprint (the credential's ``cnf.jkt``).
    """

    tool: str
    access_token: str = field(repr=False)
    scope: str
    audience: str
    issued_at: float
    expires_at: float
    execution_id: str
    decision_id: str
    token_type: str = BEARER
    dpop_key: DpopKey | None = field(default=None, repr=False, compare=False)

    @property
    def dpop_bound(self) -> bool:
        """Whether the credential is bound to a key (``token_type`` ``DPoP``)."""
        return self.token_type.lower() == DPOP.lower()

    @property
    def jkt(self) -> str | None:
        """The thumbprint of the key a DPoP-bound credential is bound to; else None."""
        return self.dpop_key.jkt if self.dpop_bound and self.dpop_key is not None else None

    @property
    def scopes(self) -> tuple[str, ...]:
        """``scope`` as a tuple of scope names."""
        return tuple(self.scope.split())

    @property
    def lifetime(self) -> float:
        """Seconds the credential was valid for when it arrived."""
        return max(0.0, self.expires_at - self.issued_at)

    def expires_in(self, now: float) -> float:
        """Seconds left at ``now`` (never negative)."""
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """When a credential is renewed before it expires.

    A credential is due once what is left of it is at most ``before_expiry`` seconds or
    ``fraction`` of its lifetime, whichever is more — but never before half of its lifetime
    has passed, so a very short credential is not renewed on every request. If the broker is
    unavailable when a credential falls due, the credential is used while it is still valid
    and renewal is tried again after ``retry_interval`` seconds.
    """

    before_expiry: float = 30.0
    fraction: float = 0.1
    retry_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.before_expiry < 0:
            raise ValueError("before_expiry must not be negative")
        if not 0 <= self.fraction < 1:
            raise ValueError("fraction must be in [0, 1)")
        if self.retry_interval < 0:
            raise ValueError("retry_interval must not be negative")

    def margin(self, credential: Credential) -> float:
        """Seconds before expiry at which ``credential`` falls due."""
        lifetime = credential.lifetime
        return min(max(self.before_expiry, self.fraction * lifetime), lifetime / 2)

    def due(self, credential: Credential, now: float) -> bool:
        return credential.expires_at - now <= self.margin(credential)
