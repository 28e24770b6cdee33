"""The OAuth endpoints: token, introspection, revocation, the revocation feed, the admin API
and usage reports."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from deputy.audit.revocation import SELECTORS
from deputy.errors import InvalidRequest, OAuthError, ServerError, UnauthorizedClient
from deputy.identity.workload import WorkloadVerifier
from deputy.oauth.client_auth import Client, ClientAuthenticator
from deputy.oauth.form import MAX_FORM_BYTES, Form, parse_form
from deputy.oauth.token_request import (
    ASSERTION_TYPES,
    JWT_SPIFFE,
    REPEATABLE,
    TokenRequest,
    client_assertion,
)
from deputy.server.errors import JSON_TYPE, NO_STORE, json_body, render_error, respond
from deputy.server.logs import REQUEST_ID
from deputy.service.context import RequestContext
from deputy.service.introspection import Introspection
from deputy.service.issuance import DpopBinding, Issuer, verify_workload
from deputy.service.request import decode_json_body
from deputy.service.revocation import Revocations
from deputy.service.usage import Reporter, UsageReports, parse_uses

MAX_USAGE_BYTES = 256 * 1024

_log = logging.getLogger(__name__)
Handler = Callable[[Request, RequestContext], Awaitable[tuple[int, Any, dict[str, str]]]]


async def limited_body(request: Request, limit: int) -> bytes:
    """The body, reading at most ``limit + 1`` bytes of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _context(request: Request, path: str, request_id: str) -> RequestContext:
    client = request.client
    return RequestContext(request_id, client.host if client else None, path)


def _single_authorization(request: Request) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidRequest("send one Authorization header")
    return values[0] if values else None


async def _form(request: Request, repeatable: frozenset[str] = frozenset()) -> Form:
    body = await limited_body(request, MAX_FORM_BYTES)
    return parse_form(body, request.headers.get("content-type"), repeatable=repeatable)


class OAuthEndpoint:
    """One endpoint as a plain ASGI app: no middleware or response objects per request."""

    def __init__(
        self, path: str, handler: Handler, new_request_id: Callable[[Request], str]
    ) -> None:
        self._path = path
        self._handler = handler
        self._request_id = new_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        rid = self._request_id(request)
        REQUEST_ID.set(rid)  # for log lines of this request (its own task: no reset needed)
        try:
            status, document, extra = await self._handler(
                request, _context(request, self._path, rid)
            )
        except OAuthError as err:
            status, headers, payload = render_error(err, rid)
        except Exception:
            _log.exception("%s failed unexpectedly (request %s)", self._path, rid)
            status, headers, payload = render_error(ServerError("internal error"), rid)
        else:
            given = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
            headers = [(b"x-request-id", rid.encode()), *given]
            if "cache-control" not in extra:
                headers += NO_STORE
            if status == 304:
                payload = b""
            else:
                headers += JSON_TYPE
                payload = json_body(document)
        await respond(send, status, headers, payload)


class OAuthEndpoints:
    """Each endpoint turns its wire format into a call on a service, and errors into bodies."""

    def __init__(
        self,
        *,
        service: Issuer,
        workloads: WorkloadVerifier,
        introspection: Introspection,
        revocations: Revocations,
        usage: UsageReports,
        clients: ClientAuthenticator,
        dpop: DpopBinding,
        new_request_id: Callable[[Request], str],
        now: Callable[[], float],
    ) -> None:
        self._service = service
        self._workloads = workloads
        self._introspection = introspection
        self._revocations = revocations
        self._usage = usage
        self._clients = clients
        self._dpop = dpop
        self._request_id = new_request_id
        self._now = now

    def endpoint(self, path: str, handler: Handler) -> OAuthEndpoint:
        return OAuthEndpoint(path, handler, self._request_id)

    async def token(
        self, request: Request, context: RequestContext
    ) -> tuple[int, Any, dict[str, str]]:
        """RFC 8693 token exchange and RFC 6749 §4.4 client credentials; audited either way."""
        form: Form | None = None
        error: OAuthError | None = None
        authorization: str | None = None
        try:
            authorization = _single_authorization(request)
            form = await _form(request, REPEATABLE)
        except OAuthError as err:
            error = err
        proofs = tuple(request.headers.getlist("dpop"))
        exchange = TokenRequest(form, error, authorization, replace(self._dpop, proofs=proofs))
        result = await self._service.issue(exchange, context)
        return 200, exchange.response(result, self._now()), {}

    async def _client(self, request: Request, form: Form) -> Client:
        return await self._clients.authenticate(_single_authorization(request), form)

    async def introspect(
        self, request: Request, context: RequestContext
    ) -> tuple[int, Any, dict[str, str]]:
        """RFC 7662 §2: for configured clients; ``token_type_hint`` is not needed."""
        form = await _form(request)
        client = await self._client(request, form)
        token = form.get("token")
        if token is None:
            raise InvalidRequest("`token` is required")
        document = await self._introspection.introspect(
            token, audiences=client.audiences, admin=client.admin
        )
        return 200, document, {}

    async def revoke(
        self, request: Request, context: RequestContext
    ) -> tuple[int, Any, dict[str, str]]:
        """RFC 7009: the agent holding a credential (by client assertion), or an operator."""
        form = await _form(request)
        token = form.get("token")
        assertion, kind = form.get("client_assertion"), form.get("client_assertion_type")
        # An agent's workload token, unless a configured client signed the assertion.
        by_agent = kind == JWT_SPIFFE or (
            kind in ASSERTION_TYPES and not self._clients.asserts(assertion)
        )
        if by_agent:
            if assertion is None:
                raise InvalidRequest("`client_assertion_type` needs `client_assertion`")
            spiffe = kind == JWT_SPIFFE
            proof = client_assertion(assertion, spiffe=spiffe)
            workload = await verify_workload(self._workloads, (proof,))
            holder: str | None = workload.id
            asker = f"workload:{workload.id}"
        else:
            client = await self._client(request, form)
            if not client.admin:
                raise UnauthorizedClient(
                    "only the agent holding a credential, or an admin client, may revoke it"
                )
            holder, asker = None, f"client:{client.name}"
        if token is None:
            raise InvalidRequest("`token` is required")
        await self._revocations.revoke_token(
            token, holder=holder, requested_by=asker, context=context
        )
        return 200, {}, {}

    async def feed(
        self, request: Request, context: RequestContext
    ) -> tuple[int, Any, dict[str, str]]:
        """Unexpired revocations for verifiers; revalidate with ``If-None-Match``."""
        feed = await self._revocations.feed()
        headers = {"etag": feed.etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == feed.etag:
            return 304, None, headers
        return 200, feed.document, headers

    async def admin_revoke(
        self, request: Request, context: RequestContext
    ) -> tuple[int, Any, dict[str, str]]:
        """The kill switch: ``{"<selector>": "<value>", "reason": "..."}`` from an admin client.

        HTTP Basic only (the body is JSON), and only ``application/json``, which a browser
        cannot send across origins without a preflight.
        """
        _require_json(request)
        client = await self._client(request, Form({}))
        if not client.admin:
            raise UnauthorizedClient("this client is not an admin client")
        body = decode_json_body(await limited_body(request, MAX_FORM_BYTES))
        selector, value, reason = _kill_order(body)
        outcome = await self._revocations.revoke(
            selector, value, requested_by=f"client:{client.name}", context=context, reason=reason
        )
        return 200, outcome.body(), {}

    async def usage(
        self, request: Request, context: RequestContext
    ) -> tuple[int, Any, dict[str, str]]:
        """Uses of credentials reported by a configured client (HTTP Basic, JSON only)."""
        _require_json(request)
        client = await self._client(request, Form({}))
        body = decode_json_body(await limited_body(request, MAX_USAGE_BYTES), MAX_USAGE_BYTES)
        reporter = Reporter(client.name, client.audiences, client.admin)
        outcome = await self._usage.report(parse_uses(body), reporter=reporter, context=context)
        return 200, outcome.body(), {}


def _require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise InvalidRequest("the body must be application/json")


def _kill_order(body: object) -> tuple[str, str, str | None]:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(k for k in body if k not in (*SELECTORS, "reason"))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}")
    named = [k for k in SELECTORS if k in body]
    if len(named) != 1:
        raise InvalidRequest(f"name exactly one of: {', '.join(SELECTORS)}")
    value, reason = body[named[0]], body.get("reason")
    if not isinstance(value, str) or (reason is not None and not isinstance(reason, str)):
        raise InvalidRequest(f"`{named[0]}` and `reason` must be strings")
    return named[0], value, reason
