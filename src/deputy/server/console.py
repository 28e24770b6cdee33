"""The admin web console at ``/console``: records, decisions, credentials and the kill switch.

Server-rendered with the standard library: every interpolated value goes through
``html.escape``. Admin clients only (HTTP Basic); the kill switch form carries a token that
is an HMAC of the client's name under a key made when the broker starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from deputy.audit.log import AuditFilter, LedgerEntry
from deputy.audit.record import StoredRecord
from deputy.audit.revocation import SELECTORS
from deputy.errors import InvalidClient, OAuthError
from deputy.oauth.client_auth import Client
from deputy.oauth.form import MAX_FORM_BYTES, Form, parse_form
from deputy.server.errors import Headers, respond
from deputy.server.oauth import limited_body
from deputy.server.wiring import Broker
from deputy.service.context import RequestContext

PAGE_SIZE = 50
CONSOLE_PATH = "/console"
STYLE_PATH = "/console/style.css"
_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
    ".deny{color:#a00}.allow{color:#070}form{margin:1em 0}label{margin-right:1em}"
)
SECURITY_HEADERS: Headers = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
HTML_TYPE = (b"content-type", b"text/html; charset=utf-8")
# Query-string name → the AuditFilter field it sets.
_FILTERS = {
    "user": "user_id",
    "workload": "workload_id",
    "instance": "agent_instance",
    "execution": "execution_id",
    "jti": "jti",
}
_RECORD_COLUMNS = ("outcome", "endpoint", "workload_id", "agent_instance", "user_id", "workflow")


class Refused(Exception):
    """A request the console answers with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Page = Callable[[Request, Client], Awaitable[tuple[int, str]]]


def e(value: object) -> str:
    """``value`` as HTML text; ``None`` is empty."""
    return "" if value is None else escape(str(value), quote=True)


def when(value: object) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return "" if value is None else str(value)


def layout(title: str, body: str) -> str:
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{e(title)} · deputy</title>"
        f'<link rel="stylesheet" href="{STYLE_PATH}"></head><body>'
        f'<p><a href="{CONSOLE_PATH}">records</a></p><h1>{e(title)}</h1>{body}</body></html>'
    )


def table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table of cells already rendered as HTML."""
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def decision_link(decision_id: object) -> str:
    href = f"{CONSOLE_PATH}/decisions/{quote(str(decision_id), safe='')}"
    return f'<a href="{e(href)}">{e(decision_id)}</a>'


def credential_link(jti: object) -> str:
    href = f"{CONSOLE_PATH}/credentials/{quote(str(jti), safe='')}"
    return f'<a href="{e(href)}">{e(jti)}</a>'


def plain(value: object) -> str:
    """A record value as text: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return e(value)
    return e(json.dumps(value, sort_keys=True))


def parse_since(text: str) -> float:
    """Seconds since the epoch, or an ISO 8601 time (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Refused(400, "`since` must be epoch seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def records_filter(params: dict[str, str]) -> AuditFilter:
    """The filter the list page's query string asks for, newest first, one page."""
    fields: dict[str, Any] = {
        field: params[name] for name, field in _FILTERS.items() if params.get(name)
    }
    if params.get("since"):
        fields["since"] = parse_since(params["since"])
    if params.get("before_seq"):
        try:
            fields["before_seq"] = int(params["before_seq"])
        except ValueError:
            raise Refused(400, "`before_seq` must be an integer") from None
    return AuditFilter(**fields, newest_first=True, limit=PAGE_SIZE)


def filter_form(params: dict[str, str]) -> str:
    inputs = "".join(
        f'<label>{e(name)} <input name="{e(name)}" value="{e(params.get(name, ""))}"></label>'
        for name in (*_FILTERS, "since")
    )
    return f'<form method="get" action="{CONSOLE_PATH}">{inputs}<button>filter</button></form>'


def record_row(stored: StoredRecord) -> list[str]:
    record = stored.record
    outcome = e(record.get("outcome"))
    cells = [e(stored.seq), e(when(record.get("time"))), decision_link(record.get("decision_id"))]
    cells.append(f'<span class="{outcome}">{outcome}</span>')
    cells += [plain(record.get(column)) for column in _RECORD_COLUMNS[1:]]
    cells.append(e(len(record.get("credentials") or ())))
    return cells


def records_page(rows: list[StoredRecord], params: dict[str, str], kill_form: str) -> str:
    head = ("seq", "time", "decision", *_RECORD_COLUMNS, "credentials")
    parts = [filter_form(params), table(head, (record_row(r) for r in rows))]
    if len(rows) == PAGE_SIZE:
        kept = {k: v for k, v in params.items() if k in (*_FILTERS, "since") and v}
        query = urlencode({**kept, "before_seq": rows[-1].seq})
        parts.append(f'<p><a rel="next" href="{e(CONSOLE_PATH + "?" + query)}">next</a></p>')
    parts.append(kill_form)
    return layout("Records", "".join(parts))


def kill_form(token: str) -> str:
    options = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in SELECTORS)
    return (
        f'<h2>Kill switch</h2><form method="post" action="{CONSOLE_PATH}/revoke">'
        f'<input type="hidden" name="csrf" value="{e(token)}">'
        f'<label>revoke by <select name="selector">{options}</select></label>'
        '<label>value <input name="value" required></label>'
        '<label>type the value again <input name="confirm" required></label>'
        '<label>reason <input name="reason"></label><button>revoke</button></form>'
    )


def decision_page(stored: StoredRecord) -> str:
    record = stored.record
    fields = table(("field", "value"), ([e(k), plain(v)] for k, v in sorted(record.items())))
    reasons = "".join(f"<li>{plain(r)}</li>" for r in record.get("reasons") or ())
    credentials = table(
        ("jti", "tool", "audience", "scope", "expires"),
        (
            [
                credential_link(c.get("jti")),
                e(c.get("tool")),
                e(c.get("audience")),
                e(c.get("scope")),
                e(when(c.get("expires_at"))),
            ]
            for c in record.get("credentials") or ()
            if isinstance(c, dict)
        ),
    )
    body = (
        f"<p>seq {e(stored.seq)}, hash {e(stored.hash)}</p>{fields}"
        f"<h2>Reasons</h2><ul>{reasons or '<li>none</li>'}</ul>"
        f"<h2>Credentials</h2>{credentials}"
    )
    return layout(f"Decision {record.get('decision_id')}", body)


def credential_page(entry: LedgerEntry, issued_by: str | None, uses: list[dict[str, Any]]) -> str:
    fields = [
        ("jti", e(entry.jti)),
        ("tool", e(entry.tool)),
        ("audience", e(entry.audience)),
        ("expires", e(when(entry.expires_at))),
        ("user", e(entry.user_id)),
        ("user issuer", e(entry.user_issuer)),
        ("tier", e(entry.tier)),
        ("delegation", e(entry.delegation)),
        ("workflow", e(entry.workflow)),
        ("execution", e(entry.execution_id)),
        ("workload", e(entry.workload_id)),
        ("may act", e(entry.may_act)),
        ("issued by decision", decision_link(issued_by) if issued_by else ""),
    ]
    used = table(
        ("time", "operation", "outcome", "reported by", "seq"),
        (
            [
                e(when(u["time"])),
                e(u["operation"]),
                e(u["outcome"]),
                e(u["reported_by"]),
                e(u["seq"]),
            ]
            for u in uses
        ),
    )
    body = table(("field", "value"), ([e(k), v] for k, v in fields)) + f"<h2>Uses</h2>{used}"
    return layout(f"Credential {entry.jti}", body)


def message_page(title: str, message: str) -> str:
    return layout(title, f"<p>{e(message)}</p>")


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

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._key = secrets.token_bytes(32)  # per start-up: a restart voids open forms

    def csrf_token(self, client: Client) -> str:
        return hmac.new(self._key, client.name.encode(), hashlib.sha256).hexdigest()

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
        return [
            Route(CONSOLE_PATH, ConsolePage(self, self.records), methods=["GET"]),
            Route(
                CONSOLE_PATH + "/decisions/{decision_id}",
                ConsolePage(self, self.decision),
                methods=["GET"],
            ),
            Route(
                CONSOLE_PATH + "/credentials/{jti}",
                ConsolePage(self, self.credential),
                methods=["GET"],
            ),
            Route(CONSOLE_PATH + "/revoke", ConsolePage(self, self.revoke), methods=["POST"]),
            Route(STYLE_PATH, Stylesheet(), methods=["GET"]),
        ]

    async def records(self, request: Request, client: Client) -> tuple[int, str]:
        params = dict(request.query_params)
        audit_filter = records_filter(params)
        reader = self._broker.audit_reader
        rows = await asyncio.to_thread(lambda: list(reader.query(audit_filter)))
        return 200, records_page(rows, params, kill_form(self.csrf_token(client)))

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
            f"<p>Revoked every credential with {e(selector)} = {e(value)} issued up to "
            f"{e(when(outcome.revocation.issued_before))}: {e(outcome.live.credentials)} live "
            f"credential(s) of {e(outcome.live.users)} user(s).</p>"
            f"<p>Decision {decision_link(outcome.decision_id)}</p>"
        )
        return 200, layout("Revoked", done)


class Stylesheet:
    """The console's stylesheet (the policy allows no inline styles)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/css; charset=utf-8"), *SECURITY_HEADERS]
        await respond(send, 200, headers, _STYLE.encode())
