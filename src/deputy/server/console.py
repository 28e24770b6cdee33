"""The admin web console at ``/console``: records, decisions, credentials, executions,
blast radius, drift and the kill switch.

Server-rendered (:mod:`deputy.server.console_html`): every interpolated value is escaped.
Admin clients only (HTTP Basic); the kill switch form carries a token that is an HMAC of the
client's name under a key made when the broker starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from deputy.audit.forensics import activity_since, ledger_snapshot, parse_moment, timeline_of
from deputy.audit.log import AuditFilter
from deputy.clock import Clock
from deputy.errors import InvalidClient, OAuthError
from deputy.oauth.client_auth import Client
from deputy.oauth.form import MAX_FORM_BYTES, Form, parse_form
from deputy.policy.blast_radius import blast_radius as compute_blast_radius
from deputy.policy.drift import document_diff, suggested
from deputy.policy.drift import drift as compute_drift
from deputy.server.console_html import (
    BLAST_PATH,
    CONSOLE_PATH,
    DRIFT_PATH,
    FILTERS,
    OUTCOMES,
    STYLE,
    STYLE_PATH,
    blast_page,
    credential_page,
    decision_link,
    decision_page,
    drift_page,
    e,
    execution_page,
    kill_form,
    layout,
    message_page,
    records_page,
    when,
)
from deputy.server.errors import Headers, respond
from deputy.server.oauth import limited_body
from deputy.server.wiring import Broker
from deputy.service.context import RequestContext

PAGE_SIZE = 50
DRIFT_WINDOW = "30d"
MAX_TARGET = 512
SECURITY_HEADERS: Headers = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
HTML_TYPE = (b"content-type", b"text/html; charset=utf-8")


class Refused(Exception):
    """A request the console answers with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Page = Callable[[Request, Client], Awaitable[tuple[int, str]]]


def records_filter(params: dict[str, str], now: float) -> AuditFilter:
    """The filter the list page's query string asks for, newest first, one page."""
    fields: dict[str, Any] = {
        field: params[name] for name, field in FILTERS.items() if params.get(name)
    }
    outcome = params.get("outcome")
    if outcome:
        if outcome not in OUTCOMES:
            raise Refused(400, f"`outcome` must be one of {', '.join(OUTCOMES)}")
        fields["outcome"] = outcome
    if params.get("since"):
        fields["since"] = moment(params["since"], now)
    if params.get("before_seq"):
        try:
            fields["before_seq"] = int(params["before_seq"])
        except ValueError:
            raise Refused(400, "`before_seq` must be an integer") from None
    return AuditFilter(**fields, newest_first=True, limit=PAGE_SIZE)


def moment(text: str, now: float) -> float:
    try:
        return parse_moment(text, now)
    except ValueError as err:
        raise Refused(400, f"`since`: {err}") from None


class ConsolePage:
    """One console page as a plain ASGI app: admin clients only, every answer hardened."""

    def __init__(self, console: Console, page: Page) -> None:
        self._console = console
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        headers = [HTML_TYPE, *SECURITY_HEADERS]
        try:
            client = await self._console.admin(request)
            status, document = await self._page(request, client)
        except Refused as refused:
            status, document = refused.status, message_page("Refused", refused.message)
            if status == 401:
                headers.append((b"www-authenticate", b'Basic realm="deputy"'))
        except OAuthError as err:
            status, document = err.status_code, message_page("Error", err.description)
        await respond(send, status, headers, document.encode())


class Console:
    """The console's pages over a broker's audit reader, policy and revocations."""

    def __init__(self, broker: Broker, clock: Clock) -> None:
        self._broker = broker
        self._clock = clock
        self._key = secrets.token_bytes(32)  # per start-up: a restart voids open forms

    def csrf_token(self, client: Client) -> str:
        return hmac.new(self._key, client.name.encode(), hashlib.sha256).hexdigest()

    def kill(self, client: Client, selector: str = "", value: str = "") -> str:
        return kill_form(self.csrf_token(client), selector, value)

    async def admin(self, request: Request) -> Client:
        values = request.headers.getlist("authorization")
        if len(values) != 1:
            raise Refused(401, "sign in as an admin client")
        try:
            client = await self._broker.clients.authenticate(values[0], Form({}))
        except InvalidClient:
            raise Refused(401, "sign in as an admin client") from None
        if not client.admin:
            raise Refused(403, "this client is not an admin client")
        return client

    def routes(self) -> list[Route]:
        pages: list[tuple[str, Page]] = [
            (CONSOLE_PATH, self.records),
            (CONSOLE_PATH + "/decisions/{decision_id}", self.decision),
            (CONSOLE_PATH + "/credentials/{jti}", self.credential),
            (CONSOLE_PATH + "/executions/{execution_id}", self.execution),
            (BLAST_PATH, self.blast_radius),
            (DRIFT_PATH, self.drift),
        ]
        return [
            *(Route(path, ConsolePage(self, page), methods=["GET"]) for path, page in pages),
            Route(CONSOLE_PATH + "/revoke", ConsolePage(self, self.revoke), methods=["POST"]),
            Route(STYLE_PATH, Stylesheet(), methods=["GET"]),
        ]

    async def records(self, request: Request, client: Client) -> tuple[int, str]:
        params = dict(request.query_params)
        audit_filter = records_filter(params, self._clock.now())
        reader = self._broker.audit_reader
        rows = await asyncio.to_thread(lambda: list(reader.query(audit_filter)))
        return 200, records_page(rows, params, PAGE_SIZE, self.kill(client))

    async def decision(self, request: Request, client: Client) -> tuple[int, str]:
        decision_id = str(request.path_params["decision_id"])
        stored = await asyncio.to_thread(self._broker.audit_reader.decision, decision_id)
        if stored is None:
            raise Refused(404, "no such decision")
        return 200, decision_page(stored)

    async def credential(self, request: Request, client: Client) -> tuple[int, str]:
        jti = str(request.path_params["jti"])
        reader = self._broker.audit_reader
        entry = await reader.credential(jti)
        if entry is None:
            raise Refused(404, "no such credential")
        issued = await asyncio.to_thread(lambda: list(reader.query(AuditFilter(jti=jti, limit=1))))
        uses = await asyncio.to_thread(reader.uses_of, [jti])
        issued_by = issued[0].record.get("decision_id") if issued else None
        return 200, credential_page(entry, issued_by, uses.get(jti, []))

    async def execution(self, request: Request, client: Client) -> tuple[int, str]:
        execution_id = str(request.path_params["execution_id"])
        records = await asyncio.to_thread(timeline_of, self._broker.audit_reader, execution_id)
        if not records:
            raise Refused(404, "no records for this execution")
        kill = self.kill(client, "execution_id", execution_id)
        return 200, execution_page(execution_id, records, kill)

    async def blast_radius(self, request: Request, client: Client) -> tuple[int, str]:
        target = request.query_params.get("workload", "").strip()
        if not target:
            return 200, blast_page(None, "", "")
        if len(target) > MAX_TARGET:
            raise Refused(400, f"`workload` is longer than {MAX_TARGET} characters")
        now = self._clock.now()
        reader = self._broker.audit_reader
        ledger = await ledger_snapshot(reader, now, workload=target)
        radius = compute_blast_radius(self._broker.policy, target, ledger)
        return 200, blast_page(radius, target, self.kill(client, "workload_id", target))

    async def drift(self, request: Request, client: Client) -> tuple[int, str]:
        since = request.query_params.get("since") or DRIFT_WINDOW
        start = moment(since, self._clock.now())
        policy = self._broker.policy
        reader = self._broker.audit_reader
        issued, used = await asyncio.to_thread(activity_since, reader, start)
        report = compute_drift(policy, issued, used)
        document = self._broker.settings.model_dump(
            mode="json", include={"workflows"}, exclude_defaults=True
        )
        diff = document_diff(
            document, suggested(document, policy, report), "policy", "policy (narrowed)"
        )
        return 200, drift_page(report, since, start, used is not None, diff)

    async def revoke(self, request: Request, client: Client) -> tuple[int, str]:
        body = await limited_body(request, MAX_FORM_BYTES)
        form = parse_form(body, request.headers.get("content-type"))
        token = form.get("csrf") or ""
        if not hmac.compare_digest(token, self.csrf_token(client)):
            raise Refused(403, "the form is stale or was not made by this console; reload it")
        selector, value = form.get("selector") or "", form.get("value") or ""
        if form.get("confirm") != value:
            raise Refused(400, "the value typed again does not match; nothing was revoked")
        host = request.client.host if request.client else None
        context = RequestContext(self._broker.ids.token(), host, CONSOLE_PATH + "/revoke")
        outcome = await self._broker.revocations.revoke(
            selector,
            value,
            requested_by=f"console:{client.name}",
            context=context,
            reason=form.get("reason"),
        )
        done = (
            f'<p class="message">Revoked every credential with {e(selector)} = {e(value)} '
            f"issued up to {e(when(outcome.revocation.issued_before))}: "
            f"{e(outcome.live.credentials)} live credential(s) of {e(outcome.live.users)} "
            f"user(s).</p><p>Decision {decision_link(outcome.decision_id)}</p>"
        )
        return 200, layout("Revoked", done)


class Stylesheet:
    """The console's stylesheet (the policy allows no inline styles)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/css; charset=utf-8"), *SECURITY_HEADERS]
        await respond(send, 200, headers, STYLE.encode())
