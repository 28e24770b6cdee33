"""The console's pages as HTML: every interpolated value goes through ``html.escape``.

Functions here take plain values (records, ledger entries, reports) and return markup; the
handlers in :mod:`deputy.server.console` fetch the values and pick the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from deputy.audit.log import LedgerEntry
from deputy.audit.record import StoredRecord, tools_of
from deputy.audit.revocation import SELECTORS
from deputy.policy.blast_radius import BlastRadius, WorkflowReach
from deputy.policy.drift import WorkflowDrift
from deputy.server.blast_picture import blast_picture

CONSOLE_PATH = "/console"
STYLE_PATH = "/console/style.css"
BLAST_PATH = CONSOLE_PATH + "/blast-radius"
DRIFT_PATH = CONSOLE_PATH + "/drift"
STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
    ".deny{color:#a00}.allow{color:#070}form{margin:1em 0}label{margin-right:1em}"
    "nav a{margin-right:1em}ul.timeline{list-style:none;padding-left:0}"
    "ul.timeline ul{list-style:none;padding-left:1.5em}.add{color:#070}.del{color:#a00}"
    "svg.blast{border:1px solid #ddd;background:#fff}"
    "svg.blast .node rect{fill:#f4f6f8;stroke:#667}"
    "svg.blast .node.live rect{fill:#fde8e8;stroke:#c00;stroke-width:2}"
    "svg.blast text{font-size:12px;fill:#111}svg.blast .heading{font-weight:bold}"
    "svg.blast .edge{stroke:#99a;stroke-width:1}svg.blast .edge.live{stroke:#c00;stroke-width:2}"
)
# Query-string name → the AuditFilter field it sets (equality filters).
FILTERS = {
    "user": "user_id",
    "workload": "workload_id",
    "instance": "agent_instance",
    "execution": "execution_id",
    "jti": "jti",
    "tool": "tool",
}
OUTCOMES = ("allow", "deny", "revoke", "usage")
KEPT_PARAMS = (*FILTERS, "outcome", "since")
_RECORD_COLUMNS = ("endpoint", "workflow", "user_id", "agent_instance")
_LINKED_COLUMNS = ("workload", "execution", "tools", "credentials")


def e(value: object) -> str:
    """``value`` as HTML text; ``None`` is empty."""
    return "" if value is None else escape(str(value), quote=True)


def when(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return "" if value is None else str(value)


def layout(title: str, body: str) -> str:
    nav = (
        f'<nav><a href="{CONSOLE_PATH}">records</a><a href="{BLAST_PATH}">blast radius</a>'
        f'<a href="{DRIFT_PATH}">drift</a></nav>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} · deputy</title>"
        f'<link rel="stylesheet" href="{STYLE_PATH}"></head><body>'
        f"{nav}<h1>{e(title)}</h1>{body}</body></html>"
    )


def message_page(title: str, message: str) -> str:
    return layout(title, f'<p class="message">{e(message)}</p>')


def table(head: Iterable[str], rows: Iterable[Iterable[str]], css: str = "") -> str:
    """A table of cells already rendered as HTML."""
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{e(css)}"' if css else ""
    return f"<table{klass}><tr>{th}</tr>{body}</table>"


def link(path: str, label: object, params: Mapping[str, str] | None = None) -> str:
    href = path + ("?" + urlencode(params) if params else "")
    return f'<a href="{e(href)}">{e(label)}</a>'


def decision_link(decision_id: object) -> str:
    return link(f"{CONSOLE_PATH}/decisions/{quote(str(decision_id), safe='')}", decision_id)


def credential_link(jti: object) -> str:
    return link(f"{CONSOLE_PATH}/credentials/{quote(str(jti), safe='')}", jti)


def execution_link(execution_id: object) -> str:
    if not isinstance(execution_id, str):
        return ""
    return link(f"{CONSOLE_PATH}/executions/{quote(execution_id, safe='')}", execution_id)


def workload_link(workload_id: object) -> str:
    if not isinstance(workload_id, str):
        return ""
    return link(BLAST_PATH, workload_id, {"workload": workload_id})


def plain(value: object) -> str:
    """A record value as text: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return e(value)
    return e(json.dumps(value, sort_keys=True))


def outcome_cell(outcome: object) -> str:
    text = e(outcome)
    return f'<span class="{text}">{text}</span>'


# --- records ---------------------------------------------------------------------------------
def filter_form(params: Mapping[str, str]) -> str:
    inputs = "".join(
        f'<label>{e(name)} <input name="{e(name)}" value="{e(params.get(name, ""))}"></label>'
        for name in FILTERS
    )
    chosen = params.get("outcome", "")
    options = '<option value="">any</option>' + "".join(
        f'<option value="{o}"{" selected" if o == chosen else ""}>{o}</option>' for o in OUTCOMES
    )
    since = e(params.get("since", ""))
    return (
        f'<form class="filters" method="get" action="{CONSOLE_PATH}">{inputs}'
        f'<label>outcome <select name="outcome">{options}</select></label>'
        f'<label>since <input name="since" value="{since}" placeholder="2h, 7d, ISO time">'
        "</label><button>filter</button></form>"
    )


def record_row(stored: StoredRecord) -> list[str]:
    record = stored.record
    tools = sorted(tools_of(record))
    cells = [e(stored.seq), e(when(record.get("time"))), decision_link(record.get("decision_id"))]
    cells.append(outcome_cell(record.get("outcome")))
    cells += [plain(record.get(column)) for column in _RECORD_COLUMNS]
    cells.append(workload_link(record.get("workload_id")))
    cells.append(execution_link(record.get("execution_id")))
    cells.append(e(" ".join(tools)))
    cells.append(e(len(record.get("credentials") or ())))
    return cells


def records_page(
    rows: list[StoredRecord], params: Mapping[str, str], page_size: int, kill: str
) -> str:
    head = ("seq", "time", "decision", "outcome", *_RECORD_COLUMNS, *_LINKED_COLUMNS)
    parts = [filter_form(params), table(head, (record_row(r) for r in rows), "records")]
    if not rows:
        parts.append('<p class="message">no records match</p>')
    if len(rows) == page_size:
        kept = {k: v for k, v in params.items() if k in KEPT_PARAMS and v}
        query = urlencode({**kept, "before_seq": rows[-1].seq})
        parts.append(f'<p><a rel="next" href="{e(CONSOLE_PATH + "?" + query)}">next</a></p>')
    parts.append(kill)
    return layout("Records", "".join(parts))


def kill_form(token: str, selector: str = "", value: str = "") -> str:
    options = "".join(
        f'<option value="{e(s)}"{" selected" if s == selector else ""}>{e(s)}</option>'
        for s in SELECTORS
    )
    return (
        f'<h2>Kill switch</h2><form class="kill" method="post" action="{CONSOLE_PATH}/revoke">'
        f'<input type="hidden" name="csrf" value="{e(token)}">'
        f'<label>revoke by <select name="selector">{options}</select></label>'
        f'<label>value <input name="value" value="{e(value)}" required></label>'
        '<label>type the value again <input name="confirm" required></label>'
        '<label>reason <input name="reason"></label><button>revoke</button></form>'
    )


# --- one decision, one credential, one execution ---------------------------------------------
def _credential_rows(credentials: Iterable[Any]) -> Iterable[list[str]]:
    for c in credentials:
        if isinstance(c, dict):
            yield [
                credential_link(c.get("jti")),
                e(c.get("tool")),
                e(c.get("audience")),
                e(c.get("scope")),
                e(when(c.get("expires_at"))),
            ]


def decision_page(stored: StoredRecord) -> str:
    record = stored.record
    fields = table(("field", "value"), ([e(k), plain(v)] for k, v in sorted(record.items())))
    reasons = "".join(
        f"<li><b>{e(r.get('rule'))}</b>: {e(r.get('message'))}</li>"
        if isinstance(r, dict)
        else f"<li>{plain(r)}</li>"
        for r in record.get("reasons") or ()
    )
    credentials = table(
        ("jti", "tool", "audience", "scope", "expires"),
        _credential_rows(record.get("credentials") or ()),
    )
    links = " ".join(
        part
        for part in (
            execution_link(record.get("execution_id")),
            workload_link(record.get("workload_id")),
        )
        if part
    )
    body = (
        f"<p>seq {e(stored.seq)}, hash {e(stored.hash)}</p>"
        + (f"<p>execution and blast radius: {links}</p>" if links else "")
        + f'<h2>Reasons</h2><ul class="reasons">{reasons or "<li>none</li>"}</ul>'
        + f"<h2>Credentials</h2>{credentials}<h2>Record</h2>{fields}"
    )
    return layout(f"Decision {record.get('decision_id')}", body)


def _uses_table(uses: Iterable[Mapping[str, Any]]) -> str:
    return table(
        ("time", "operation", "outcome", "reported by", "seq"),
        (
            [
                e(when(u.get("time"))),
                e(u.get("operation")),
                e(u.get("outcome")),
                e(u.get("reported_by")),
                e(u.get("seq")),
            ]
            for u in uses
        ),
        "uses",
    )


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
        ("execution", execution_link(entry.execution_id)),
        ("workload", workload_link(entry.workload_id)),
        ("may act", e(entry.may_act)),
        ("issued by decision", decision_link(issued_by) if issued_by else ""),
    ]
    body = table(("field", "value"), ([e(k), v] for k, v in fields))
    return layout(f"Credential {entry.jti}", body + f"<h2>Uses</h2>{_uses_table(uses)}")


def _timeline_item(r: Mapping[str, Any]) -> str:
    kind = "revocation" if r.get("revocation") else "exchange" if r.get("parent_jti") else ""
    head = " ".join(
        part
        for part in (
            f"#{e(r.get('seq'))}",
            e(when(r.get("time"))),
            outcome_cell(r.get("outcome")),
            e(kind),
            decision_link(r.get("decision_id")),
            f"workflow {e(r.get('workflow'))}" if r.get("workflow") else "",
            f"workload {workload_link(r.get('workload_id'))}" if r.get("workload_id") else "",
            f"user {e(r.get('user_id'))}" if r.get("user_id") else "",
        )
        if part
    )
    inner = [
        f"<li>{e(x.get('rule'))}: {e(x.get('message'))}</li>"
        for x in r.get("reasons") or ()
        if isinstance(x, dict)
    ]
    for c in r.get("credentials") or ():
        if not isinstance(c, dict):
            continue
        uses = c.get("uses") or []
        inner.append(
            f"<li>credential {credential_link(c.get('jti'))} tool {e(c.get('tool'))} "
            f"[{e(c.get('scope'))}] expires {e(when(c.get('expires_at')))}, "
            f"{len(uses)} use(s){_uses_table(uses) if uses else ''}</li>"
        )
    return f"<li>{head}" + (f"<ul>{''.join(inner)}</ul>" if inner else "") + "</li>"


def execution_page(execution_id: str, records: list[dict[str, Any]], kill: str) -> str:
    items = "".join(_timeline_item(r) for r in records)
    body = f'<ul class="timeline">{items}</ul>{kill}'
    return layout(f"Execution {execution_id}", body)


# --- blast radius and drift ------------------------------------------------------------------
def _workflow_row(w: WorkflowReach) -> list[str]:
    limits = ", ".join(
        f"{r.category} {'unlimited' if r.per_day is None else r.per_day}" for r in w.rate_limits
    )
    tools = "<br>".join(
        f"{e(t.tool)} [{e(' '.join(t.scopes))}] at {e(t.audience)}" for t in w.tools
    )
    return [
        e(w.workflow),
        e(", ".join(w.agents)),
        e(w.for_whom),
        tools,
        e(f"{w.ttl_max}s"),
        e(limits),
        e(", ".join(w.delegate_to) or "none"),
        e("required" if w.require_dpop else "no"),
    ]


def blast_form(target: str) -> str:
    return (
        f'<form class="blast" method="get" action="{BLAST_PATH}"><label>workload id or pattern '
        f'<input name="workload" value="{e(target)}" required></label><button>show</button></form>'
    )


def blast_page(radius: BlastRadius | None, target: str, kill: str) -> str:
    if radius is None:
        return layout("Blast radius", blast_form(target))
    live = radius.live
    summary = (
        f"<p>{e('pattern' if radius.pattern else 'workload id')} {e(radius.target)}, "
        f"policy {e(radius.policy_version)}: {len(radius.workflows)} workflow(s); "
        f'live now: <span class="live-count">{e(live.credentials)}</span> unexpired '
        f"unrevoked credential(s) for {e(live.users)} user(s)"
        + (f", latest expiry {e(when(live.latest_expiry))}" if live.latest_expiry else "")
        + (f"; {e(live.revoked)} revoked not counted" if live.revoked else "")
        + "</p>"
    )
    if radius.any_user:
        summary += '<p class="deny">acts for ANY user (asserted delegation)</p>'
    if radius.sub_agent_of:
        summary += f"<p>sub-agent of: {e(', '.join(radius.sub_agent_of))}</p>"
    head = ("workflow", "agents", "for", "tools", "max lifetime", "per user per day")
    details = table(
        (*head, "may delegate to", "DPoP"), (_workflow_row(w) for w in radius.workflows)
    )
    if not radius.workflows:
        details = '<p class="message">no workflow admits it</p>'
    body = blast_form(target) + summary + blast_picture(radius) + details
    if not radius.pattern:
        body += kill
    return layout(f"Blast radius of {radius.target}", body)


def _drift_row(entry: WorkflowDrift, uses_reported: bool) -> list[str]:
    if entry.credentials == 0:
        finding = "no credential issued in the window"
    elif not entry.drifted:
        finding = "every grant issued" + (" and used" if uses_reported else "")
    else:
        parts = [f"tool {t} never issued" for t in entry.unissued_tools]
        parts += [
            f"{t} scopes {' '.join(s)} never issued" for t, s in entry.unissued_scopes.items()
        ]
        parts += [f"tool {t} issued but never used" for t in entry.unused_tools]
        finding = "; ".join(parts)
    css = "deny" if entry.drifted else "allow"
    return [e(entry.workflow), e(entry.credentials), f'<span class="{css}">{e(finding)}</span>']


def drift_page(
    report: list[WorkflowDrift], since: str, start: float, uses_reported: bool, diff: str
) -> str:
    form = (
        f'<form method="get" action="{DRIFT_PATH}"><label>window <input name="since" '
        f'value="{e(since)}"></label><button>show</button></form>'
    )
    note = (
        ""
        if uses_reported
        else (
            '<p class="message">no API reported uses in the window: drift counts issuance only</p>'
        )
    )
    rows = (_drift_row(entry, uses_reported) for entry in report)
    findings = table(("workflow", "credentials", "finding"), rows, "drift")
    lines = "".join(
        f'<span class="{"add" if line.startswith("+") else "del" if line.startswith("-") else ""}">'
        f"{e(line)}</span>"
        for line in diff.splitlines(True)
    )
    suggestion = (
        f'<h2>Suggested policy</h2><p>review before applying</p><pre class="diff">{lines}</pre>'
        if diff
        else '<p class="message">no narrower policy to suggest</p>'
    )
    body = f"{form}<p>since {e(when(start))}</p>{note}{findings}{suggestion}"
    return layout("Drift", body)
