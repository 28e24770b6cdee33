"""Verifying Deputy's own credentials: for introspection, revocation and delegation chains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import Key

from deputy.clock import Clock
from deputy.errors import TokenRejected
from deputy.identity.jose import (
    ALLOWED_ASYMMETRIC_ALGS,
    check_time,
    client_safe,
    parse_compact,
    verify_signature,
)
from deputy.identity.key_set import KeySet
from deputy.tokens.key_ring import KeyRing
from deputy.tokens.mint import TOKEN_TYPE_HEADER

MAX_ACT_DEPTH = 16


@dataclass(frozen=True, slots=True)
class VerifiedCredential:
    """A credential Deputy signed, unexpired; ``claims`` as signed."""

    jti: str
    audience: str
    scopes: frozenset[str]
    expires_at: int
    actors: tuple[str, ...]  # the act chain, newest actor first
    claims: Mapping[str, Any] = field(repr=False)

    @property
    def lineage(self) -> tuple[str, ...]:
        """Its own jti, then the jtis of the credentials it descends from, nearest first."""
        return (self.jti, *ancestors(self.claims))


def act_chain(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """RFC 8693 §4.1 ``act``, nested newest-first, as a tuple of actor subjects."""
    actors: list[str] = []
    act = claims.get("act")
    while act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
            raise TokenRejected("act is malformed")
        if len(actors) >= MAX_ACT_DEPTH:
            raise TokenRejected("act is nested too deeply")
        actors.append(act["sub"])
        act = act.get("act")
    return tuple(actors)


def ancestors(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """``delegated_from``: the jtis a credential descends from (empty if malformed)."""
    value = claims.get("delegated_from")
    if not isinstance(value, list) or len(value) > MAX_ACT_DEPTH:
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise TokenRejected(f"token has no {name}")
    return value


class CredentialVerifier:
    """Checks a token is an unexpired RFC 9068 credential signed by one of our published keys."""

    def __init__(self, issuer: str, key_ring: KeyRing, clock: Clock) -> None:
        self._issuer = issuer
        self._key_ring = key_ring
        self._clock = clock
        self._keys: tuple[object, KeySet] | None = None

    def _key(self, kid: str | None) -> Key:
        jwks = self._key_ring.jwks()
        if self._keys is None or self._keys[0] is not jwks:
            self._keys = (jwks, KeySet.from_jwks(jwks))
        key = self._keys[1].get(kid) if kid is not None else None
        if key is None:
            raise TokenRejected(f"unknown kid {client_safe(kid)}")
        return key

    def claims_to_be_ours(self, token: str) -> bool:
        """Whether a token says this broker issued it (unverified: only picks the verifier)."""
        try:
            return parse_compact(token).claims.get("iss") == self._issuer
        except TokenRejected:
            return False

    def verify(self, token: str) -> VerifiedCredential:
        parsed = parse_compact(token)
        typ = parsed.header.get("typ")
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") != "at+jwt":
            raise TokenRejected(f"typ must be {TOKEN_TYPE_HEADER}")
        claims = parsed.claims
        if claims.get("iss") != self._issuer:
            raise TokenRejected("token was not issued by this broker")
        check_time(claims, self._clock.now())
        verify_signature(parsed, self._key(parsed.kid), ALLOWED_ASYMMETRIC_ALGS)
        scope = claims.get("scope")
        exp = claims.get("exp")
        if not isinstance(scope, str) or not isinstance(exp, int):
            raise TokenRejected("token has no scope or exp")
        return VerifiedCredential(
            jti=_text(claims, "jti"),
            audience=_text(claims, "aud"),
            scopes=frozenset(scope.split()),
            expires_at=exp,
            actors=act_chain(claims),
            claims=claims,
        )
