"""Resource-server verification benchmark: DeputyVerifier against PyJWT, in one run.

Usage: python bench/verify_bench.py [--tokens 4000] [--rounds 5] [--revocations 1000]

Cold: the first sight of each of N distinct RFC 9068 credentials (ES256, signed here with
a local key), so every one is parsed, checked and its signature verified. Warm: the same
credentials again, answered from the verified-token cache, with the revocation list
checked on every call. PyJWT: ``jwt.decode`` of the same credentials with the same public
key (a pre-built key object), audience and issuer. The revocation feed holds
``--revocations`` entries throughout; at the end a credential on the warm path is revoked
and must be refused. Figures are the best of ``--rounds`` rounds; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
from joserfc.jwk import ECKey

from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource import DeputyVerifier
from deputy.tokens.mint import b64url, compact_json
from deputy.tokens.signer import signer_for

ISSUER = "https://deputy.internal"
AUDIENCE = "https://crm.internal"
KID = "bench-key-1"
RESEARCH = "spiffe://prod.example/agents/research/r1"
SUPPORT = "spiffe://prod.example/agents/support/triage"


class Broker:
    """The broker's metadata, JWKS and revocation feed, answered in process."""

    def __init__(self, key: ECKey, revocations: int, now: int) -> None:
        jwk = key.as_dict(private=False) | {"kid": KID, "alg": "ES256", "use": "sig"}
        self.jwks = {"keys": [jwk]}
        self.now = now
        self.entries: list[dict[str, Any]] = [
            {
                ("jti", "execution_id", "workload_id")[i % 3]: f"other-{i}",
                "issued_before": now,
                "expires_at": now + 3600,
            }
            for i in range(revocations)
        ]

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/.well-known/oauth-authorization-server":
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "jwks_uri": ISSUER + "/.well-known/jwks.json",
                    "revocation_feed_endpoint": ISSUER + "/revocations",
                    "access_token_signing_alg_values_supported": ["ES256"],
                },
            )
        if path == "/.well-known/jwks.json":
            return httpx.Response(200, json=self.jwks)
        if path == "/revocations":
            etag = f'"{len(self.entries)}"'
            if request.headers.get("if-none-match") == etag:
                return httpx.Response(304, headers={"etag": etag})
            body = {"issuer": ISSUER, "revocations": self.entries}
            return httpx.Response(200, json=body, headers={"etag": etag})
        return httpx.Response(404)


def mint(key: ECKey, count: int, now: int) -> list[str]:
    """RFC 9068 credentials as Deputy mints them for a sub-agent, each with its own jti."""
    sign = signer_for("ES256", key)
    header = b64url(compact_json({"alg": "ES256", "typ": "at+jwt", "kid": KID}))
    tokens = []
    for i in range(count):
        claims = {
            "iss": ISSUER,
            "sub": f"user-{i % 50}",
            "aud": AUDIENCE,
            "client_id": RESEARCH,
            "iat": now,
            "exp": now + 900,
            "jti": f"jti-{i:08d}-{'x' * 12}",
            "scope": "accounts:read",
            "agent_instance": RESEARCH,
            "execution_id": f"exe_{i:016d}",
            "workflow": "support-research",
            "decision_id": f"dec_{i:016d}",
            "delegation": "user_token",
            "act": {"sub": RESEARCH, "act": {"sub": SUPPORT}},
            "delegated_from": [f"parent-{i:08d}"],
        }
        signing_input = header + b"." + b64url(compact_json(claims))
        tokens.append((signing_input + b"." + b64url(sign(signing_input))).decode("ascii"))
    return tokens


async def rate(tokens: list[str], check: Callable[[str], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for token in tokens:
        await check(token)
    return len(tokens) / (time.perf_counter() - started)


def pyjwt_rate(tokens: list[str], key: Any) -> float:
    started = time.perf_counter()
    for token in tokens:
        jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    return len(tokens) / (time.perf_counter() - started)


async def run(count: int, rounds: int, revocations: int, warm_passes: int) -> dict[str, Any]:
    now = int(time.time())
    key = ECKey.generate_key("P-256", private=True)
    broker = Broker(key, revocations, now)
    tokens = mint(key, count + 1, now)
    spare, tokens = tokens[0], tokens[1:]
    public = ECKey.import_key(key.as_dict(private=False)).public_key  # PyJWT's key object
    best = dict.fromkeys(("pyjwt", "cold", "warm_same", "warm_all", "warm_changed"), 0.0)

    def keep(name: str, value: float) -> None:
        best[name] = max(best[name], value)

    for round_ in range(rounds):
        client = httpx.AsyncClient(transport=httpx.MockTransport(broker.handler))
        async with DeputyVerifier(
            ISSUER, AUDIENCE, http_client=client, cache_size=count + 1
        ) as verifier:
            await verifier.verify(spare)  # keys, metadata and feed in place, as in service
            keep("cold", await rate(tokens, verifier.verify))
            keep("warm_same", await rate([tokens[0]] * count * warm_passes, verifier.verify))
            keep("warm_all", await rate(tokens * warm_passes, verifier.verify))
            # A feed update: every remembered credential is checked against the new list.
            broker.entries.append(
                {"jti": f"round-{round_}", "issued_before": now, "expires_at": now + 60}
            )
            await verifier.refresh()
            keep("warm_changed", await rate(tokens, verifier.verify))
        await client.aclose()
        keep("pyjwt", pyjwt_rate(tokens, public))

    # Revocation on the warm path: the first call after the feed changes refuses it.
    client = httpx.AsyncClient(transport=httpx.MockTransport(broker.handler))
    async with DeputyVerifier(ISSUER, AUDIENCE, http_client=client) as verifier:
        victim = tokens[len(tokens) // 2]
        for _ in range(2):
            await verifier.verify(victim)
        claims = jwt.decode(victim, options={"verify_signature": False})
        broker.entries.append(
            {"execution_id": claims["execution_id"], "issued_before": now, "expires_at": now + 60}
        )
        await verifier.refresh()
        try:
            await verifier.verify(victim)
            honoured = False
        except CredentialRejected as exc:
            honoured = exc.description == "the credential has been revoked"
    await client.aclose()
    return {**best, "revocation_honoured": honoured}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--revocations", type=int, default=1000)
    parser.add_argument("--warm-passes", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.tokens, args.rounds, args.revocations, args.warm_passes))
    peer = result["pyjwt"]
    print(
        f"# Python {platform.python_version()}, PyJWT {jwt.__version__}, "
        f"{args.tokens} distinct ES256 credentials, {args.revocations} revocations in the feed, "
        f"best of {args.rounds} rounds"
    )
    rows = [
        ("pyjwt", "PyJWT jwt.decode", None),
        ("cold", "Deputy cold: first sight of each token", 1),
        ("warm_same", "Deputy warm: the same token again", 50),
        ("warm_all", f"Deputy warm: all {args.tokens} tokens again", 50),
        ("warm_changed", "Deputy warm: first call after a feed change", None),
    ]
    for name, label, target in rows:
        figure = result[name]
        line = f"{label:<46} {figure:>11,.0f}/s"
        if name != "pyjwt":
            line += f"  {figure / peer:7.2f}x PyJWT"
        if target is not None:
            line += f"  (target >= {target}x: {'met' if figure >= target * peer else 'NOT met'})"
        print(line)
    honoured = result["revocation_honoured"]
    print(f"revocation honoured on the warm path: {'yes' if honoured else 'NO'}")
    return 0 if honoured else 1


if __name__ == "__main__":
    sys.exit(main())
