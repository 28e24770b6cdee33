"""WorkloadVerifier with a VerifiedTokenCache: hits skip work, entries end at exp."""

from __future__ import annotations

import pytest

from deputy.clock import FakeClock
from deputy.errors import TokenRejected
from deputy.identity import (
    VerifiedTokenCache,
    Workload,
    WorkloadVerifier,
)
from deputy.identity import workload as workload_module

from .conftest import Verifiers
from .tokens import (
    NOW,
    k8s,
    oidc_claims,
    svid,
)

# --- cache --------------------------------------------------------------------------------


def cached_verifier(
    verifiers: Verifiers, clock: FakeClock
) -> tuple[WorkloadVerifier, VerifiedTokenCache]:
    cache = VerifiedTokenCache(clock)
    verifier = WorkloadVerifier(
        list(verifiers.workload._spiffe.values()),
        list(verifiers.workload._oidc.values()),
        clock,
        cache=cache,
    )
    return verifier, cache


async def test_cache_hit_skips_verification(
    verifiers: Verifiers, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, cache = cached_verifier(verifiers, clock)
    checks: list[str] = []
    real = workload_module.verify_for_issuer

    async def counting(*args: object, **kwargs: object) -> None:
        checks.append("sig")
        await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(workload_module, "verify_for_issuer", counting)
    token = k8s()
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first
    assert checks == ["sig"]
    assert len(cache) == 1


async def test_cache_entry_expires_at_exp(verifiers: Verifiers, clock: FakeClock) -> None:
    verifier, cache = cached_verifier(verifiers, clock)
    token = svid()
    await verifier.verify(token)
    clock.advance(299)
    assert cache.get(token) is not None
    clock.advance(1)
    assert cache.get(token) is None
    with pytest.raises(TokenRejected, match="token expired"):
        await verifier.verify(token)


async def test_cache_does_not_keep_raw_tokens_or_failures(
    verifiers: Verifiers, clock: FakeClock
) -> None:
    verifier, cache = cached_verifier(verifiers, clock)
    token = svid()
    await verifier.verify(token)
    with pytest.raises(TokenRejected):
        await verifier.verify(k8s(oidc_claims(aud="other")))
    assert len(cache) == 1
    assert token not in repr(cache._entries)
    assert not any(token.encode() in key for key in cache._entries)


async def test_cache_shared_with_a_user_verifier_cannot_confuse(
    verifiers: Verifiers, clock: FakeClock
) -> None:
    verifier, cache = cached_verifier(verifiers, clock)
    token = k8s()
    cache.put(token, "not a workload", NOW + 60)
    assert isinstance(await verifier.verify(token), Workload)
