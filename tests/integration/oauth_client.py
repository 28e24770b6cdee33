"""Form requests to the OAuth endpoints, as a plain HTTP client sends them."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import httpx

from tests.integration.deployment import Deployment

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
SUPPORT_ID = "spiffe://prod.example/agents/support/triage"
RESEARCH = "/agents/research/r1"
RESEARCH_ID = "spiffe://prod.example/agents/research/r1"
CRM = "https://crm.internal"
PRICING = "https://pricing.internal"
TICKETS = "https://tickets.internal"


def exchange(
    client: httpx.Client,
    *,
    subject: str | None,
    actor: str | None = None,
    assertion: str | None = None,
    assertion_type: str = JWT_SPIFFE,
    subject_type: str = ID_TOKEN,
    headers: Any = None,
    **params: Any,
) -> httpx.Response:
    """An RFC 8693 token exchange; list values become repeated parameters."""
    form: dict[str, Any] = {"grant_type": TOKEN_EXCHANGE, **params}
    if subject is not None:
        form.update(subject_token=subject, subject_token_type=subject_type)
    if actor is not None:
        form.update(actor_token=actor, actor_token_type=JWT)
    if assertion is not None:
        form.update(client_assertion=assertion, client_assertion_type=assertion_type)
    return client.post("/oauth2/token", data=form, headers=headers)


def alice_exchange(d: Deployment, client: httpx.Client, **params: Any) -> httpx.Response:
    """The support agent exchanges alice's (pro) token, with its SVID as the actor token."""
    return exchange(client, subject=d.idp.user_token("alice", "pro"), actor=d.svid(), **params)


def alice_credential(d: Deployment, client: httpx.Client, **params: Any) -> dict[str, Any]:
    """The support agent exchanges alice's token for a customer_data_api credential."""
    params.setdefault("resource", CRM)
    response = alice_exchange(d, client, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sub_agent_exchange(
    d: Deployment, client: httpx.Client, parent: str, **params: Any
) -> httpx.Response:
    """The research sub-agent exchanges a credential it was handed (for the CRM by default)."""
    params.setdefault("resource", CRM)
    params.setdefault("subject_type", ACCESS_TOKEN)
    return exchange(client, subject=parent, actor=d.svid(RESEARCH), **params)


def new_secret() -> tuple[str, str]:
    secret = secrets.token_urlsafe(32)
    return secret, hashlib.sha256(secret.encode()).hexdigest()


def with_clients(secrets_by_name: dict[str, str]) -> Any:
    """A config mutation adding a CRM resource server and an operator with these secrets."""

    def mutate(doc: dict[str, Any]) -> None:
        doc["clients"] = {
            "crm-api": {
                "secret_sha256": hashlib.sha256(secrets_by_name["crm-api"].encode()).hexdigest(),
                "audiences": [CRM],
            },
            "security-team": {
                "secret_sha256": hashlib.sha256(
                    secrets_by_name["security-team"].encode()
                ).hexdigest(),
                "admin": True,
            },
        }

    return mutate
