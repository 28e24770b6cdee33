"""WorkloadVerifier claim rules: time, issuer, audience, subject (SPIFFE and OIDC), type."""

from __future__ import annotations

from typing import Any

import pytest

from deputy.clock import FakeClock
from deputy.errors import TokenRejected
from deputy.identity.jose import LEEWAY_SECONDS as LEEWAY

from .conftest import Verifiers
from .tokens import (
    DEPUTY_ISSUER,
    DROP,
    K8S_ISSUER,
    NOW,
    k8s,
    oidc_claims,
    svid,
    svid_claims,
)


async def rejects(verifiers: Verifiers, token: Any, reason: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        await verifiers.workload.verify(token)
    assert reason in caught.value.reason, caught.value.reason
    return caught.value


# --- time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": DROP}, "token has no exp"),
        ({"exp": NOW - 1}, "token expired"),
        ({"exp": "9999999999"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"nbf": NOW + LEEWAY + 1}, "not yet valid"),
        ({"iat": NOW + LEEWAY + 1}, "issued in the future"),
        ({"iat": "now"}, "iat is not a number"),
    ],
    ids=[
        "exp-missing",
        "exp-past",
        "exp-string",
        "exp-bool",
        "nbf-future",
        "iat-future",
        "iat-str",
    ],
)
@pytest.mark.parametrize("kind", ["spiffe", "oidc"])
async def test_time_rejections(
    verifiers: Verifiers, kind: str, changes: dict[str, Any], reason: str
) -> None:
    token = svid(svid_claims(**changes)) if kind == "spiffe" else k8s(oidc_claims(**changes))
    await rejects(verifiers, token, reason)


async def test_nbf_and_iat_within_leeway_are_accepted(verifiers: Verifiers) -> None:
    await verifiers.workload.verify(svid(svid_claims(nbf=NOW + LEEWAY, iat=NOW + LEEWAY)))
    await verifiers.workload.verify(k8s(oidc_claims(nbf=NOW + 10, iat=NOW + 10)))


async def test_expiry_is_on_the_clock(verifiers: Verifiers, clock: FakeClock) -> None:
    token = svid()
    await verifiers.workload.verify(token)
    clock.advance(300)
    await rejects(verifiers, token, "token expired")


# --- issuer, subject, audience, type ------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        K8S_ISSUER + "/",
        K8S_ISSUER.upper(),
        "https://K8S.example/cluster-1",
        "https://k8s.example/cluster",
        "https://k8s.example/cluster-1/../cluster-1",
        "https://k8s.example/cluster-10",
        "https://k8s.example",
        " " + K8S_ISSUER,
    ],
    ids=[
        "trailing-slash",
        "uppercase",
        "host-case",
        "prefix",
        "dot-segments",
        "longer",
        "origin-only",
        "leading-space",
    ],
)
async def test_issuer_is_compared_exactly(verifiers: Verifiers, iss: str) -> None:
    await rejects(verifiers, k8s(oidc_claims(iss=iss)), "unknown issuer")
    assert verifiers.oidc_source.fetches == 0


@pytest.mark.parametrize("iss", [DROP, 7, None, ["https://k8s.example/cluster-1"]])
async def test_oidc_token_without_string_iss(verifiers: Verifiers, iss: Any) -> None:
    await rejects(verifiers, k8s(oidc_claims(iss=iss)), "token has no iss")


async def test_deputy_issued_tokens_are_refused(verifiers: Verifiers) -> None:
    await rejects(verifiers, k8s(oidc_claims(iss=DEPUTY_ISSUER)), "issued by Deputy")
    await rejects(verifiers, svid(svid_claims(iss=DEPUTY_ISSUER)), "issued by Deputy")


@pytest.mark.parametrize(
    "typ", ["at+jwt", "AT+JWT", "application/at+jwt", "dpop+jwt", "application/dpop+jwt"]
)
@pytest.mark.parametrize("kind", ["spiffe", "oidc"])
async def test_token_type_confusion(verifiers: Verifiers, kind: str, typ: str) -> None:
    token = svid(typ=typ) if kind == "spiffe" else k8s(typ=typ)
    await rejects(verifiers, token, "is not accepted here")


async def test_jwt_svid_with_other_typ(verifiers: Verifiers) -> None:
    await rejects(verifiers, svid(typ="secevent+jwt"), "JWT-SVID typ must be JWT or JOSE")
    await rejects(verifiers, svid(typ=["JWT"]), "typ is not a string")


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        (DROP, "token has no aud"),
        ("other", "audience does not include 'deputy'"),
        (["a", "b"], "audience does not include 'deputy'"),
        (["x"] * 1_000, "aud has more than 32 entries"),
    ],
    ids=["missing", "other", "list-without", "huge-array"],
)
@pytest.mark.parametrize("kind", ["spiffe", "oidc"])
async def test_audience(verifiers: Verifiers, kind: str, aud: Any, reason: str) -> None:
    token = svid(svid_claims(aud=aud)) if kind == "spiffe" else k8s(oidc_claims(aud=aud))
    await rejects(verifiers, token, reason)


@pytest.mark.parametrize("aud", ["deputy", ["deputy"], ["other", "deputy"]])
async def test_audience_accepted(verifiers: Verifiers, aud: Any) -> None:
    await verifiers.workload.verify(svid(svid_claims(aud=aud)))
    await verifiers.workload.verify(k8s(oidc_claims(aud=aud)))


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        ("spiffe://evil.example/agents/support", "unknown trust domain 'evil.example'"),
        ("spiffe://prod.example.evil/a", "unknown trust domain 'prod.example.evil'"),
        ("spiffe://Prod.example/a", "not a valid SPIFFE ID"),
        ("spiffe://prod.example:443/a", "not a valid SPIFFE ID"),
        ("spiffe://user@prod.example/a", "not a valid SPIFFE ID"),
        ("spiffe://prod.example/a/../b", "not a valid SPIFFE ID"),
        ("spiffe://prod.example/a/", "not a valid SPIFFE ID"),
        ("spiffe://prod.example/a?x", "not a valid SPIFFE ID"),
        ("spiffe://prod.example/a#x", "not a valid SPIFFE ID"),
        ("spiffe://prod.example/a%20b", "not a valid SPIFFE ID"),
        ("spiffe://prod.example", "names a trust domain, not a workload"),
        ("spiffe://", "not a valid SPIFFE ID"),
    ],
    ids=[
        "other-trust-domain",
        "suffixed-trust-domain",
        "uppercase-trust-domain",
        "port",
        "userinfo",
        "dot-dot",
        "trailing-slash",
        "query",
        "fragment",
        "percent",
        "trust-domain-only",
        "empty",
    ],
)
async def test_spiffe_subjects(verifiers: Verifiers, sub: str, reason: str) -> None:
    await rejects(verifiers, svid(svid_claims(sub=sub)), reason)


@pytest.mark.parametrize(
    ("sub", "iss", "reason"),
    [
        ("spiffe:/prod.example/a", DROP, "token has no iss"),
        (
            "SPIFFE://prod.example/a",
            "https://evil.example",
            "unknown issuer 'https://evil.example'",
        ),
        (DROP, DROP, "token has no iss"),
    ],
    ids=["almost-spiffe", "uppercase-scheme", "nothing"],
)
async def test_not_spiffe_and_no_issuer(
    verifiers: Verifiers, sub: Any, iss: Any, reason: str
) -> None:
    await rejects(verifiers, svid(svid_claims(sub=sub, iss=iss)), reason)


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        (DROP, "token has no sub"),
        ("", "token has no sub"),
        (5, "token has no sub"),
        ("x" * 256, "sub is longer than 255"),
    ],
    ids=["missing", "empty", "int", "too-long"],
)
async def test_oidc_subject(verifiers: Verifiers, sub: Any, reason: str) -> None:
    await rejects(verifiers, k8s(oidc_claims(sub=sub)), reason)
