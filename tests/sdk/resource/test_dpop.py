"""DPoP-bound credentials at the API (RFC 9449 §4.3, §7, §9): the verifier, the middleware
and the FastAPI dependency, against the in-process broker on a fake clock.

No ``from __future__ import annotations``: FastAPI reads the annotations of endpoints
defined inside functions.
"""

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from deputy.clock import FakeClock
from deputy.sdk.agent import Credential, CredentialAuth
from deputy.sdk.dpop import DpopKey
from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource import (
    DeputyAuthMiddleware,
    DeputyVerifier,
    DpopNonces,
    DpopRejected,
    VerifiedCredential,
    presented_credential,
    request_url,
)
from deputy.sdk.resource.asgi import Receive, Scope, Send
from deputy.sdk.resource.fastapi import DeputyResource

from .local import AUDIENCE, LocalBroker

METADATA = "https://crm.example/.well-known/oauth-protected-resource"
API = "http://api.test"
URL = API + "/accounts/42"
ALGS = "ES256 ES384 ES512 PS256 PS384 PS512 RS256 RS384 RS512"
SECRET = b"s" * 32


class JktApp:
    """Answers 200 with the thumbprint the credential it was handed is bound to."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        credential = scope["state"]["deputy"]
        body = json.dumps({"user": credential.user, "jkt": credential.jkt}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API)


@pytest.fixture
def key(clock: FakeClock) -> DpopKey:
    return DpopKey(clock)


@pytest.fixture
def bound(broker: LocalBroker, key: DpopKey) -> str:
    """A credential bound to ``key``."""
    return broker.mint(broker.claims(cnf={"jkt": key.jkt}))


@pytest.fixture
async def http(verifier: DeputyVerifier) -> AsyncIterator[httpx.AsyncClient]:
    guarded = DeputyAuthMiddleware(JktApp(), verifier, required_scopes=["accounts:read"])
    async with client_for(guarded) as client:
        yield client


def dpop(token: str, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


def challenge(response: httpx.Response) -> str:
    return response.headers["www-authenticate"]


def refused(response: httpx.Response, status: int, error: str) -> str:
    """Check a refusal with a DPoP challenge; its description."""
    assert response.status_code == status, response.text
    assert challenge(response).startswith(f'DPoP error="{error}", error_description="')
    assert challenge(response).endswith(f'algs="{ALGS}", resource_metadata="{METADATA}"')
    body = response.json()
    assert body["error"] == error
    description: str = body["error_description"]
    return description


# --- the verifier ---------------------------------------------------------------------------


async def test_a_bound_credential_with_its_proof_is_verified(
    verifier: DeputyVerifier, bound: str, key: DpopKey
) -> None:
    proof = key.proof("GET", URL + "?page=2", access_token=bound)
    credential = await verifier.verify_request("GET", URL + "?q=1", [f"DPoP {bound}"], [proof])
    assert credential is not None and credential.jkt == key.jkt and credential.user == "alice"
    assert await verifier.verify_request("GET", URL, [], []) is None
    assert await verifier.verify_request("GET", URL, ["Basic YWxpY2U6eA=="], []) is None


async def test_bearer_downgrade_is_refused(
    verifier: DeputyVerifier, bound: str, broker: LocalBroker
) -> None:
    with pytest.raises(DpopRejected) as caught:
        await verifier.verify(bound)
    assert caught.value.error == "invalid_token" and caught.value.status == 401
    assert "DPoP-bound" in caught.value.description
    # An unbound credential is still a bearer credential.
    assert (await verifier.verify(broker.mint())).jkt is None


async def test_a_proof_for_an_unbound_credential_is_refused(
    verifier: DeputyVerifier, broker: LocalBroker, key: DpopKey
) -> None:
    token = broker.mint()
    proof = key.proof("GET", URL, access_token=token)
    with pytest.raises(DpopRejected, match="not DPoP-bound") as caught:
        await verifier.verify_request("GET", URL, [f"DPoP {token}"], [proof])
    assert caught.value.error == "invalid_token"
    with pytest.raises(CredentialRejected) as as_bearer:
        await verifier.verify_request("GET", URL, [f"Bearer {token}"], [proof])
    assert (as_bearer.value.error, as_bearer.value.status) == ("invalid_request", 400)
    assert not isinstance(as_bearer.value, DpopRejected)


@pytest.mark.parametrize(
    "cnf",
    [{"jkt": ""}, {"jkt": 7}, "jkt", {"x5t#S256": "abc"}, {"jkt": "a", "x5t#S256": "b"}],
    ids=["empty", "number", "string", "mtls", "two-methods"],
)
async def test_a_confirmation_it_cannot_check_is_refused(
    verifier: DeputyVerifier, broker: LocalBroker, cnf: Any
) -> None:
    token = broker.mint(broker.claims(cnf=cnf))
    with pytest.raises(CredentialRejected, match="cnf") as caught:
        await verifier.verify(token)
    assert caught.value.error == "invalid_token"


async def test_the_credentials_own_refusal_comes_with_a_dpop_challenge(
    verifier: DeputyVerifier, broker: LocalBroker, key: DpopKey
) -> None:
    expired = broker.mint(broker.claims(cnf={"jkt": key.jkt}, exp=int(broker.clock.now()) - 1))
    proof = key.proof("GET", URL, access_token=expired)
    with pytest.raises(DpopRejected, match="token expired") as caught:
        await verifier.verify_request("GET", URL, [f"DPoP {expired}"], [proof])
    assert caught.value.error == "invalid_token"


# --- the middleware: every rule of RFC 9449 §4.3 and §7 ------------------------------------


async def test_a_dpop_request_reaches_the_app(
    http: httpx.AsyncClient, bound: str, key: DpopKey
) -> None:
    response = await http.get(
        "/accounts/42", headers=dpop(bound, key.proof("GET", URL, access_token=bound))
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"user": "alice", "jkt": key.jkt}
    assert "dpop-nonce" not in response.headers  # no nonces unless required


async def test_the_bound_credential_as_bearer_is_refused(
    http: httpx.AsyncClient, bound: str
) -> None:
    response = await http.get("/accounts/42", headers={"Authorization": f"Bearer {bound}"})
    assert "DPoP-bound" in refused(response, 401, "invalid_token")


async def test_an_unbound_credential_as_dpop_is_refused(
    http: httpx.AsyncClient, broker: LocalBroker, key: DpopKey
) -> None:
    token = broker.mint()
    response = await http.get(
        "/accounts/42", headers=dpop(token, key.proof("GET", URL, access_token=token))
    )
    assert "not DPoP-bound" in refused(response, 401, "invalid_token")
    # A proof alongside a Bearer credential: a Bearer refusal.
    with_bearer = await http.get(
        "/accounts/42",
        headers={"Authorization": f"Bearer {token}", "DPoP": key.proof("GET", URL)},
    )
    assert with_bearer.status_code == 400
    assert challenge(with_bearer).startswith('Bearer error="invalid_request"')


async def test_a_missing_or_doubled_proof_is_refused(
    http: httpx.AsyncClient, bound: str, key: DpopKey
) -> None:
    missing = await http.get("/accounts/42", headers={"Authorization": f"DPoP {bound}"})
    assert refused(missing, 401, "invalid_dpop_proof") == "send exactly one DPoP header"
    proofs = [key.proof("GET", URL, access_token=bound) for _ in range(2)]
    doubled = await http.get(
        "/accounts/42",
        headers=[("Authorization", f"DPoP {bound}"), ("DPoP", proofs[0]), ("DPoP", proofs[1])],
    )
    assert refused(doubled, 401, "invalid_dpop_proof") == "send exactly one DPoP header"


async def test_a_replayed_proof_is_refused(
    http: httpx.AsyncClient, bound: str, key: DpopKey
) -> None:
    headers = dpop(bound, key.proof("GET", URL, access_token=bound))
    assert (await http.get("/accounts/42", headers=headers)).status_code == 200
    again = await http.get("/accounts/42", headers=headers)
    assert refused(again, 401, "invalid_dpop_proof") == "DPoP proof was already used"


@pytest.mark.parametrize(
    ("method", "url", "reason"),
    [
        ("POST", URL, "DPoP htm must be GET"),
        ("GET", API + "/accounts/43", "DPoP htu must be 'http://api.test/accounts/42'"),
        ("GET", "https://api.test/accounts/42", "DPoP htu must be"),
        ("GET", "http://other.test/accounts/42", "DPoP htu must be"),
    ],
)
async def test_a_proof_for_another_request_is_refused(
    http: httpx.AsyncClient, bound: str, key: DpopKey, method: str, url: str, reason: str
) -> None:
    response = await http.get(
        "/accounts/42", headers=dpop(bound, key.proof(method, url, access_token=bound))
    )
    assert refused(response, 401, "invalid_dpop_proof").startswith(reason)


async def test_the_proof_must_hash_this_credential(
    http: httpx.AsyncClient, bound: str, key: DpopKey, broker: LocalBroker
) -> None:
    other = broker.mint(broker.claims(cnf={"jkt": key.jkt}, jti="jti-other"))
    mismatch = await http.get(
        "/accounts/42", headers=dpop(bound, key.proof("GET", URL, access_token=other))
    )
    assert refused(mismatch, 401, "invalid_dpop_proof") == (
        "DPoP ath does not match the access token"
    )
    without = await http.get("/accounts/42", headers=dpop(bound, key.proof("GET", URL)))
    assert refused(without, 401, "invalid_dpop_proof") == (
        "DPoP ath does not match the access token"
    )


async def test_the_proof_must_be_signed_by_the_bound_key(
    http: httpx.AsyncClient, bound: str, clock: FakeClock
) -> None:
    stranger = DpopKey(clock)
    response = await http.get(
        "/accounts/42", headers=dpop(bound, stranger.proof("GET", URL, access_token=bound))
    )
    assert refused(response, 401, "invalid_dpop_proof") == (
        "the proof is not signed by the key the credential is bound to"
    )


async def test_a_stale_or_future_proof_is_refused(
    http: httpx.AsyncClient, broker: LocalBroker, clock: FakeClock
) -> None:
    early = FakeClock(clock.now() - 61)
    key = DpopKey(early)
    token = broker.mint(broker.claims(cnf={"jkt": key.jkt}))
    stale = await http.get(
        "/accounts/42", headers=dpop(token, key.proof("GET", URL, access_token=token))
    )
    assert refused(stale, 401, "invalid_dpop_proof") == (
        "DPoP proof iat is outside the accepted window"
    )
    early.advance(61 + 31)
    ahead = await http.get(
        "/accounts/42", headers=dpop(token, key.proof("GET", URL, access_token=token))
    )
    assert refused(ahead, 401, "invalid_dpop_proof") == (
        "DPoP proof iat is outside the accepted window"
    )


async def test_a_proof_that_is_not_a_dpop_jwt_is_refused(
    http: httpx.AsyncClient, bound: str
) -> None:
    for proof in ("not-a-jwt", bound):  # the access token itself is no proof
        response = await http.get("/accounts/42", headers=dpop(bound, proof))
        refused(response, 401, "invalid_dpop_proof")


@pytest.mark.parametrize(
    ("value", "description"),
    [("DPoP", "the DPoP credential is empty"), ("DPoP a b", "the DPoP credential is malformed")],
)
async def test_a_malformed_dpop_authorization_is_invalid_request(
    http: httpx.AsyncClient, value: str, description: str
) -> None:
    response = await http.get("/accounts/42", headers={"Authorization": value})
    assert refused(response, 400, "invalid_request") == description


async def test_a_missing_scope_gets_a_dpop_challenge(
    http: httpx.AsyncClient, broker: LocalBroker, key: DpopKey
) -> None:
    token = broker.mint(broker.claims(cnf={"jkt": key.jkt}, scope="tickets:read"))
    response = await http.get(
        "/accounts/42", headers=dpop(token, key.proof("GET", URL, access_token=token))
    )
    assert response.status_code == 403
    assert challenge(response) == (
        'DPoP error="insufficient_scope", '
        'error_description="the credential lacks the scope accounts:read", '
        f'scope="accounts:read", algs="{ALGS}", resource_metadata="{METADATA}"'
    )


async def test_no_credential_still_gets_the_bare_bearer_challenge(
    http: httpx.AsyncClient, key: DpopKey
) -> None:
    response = await http.get("/accounts/42", headers={"DPoP": key.proof("GET", URL)})
    assert response.status_code == 401
    assert challenge(response) == f'Bearer resource_metadata="{METADATA}"'


async def test_the_replay_memory_is_bounded(broker: LocalBroker, bound: str, key: DpopKey) -> None:
    verifier = broker.verifier(dpop_replay_size=2)
    try:
        for n in range(2):
            proof = key.proof("GET", URL, access_token=bound)
            assert await verifier.verify_request("GET", URL, [f"DPoP {bound}"], [proof]), n
        full = key.proof("GET", URL, access_token=bound)
        with pytest.raises(DpopRejected, match="already used"):
            await verifier.verify_request("GET", URL, [f"DPoP {bound}"], [full])
        broker.clock.advance(91)  # the first ids are forgotten once their proofs are too old
        fresh = DpopKey(broker.clock)
        token = broker.mint(broker.claims(cnf={"jkt": fresh.jkt}))
        proof = fresh.proof("GET", URL, access_token=token)
        assert await verifier.verify_request("GET", URL, [f"DPoP {token}"], [proof])
    finally:
        await verifier.aclose()


async def test_the_proof_algorithms_can_be_narrowed(broker: LocalBroker) -> None:
    verifier = broker.verifier(dpop_algorithms=["ES256"])
    try:
        guarded = DeputyAuthMiddleware(JktApp(), verifier)
        async with client_for(guarded) as client:
            response = await client.get("/", headers={"Authorization": "DPoP"})
        assert 'algs="ES256"' in challenge(response)
        assert verifier.dpop_algorithms == ("ES256",)
    finally:
        await verifier.aclose()
    with pytest.raises(ValueError, match="algorithms"):
        broker.verifier(dpop_algorithms=["HS256"])


# --- where the request went: the URL a proof names ------------------------------------------


def scope_of(**changes: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": "https",
        "path": "/crm/accounts/a b",
        "raw_path": b"/crm/accounts/a%20b",
        "root_path": "/crm",
        "headers": [(b"host", b"api.example:8443")],
        "server": ("10.0.0.7", 8000),
    }
    scope.update(changes)
    return scope


def test_the_request_url_is_rebuilt_from_the_request() -> None:
    assert request_url(scope_of()) == "https://api.example:8443/crm/accounts/a%20b"
    assert request_url(scope_of(raw_path=None)) == "https://api.example:8443/crm/accounts/a%20b"
    assert request_url(scope_of(headers=[])) == "https://10.0.0.7:8000/crm/accounts/a%20b"
    assert request_url(scope_of(headers=[], server=None)) == (
        "https://localhost/crm/accounts/a%20b"
    )


def test_a_public_url_replaces_what_a_proxy_changed() -> None:
    public = "https://gateway.example/crm"
    assert request_url(scope_of(), public) == "https://gateway.example/crm/accounts/a%20b"
    assert request_url(scope_of(root_path=""), "https://gateway.example") == (
        "https://gateway.example/crm/accounts/a%20b"
    )
    assert request_url(scope_of(raw_path=b"/crm", path="/crm"), public + "/") == (
        "https://gateway.example/crm/"
    )


async def test_the_middleware_checks_the_public_url(
    verifier: DeputyVerifier, bound: str, key: DpopKey
) -> None:
    public = "https://crm.example/v1"
    guarded = DeputyAuthMiddleware(JktApp(), verifier, public_url=public + "/")
    async with client_for(guarded) as client:
        ok = await client.get(
            "/accounts/42",
            headers=dpop(bound, key.proof("GET", public + "/accounts/42", access_token=bound)),
        )
        assert ok.status_code == 200, ok.text
        local = await client.get(
            "/accounts/42", headers=dpop(bound, key.proof("GET", URL, access_token=bound))
        )
        assert local.status_code == 401
    for wrong in ("crm.example", "https://crm.example/?q=1", "ftp://crm.example"):
        with pytest.raises(ValueError, match="public_url"):
            DeputyAuthMiddleware(JktApp(), verifier, public_url=wrong)


# --- server nonces (RFC 9449 §9) -------------------------------------------------------------


@pytest.fixture
async def nonce_verifier(broker: LocalBroker) -> AsyncIterator[DeputyVerifier]:
    verifier = broker.verifier(require_dpop_nonce=True, dpop_nonce_secret=SECRET)
    yield verifier
    await verifier.aclose()


async def test_a_proof_without_the_nonce_is_asked_for_it(
    nonce_verifier: DeputyVerifier, broker: LocalBroker, key: DpopKey, clock: FakeClock
) -> None:
    bound = broker.mint(broker.claims(cnf={"jkt": key.jkt}, exp=int(clock.now()) + 3600))
    guarded = DeputyAuthMiddleware(JktApp(), nonce_verifier)
    async with client_for(guarded) as client:
        first = await client.get(
            "/accounts/42", headers=dpop(bound, key.proof("GET", URL, access_token=bound))
        )
        refused(first, 401, "use_dpop_nonce")
        nonce = first.headers["dpop-nonce"]
        assert nonce == nonce_verifier.dpop_nonce()
        proof = key.proof("GET", URL, access_token=bound, nonce=nonce)
        ok = await client.get("/accounts/42", headers=dpop(bound, proof))
        assert ok.status_code == 200, ok.text
        assert ok.headers["dpop-nonce"] == nonce  # every answer to a DPoP request has one
        wrong = key.proof("GET", URL, access_token=bound, nonce="made-up")
        guessed = await client.get("/accounts/42", headers=dpop(bound, wrong))
        refused(guessed, 401, "use_dpop_nonce")
        # A nonce is good in its window and the next one.
        clock.advance(60)
        assert nonce_verifier.dpop_nonce() != nonce
        late = key.proof("GET", URL, access_token=bound, nonce=nonce)
        still = await client.get("/accounts/42", headers=dpop(bound, late))
        assert still.status_code == 200
        assert still.headers["dpop-nonce"] == nonce_verifier.dpop_nonce()
        clock.advance(60)
        stale = key.proof("GET", URL, access_token=bound, nonce=nonce)
        expired = await client.get("/accounts/42", headers=dpop(bound, stale))
        refused(expired, 401, "use_dpop_nonce")
        assert expired.headers["dpop-nonce"] == nonce_verifier.dpop_nonce()


async def test_an_invalid_proof_is_not_asked_for_a_nonce(
    nonce_verifier: DeputyVerifier, bound: str, key: DpopKey
) -> None:
    guarded = DeputyAuthMiddleware(JktApp(), nonce_verifier)
    async with client_for(guarded) as client:
        wrong = await client.get(
            "/accounts/42", headers=dpop(bound, key.proof("POST", URL, access_token=bound))
        )
        refused(wrong, 401, "invalid_dpop_proof")
        garbage = await client.get("/accounts/42", headers=dpop(bound, "x.y.z"))
        refused(garbage, 401, "invalid_dpop_proof")
        # Bearer requests are not DPoP requests: no nonce for them.
        bearer = await client.get("/accounts/42", headers={"Authorization": "Bearer a.b.c"})
        assert "dpop-nonce" not in bearer.headers


async def test_the_agent_sdk_answers_the_nonce_challenge(
    nonce_verifier: DeputyVerifier, bound: str, key: DpopKey, clock: FakeClock
) -> None:
    guarded = DeputyAuthMiddleware(JktApp(), nonce_verifier)
    credential = Credential(
        tool="customer_data_api",
        access_token=bound,
        scope="accounts:read",
        audience=AUDIENCE,
        issued_at=clock.now(),
        expires_at=clock.now() + 120,
        execution_id="exe_1",
        decision_id="dec_1",
        token_type="DPoP",
        dpop_key=key,
    )
    seen: list[int] = []

    async def record(response: httpx.Response) -> None:
        seen.append(response.status_code)

    auth = CredentialAuth(credential, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), auth=auth, event_hooks={"response": [record]}
    ) as client:
        assert (await client.get(URL)).status_code == 200
        assert seen == [401, 200]
        assert (await client.get(URL)).status_code == 200
        assert seen == [401, 200, 200]  # the nonce was remembered


async def test_replicas_sharing_a_secret_accept_each_others_nonces(
    broker: LocalBroker, nonce_verifier: DeputyVerifier, bound: str, key: DpopKey
) -> None:
    replica = broker.verifier(require_dpop_nonce=True, dpop_nonce_secret=SECRET)
    stranger = broker.verifier(require_dpop_nonce=True)
    try:
        nonce = nonce_verifier.dpop_nonce()
        assert replica.dpop_nonce() == nonce != stranger.dpop_nonce()
        proof = key.proof("GET", URL, access_token=bound, nonce=nonce)
        assert await replica.verify_request("GET", URL, [f"DPoP {bound}"], [proof])
        proof = key.proof("GET", URL, access_token=bound, nonce=nonce)
        with pytest.raises(DpopRejected) as caught:
            await stranger.verify_request("GET", URL, [f"DPoP {bound}"], [proof])
        assert caught.value.error == "use_dpop_nonce"
        assert caught.value.nonce == stranger.dpop_nonce()
    finally:
        await replica.aclose()
        await stranger.aclose()


def test_nonce_options_are_checked(broker: LocalBroker, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        DpopNonces(clock, secret=b"short")
    with pytest.raises(ValueError, match="window"):
        DpopNonces(clock, window=0)
    with pytest.raises(ValueError, match="only used with require_dpop_nonce"):
        DeputyVerifier("https://deputy.example", AUDIENCE, dpop_nonce_secret=SECRET)
    nonces = DpopNonces(clock, secret=SECRET, context=AUDIENCE)
    other_api = DpopNonces(clock, secret=SECRET, context="https://tickets.example")
    assert nonces.current() != other_api.current()
    assert nonces.valid(nonces.current()) and not nonces.valid(other_api.current())
    assert not nonces.valid(7) and not nonces.valid("é" * 3) and not nonces.valid("x" * 100)
    assert "secret" not in repr(nonces) and repr(SECRET) not in repr(nonces)


# --- Authorization parsing, and the FastAPI dependency -------------------------------------


def test_the_authorization_scheme_is_read() -> None:
    assert presented_credential([]) is None
    assert presented_credential(["Basic YWxpY2U6eA=="]) is None
    assert presented_credential(["bearer a.b.c"]) == ("Bearer", "a.b.c")
    assert presented_credential(["dpop   a.b.c "]) == ("DPoP", "a.b.c")
    with pytest.raises(CredentialRejected, match="more than one"):
        presented_credential(["DPoP a.b.c", "DPoP a.b.c"])


def build(deputy: DeputyResource) -> FastAPI:
    app = FastAPI()

    @app.get("/accounts/{account_id}")
    async def read_account(
        who: Annotated[VerifiedCredential, Depends(deputy.require_scope("accounts:read"))],
    ) -> dict[str, Any]:
        return {"user": who.user, "jkt": who.jkt}

    @app.post("/accounts/{account_id}")
    async def write_account(
        who: Annotated[VerifiedCredential, Depends(deputy.require_scope("accounts:write"))],
    ) -> dict[str, Any]:
        return {"user": who.user}

    return app


async def test_the_fastapi_dependency_takes_dpop_requests(
    verifier: DeputyVerifier, bound: str, key: DpopKey
) -> None:
    async with client_for(build(DeputyResource(verifier))) as client:
        ok = await client.get(
            "/accounts/42", headers=dpop(bound, key.proof("GET", URL, access_token=bound))
        )
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"user": "alice", "jkt": key.jkt}
        downgrade = await client.get("/accounts/42", headers={"Authorization": f"Bearer {bound}"})
        assert downgrade.status_code == 401
        assert challenge(downgrade).startswith('DPoP error="invalid_token"')
        assert f'algs="{ALGS}"' in challenge(downgrade)
        replay_headers = dpop(bound, key.proof("GET", URL, access_token=bound))
        assert (await client.get("/accounts/42", headers=replay_headers)).status_code == 200
        replay = await client.get("/accounts/42", headers=replay_headers)
        assert replay.status_code == 401
        assert challenge(replay).startswith('DPoP error="invalid_dpop_proof"')
        scoped = await client.post(
            "/accounts/42", headers=dpop(bound, key.proof("POST", URL, access_token=bound))
        )
        assert scoped.status_code == 403
        assert challenge(scoped).startswith('DPoP error="insufficient_scope"')


async def test_the_fastapi_dependency_checks_the_public_url(
    verifier: DeputyVerifier, bound: str, key: DpopKey
) -> None:
    public = "https://crm.example"
    deputy = DeputyResource(verifier, public_url=public)
    async with client_for(build(deputy)) as client:
        ok = await client.get(
            "/accounts/42",
            headers=dpop(bound, key.proof("GET", public + "/accounts/42", access_token=bound)),
        )
        assert ok.status_code == 200, ok.text
        local = await client.get(
            "/accounts/42", headers=dpop(bound, key.proof("GET", URL, access_token=bound))
        )
        assert local.status_code == 401
