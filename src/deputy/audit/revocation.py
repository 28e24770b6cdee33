"""Revocations: one credential, or the kill switch over everything a selector names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from deputy.tokens.verify import act_chain, ancestors

# What a revocation can name, and the credential claim each one is matched against.
SELECTORS = ("jti", "execution_id", "agent_instance", "workload_id", "user_id")


@dataclass(frozen=True, slots=True)
class Revocation:
    """Every credential ``selector == value`` issued at or before ``issued_before`` is revoked.

    ``workload_id`` matches any actor of a credential's ``act`` chain, so the kill switch on
    an agent also reaches what its sub-agents obtained from it; ``jti`` matches the credential
    and everything exchanged from it (``delegated_from``), whenever issued. ``expires_at`` is
    when the last credential it can cover expires; after that it leaves the feed.
    """

    selector: str
    value: str
    issued_before: int
    expires_at: int
    id: int = 0

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise ValueError(f"selector must be one of {', '.join(SELECTORS)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            self.selector: self.value,
            "issued_before": self.issued_before,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class CredentialFacts:
    """What revocation is matched against, read from a credential's verified claims."""

    jti: str
    issued_at: int
    execution_id: str | None
    agent_instance: str | None
    actors: tuple[str, ...]
    user_id: str | None
    ancestors: tuple[str, ...] = ()  # jtis of the credentials it was exchanged from

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> CredentialFacts:
        def text(name: str) -> str | None:
            value = claims.get(name)
            return value if isinstance(value, str) else None

        iat = claims.get("iat")
        client = (text("client_id"),) if text("client_id") else ()
        return cls(
            jti=text("jti") or "",
            issued_at=int(iat) if isinstance(iat, int | float) else 0,
            execution_id=text("execution_id"),
            agent_instance=text("agent_instance"),
            actors=tuple(dict.fromkeys((*client, *act_chain(claims)))),
            user_id=text("sub"),
            ancestors=ancestors(claims),
        )


class RevocationList:
    """The unexpired revocations, indexed for a match per selector."""

    def __init__(self) -> None:
        self._index: dict[tuple[str, str], Revocation] = {}
        self.last_id = 0

    def add(self, revocations: Iterable[Revocation]) -> None:
        for r in revocations:
            key = (r.selector, r.value)
            held = self._index.get(key)
            if held is not None:
                # Order-independent: the latest cut-off covers everything an earlier one did.
                r = Revocation(
                    r.selector,
                    r.value,
                    max(r.issued_before, held.issued_before),
                    max(r.expires_at, held.expires_at),
                    max(r.id, held.id),
                )
            self._index[key] = r
            self.last_id = max(self.last_id, r.id)

    def prune(self, now: float) -> None:
        for key in [k for k, r in self._index.items() if r.expires_at <= now]:
            del self._index[key]

    def covers(self, facts: CredentialFacts) -> Revocation | None:
        """The revocation that covers this credential, if any.

        A revoked ``jti`` covers that credential and every one exchanged from it, whenever
        issued; the other selectors cover what was issued up to their cut-off.
        """
        for jti in (facts.jti, *facts.ancestors):
            found = self._index.get(("jti", jti))
            if found is not None:
                return found
        candidates: list[tuple[str, str | None]] = [
            ("execution_id", facts.execution_id),
            ("agent_instance", facts.agent_instance),
            ("user_id", facts.user_id),
            *(("workload_id", actor) for actor in facts.actors),
        ]
        for selector, value in candidates:
            if value is None:
                continue
            found = self._index.get((selector, value))
            if found is not None and facts.issued_at <= found.issued_before:
                return found
        return None

    def entries(self, now: float) -> list[Revocation]:
        """Unexpired revocations in the order they were made."""
        return sorted((r for r in self._index.values() if r.expires_at > now), key=lambda r: r.id)
