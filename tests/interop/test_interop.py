"""Interop with OAuth and JOSE software not written here, against a real broker on loopback.

- Authlib's httpx ``OAuth2Client`` discovers the token endpoint from RFC 8414 metadata and
  performs an RFC 8693 token exchange and an RFC 6749 §4.4 client-credentials grant,
  authenticating with the agent's JWT-SVID as an RFC 7523 client assertion (``jwt-spiffe``
  and ``jwt-bearer``) through a client auth method registered the Authlib way.
- Authlib's RFC 8414 metadata validator checks the discovery document.
- PyJWT and joserfc verify the minted credentials using only the published metadata and JWKS,
  including the RFC 9068 ``typ: at+jwt`` header.
- A sub-agent's exchange (done with Authlib) nests ``act`` (RFC 8693 §4.1); both libraries
  decode the same chain, and Authlib's RFC 7662 introspection returns it in full.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt as pyjwt
import pytest
from authlib.common.urls import add_params_to_qs
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from joserfc import jwt as jose_jwt
from joserfc.errors import InvalidClaimError
from joserfc.jwk import KeySet

from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    ACCESS_TOKEN,
    CRM,
    ID_TOKEN,
    JWT,
    JWT_BEARER,
    JWT_SPIFFE,
    PRICING,
    RESEARCH,
    RESEARCH_ID,
    SUPPORT_ID,
    TOKEN_EXCHANGE,
    new_secret,
    with_clients,
)

# Authlib 1.9 warns on import when the `httpx2` package is absent and it falls back to httpx
# (its own "always" filter keeps `filterwarnings = error` from raising, so it would only
# clutter every run's summary). It is about Authlib's packaging, not Deputy: only that
# message is silenced, and only for this import.
with warnings.catch_warnings():
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.filterwarnings(
        "ignore",
        message="The httpx module is deprecated; please use httpx2 instead.",
        category=AuthlibDeprecationWarning,
    )
    from authlib.integrations.httpx_client import OAuth2Client

ISSUER = "https://deputy.internal"
METADATA = "/.well-known/oauth-authorization-server"
PRICE_SYNC = "/agents/price-sync"
PRICE_SYNC_ID = "spiffe://prod.example/agents/price-sync"
SECRETS = {"crm-api": new_secret()[0], "security-team": new_secret()[0]}
# Authlib's registered method name: the RFC 7523 §2.2 method Deputy announces for agents.
ASSERTION_METHOD = "private_key_jwt"


@dataclass
class Broker:
    """A running broker, its plain HTTP client and its RFC 8414 metadata."""

    deployment: Deployment
    url: str
    http: httpx.Client
    metadata: dict[str, Any] = field(default_factory=dict)

    def local(self, url: str) -> str:
        """A URL the metadata names (under the configured issuer) at the loopback broker."""
        assert url.startswith(ISSUER + "/"), url
        return self.url + url.removeprefix(ISSUER)

    def jwks(self) -> dict[str, Any]:
        response = self.http.get(self.local(self.metadata["jwks_uri"]))
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    deployment = write_deployment(tmp_path_factory.mktemp("interop"), with_clients(SECRETS))
    with running(deployment) as (server, http):
        response = http.get(METADATA)
        assert response.status_code == 200, response.text
        yield Broker(deployment, server.url, http, response.json())


class WorkloadAssertion:
    """An Authlib client auth method: the agent's workload token as its client assertion.

    RFC 7523 §2.2 (and the SPIFFE ``jwt-spiffe`` profile): ``client_assertion_type`` and
    ``client_assertion`` go in the form body, with a fresh token minted for every request.
    ``client_id`` is optional there (RFC 7521 §4.2) and is sent only if Authlib has one.
    """

    name = ASSERTION_METHOD

    def __init__(self, assertion_type: str, mint: Callable[[], str]) -> None:
        self.assertion_type = assertion_type
        self.mint = mint

    def __call__(
        self, auth: Any, method: str, uri: str, headers: Any, body: Any
    ) -> tuple[str, Any, str]:
        params = [("client_assertion_type", self.assertion_type), ("client_assertion", self.mint())]
        if auth.client_id:
            params.append(("client_id", auth.client_id))
        return uri, headers, add_params_to_qs(body or "", params)


@dataclass
class Wire:
    """What Authlib actually put on the wire: each request's headers and form."""

    sent: list[tuple[httpx.Headers, dict[str, list[str]]]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> None:
        self.sent.append((request.headers, parse_qs(request.content.decode())))


def authlib_client(
    broker: Broker,
    wire: Wire,
    *,
    agent: str,
    assertion_type: str = JWT_SPIFFE,
    client_id: str | None = None,
) -> OAuth2Client:
    """Authlib's client for ``agent``, authenticating with a JWT-SVID client assertion."""
    assert ASSERTION_METHOD in broker.metadata["token_endpoint_auth_methods_supported"]
    assert assertion_type in broker.metadata["client_assertion_types_supported"]
    client = OAuth2Client(
        client_id=client_id,
        token_endpoint_auth_method=ASSERTION_METHOD,
        timeout=30,
        event_hooks={"request": [wire]},
    )
    client.register_client_auth_method(
        WorkloadAssertion(assertion_type, lambda: broker.deployment.svid(agent))
    )
    return client


def token_endpoint(broker: Broker) -> str:
    return broker.local(broker.metadata["token_endpoint"])


def verify_with_pyjwt(broker: Broker, token: str, audience: str) -> tuple[dict[str, Any], ...]:
    """PyJWT with only the published metadata and JWKS: the verified header and claims."""
    meta = broker.metadata
    keys = pyjwt.PyJWKSet.from_dict(broker.jwks())
    key = keys[pyjwt.get_unverified_header(token)["kid"]]
    decoded = pyjwt.decode_complete(
        token,
        key,
        algorithms=meta["access_token_signing_alg_values_supported"],
        audience=audience,
        issuer=meta["issuer"],
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]},
    )
    return decoded["header"], decoded["payload"]


def verify_with_joserfc(broker: Broker, token: str, audience: str) -> tuple[dict[str, Any], ...]:
    """joserfc with only the published metadata and JWKS: the verified header and claims."""
    meta = broker.metadata
    keys = KeySet.import_key_set(broker.jwks())
    decoded = jose_jwt.decode(
        token, keys, algorithms=meta["access_token_signing_alg_values_supported"]
    )
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": meta["issuer"]},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
    ).validate(decoded.claims)
    return dict(decoded.header), dict(decoded.claims)


def assert_expiry(token: dict[str, Any], lifetime: int) -> None:
    """``expires_in`` from the broker, and Authlib's ``expires_at`` derived from it."""
    assert lifetime - 5 <= token["expires_in"] <= lifetime
    now = time.time()
    assert now - 5 <= token["expires_at"] - token["expires_in"] <= now


# --- RFC 8414 discovery ------------------------------------------------------------------


def test_metadata_announces_what_the_clients_use(broker: Broker) -> None:
    meta = broker.metadata
    assert meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == f"{ISSUER}/oauth2/token"
    assert meta["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert meta["introspection_endpoint"] == f"{ISSUER}/oauth2/introspect"
    assert meta["grant_types_supported"] == [TOKEN_EXCHANGE, "client_credentials"]
    assert meta["token_endpoint_auth_methods_supported"] == [ASSERTION_METHOD, "none"]
    assert meta["client_assertion_types_supported"] == [JWT_BEARER, JWT_SPIFFE]
    assert meta["access_token_signing_alg_values_supported"] == ["ES256"]
    assert ID_TOKEN in meta["subject_token_types_supported"]
    assert ACCESS_TOKEN in meta["subject_token_types_supported"]
    assert JWT in meta["actor_token_types_supported"]
    assert "client_secret_basic" in meta["introspection_endpoint_auth_methods_supported"]
    assert {"accounts:read", "rates:read"} <= set(meta["scopes_supported"])


def test_authlib_validates_the_metadata_but_for_empty_response_types(broker: Broker) -> None:
    metadata = AuthorizationServerMetadata(broker.metadata)
    failures: dict[str, str] = {}
    for key in metadata.REGISTRY_KEYS:
        try:
            getattr(metadata, f"validate_{key}")()
        except ValueError as exc:
            failures[key] = str(exc)
    # RFC 8414 §2 makes response_types_supported REQUIRED; Deputy has no authorization
    # endpoint and sends []. Authlib tests `if not value`, so an empty array counts as absent
    # and `AuthorizationServerMetadata.validate()` refuses the whole document.
    assert broker.metadata["response_types_supported"] == []
    assert failures == {"response_types_supported": '"response_types_supported" is required'}


# --- Authlib: RFC 8693 token exchange with a client assertion -----------------------------


@pytest.mark.parametrize(
    ("assertion_type", "client_id"),
    [(JWT_SPIFFE, None), (JWT_BEARER, SUPPORT_ID)],
    ids=["jwt-spiffe", "jwt-bearer-with-client-id"],
)
def test_authlib_token_exchange_with_client_assertion(
    broker: Broker, assertion_type: str, client_id: str | None
) -> None:
    wire = Wire()
    with authlib_client(
        broker,
        wire,
        agent="/agents/support/triage",
        assertion_type=assertion_type,
        client_id=client_id,
    ) as client:
        token = client.fetch_token(
            token_endpoint(broker),
            grant_type=TOKEN_EXCHANGE,
            subject_token=broker.deployment.idp.user_token("alice", "pro"),
            subject_token_type=ID_TOKEN,
            resource=CRM,
            scope="accounts:read",
        )
        assert client.token is token
    # The agent was authenticated by the assertion alone: no actor_token, no Basic header.
    [(headers, form)] = wire.sent
    assert "authorization" not in headers
    assert form["client_assertion_type"] == [assertion_type]
    assert "actor_token" not in form
    assert form.get("client_id") == ([client_id] if client_id else None)
    assert token["token_type"] == "Bearer"
    assert token["issued_token_type"] == ACCESS_TOKEN
    assert token["scope"] == "accounts:read"
    assert token["audience"] == CRM
    assert_expiry(token, 300)
    _, claims = verify_with_pyjwt(broker, token["access_token"], CRM)
    assert claims["sub"] == "alice" and claims["aud"] == CRM
    assert claims["client_id"] == SUPPORT_ID and claims["act"] == {"sub": SUPPORT_ID}
    assert claims["scope"] == "accounts:read"


# --- Authlib: RFC 6749 §4.4 client credentials --------------------------------------------


def test_authlib_client_credentials_for_an_agent_acting_as_itself(broker: Broker) -> None:
    wire = Wire()
    with authlib_client(broker, wire, agent=PRICE_SYNC) as client:
        token = client.fetch_token(
            token_endpoint(broker), grant_type="client_credentials", scope="rates:read"
        )
    [(headers, form)] = wire.sent
    assert "authorization" not in headers and form["grant_type"] == ["client_credentials"]
    assert form["client_assertion_type"] == [JWT_SPIFFE]
    assert token["token_type"] == "Bearer"
    assert "issued_token_type" not in token
    assert token["scope"] == "rates:read"
    assert token["audience"] == PRICING
    assert_expiry(token, 300)
    _, claims = verify_with_pyjwt(broker, token["access_token"], PRICING)
    assert claims["sub"] == PRICE_SYNC_ID and claims["client_id"] == PRICE_SYNC_ID
    assert claims["scope"] == "rates:read" and "act" not in claims


# --- PyJWT and joserfc: verification from the published keys ------------------------------


@pytest.fixture(scope="module")
def crm_credential(broker: Broker) -> str:
    with authlib_client(broker, Wire(), agent="/agents/support/triage") as client:
        token = client.fetch_token(
            token_endpoint(broker),
            grant_type=TOKEN_EXCHANGE,
            subject_token=broker.deployment.idp.user_token("alice", "pro"),
            subject_token_type=ID_TOKEN,
            resource=CRM,
            scope="accounts:read",
        )
    access_token: str = token["access_token"]
    return access_token


@pytest.mark.parametrize(
    "verify", [verify_with_pyjwt, verify_with_joserfc], ids=["pyjwt", "joserfc"]
)
def test_credentials_verify_with_published_keys_only(
    broker: Broker, crm_credential: str, verify: Callable[..., tuple[dict[str, Any], ...]]
) -> None:
    header, claims = verify(broker, crm_credential, CRM)
    assert header["typ"] == "at+jwt"  # RFC 9068 §2.1
    assert header["alg"] == "ES256"
    assert header["kid"] in {k["kid"] for k in broker.jwks()["keys"]}
    assert claims["iss"] == ISSUER and claims["aud"] == CRM and claims["sub"] == "alice"
    assert claims["client_id"] == SUPPORT_ID and claims["scope"] == "accounts:read"
    assert claims["act"] == {"sub": SUPPORT_ID}
    assert 295 <= claims["exp"] - claims["iat"] <= 300


def test_libraries_refuse_a_credential_for_another_audience(
    broker: Broker, crm_credential: str
) -> None:
    with pytest.raises(pyjwt.InvalidAudienceError):
        verify_with_pyjwt(broker, crm_credential, PRICING)
    with pytest.raises(InvalidClaimError, match="aud"):
        verify_with_joserfc(broker, crm_credential, PRICING)


# --- the act chain: RFC 8693 §4.1 delegation, decoded and introspected --------------------


def test_act_chain_round_trips_through_authlib_pyjwt_joserfc_and_introspection(
    broker: Broker,
) -> None:
    url, svid = token_endpoint(broker), broker.deployment.svid
    # Agent A proves itself with its SVID as the actor_token; Authlib sends it as a public
    # client (auth method "none": only client_id in the form).
    wire_a = Wire()
    with OAuth2Client(
        client_id=SUPPORT_ID,
        token_endpoint_auth_method="none",
        timeout=30,
        event_hooks={"request": [wire_a]},
    ) as agent_a:
        parent = agent_a.fetch_token(
            url,
            grant_type=TOKEN_EXCHANGE,
            subject_token=broker.deployment.idp.user_token("alice", "pro"),
            subject_token_type=ID_TOKEN,
            actor_token=svid("/agents/support/triage"),
            actor_token_type=JWT,
            resource=CRM,
            scope="accounts:read",
        )
    [(headers_a, form_a)] = wire_a.sent
    assert "authorization" not in headers_a and "client_assertion" not in form_a
    assert form_a["client_id"] == [SUPPORT_ID] and form_a["actor_token_type"] == [JWT]
    assert parent["issued_token_type"] == ACCESS_TOKEN and parent["scope"] == "accounts:read"
    assert_expiry(parent, 300)
    # Sub-agent B exchanges A's credential: its SVID is the actor_token, and a fresh one the
    # client assertion (both must name the same workload).
    wire = Wire()
    with authlib_client(broker, wire, agent=RESEARCH) as agent_b:
        child = agent_b.fetch_token(
            url,
            grant_type=TOKEN_EXCHANGE,
            subject_token=parent["access_token"],
            subject_token_type=ACCESS_TOKEN,
            actor_token=svid(RESEARCH),
            actor_token_type=JWT,
            resource=CRM,
        )
    [(_, form)] = wire.sent
    assert form["actor_token_type"] == [JWT] and form["subject_token_type"] == [ACCESS_TOKEN]
    assert form["client_assertion_type"] == [JWT_SPIFFE]
    assert child["issued_token_type"] == ACCESS_TOKEN and child["token_type"] == "Bearer"
    assert child["scope"] == "accounts:read" and child["audience"] == CRM
    assert_expiry(child, 120)  # support-research's default ttl

    chain = {"sub": RESEARCH_ID, "act": {"sub": SUPPORT_ID}}
    _, by_pyjwt = verify_with_pyjwt(broker, child["access_token"], CRM)
    header, by_joserfc = verify_with_joserfc(broker, child["access_token"], CRM)
    assert header["typ"] == "at+jwt"
    for claims in (by_pyjwt, by_joserfc):
        assert claims["act"] == chain
        assert claims["sub"] == "alice" and claims["client_id"] == RESEARCH_ID
    assert by_pyjwt == by_joserfc

    # The CRM resource server introspects B's credential with Authlib (client_secret_basic).
    assert "client_secret_basic" in broker.metadata["introspection_endpoint_auth_methods_supported"]
    with OAuth2Client(
        client_id="crm-api",
        client_secret=SECRETS["crm-api"],
        token_endpoint_auth_method="client_secret_basic",
        timeout=30,
    ) as crm:
        response = crm.introspect_token(
            broker.local(broker.metadata["introspection_endpoint"]),
            token=child["access_token"],
            token_type_hint="access_token",
        )
    assert response.status_code == 200, response.text
    introspected = response.json()
    assert introspected["active"] is True and introspected["token_type"] == "Bearer"
    assert introspected["act"] == chain
    assert introspected["sub"] == "alice" and introspected["client_id"] == RESEARCH_ID
    assert {k: v for k, v in introspected.items() if k not in ("active", "token_type")} == (
        by_pyjwt
    )
