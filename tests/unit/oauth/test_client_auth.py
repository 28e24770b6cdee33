"""Client authentication: Basic, client_secret_post, private_key_jwt and the replay cache."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import pytest

from deputy.clock import FakeClock
from deputy.errors import InvalidClient, InvalidRequest, OAuthError, TemporarilyUnavailable
from deputy.identity import JwksCache, KeySourceError
from deputy.identity.jose import MAX_TOKEN_BYTES
from deputy.identity.replay import ReplayCache
from deputy.oauth.client_auth import (
    JWT_BEARER_ASSERTION,
    PRIVATE_KEY_JWT,
    SECRET_BASIC,
    SECRET_POST,
    Client,
    ClientAuthenticator,
    ClientEntry,
    hash_secret,
    new_secret,
)
from deputy.oauth.form import Form

from ..identity.tokens import DROP, NOW, FakeKeySource, ec_key, key_set, sign, with_header

ISSUER = "https://deputy.example"
INTROSPECT = f"{ISSUER}/introspect"
AUDIENCES = frozenset({ISSUER, INTROSPECT})
RS_SECRET = "s3cret:with+odd chars"
OPS_SECRET = "operator-secret"
FAILED = "client authentication failed"

_jti = itertools.count()


def form(**values: str) -> Form:
    return Form({name: (value,) for name, value in values.items()})


def basic(client_id: str, secret: str, scheme: str = "Basic") -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return f"{scheme} {base64.b64encode(pair).decode('ascii')}"


def raw_basic(data: bytes) -> str:
    return f"Basic {base64.b64encode(data).decode('ascii')}"


def claims(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iss": "rs-jwt",
        "sub": "rs-jwt",
        "aud": INTROSPECT,
        "exp": NOW + 60,
        "iat": NOW,
        "jti": f"jti-{next(_jti)}",
    }
    out.update(changes)
    return {name: value for name, value in out.items() if value is not DROP}


def assertion(claims_: dict[str, Any] | None = None, **header: Any) -> str:
    header.setdefault("kid", "c1")
    return sign(claims() if claims_ is None else claims_, ec_key("client-rs-jwt"), **header)


def jwt_form(token: str, **extra: str) -> Form:
    return form(client_assertion_type=JWT_BEARER_ASSERTION, client_assertion=token, **extra)


@dataclass
class Env:
    auth: ClientAuthenticator
    clock: FakeClock
    replay: ReplayCache
    source: FakeKeySource


def build(*, max_entries: int = 100, source: FakeKeySource | None = None) -> Env:
    clock = FakeClock(NOW)
    source = source or FakeKeySource(key_set(("c1", ec_key("client-rs-jwt"))))
    other = FakeKeySource(key_set(("c1", ec_key("client-other-jwt"))))
    replay = ReplayCache(clock, max_entries=max_entries)
    entries = [
        ClientEntry("rs", frozenset({"https://api.example"}), False, hash_secret(RS_SECRET)),
        ClientEntry("ops", frozenset(), True, secret_sha256=hash_secret(OPS_SECRET)),
        ClientEntry(
            "rs-jwt", frozenset({"https://mail.example"}), False, keys=JwksCache(source, clock)
        ),
        ClientEntry("other-jwt", frozenset(), False, keys=JwksCache(other, clock)),
    ]
    auth = ClientAuthenticator(entries, clock, audiences=AUDIENCES, replay=replay)
    return Env(auth, clock, replay, source)


@pytest.fixture
def env() -> Env:
    return build()


async def failed(env: Env, authorization: str | None, body: Form, debug: str) -> InvalidClient:
    """Authentication fails with the generic description; ``debug`` names the cause."""
    with pytest.raises(InvalidClient) as info:
        await env.auth.authenticate(authorization, body)
    assert info.value.description == FAILED
    assert debug in info.value.debug
    assert_no_credentials(info.value, authorization, body)
    return info.value


def assert_no_credentials(exc: OAuthError, authorization: str | None, body: Form) -> None:
    presented = [v for name in ("client_secret", "client_assertion") for v in body.all(name)]
    presented += [RS_SECRET, OPS_SECRET]
    if authorization is not None and " " in authorization:
        presented.append(authorization.split(" ", 1)[1])
    for value in presented:
        if value:
            assert value not in exc.description
            assert value not in exc.debug


# --- successful authentication -------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
async def test_basic_authenticates_with_url_encoded_credentials(env: Env, scheme: str) -> None:
    client = await env.auth.authenticate(basic("rs", RS_SECRET, scheme), form())
    assert client == Client("rs", frozenset({"https://api.example"}), False, SECRET_BASIC)


async def test_basic_accepts_a_matching_form_client_id(env: Env) -> None:
    client = await env.auth.authenticate(basic("ops", OPS_SECRET), form(client_id="ops"))
    assert (client.name, client.admin) == ("ops", True)


async def test_post_authenticates(env: Env) -> None:
    client = await env.auth.authenticate(None, form(client_id="ops", client_secret=OPS_SECRET))
    assert client == Client("ops", frozenset(), True, SECRET_POST)


async def test_bearer_header_is_ignored_when_the_form_authenticates(env: Env) -> None:
    body = form(client_id="rs", client_secret=RS_SECRET)
    client = await env.auth.authenticate("Bearer abc.def.ghi", body)
    assert client.method == SECRET_POST


async def test_private_key_jwt_authenticates(env: Env) -> None:
    token = assertion(claims(aud=[ISSUER]))
    client = await env.auth.authenticate(None, jwt_form(token, client_id="rs-jwt"))
    assert client == Client("rs-jwt", frozenset({"https://mail.example"}), False, PRIVATE_KEY_JWT)
    assert len(env.replay) == 1


async def test_private_key_jwt_without_client_id(env: Env) -> None:
    client = await env.auth.authenticate(None, jwt_form(assertion()))
    assert client.name == "rs-jwt"


async def test_assertion_may_live_exactly_the_maximum(env: Env) -> None:
    client = await env.auth.authenticate(None, jwt_form(assertion(claims(exp=NOW + 300))))
    assert client.method == PRIVATE_KEY_JWT


async def test_jti_is_single_use_per_client_not_globally(env: Env) -> None:
    mine = assertion(claims(jti="shared"))
    theirs = sign(
        claims(iss="other-jwt", sub="other-jwt", jti="shared"), ec_key("client-other-jwt"), kid="c1"
    )
    assert (await env.auth.authenticate(None, jwt_form(mine))).name == "rs-jwt"
    assert (await env.auth.authenticate(None, jwt_form(theirs))).name == "other-jwt"


# --- secrets -------------------------------------------------------------------------------


async def test_wrong_secret(env: Env) -> None:
    await failed(env, basic("rs", "guess"), form(), "wrong secret")


async def test_wrong_secret_posted(env: Env) -> None:
    await failed(env, None, form(client_id="ops", client_secret=RS_SECRET), "wrong secret")


async def test_unknown_client_looks_like_a_wrong_secret(env: Env) -> None:
    unknown = await failed(env, basic("nobody", RS_SECRET), form(), "unknown client 'nobody'")
    wrong = await failed(env, basic("rs", "guess"), form(), "wrong secret")
    assert unknown.body() == wrong.body()
    assert unknown.status_code == wrong.status_code == 401


async def test_jwt_client_cannot_use_a_secret(env: Env) -> None:
    await failed(
        env, None, form(client_id="rs-jwt", client_secret="some-secret"), "private_key_jwt"
    )


async def test_secret_client_cannot_use_an_assertion(env: Env) -> None:
    token = assertion(claims(iss="rs", sub="rs"))
    await failed(env, None, jwt_form(token), "authenticates with a secret")


async def test_basic_user_must_match_form_client_id(env: Env) -> None:
    await failed(env, basic("rs", RS_SECRET), form(client_id="ops"), "client_id differs")


async def test_post_secret_without_client_id(env: Env) -> None:
    with pytest.raises(InvalidRequest, match="client_secret needs client_id"):
        await env.auth.authenticate(None, form(client_secret=RS_SECRET))


@pytest.mark.parametrize(
    ("authorization", "debug"),
    [
        ("Basic !!!not-base64!!!", "not base64"),
        ("Basic cnM6czNjcmV0MQ", "not base64"),  # missing padding is not base64
        (raw_basic(b"\xff\xfe:secret"), "not base64 of UTF-8"),
        (raw_basic(b"rs%ff:secret"), "not base64 of UTF-8"),
        (raw_basic(b"no-colon-here"), "need a client id and a secret"),
        (raw_basic(b":secret"), "need a client id and a secret"),
        (raw_basic(b"rs:"), "need a client id and a secret"),
        ("Basic", "need a client id and a secret"),
        ("Basic " + "A" * 5000, "too long"),
    ],
)
async def test_malformed_basic(env: Env, authorization: str, debug: str) -> None:
    await failed(env, authorization, form(), debug)


# --- method selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "body", "named"),
    [
        (basic("rs", RS_SECRET), form(client_id="rs", client_secret=RS_SECRET), "basic and"),
        (basic("rs", RS_SECRET), jwt_form("a.b.c"), "private_key_jwt"),
        (None, jwt_form("a.b.c", client_id="rs", client_secret=RS_SECRET), "post and"),
        (None, form(client_secret="posted-secret", client_assertion="a.b.c"), "private_key_jwt"),
    ],
)
async def test_two_methods_at_once(
    env: Env, authorization: str | None, body: Form, named: str
) -> None:
    with pytest.raises(InvalidRequest, match="exactly one client authentication method") as info:
        await env.auth.authenticate(authorization, body)
    assert named in info.value.description
    assert_no_credentials(info.value, authorization, body)


@pytest.mark.parametrize(
    ("authorization", "body"),
    [
        (None, form()),
        (None, form(client_id="rs")),
        ("Bearer abc.def.ghi", form()),
        ("DPoP abc.def.ghi", form(client_id="rs")),
    ],
)
async def test_no_method(env: Env, authorization: str | None, body: Form) -> None:
    with pytest.raises(InvalidClient, match="client authentication is required"):
        await env.auth.authenticate(authorization, body)


# --- private_key_jwt -----------------------------------------------------------------------


async def test_assertion_replay(env: Env) -> None:
    token = assertion()
    await env.auth.authenticate(None, jwt_form(token))
    env.clock.advance(10)
    await failed(env, None, jwt_form(token), "jti was already used")


async def test_assertion_refused_when_replay_cache_is_full() -> None:
    env = build(max_entries=1)
    await env.auth.authenticate(None, jwt_form(assertion()))
    await failed(env, None, jwt_form(assertion()), "replay cache is full")


async def test_assertion_with_exp_too_far(env: Env) -> None:
    token = assertion(claims(exp=NOW + 301))
    await failed(env, None, jwt_form(token), "client assertions must be short-lived")
    assert len(env.replay) == 0


@pytest.mark.parametrize(
    ("aud", "debug"),
    [
        ("https://elsewhere.example", "aud does not name this server"),
        ([f"{ISSUER}/"], "aud does not name this server"),
        # Also addressed to someone else, who could replay it here (rfc7523bis).
        (["https://elsewhere.example", ISSUER], "aud must be this server alone"),
        ([f"{ISSUER}/", "deputy"], "aud must be this server alone"),
        ([], "aud must be this server alone"),
        (DROP, "aud must be this server alone"),
        ([ISSUER] * 2, "aud must be this server alone"),
    ],
)
async def test_assertion_aud_wrong(env: Env, aud: Any, debug: str) -> None:
    await failed(env, None, jwt_form(assertion(claims(aud=aud))), debug)


async def test_assertion_iss_differs_from_sub(env: Env) -> None:
    token = assertion(claims(sub="other-jwt"))
    await failed(env, None, jwt_form(token), "sub differs from iss")


@pytest.mark.parametrize(
    ("changes", "debug"), [({"iss": DROP}, "no iss"), ({"sub": DROP}, "no sub")]
)
async def test_assertion_needs_iss_and_sub(env: Env, changes: dict[str, Any], debug: str) -> None:
    await failed(env, None, jwt_form(assertion(claims(**changes))), debug)


async def test_assertion_client_id_mismatch(env: Env) -> None:
    token = assertion()
    await failed(env, None, jwt_form(token, client_id="other-jwt"), "client_id differs")


async def test_assertion_of_unknown_client(env: Env) -> None:
    token = assertion(claims(iss="nobody", sub="nobody"))
    await failed(env, None, jwt_form(token), "unknown client 'nobody'")


async def test_assertion_expired(env: Env) -> None:
    token = assertion(claims(exp=NOW + 60))
    env.clock.advance(60)
    await failed(env, None, jwt_form(token), "token expired")


async def test_assertion_without_exp(env: Env) -> None:
    await failed(env, None, jwt_form(assertion(claims(exp=DROP))), "no exp")


async def test_assertion_bad_signature(env: Env) -> None:
    token = sign(claims(), ec_key("someone-else"), kid="c1")
    await failed(env, None, jwt_form(token), "signature does not verify")


async def test_assertion_signed_with_another_clients_key(env: Env) -> None:
    token = sign(claims(), ec_key("client-other-jwt"), kid="c1")
    await failed(env, None, jwt_form(token), "signature does not verify")


async def test_assertion_with_unknown_kid(env: Env) -> None:
    await failed(env, None, jwt_form(assertion(kid="nope")), "unknown key id")


async def test_assertion_with_symmetric_alg(env: Env) -> None:
    token = with_header({"alg": "HS256", "kid": "c1"}, claims())
    await failed(env, None, jwt_form(token), "algorithm 'HS256' is not allowed")


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "dpop+jwt", "DPoP+JWT"])
async def test_assertion_typ_refused(env: Env, typ: str) -> None:
    await failed(env, None, jwt_form(assertion(typ=typ)), "is not accepted here")


@pytest.mark.parametrize("jti", [DROP, "", "x" * 257, 7])
async def test_assertion_needs_a_usable_jti(env: Env, jti: Any) -> None:
    await failed(env, None, jwt_form(assertion(claims(jti=jti))), "needs a jti of 1 to 256")


async def test_assertion_too_large(env: Env) -> None:
    token = assertion(claims(pad="x" * MAX_TOKEN_BYTES))
    await failed(env, None, jwt_form(token), f"larger than {MAX_TOKEN_BYTES} bytes")


async def test_assertion_not_a_jwt(env: Env) -> None:
    await failed(env, None, jwt_form("not-a-jwt"), "three segments")


async def test_failed_assertion_is_not_recorded(env: Env) -> None:
    token = sign(claims(jti="once"), ec_key("someone-else"), kid="c1")
    await failed(env, None, jwt_form(token), "signature does not verify")
    client = await env.auth.authenticate(None, jwt_form(assertion(claims(jti="once"))))
    assert client.name == "rs-jwt"


async def test_unavailable_keys_are_a_503() -> None:
    env = build(source=FakeKeySource(KeySourceError("jwks.json: cannot read")))
    with pytest.raises(TemporarilyUnavailable, match="cannot be fetched") as info:
        await env.auth.authenticate(None, jwt_form(assertion()))
    assert info.value.status_code == 503 and info.value.retry_after == 1
    assert env.source.fetches == 1


async def test_unsupported_assertion_type(env: Env) -> None:
    body = form(
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        client_assertion="PHNhbWw+",
    )
    with pytest.raises(InvalidRequest, match="is not supported") as info:
        await env.auth.authenticate(None, body)
    assert JWT_BEARER_ASSERTION in info.value.description
    assert "PHNhbWw+" not in info.value.description


async def test_assertion_without_type(env: Env) -> None:
    token = assertion()
    with pytest.raises(InvalidRequest, match="client_assertion_type is required") as info:
        await env.auth.authenticate(None, form(client_assertion=token))
    assert token not in info.value.description


async def test_assertion_type_without_assertion(env: Env) -> None:
    body = form(client_assertion_type=JWT_BEARER_ASSERTION)
    with pytest.raises(InvalidRequest, match="client_assertion is required"):
        await env.auth.authenticate(None, body)


# --- replay cache --------------------------------------------------------------------------


async def test_replay_cache_refuses_a_second_use() -> None:
    cache = ReplayCache(FakeClock(NOW))
    assert await cache.first_use("rs:a", NOW + 10) is True
    assert "rs:a" in cache
    assert await cache.first_use("rs:a", NOW + 10) is False
    assert await cache.first_use("rs:b", NOW + 10) is True


async def test_replay_cache_full_refuses_without_evicting() -> None:
    clock = FakeClock(NOW)
    cache = ReplayCache(clock, max_entries=2)
    assert await cache.first_use("a", NOW + 10)
    assert await cache.first_use("b", NOW + 20)
    assert cache.full
    assert await cache.first_use("c", NOW + 5) is False
    assert await cache.first_use("a", NOW + 10) is False  # still remembered
    assert len(cache) == 2


async def test_replay_cache_purges_expired_entries() -> None:
    clock = FakeClock(NOW)
    cache = ReplayCache(clock, max_entries=2)
    await cache.first_use("a", NOW + 10)
    await cache.first_use("b", NOW + 20)
    clock.advance(10)  # "a" expires at exactly now
    assert "a" not in cache
    assert await cache.first_use("c", NOW + 30) is True
    assert len(cache) == 2
    assert await cache.first_use("b", NOW + 20) is False
    clock.advance(100)
    assert await cache.first_use("a", NOW + 200) is True
    assert len(cache) == 1


async def test_replay_cache_refuses_an_already_expired_entry() -> None:
    cache = ReplayCache(FakeClock(NOW))
    assert await cache.first_use("a", NOW) is False
    assert len(cache) == 0


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
async def test_replay_cache_needs_a_finite_expiry(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        await ReplayCache(FakeClock(NOW)).first_use("a", bad)


def test_replay_cache_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayCache(FakeClock(NOW), max_entries=0)


# --- configuration and helpers -------------------------------------------------------------


def test_hash_secret_is_sha256_hex() -> None:
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_secret("abc") == expected


def test_new_secret() -> None:
    secret, digest = new_secret()
    assert len(secret) == 43
    assert digest == hash_secret(secret)
    assert new_secret()[0] != secret


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of secret_sha256 or keys"),
        (
            {"secret_sha256": "a" * 64, "keys": JwksCache(FakeKeySource(), FakeClock())},
            "exactly one of secret_sha256 or keys",
        ),
        ({"secret_sha256": "A" * 64}, "64 lowercase hex"),
        ({"secret_sha256": "a" * 63}, "64 lowercase hex"),
    ],
)
def test_client_entry_needs_one_credential(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientEntry("rs", frozenset(), False, **kwargs)


@pytest.mark.parametrize("name", ["", "a:b", "tab\there"])
def test_client_entry_name(name: str) -> None:
    with pytest.raises(ValueError, match="client name"):
        ClientEntry(name, frozenset(), False, secret_sha256="a" * 64)


def test_authenticator_refuses_duplicate_clients() -> None:
    entry = ClientEntry("rs", frozenset(), False, secret_sha256="a" * 64)
    with pytest.raises(ValueError, match="configured twice"):
        ClientAuthenticator([entry, entry], FakeClock(), audiences=AUDIENCES)


@pytest.mark.parametrize("audiences", [frozenset(), frozenset({""})])
def test_authenticator_needs_audiences(audiences: frozenset[str]) -> None:
    with pytest.raises(ValueError, match="audiences"):
        ClientAuthenticator([], FakeClock(), audiences=audiences)
