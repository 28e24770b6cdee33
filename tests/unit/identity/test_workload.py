"""WorkloadVerifier end to end: naming, algorithms, keys, signatures and token structure."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.errors import TokenRejected
from deputy.identity import (
    JwksCache,
    OidcWorkloadTrust,
    SpiffeTrust,
    UrlKeySource,
    Workload,
    WorkloadVerifier,
)

from .conftest import Verifiers
from .tokens import (
    AUDIENCE,
    DROP,
    K8S_ISSUER,
    K8S_SUB,
    NOW,
    SVID_SUB,
    TRUST_DOMAIN,
    FakeKeySource,
    b64,
    dumps,
    ec_key,
    k8s,
    key_set,
    oidc_claims,
    replace_signature,
    rsa_key,
    sign,
    sign_segments,
    signature_of,
    svid,
    svid_claims,
    with_header,
)


async def rejects(verifiers: Verifiers, token: Any, reason: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        await verifiers.workload.verify(token)
    assert reason in caught.value.reason, caught.value.reason
    return caught.value


# --- accepted -----------------------------------------------------------------------------


async def test_jwt_svid_is_a_spiffe_workload(verifiers: Verifiers) -> None:
    workload = await verifiers.workload.verify(svid())
    assert workload == Workload(
        id=SVID_SUB,
        issuer=f"spiffe://{TRUST_DOMAIN}",
        kind="spiffe",
        expires_at=NOW + 300,
        instance=None,
    )


async def test_oidc_workload_is_named_issuer_hash_subject(verifiers: Verifiers) -> None:
    workload = await verifiers.workload.verify(k8s())
    assert workload == Workload(
        id="https://k8s.example/cluster-1#system:serviceaccount:agents:support",
        issuer=K8S_ISSUER,
        kind="oidc",
        expires_at=NOW + 600,
        instance="support-7d9f",
    )


@pytest.mark.parametrize(
    "kubernetes",
    [DROP, {"pod": "x"}, {"pod": {"name": 5}}, {"pod": {"name": ""}}, "kubernetes.io"],
    ids=["absent", "pod-string", "name-int", "name-empty", "claim-string"],
)
async def test_instance_only_from_a_well_formed_pod_name(
    verifiers: Verifiers, kubernetes: Any
) -> None:
    claims = oidc_claims(**{"kubernetes.io": kubernetes})
    assert (await verifiers.workload.verify(k8s(claims))).instance is None


@pytest.mark.parametrize("typ", ["JWT", "jwt", "JOSE"])
async def test_jwt_svid_typ_jwt_or_jose(verifiers: Verifiers, typ: str) -> None:
    assert (await verifiers.workload.verify(svid(typ=typ))).kind == "spiffe"


async def test_second_bundle_key_and_ps256(verifiers: Verifiers) -> None:
    token = sign(svid_claims(), ec_key("svid-next"), kid="k2")
    assert (await verifiers.workload.verify(token)).id == SVID_SUB
    assert (await verifiers.workload.verify(k8s(alg="PS256"))).kind == "oidc"


# --- alg and keys -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none(verifiers: Verifiers, alg: str) -> None:
    await rejects(verifiers, with_header({"alg": alg, "kid": "k1"}, svid_claims()), "'none'")
    token = f"{b64(dumps({'alg': alg}))}.{b64(dumps(oidc_claims()))}."
    await rejects(verifiers, token, "no signature")


@pytest.mark.parametrize("key", ["rsa", "ec"])
async def test_hs256_keyed_with_the_public_key(verifiers: Verifiers, key: str) -> None:
    public = rsa_key("k8s") if key == "rsa" else ec_key("svid")
    header = b64(dumps({"alg": "HS256", "kid": "r1" if key == "rsa" else "k1"}))
    claims = b64(dumps(oidc_claims() if key == "rsa" else svid_claims()))
    secret = public.as_pem(private=False)
    mac = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    await rejects(verifiers, f"{header}.{claims}.{b64(mac)}", "algorithm 'HS256' is not allowed")


@pytest.mark.parametrize("alg", ["EdDSA", "ES256K", "HS512", "RSA-OAEP"])
async def test_alg_outside_allow_list(verifiers: Verifiers, alg: str) -> None:
    token = with_header({"alg": alg, "kid": "k1"}, svid_claims(), b"\x01" * 64)
    await rejects(verifiers, token, f"algorithm '{alg}' is not allowed")
    assert verifiers.spiffe_source.fetches == 0  # refused before any key lookup


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
async def test_embedded_key_headers_are_ignored(verifiers: Verifiers, member: str) -> None:
    attacker = ec_key("attacker")
    values = {
        "jwk": attacker.as_dict(private=False),
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIBszCCAVmgAwIBAgIUattacker"],
    }
    token = sign(svid_claims(), attacker, kid="k1", **{member: values[member]})
    await rejects(verifiers, token, "signature does not verify")
    own_kid = sign(svid_claims(), attacker, kid="attacker", **{member: values[member]})
    await rejects(verifiers, own_kid, "unknown key id")


async def test_no_url_from_a_token_is_fetched(clock: FakeClock) -> None:
    requests: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return httpx.Response(200, json={"keys": [{**ec_key("svid").as_dict(), "kid": "k1"}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        source = UrlKeySource("https://bundle.prod.example/jwks", client)
        verifier = WorkloadVerifier(
            [SpiffeTrust(TRUST_DOMAIN, AUDIENCE, JwksCache(source, clock))], [], clock
        )
        attacker = ec_key("attacker")
        token = sign(
            svid_claims(),
            attacker,
            kid="evil",
            jku="https://evil.example/jwks.json",
            x5u="https://evil.example/x5u",
            jwk=attacker.as_dict(private=False),
        )
        with pytest.raises(TokenRejected, match="unknown key id"):
            await verifier.verify(token)
    assert requests == ["https://bundle.prod.example/jwks"]


async def test_unknown_crit(verifiers: Verifiers) -> None:
    await rejects(verifiers, svid(crit=["https://example.com/ext"]), "crit")


@pytest.mark.parametrize(
    ("kid", "reason"),
    [
        ("../../etc/passwd", "kid is not a valid key id"),
        ("' OR 1=1 --", "kid is not a valid key id"),
        ("k" * 10_240, "kid is not a valid key id"),
        (7, "kid is not a string"),
        (["k1"], "kid is not a string"),
        (None, "kid is not a string"),
    ],
    ids=["traversal", "sql", "10kb", "int", "list", "null"],
)
async def test_hostile_kids_are_refused_without_io(
    verifiers: Verifiers, kid: Any, reason: str
) -> None:
    header = b64(dumps({"alg": "ES256", "kid": kid}))
    token = sign_segments(header, b64(dumps(svid_claims())), ec_key("svid"), "ES256")
    await rejects(verifiers, token, reason)
    assert verifiers.spiffe_source.fetches == 0


async def test_jwt_svid_requires_kid(verifiers: Verifiers) -> None:
    await rejects(verifiers, svid(kid=None), "JWT-SVID has no kid")


async def test_unknown_kid_refetches_at_most_once_per_30s(
    verifiers: Verifiers, clock: FakeClock
) -> None:
    await verifiers.workload.verify(svid())
    assert verifiers.spiffe_source.fetches == 1
    clock.advance(31)
    await rejects(
        verifiers, sign(svid_claims(exp=NOW + 3600), ec_key("x"), kid="r-1"), "unknown key id"
    )
    assert verifiers.spiffe_source.fetches == 2
    clock.advance(29)
    await rejects(
        verifiers, sign(svid_claims(exp=NOW + 3600), ec_key("x"), kid="r-2"), "unknown key id"
    )
    assert verifiers.spiffe_source.fetches == 2


async def test_key_of_another_issuer_is_never_used(verifiers: Verifiers) -> None:
    # Signed with the Kubernetes key and naming its kid, but a SPIFFE sub picks the bundle.
    token = sign(svid_claims(), rsa_key("k8s"), alg="RS256", kid="r1")
    await rejects(verifiers, token, "unknown key id")


# --- signatures ---------------------------------------------------------------------------


def _tampered(how: str) -> str:
    token = svid()
    header, claims, signature = token.split(".")
    if how == "stripped":
        return f"{header}.{claims}."
    if how == "stripped-no-dot":
        return f"{header}.{claims}"
    if how == "truncated":
        return replace_signature(token, signature_of(token)[:-2])
    if how == "truncated-base64":
        return f"{header}.{claims}.{signature[:-4]}"
    if how == "swapped":
        other = svid(svid_claims(sub="spiffe://prod.example/agents/other"))
        return f"{header}.{claims}.{other.rsplit('.', 1)[1]}"
    if how == "payload-edited":
        return f"{header}.{b64(dumps(svid_claims(exp=NOW + 86_400)))}.{signature}"
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("stripped", "no signature"),
        ("stripped-no-dot", "three segments"),
        ("truncated", "signature does not verify"),
        ("truncated-base64", "signature"),
        ("swapped", "signature does not verify"),
        ("payload-edited", "signature does not verify"),
    ],
)
async def test_signature_tampering(verifiers: Verifiers, how: str, reason: str) -> None:
    await rejects(verifiers, _tampered(how), reason)


ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.mark.parametrize(
    "signature",
    [
        bytes(64),
        bytes(32) + (1).to_bytes(32, "big"),
        (1).to_bytes(32, "big") + bytes(32),
        ORDER.to_bytes(32, "big") + (1).to_bytes(32, "big"),
        (1).to_bytes(32, "big") + ORDER.to_bytes(32, "big"),
        (1).to_bytes(32, "big") + (ORDER + 5).to_bytes(32, "big"),
        b"\x01" * 63,
        b"\x01" * 65,
    ],
    ids=["r-s-zero", "r-zero", "s-zero", "r-is-n", "s-is-n", "s-above-n", "63-bytes", "65-bytes"],
)
async def test_ecdsa_out_of_range(verifiers: Verifiers, signature: bytes) -> None:
    await rejects(verifiers, replace_signature(svid(), signature), "signature does not verify")


# --- structure ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a.b.c.d.e", "JWE"),
        ("a.b", "three segments"),
        ("a.b.c.d", "three segments"),
        ('{"payload":"e30","signatures":[]}', "JSON serialization"),
        ("x" * 20_000, "larger than 16384 bytes"),
        (12345, "not a string"),
    ],
    ids=["jwe", "two-segments", "four-segments", "json-serialization", "oversize", "not-str"],
)
async def test_structure(verifiers: Verifiers, token: Any, reason: str) -> None:
    await rejects(verifiers, token, reason)


async def test_duplicate_members(verifiers: Verifiers) -> None:
    key = ec_key("svid")
    header = b64(b'{"alg":"ES256","kid":"k1","kid":"k2"}')
    await rejects(
        verifiers,
        sign_segments(header, b64(dumps(svid_claims())), key, "ES256"),
        "header has a duplicate",
    )
    claims = dumps(svid_claims())[:-1] + b',"sub":"spiffe://prod.example/admin"}'
    good_header = b64(dumps({"alg": "ES256", "kid": "k1"}))
    await rejects(
        verifiers, sign_segments(good_header, b64(claims), key, "ES256"), "claims has a duplicate"
    )
    nested = dumps(svid_claims())[:-1] + b',"act":{"sub":"a","sub":"b"}}'
    await rejects(
        verifiers, sign_segments(good_header, b64(nested), key, "ES256"), "claims has a duplicate"
    )


async def test_deeply_nested_claims(verifiers: Verifiers) -> None:
    claims = dumps(svid_claims())[:-1] + b',"deep":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    header = b64(dumps({"alg": "ES256", "kid": "k1"}))
    token = sign_segments(header, b64(claims), ec_key("svid"), "ES256")
    await rejects(verifiers, token, "claims is nested too deeply")


async def test_non_canonical_base64(verifiers: Verifiers) -> None:
    token = svid()
    header, claims, signature = token.split(".")
    await rejects(verifiers, f"{header}=.{claims}.{signature}", "header is not base64url")
    await rejects(verifiers, f"{header}.{claims}.{signature} ", "signature is not base64url")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bumped = signature[:-1] + alphabet[alphabet.index(signature[-1]) + 1]
    await rejects(verifiers, f"{header}.{claims}.{bumped}", "signature is not canonical")
    await rejects(
        verifiers, f"{header}.{claims[:5]}+{claims[6:]}.{signature}", "claims is not base64url"
    )


# --- configuration ------------------------------------------------------------------------


def test_configuration_errors(clock: FakeClock) -> None:
    keys = JwksCache(FakeKeySource(key_set(("k1", ec_key("svid")))), clock)
    with pytest.raises(ValueError, match="trust domain"):
        SpiffeTrust("Prod.Example", AUDIENCE, keys)
    with pytest.raises(ValueError, match="without '#'"):
        OidcWorkloadTrust("https://k8s.example#x", AUDIENCE, keys)
    with pytest.raises(ValueError, match="subset"):
        OidcWorkloadTrust(K8S_ISSUER, AUDIENCE, keys, algorithms=frozenset({"HS256"}))
    with pytest.raises(ValueError, match="audience"):
        SpiffeTrust(TRUST_DOMAIN, "", keys)
    trust = SpiffeTrust(TRUST_DOMAIN, AUDIENCE, keys)
    with pytest.raises(ValueError, match="configured twice"):
        WorkloadVerifier([trust, trust], [], clock)


async def test_per_trust_algorithms(clock: FakeClock) -> None:
    keys = JwksCache(FakeKeySource(key_set(("r1", rsa_key("k8s")))), clock)
    trust = OidcWorkloadTrust(K8S_ISSUER, AUDIENCE, keys, algorithms=frozenset({"PS256"}))
    verifier = WorkloadVerifier([], [trust], clock)
    assert (await verifier.verify(k8s(alg="PS256"))).kind == "oidc"
    with pytest.raises(TokenRejected, match="algorithm 'RS256' is not allowed"):
        await verifier.verify(k8s(alg="RS256"))
    assert K8S_SUB in (await verifier.verify(k8s(alg="PS256"))).id
