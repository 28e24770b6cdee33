"""The token endpoint's request: proofs, parse step and error dialect, without HTTP."""

from __future__ import annotations

import pytest

from deputy.errors import (
    AccessDenied,
    InvalidClient,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidToken,
    OAuthError,
    RateLimited,
    Reason,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from deputy.identity.workload import Workload
from deputy.oauth.form import Form
from deputy.oauth.token_request import (
    ACCESS_TOKEN,
    CLIENT_CREDENTIALS,
    ID_TOKEN,
    JWT,
    JWT_BEARER,
    JWT_SPIFFE,
    TOKEN_EXCHANGE,
    TokenRequest,
)

AGENT = Workload("spiffe://prod.example/agents/a", "spiffe://prod.example", "spiffe", 2e9)


def request(authorization: str | None = None, **params: str | tuple[str, ...]) -> TokenRequest:
    values = {k: v if isinstance(v, tuple) else (v,) for k, v in params.items()}
    return TokenRequest(Form(values), None, authorization)


def exchange(**params: str | tuple[str, ...]) -> TokenRequest:
    base: dict[str, str | tuple[str, ...]] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": "user.token.x",
        "subject_token_type": ID_TOKEN,
        "actor_token": "svid.token.x",
        "actor_token_type": JWT,
    }
    base.update(params)
    return request(**base)


def test_actor_token_and_assertion_are_both_proofs() -> None:
    proofs = exchange(client_assertion="svid.token.y", client_assertion_type=JWT_SPIFFE).proofs()
    assert [(p.name, p.rejected, sorted(p.kinds)) for p in proofs] == [
        ("client_assertion", InvalidClient, ["spiffe"]),
        ("actor_token", InvalidRequest, ["oidc", "spiffe"]),
    ]


def test_jwt_bearer_assertion_accepts_any_workload_token() -> None:
    [proof] = request(
        grant_type=CLIENT_CREDENTIALS, client_assertion="t.t.t", client_assertion_type=JWT_BEARER
    ).proofs()
    assert proof.kinds == frozenset({"spiffe", "oidc"})


@pytest.mark.parametrize(
    ("req", "error", "words"),
    [
        (request(), InvalidRequest, "`grant_type` is required"),
        (request(grant_type="password"), UnsupportedGrantType, "grant_type must be one of"),
        (exchange(actor_token=(), actor_token_type=()), InvalidClient, "authenticate the agent"),
        (
            request("Basic eDp5", grant_type=TOKEN_EXCHANGE),
            InvalidClient,
            "not with an Authorization header",
        ),
        (exchange(actor_token_type=()), InvalidRequest, "`actor_token` needs `actor_token_type`"),
        (exchange(actor_token_type="urn:x"), InvalidRequest, "`actor_token_type` must be one of"),
        (
            request(grant_type=CLIENT_CREDENTIALS, actor_token="a", actor_token_type=JWT),
            InvalidRequest,
            "belongs to token exchange only",
        ),
        (
            request(grant_type=TOKEN_EXCHANGE, client_assertion="a", client_assertion_type="urn:x"),
            InvalidRequest,
            "`client_assertion_type` must be one of",
        ),
    ],
    ids=[
        "no-grant",
        "password",
        "no-proof",
        "authorization-header",
        "actor-without-type",
        "actor-type",
        "actor-in-client-credentials",
        "assertion-type",
    ],
)
def test_proof_errors(req: TokenRequest, error: type[OAuthError], words: str) -> None:
    with pytest.raises(error) as caught:
        req.proofs()
    assert type(caught.value) is error and words in caught.value.description


def test_form_error_is_raised_as_the_first_step() -> None:
    err = InvalidRequest("the body is not a valid form")
    with pytest.raises(InvalidRequest) as caught:
        TokenRequest(None, err).proofs()
    assert caught.value is err


async def test_parse_maps_targets_and_scopes() -> None:
    parsed = await exchange(
        resource=("https://crm.internal", "https://crm.internal"),
        audience="pricing_api",
        scope="accounts:read rates:read accounts:read",
    ).parse(AGENT)
    assert parsed.targets == ("https://crm.internal", "pricing_api")
    assert parsed.scopes == ("accounts:read", "rates:read")
    assert parsed.grant == "token_exchange" and parsed.subject_field == "subject_token"
    assert parsed.user_token == "user.token.x" and parsed.agent_id is None


@pytest.mark.parametrize(
    ("params", "error", "words"),
    [
        ({"client_id": "spiffe://prod.example/other"}, InvalidClient, "client_id"),
        ({"resource": "relative/path"}, InvalidTarget, "absolute URI"),
        ({"resource": "https://crm.internal#frag"}, InvalidTarget, "absolute URI"),
        ({"scope": "a  b"}, InvalidScope, "scope tokens"),
        ({"scope": 'quote"d'}, InvalidScope, "scope tokens"),
        ({"subject_token": ()}, InvalidRequest, "`subject_token_type` needs `subject_token`"),
        ({"requested_token_type": ID_TOKEN}, InvalidRequest, "requested_token_type"),
    ],
    ids=["client-id", "relative", "fragment", "double-space", "quote", "no-subject", "id-token"],
)
async def test_parse_errors(
    params: dict[str, str | tuple[str, ...]], error: type, words: str
) -> None:
    with pytest.raises(error) as caught:
        await exchange(**params).parse(AGENT)
    assert type(caught.value) is error and words in caught.value.description


async def test_client_credentials_has_no_subject() -> None:
    req = request(grant_type=CLIENT_CREDENTIALS, scope="rates:read", client_id=AGENT.id)
    parsed = await req.parse(AGENT)
    assert parsed.grant == "client_credentials" and parsed.user_token is None
    assert parsed.scopes == ("rates:read",)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (["workflow.agents", "workflow.tools"], UnauthorizedClient),
        (["workflow.tiers", "workflow.scopes"], InvalidRequest),
        (["delegation.depth"], InvalidRequest),
        (["delegation.may_act"], InvalidRequest),
        (["workflow.tools", "workflow.scopes"], InvalidTarget),
        (["delegation.audience", "delegation.scopes"], InvalidTarget),
        (["delegation.scopes"], InvalidScope),
        (["ttl.max"], InvalidRequest),
        (["rate_limit"], InvalidRequest),
    ],
)
def test_policy_denials_get_token_endpoint_codes(rules: list[str], expected: type) -> None:
    reasons = tuple(Reason(rule, f"{rule} failed") for rule in rules)
    translated = exchange().translate(AccessDenied("policy denied the request", reasons=reasons))
    assert type(translated) is expected and translated.status_code == 400
    assert translated.reasons == reasons  # every reason is still listed


def test_other_errors_pass_through_and_invalid_token_becomes_invalid_request() -> None:
    limited = RateLimited("daily issuance limit reached", retry_after=60)
    assert exchange().translate(limited) is limited
    assert type(exchange().translate(InvalidToken("bad"))) is InvalidRequest


def test_issued_token_type_follows_the_request() -> None:
    assert exchange().issued_token_type() == ACCESS_TOKEN
    assert exchange(requested_token_type=JWT).issued_token_type() == JWT


@pytest.mark.parametrize(("header", "scheme"), [("basic eDp5", "Basic"), ("Bearer x", "Bearer")])
def test_authorization_header_refusal_names_the_scheme_used(header: str, scheme: str) -> None:
    with pytest.raises(InvalidClient) as caught:
        request(header, grant_type=TOKEN_EXCHANGE).proofs()
    assert caught.value.challenge == scheme
