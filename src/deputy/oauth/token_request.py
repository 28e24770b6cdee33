"""The token endpoint's request (RFC 6749 §4.4, RFC 8693 §2.1) as an issuance exchange."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from deputy.config.settings import NAME_PATTERN, SCOPE_PATTERN
from deputy.errors import (
    AccessDenied,
    InvalidClient,
    InvalidDpopProof,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidToken,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from deputy.identity.workload import Workload
from deputy.oauth.form import Form
from deputy.service.issuance import (
    ANY_WORKLOAD,
    NO_DPOP,
    DpopBinding,
    IssueResult,
    WorkloadProof,
)
from deputy.service.request import MAX_ID_LENGTH, IssueRequest

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
CLIENT_CREDENTIALS = "client_credentials"
GRANT_TYPES = (TOKEN_EXCHANGE, CLIENT_CREDENTIALS)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
ASSERTION_TYPES = (JWT_BEARER, JWT_SPIFFE)

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN
JWT = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_TYPES = (ACCESS_TOKEN, ID_TOKEN, JWT)
ACTOR_TOKEN_TYPES = (JWT, ID_TOKEN, ACCESS_TOKEN)
REQUESTED_TOKEN_TYPES = (ACCESS_TOKEN, JWT)

EXCHANGE_ONLY = ("subject_token", "subject_token_type", "requested_token_type")

# resource and audience may be repeated (RFC 8693 §2.1, RFC 8707 §2).
REPEATABLE = frozenset({"resource", "audience"})
MAX_SCOPES = 64

_SCOPE = re.compile(SCOPE_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s#]+$")

# A policy denial, named as the token endpoint names it: the first matching rule decides.
_DENIAL_CODES: tuple[tuple[str, type[OAuthError]], ...] = (
    ("workflow.agents", UnauthorizedClient),
    ("delegation.sub_agents", InvalidRequest),
    ("delegation.cycle", InvalidRequest),
    ("delegation.depth", InvalidRequest),
    ("delegation.user", InvalidRequest),
    ("delegation.may_act", InvalidRequest),
    ("workflow.tiers", InvalidRequest),
    ("workflow.tools", InvalidTarget),
    ("delegation.audience", InvalidTarget),
    ("workflow.scopes", InvalidScope),
    ("delegation.scopes", InvalidScope),
    ("dpop.required", InvalidDpopProof),
)


def _pair(form: Form, token_name: str, type_name: str, allowed: tuple[str, ...]) -> str | None:
    """A token and its ``*_type``, both or neither, the type one of ``allowed``."""
    token, kind = form.get(token_name), form.get(type_name)
    if (token is None) != (kind is None):
        present, missing = (token_name, type_name) if kind is None else (type_name, token_name)
        raise InvalidRequest(f"`{present}` needs `{missing}`")
    if kind is not None and kind not in allowed:
        raise InvalidRequest(f"`{type_name}` must be one of: {', '.join(allowed)}")
    return token


def _scopes(form: Form) -> tuple[str, ...] | None:
    value = form.get("scope")
    if value is None:
        return None
    scopes = value.split(" ")
    if len(scopes) > MAX_SCOPES or not all(_SCOPE.match(s) for s in scopes):
        raise InvalidScope("`scope` must be space-separated scope tokens (RFC 6749 §3.3)")
    return tuple(dict.fromkeys(scopes))


def _targets(form: Form) -> tuple[str, ...]:
    resources = form.all("resource")
    for uri in resources:
        # RFC 8707 §2: an absolute URI without a fragment.
        if len(uri) > MAX_ID_LENGTH or not _ABSOLUTE_URI.match(uri):
            raise InvalidTarget("`resource` must be an absolute URI without a fragment")
    audiences = form.all("audience")
    if any(len(a) > MAX_ID_LENGTH for a in audiences):
        raise InvalidTarget(f"`audience` values must be at most {MAX_ID_LENGTH} characters")
    return tuple(dict.fromkeys((*resources, *audiences)))


def client_assertion(token: str, *, spiffe: bool) -> WorkloadProof:
    """An agent's workload token as an RFC 7523 client assertion (``jwt-spiffe``: SVIDs only)."""
    return WorkloadProof(
        token,
        "client_assertion",
        InvalidClient,
        frozenset({"spiffe"}) if spiffe else ANY_WORKLOAD,
        sole_audience=True,
    )


def _workflow(form: Form) -> str | None:
    """Deputy's extension parameter: which workflow, when a workload is in several."""
    name = form.get("workflow")
    if name is not None and not _NAME.match(name):
        raise InvalidRequest("`workflow` must be a workflow name")
    return name


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """``POST /oauth2/token``: the agent authenticates with its workload token.

    As a client assertion (RFC 7523 ``jwt-bearer``, or ``jwt-spiffe`` for a JWT-SVID), as the
    ``actor_token`` of a token exchange, or both (then they must name the same workload).
    """

    form: Form | None
    form_error: OAuthError | None = None
    authorization: str | None = field(default=None, repr=False)
    dpop: DpopBinding = NO_DPOP

    @property
    def grant_type(self) -> str | None:
        return self.form.get("grant_type") if self.form is not None else None

    def proofs(self) -> tuple[WorkloadProof, ...]:
        if self.form_error is not None:
            raise self.form_error
        form = self.form
        assert form is not None
        grant = form.get("grant_type")
        if grant is None:
            raise InvalidRequest("`grant_type` is required")
        if grant not in GRANT_TYPES:
            raise UnsupportedGrantType(f"grant_type must be one of: {', '.join(GRANT_TYPES)}")
        if self.authorization is not None:
            refusal = InvalidClient(
                "agents authenticate with their workload token as a client assertion, "
                "not with an Authorization header"
            )
            if self.authorization.partition(" ")[0].lower() == "basic":
                refusal.challenge = "Basic"
            raise refusal
        proofs: list[WorkloadProof] = []
        assertion = _pair(form, "client_assertion", "client_assertion_type", ASSERTION_TYPES)
        if assertion is not None:
            spiffe = form.get("client_assertion_type") == JWT_SPIFFE
            proofs.append(client_assertion(assertion, spiffe=spiffe))
        actor = _pair(form, "actor_token", "actor_token_type", ACTOR_TOKEN_TYPES)
        if actor is not None:
            if grant != TOKEN_EXCHANGE:
                raise InvalidRequest("`actor_token` belongs to token exchange only")
            proofs.append(WorkloadProof(actor, "actor_token", InvalidRequest))
        if not proofs:
            raise InvalidClient(
                "authenticate the agent: send its workload token as `client_assertion` "
                f"({JWT_BEARER}, or {JWT_SPIFFE} for a JWT-SVID)"
                + (" or as `actor_token`" if grant == TOKEN_EXCHANGE else "")
            )
        return tuple(proofs)

    async def parse(self, workload: Workload) -> IssueRequest:
        form = self.form
        assert form is not None
        client_id = form.get("client_id")
        if client_id is not None and client_id != workload.id:
            raise InvalidClient("client_id does not name the workload the assertion proves")
        targets, scopes = _targets(form), _scopes(form)
        if form.get("grant_type") == CLIENT_CREDENTIALS:
            stray = [n for n in EXCHANGE_ONLY if n in form]
            if stray:
                raise InvalidRequest(f"{', '.join(stray)} belong to token exchange only")
            return IssueRequest(
                agent_id=None,
                targets=targets,
                scopes=scopes,
                workflow=_workflow(form),
                grant="client_credentials",
                dpop_jkt=await self.dpop.jkt(),
            )
        subject = _pair(form, "subject_token", "subject_token_type", SUBJECT_TOKEN_TYPES)
        if subject is None:
            raise InvalidRequest("`subject_token` and `subject_token_type` are required")
        requested = form.get("requested_token_type")
        if requested is not None and requested not in REQUESTED_TOKEN_TYPES:
            raise InvalidRequest(
                f"requested_token_type must be one of: {', '.join(REQUESTED_TOKEN_TYPES)}"
            )
        return IssueRequest(
            agent_id=None,
            targets=targets,
            scopes=scopes,
            user_token=subject,
            workflow=_workflow(form),
            grant="token_exchange",
            subject_field="subject_token",
            subject_is_id_token=form.get("subject_token_type") == ID_TOKEN,
            dpop_jkt=await self.dpop.jkt(),
        )

    def translate(self, err: OAuthError) -> OAuthError:
        """RFC 6749 §5.2 and RFC 8693 §2.2.2 codes; every policy reason is still listed."""
        if isinstance(err, InvalidToken):
            return InvalidRequest(err.description, debug=err.debug)
        if type(err) is not AccessDenied or not err.reasons:
            return err
        rules = [r.rule for r in err.reasons]
        for prefix, code in _DENIAL_CODES:
            if any(rule.startswith(prefix) for rule in rules):
                return code(err.description, debug=err.debug, reasons=err.reasons)
        return InvalidRequest(err.description, debug=err.debug, reasons=err.reasons)

    def issued_token_type(self) -> str:
        requested = self.form.get("requested_token_type") if self.form is not None else None
        return requested or ACCESS_TOKEN

    def response(self, result: IssueResult, now: float) -> dict[str, Any]:
        """RFC 8693 §2.2.1 (RFC 6749 §5.1 for client credentials) for the first target.

        Several targets give one credential each: the standard members describe the first
        (in request order), and ``credentials`` holds every one, keyed by tool.
        """
        exchange = self.grant_type == TOKEN_EXCHANGE
        issued = self.issued_token_type()
        each: dict[str, dict[str, Any]] = {}
        for c in result.credentials:
            entry: dict[str, Any] = {"access_token": c.token}
            if exchange:
                entry["issued_token_type"] = issued
            entry.update(
                token_type=c.draft.token_type,
                expires_in=max(0, c.draft.expires_at - int(now)),
                scope=c.draft.scope,
                audience=c.draft.audience,
            )
            each[c.draft.tool] = entry
        first = next(iter(each.values()))
        return {
            **first,
            "credentials": each,
            "execution_id": result.execution_id,
            "decision_id": result.decision_id,
        }
