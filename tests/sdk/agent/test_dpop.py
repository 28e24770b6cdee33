"""DPoP end to end: the agent SDK binds each execution to a key of its own at a real broker,
and an API behind the resource SDK's middleware takes those credentials only with a proof
made for the very request; then the SDK's side alone, against scripted servers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from deputy.audit.log import AuditFilter
from deputy.clock import FakeClock
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.served import LoopbackServer
from deputy.sdk.agent import (
    BrokerRefused,
    BrokerResponseInvalid,
    Credential,
    CredentialAuth,
    DeputyClient,
    Execution,
    PolicyDenied,
    RetryPolicy,
    SdkError,
)
from deputy.sdk.dpop import DpopKey
from deputy.sdk.resource import DeputyAuthMiddleware, DeputyVerifier
from deputy.sdk.resource.asgi import Receive, Scope, Send
from deputy.tokens.dpop import access_token_hash, thumbprint
from tests.integration.deployment import Deployment, running, write_deployment
from tests.sdk.agent.support import (
    CRM,
    MOCK_BROKER,
    RESEARCH,
    EchoApi,
    Flavor,
    ScriptedBroker,
    credential_json,
    issue_json,
)

Broker = tuple[BrokerThread, httpx.Client]
ISSUER = "https://deputy.internal"
PUBLIC = "https://deputy.public.test"  # the scripted broker's issuer
CRM_TOOLS = ["customer_data_api", "ticketing_api"]
EXACT = RetryPolicy(jitter=0.0)


# --- an API protected by the resource SDK, served on loopback -------------------------------


class WhoApp:
    """Answers 200 with who the verified credential is for, and the key it is bound to."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        credential = scope["state"]["deputy"]
        body = json.dumps({"user": credential.user, "jkt": credential.jkt}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def crm_api(broker_url: str, **options: Any) -> DeputyAuthMiddleware:
    verifier = DeputyVerifier(ISSUER, CRM, base_url=broker_url, **options)
    return DeputyAuthMiddleware(WhoApp(), verifier, required_scopes=["accounts:read"])


@pytest.fixture
def crm(broker: Broker) -> Iterator[str]:
    """The CRM's base URL."""
    server, _ = broker
    with LoopbackServer(crm_api(server.url)) as api:
        yield api.url


@pytest.fixture
def crm_with_nonces(broker: Broker) -> Iterator[str]:
    server, _ = broker
    with LoopbackServer(crm_api(server.url, require_dpop_nonce=True)) as api:
        yield api.url


class Seen:
    """What came back to an httpx client, every answer of an auth flow included."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str]] = []

    def record(self, response: httpx.Response) -> None:
        self.answers.append((response.status_code, response.headers.get("www-authenticate", "")))

    async def arecord(self, response: httpx.Response) -> None:
        self.record(response)

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.answers]


async def send(
    flavor: Flavor,
    auth: httpx.Auth,
    url: str,
    method: str = "GET",
    seen: Seen | None = None,
    **kw: Any,
) -> httpx.Response:
    """A request through an httpx client of the flavour's kind, with ``auth``."""
    seen = seen or Seen()
    if flavor.is_async:
        hooks: dict[str, list[Callable[..., Any]]] = {"response": [seen.arecord]}
        async with httpx.AsyncClient(auth=auth, event_hooks=hooks) as http:
            return await http.request(method, url, **kw)
    with httpx.Client(auth=auth, event_hooks={"response": [seen.record]}) as http:
        return http.request(method, url, **kw)


def records(server: BrokerThread) -> list[dict[str, Any]]:
    return [s.record for s in server.broker.audit_reader.query(AuditFilter())]


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = pyjwt.decode(token, options={"verify_signature": False})
    return claims


async def open_crm(
    flavor: Flavor, deployment: Deployment, server: BrokerThread, **kw: Any
) -> Execution:
    options = {"dpop": True, **kw}
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1", **options)
    execution: Execution = await flavor.run(
        client.open_execution(CRM_TOOLS, user_token=deployment.idp.user_token("alice", "pro"))
    )
    return execution


# --- against the broker and the API ---------------------------------------------------------


async def test_an_execution_is_bound_to_a_key_of_its_own(
    deployment: Deployment, broker: Broker, crm: str, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1", dpop=True)
    user = deployment.idp.user_token("alice", "pro")
    execution: Execution = await flavor.run(client.open_execution(CRM_TOOLS, user_token=user))
    assert execution.token_type == "DPoP"
    assert execution.dpop_key is not None and execution.jkt == execution.dpop_key.jkt
    assert execution.jkt == thumbprint(execution.dpop_key.public_jwk)
    for credential in execution.credentials.values():
        assert credential.token_type == "DPoP" and credential.jkt == execution.jkt
        assert claims_of(credential.access_token)["cnf"] == {"jkt": execution.jkt}
        assert credential.access_token not in repr(credential)
    assert records(server)[-1]["dpop_jkt"] == execution.jkt
    another: Execution = await flavor.run(client.open_execution(CRM_TOOLS, user_token=user))
    assert another.jkt is not None and another.jkt != execution.jkt

    auth = execution.auth("customer_data_api")
    seen = Seen()
    answer = await send(flavor, auth, crm + "/accounts/42", seen=seen)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"user": "alice", "jkt": execution.jkt}
    assert seen.statuses == [200]
    # A proof names the method and the URL without its query; a body is no matter.
    posted = await send(flavor, auth, crm + "/accounts/42?fields=name", "POST", json={"a": 1})
    assert posted.status_code == 200, posted.text


async def test_the_api_takes_the_credential_only_with_a_proof_of_this_request(
    deployment: Deployment, broker: Broker, crm: str, flavor: Flavor
) -> None:
    server, _ = broker
    execution = await open_crm(flavor, deployment, server)
    credential = execution.credentials["customer_data_api"]
    token, key, url = credential.access_token, execution.dpop_key, crm + "/accounts/42"
    assert key is not None

    def dpop(proof: str) -> dict[str, str]:
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    def error(response: httpx.Response) -> tuple[int, str]:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("DPoP ") and 'algs="ES256 ' in challenge
        return response.status_code, response.json()["error"]

    with httpx.Client() as http:
        downgraded = http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert error(downgraded) == (401, "invalid_token")
        proof = key.proof("GET", url, access_token=token)
        assert http.get(url, headers=dpop(proof)).status_code == 200
        replayed = http.get(url, headers=dpop(proof))
        assert error(replayed) == (401, "invalid_dpop_proof")
        assert replayed.json()["error_description"] == "DPoP proof was already used"
        elsewhere = http.get(
            url, headers=dpop(key.proof("GET", crm + "/accounts/43", access_token=token))
        )
        assert error(elsewhere) == (401, "invalid_dpop_proof")
        other_method = http.get(url, headers=dpop(key.proof("DELETE", url, access_token=token)))
        assert error(other_method) == (401, "invalid_dpop_proof")
        tickets = execution.credentials["ticketing_api"].access_token
        other_token = http.get(url, headers=dpop(key.proof("GET", url, access_token=tickets)))
        assert error(other_token) == (401, "invalid_dpop_proof")
        assert other_token.json()["error_description"] == "DPoP ath does not match the access token"
        stranger = http.get(url, headers=dpop(DpopKey().proof("GET", url, access_token=token)))
        assert error(stranger) == (401, "invalid_dpop_proof")
        no_proof = http.get(url, headers={"Authorization": f"DPoP {token}"})
        assert error(no_proof) == (401, "invalid_dpop_proof")


async def test_the_sdk_answers_an_api_nonce_challenge(
    deployment: Deployment, broker: Broker, crm_with_nonces: str, flavor: Flavor
) -> None:
    server, _ = broker
    execution = await open_crm(flavor, deployment, server)
    auth = execution.auth("customer_data_api")
    seen = Seen()
    answer = await send(flavor, auth, crm_with_nonces + "/accounts/42", seen=seen)
    assert answer.status_code == 200, answer.text
    assert seen.statuses == [401, 200]
    assert seen.answers[0][1].startswith('DPoP error="use_dpop_nonce"')
    again = Seen()
    assert (await send(flavor, auth, crm_with_nonces + "/accounts/7", seen=again)).is_success
    assert again.statuses == [200]  # the nonce is remembered for the API's origin


async def test_a_workflow_can_require_dpop(tmp_path: Path, flavor: Flavor) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["workflows"]["customer-support"]["require_dpop"] = True

    d = write_deployment(tmp_path, mutate)
    with running(d) as (server, _):
        client = flavor.client(server.url, d.svid(), agent_id="triage-1")
        user = d.idp.user_token("alice", "pro")
        with pytest.raises(PolicyDenied) as at_issue:
            await flavor.run(client.open_execution(["customer_data_api"], user_token=user))
        assert at_issue.value.status == 403
        assert [r.rule for r in at_issue.value.reasons] == ["dpop.required"]
        with pytest.raises(PolicyDenied) as at_token:
            await flavor.run(client.exchange(subject_token=user, resource=CRM))
        assert at_token.value.error == "invalid_dpop_proof"
        assert [r.rule for r in at_token.value.reasons] == ["dpop.required"]
        bound = await flavor.run(
            client.open_execution(["customer_data_api"], user_token=user, dpop=True)
        )
        assert bound.token_type == "DPoP"
        exchanged = await flavor.run(client.exchange(subject_token=user, resource=CRM, dpop=True))
        assert exchanged.credentials["customer_data_api"].token_type == "DPoP"
        assert exchanged.jkt != bound.jkt


async def test_exchange_and_delegation_bind_each_execution(
    deployment: Deployment, broker: Broker, crm: str, flavor: Flavor
) -> None:
    server, _ = broker
    support = flavor.client(server.url, deployment.svid(), dpop=True)
    user = deployment.idp.user_token("alice", "pro")
    parent: Execution = await flavor.run(support.exchange(subject_token=user, resource=CRM))
    handed = parent.credentials["customer_data_api"]
    assert handed.jkt == parent.jkt and claims_of(handed.access_token)["cnf"]["jkt"] == parent.jkt
    research = flavor.client(server.url, deployment.svid(RESEARCH), dpop=True)
    child: Execution = await flavor.run(research.delegate(handed))
    assert child.execution_id == parent.execution_id
    assert child.jkt is not None and child.jkt != parent.jkt
    answer = await send(flavor, child.auth("customer_data_api"), crm + "/accounts/42")
    assert answer.status_code == 200 and answer.json()["jkt"] == child.jkt


async def test_a_renewed_credential_stays_bound_to_the_execution_key(
    deployment: Deployment, broker: Broker, crm: str, flavor: Flavor
) -> None:
    server, _ = broker
    clock = FakeClock()
    execution = await open_crm(flavor, deployment, server, clock=clock)
    auth = execution.auth("customer_data_api")
    first = auth.credential
    clock.advance(3000)  # due (and expired on the SDK's clock): renewed before the request
    answer = await send(flavor, auth, crm + "/accounts/42")
    assert answer.status_code == 200, answer.text
    renewed = auth.credential
    assert renewed.access_token != first.access_token
    assert renewed.token_type == "DPoP" and renewed.jkt == execution.jkt
    assert claims_of(renewed.access_token)["cnf"] == {"jkt": execution.jkt}
    assert answer.json()["jkt"] == execution.jkt


async def test_dpop_is_a_per_call_choice(
    deployment: Deployment, broker: Broker, crm: str, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1", dpop=True)
    assert client.dpop
    user = deployment.idp.user_token("alice", "pro")
    plain: Execution = await flavor.run(
        client.open_execution(["customer_data_api"], user_token=user, dpop=False)
    )
    assert plain.token_type == "Bearer" and plain.jkt is None and plain.dpop_key is None
    credential = plain.credentials["customer_data_api"]
    assert credential.jkt is None and "cnf" not in claims_of(credential.access_token)
    answer = await send(flavor, plain.auth("customer_data_api"), crm + "/accounts/42")
    assert answer.status_code == 200 and answer.json()["jkt"] is None


# --- the SDK's side alone, against a scripted broker and APIs -------------------------------


def dpop_credential(token: str = "cred.token.1", **kw: Any) -> dict[str, Any]:  # noqa: S107
    return {**credential_json(token=token, **kw), "token_type": "DPoP"}


def metadata(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "issuer": PUBLIC,
        "issue_endpoint": PUBLIC + "/issue",
        "token_endpoint": PUBLIC + "/oauth2/token",
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def broker_with_metadata(document: Any = None, status: int = 200) -> ScriptedBroker:
    """Answers its metadata at the well-known path, and issues DPoP credentials otherwise."""
    count = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal count
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(status, json=metadata() if document is None else document)
        count += 1
        return httpx.Response(200, json=issue_json(dpop_credential(f"cred.{count}")))

    return ScriptedBroker(answer)


def proof_of(request: httpx.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    proof = request.headers["dpop"]
    header = pyjwt.get_unverified_header(proof)
    claims: dict[str, Any] = pyjwt.decode(proof, options={"verify_signature": False})
    return header, claims


async def open_mock(flavor: Flavor, client: Any, **kw: Any) -> Execution:
    execution: Execution = await flavor.run(
        client.open_execution(["customer_data_api"], agent_id="a-1", **kw)
    )
    return execution


async def test_the_broker_is_sent_a_proof_naming_its_public_endpoint(flavor: Flavor) -> None:
    broker = ScriptedBroker((200, issue_json(dpop_credential()), {}))
    client = flavor.mock_client(broker, dpop=True, issuer=PUBLIC + "/")
    execution = await open_mock(flavor, client)
    [request] = broker.requests  # the issuer was given: no metadata read
    header, claims = proof_of(request)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert thumbprint(header["jwk"]) == execution.jkt
    assert claims["htm"] == "POST" and claims["htu"] == PUBLIC + "/issue"
    assert "ath" not in claims and "nonce" not in claims
    assert request.headers["authorization"] == "Bearer wl.token.x"


async def test_the_public_endpoints_are_read_from_the_metadata_once(flavor: Flavor) -> None:
    broker = broker_with_metadata(metadata(token_endpoint="https://tokens.example/token"))
    client = flavor.mock_client(broker, dpop=True)
    await open_mock(flavor, client)
    await open_mock(flavor, client)
    await flavor.run(client.exchange(subject_token="user.id.token", resource=CRM))
    paths = [r.url.path for r in broker.requests]
    assert paths == ["/.well-known/oauth-authorization-server", "/issue", "/issue", "/oauth2/token"]
    assert broker.requests[0].method == "GET"
    htus = [proof_of(r)[1]["htu"] for r in broker.requests[1:]]
    assert htus == [PUBLIC + "/issue", PUBLIC + "/issue", "https://tokens.example/token"]
    jtis = {proof_of(r)[1]["jti"] for r in broker.requests[1:]}
    assert len(jtis) == 3  # a fresh proof for every request


async def test_without_endpoints_the_metadata_issuer_names_them(flavor: Flavor) -> None:
    broker = broker_with_metadata({"issuer": PUBLIC + "/"})
    client = flavor.mock_client(broker, dpop=True)
    await open_mock(flavor, client)
    assert proof_of(broker.requests[1])[1]["htu"] == PUBLIC + "/issue"


BAD_METADATA = {
    "not an object": [],
    "no issuer": {"issue_endpoint": PUBLIC + "/issue"},
    "issuer not a URL": metadata(issuer="deputy"),
    "endpoint with a query": metadata(issue_endpoint=PUBLIC + "/issue?x=1"),
    "endpoint with a fragment": metadata(issue_endpoint=PUBLIC + "/issue#x"),
    "endpoint not a string": metadata(issue_endpoint=7),
}


@pytest.mark.parametrize("document", BAD_METADATA.values(), ids=BAD_METADATA.keys())
async def test_unusable_metadata_is_refused(flavor: Flavor, document: Any) -> None:
    broker = broker_with_metadata(document)
    client = flavor.mock_client(broker, dpop=True)
    with pytest.raises(BrokerResponseInvalid, match="metadata"):
        await open_mock(flavor, client)
    assert len(broker.requests) == 1


async def test_unavailable_metadata_is_retried(flavor: Flavor) -> None:
    broker = ScriptedBroker(
        (503, {"error": "temporarily_unavailable"}, {"Retry-After": "2"}),
        (200, metadata(), {}),
        (200, issue_json(dpop_credential()), {}),
    )
    client = flavor.mock_client(broker, dpop=True, retry=EXACT)
    execution = await open_mock(flavor, client)
    assert execution.token_type == "DPoP" and flavor.sleeps == [2.0]
    missing = ScriptedBroker((404, {"error": "not_found"}, {}))
    with pytest.raises(BrokerRefused):
        await open_mock(flavor, flavor.mock_client(missing, dpop=True))


def test_the_issuer_option_is_checked() -> None:
    for wrong in ("deputy.internal", "https://deputy.internal/?x=1", "ftp://deputy.internal"):
        with pytest.raises(ValueError, match="issuer"):
            DeputyClient(MOCK_BROKER, "wl.token.x", issuer=wrong)


async def test_the_broker_nonce_is_sent_when_asked_for(flavor: Flavor) -> None:
    asked = (400, {"error": "use_dpop_nonce", "error_description": "nonce"}, {"DPoP-Nonce": "n-1"})
    broker = ScriptedBroker(asked, (200, issue_json(dpop_credential()), {}))
    client = flavor.mock_client(broker, dpop=True, issuer=PUBLIC)
    execution = await open_mock(flavor, client)
    assert execution.token_type == "DPoP" and flavor.sleeps == []
    first, second = (proof_of(r)[1] for r in broker.requests)
    assert "nonce" not in first and second["nonce"] == "n-1" and first["jti"] != second["jti"]


async def test_a_broker_asking_for_nonces_forever_is_refused(flavor: Flavor) -> None:
    count = 0

    def ask(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(
            400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": f"n-{count}"}
        )

    client = flavor.mock_client(ScriptedBroker(ask), dpop=True, issuer=PUBLIC)
    with pytest.raises(BrokerRefused) as caught:
        await open_mock(flavor, client)
    assert caught.value.error == "use_dpop_nonce" and count == 3


async def test_an_unbound_answer_to_a_proof_is_refused(flavor: Flavor) -> None:
    broker = ScriptedBroker((200, issue_json(credential_json(token="secret.token.value")), {}))
    client = flavor.mock_client(broker, dpop=True, issuer=PUBLIC)
    with pytest.raises(BrokerResponseInvalid, match="did not bind") as caught:
        await open_mock(flavor, client)
    assert "secret.token" not in str(caught.value)


def held(
    token_type: str = "DPoP",  # noqa: S107
    key: DpopKey | None = None,
    token: str = "cred.1",  # noqa: S107
) -> Credential:
    return Credential(
        tool="customer_data_api",
        access_token=token,
        scope="accounts:read",
        audience=CRM,
        issued_at=0.0,
        expires_at=1e12,
        execution_id="exe_1",
        decision_id="dec_1",
        token_type=token_type,
        dpop_key=key,
    )


class DpopApi:
    """A scripted API: records each request's credential and proof, answers as told."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        # The auth flow sends the same request object again: keep what was sent each time.
        self.requests.append(httpx.Request(request.method, request.url, headers=request.headers))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request)

    async def send(
        self, flavor: Flavor, auth: httpx.Auth, url: str = CRM + "/accounts/42?x=1"
    ) -> httpx.Response:
        transport = httpx.MockTransport(self.handle)
        if flavor.is_async:
            async with httpx.AsyncClient(transport=transport, auth=auth) as http:
                return await http.get(url)
        with httpx.Client(transport=transport, auth=auth) as http:
            return http.get(url)


def ok(nonce: str | None = None) -> Callable[[httpx.Request], httpx.Response]:
    headers = {} if nonce is None else {"DPoP-Nonce": nonce}
    return lambda request: httpx.Response(200, json={}, headers=headers)


def challenge(error: str, nonce: str | None = None, status: int = 401) -> Any:
    headers = {"WWW-Authenticate": f'Bearer, DPoP error="{error}", algs="ES256"'}
    if nonce is not None:
        headers["DPoP-Nonce"] = nonce
    return lambda request: httpx.Response(status, json={"error": error}, headers=headers)


async def test_each_request_gets_a_proof_of_its_own(flavor: Flavor) -> None:
    key = DpopKey()
    api = DpopApi(ok())
    auth = CredentialAuth(held(key=key))
    for _ in range(2):
        assert (await api.send(flavor, auth)).status_code == 200
    proofs = [proof_of(r)[1] for r in api.requests]
    for request, claims in zip(api.requests, proofs, strict=True):
        assert request.headers["authorization"] == "DPoP cred.1"
        assert claims["htm"] == "GET" and claims["htu"] == CRM + "/accounts/42"
        assert claims["ath"] == access_token_hash("cred.1") and "nonce" not in claims
        assert thumbprint(proof_of(request)[0]["jwk"]) == key.jkt
    assert proofs[0]["jti"] != proofs[1]["jti"]


async def test_a_nonce_challenge_is_answered_once(flavor: Flavor) -> None:
    api = DpopApi(challenge("use_dpop_nonce", "n-1"), ok("n-2"), ok())
    auth = CredentialAuth(held(key=DpopKey()))
    assert (await api.send(flavor, auth)).status_code == 200
    assert (await api.send(flavor, auth)).status_code == 200
    nonces = [proof_of(r)[1].get("nonce") for r in api.requests]
    assert nonces == [None, "n-1", "n-2"]  # a nonce sent with a success is used next
    # Another origin has no nonce of its own yet.
    await api.send(flavor, auth, "https://tickets.internal/t/1")
    assert "nonce" not in proof_of(api.requests[-1])[1]
    # A 400 with the challenge (and a new nonce) is answered too.
    api.answers = [challenge("use_dpop_nonce", "n-3", status=400), ok()]
    assert (await api.send(flavor, auth)).status_code == 200
    assert proof_of(api.requests[-1])[1]["nonce"] == "n-3"


async def test_a_nonce_challenge_is_not_answered_forever(flavor: Flavor) -> None:
    count = 0

    def always(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return challenge("use_dpop_nonce", f"n-{count}")(request)

    renewals: list[Credential] = []

    class Renewer:
        def renew(self, stale: Credential) -> Credential:
            renewals.append(stale)
            return stale

        async def arenew(self, stale: Credential) -> Credential:
            return self.renew(stale)

    api = DpopApi(always)
    auth = CredentialAuth(held(key=DpopKey()), Renewer())
    assert (await api.send(flavor, auth)).status_code == 401
    assert count == 2 and renewals == []  # a nonce refusal is no reason to renew
    same = DpopApi(challenge("use_dpop_nonce", "n-1"))
    auth = CredentialAuth(held(key=DpopKey()))
    await same.send(flavor, auth)
    assert len(same.requests) == 2  # once with the nonce; then the same nonce again: no retry


async def test_a_401_renews_a_bound_credential_and_proves_the_new_one(flavor: Flavor) -> None:
    broker = ScriptedBroker((200, issue_json(dpop_credential("cred.2")), {}))
    client = flavor.mock_client(broker, dpop=True, issuer=PUBLIC)
    execution = await open_mock(flavor, client)
    auth = execution.auth("customer_data_api")
    api = DpopApi(challenge("invalid_token"), ok())
    assert (await api.send(flavor, auth)).status_code == 200
    tokens = [r.headers["authorization"] for r in api.requests]
    assert tokens == ["DPoP cred.2", "DPoP cred.2"]  # the scripted broker gives the same
    assert len(broker.requests) == 2
    assert proof_of(api.requests[1])[1]["ath"] == access_token_hash("cred.2")
    assert auth.credential.jkt == execution.jkt is not None


async def test_a_bound_credential_is_never_sent_as_bearer(flavor: Flavor) -> None:
    api = EchoApi()
    for credential, message in (
        (held(key=None), "DPoP-bound and its key is missing"),
        (held("MAC", key=DpopKey()), "only Bearer and DPoP"),
    ):
        with pytest.raises(SdkError, match=message):
            await flavor.request(api, CredentialAuth(credential))
    assert api.tokens == []
    # A Bearer credential goes as Bearer, and never with a proof.
    bearer = DpopApi(ok())
    await bearer.send(flavor, CredentialAuth(held("Bearer")))
    [request] = bearer.requests
    assert request.headers["authorization"] == "Bearer cred.1" and "dpop" not in request.headers
