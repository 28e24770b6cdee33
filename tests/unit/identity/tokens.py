"""Builds well-formed and hand-crafted malformed JWTs for the identity tests."""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

from joserfc.jwk import ECKey, Key, RSAKey
from joserfc.jws import JWSRegistry

from deputy.identity.key_set import KeySet

NOW = 1_800_000_000.0
TRUST_DOMAIN = "prod.example"
SVID_SUB = "spiffe://prod.example/agents/support/a1"
K8S_ISSUER = "https://k8s.example/cluster-1"
K8S_SUB = "system:serviceaccount:agents:support"
USER_ISSUER = "https://login.example.com"
DEPUTY_ISSUER = "https://deputy.example"
AUDIENCE = "deputy"


@functools.cache
def ec_key(name: str, curve: str = "P-256") -> ECKey:
    """A P-256 (or other curve) key pair, one per name for the whole test run."""
    return ECKey.generate_key(curve)


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> RSAKey:
    return RSAKey.generate_key(bits)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def sign_segments(header: str, claims: str, key: Key, alg: str) -> str:
    """Sign already-encoded segments, so malformed JSON can still carry a valid signature."""
    signing_input = f"{header}.{claims}"
    signature = JWSRegistry.algorithms[alg].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64(signature)}"


def sign(
    claims: dict[str, Any],
    key: Key,
    *,
    alg: str = "ES256",
    kid: str | None = "k1",
    **header: Any,
) -> str:
    """A compact JWS of ``claims``; extra keyword arguments become header members."""
    full_header: dict[str, Any] = {"alg": alg, **({"kid": kid} if kid is not None else {})}
    full_header.update(header)
    return sign_segments(b64(dumps(full_header)), b64(dumps(claims)), key, alg)


def with_header(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    """An unsigned token with any header at all (the signature is junk)."""
    return f"{b64(dumps(header))}.{b64(dumps(claims))}.{b64(signature)}"


def replace_signature(token: str, signature: bytes) -> str:
    head, _, _ = token.rpartition(".")
    return f"{head}.{b64(signature)}"


def signature_of(token: str) -> bytes:
    segment = token.rpartition(".")[2]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwks(*entries: tuple[str | None, Key], **extra: Any) -> dict[str, Any]:
    """A JWKS document of public keys; ``extra`` members are added to every key."""
    keys = []
    for kid, key in entries:
        jwk: dict[str, Any] = dict(key.as_dict(private=False))
        if kid is not None:
            jwk["kid"] = kid
        jwk.update(extra)
        keys.append(jwk)
    return {"keys": keys}


def key_set(*entries: tuple[str | None, Key]) -> KeySet:
    return KeySet.from_jwks(jwks(*entries))


def svid_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": SVID_SUB, "aud": [AUDIENCE], "exp": NOW + 300, "iat": NOW}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not DROP}


def oidc_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": K8S_ISSUER,
        "sub": K8S_SUB,
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "iat": NOW,
        "kubernetes.io": {"namespace": "agents", "pod": {"name": "support-7d9f", "uid": "1"}},
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not DROP}


def user_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": USER_ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": NOW + 900,
        "iat": NOW,
        "tier": "gold",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not DROP}


def svid(claims: dict[str, Any] | None = None, **header: Any) -> str:
    header.setdefault("kid", "k1")
    return sign(svid_claims() if claims is None else claims, ec_key("svid"), **header)


def k8s(claims: dict[str, Any] | None = None, **header: Any) -> str:
    header.setdefault("kid", "r1")
    header.setdefault("alg", "RS256")
    return sign(oidc_claims() if claims is None else claims, rsa_key("k8s"), **header)


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()
"""Pass as a claim value to leave that claim out."""


class FakeKeySource:
    """Answers fetches from a script of key sets and exceptions; counts every fetch."""

    def __init__(self, *results: KeySet | Exception) -> None:
        self.results = list(results)
        self.fetches = 0

    async def fetch(self) -> KeySet:
        self.fetches += 1
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result
