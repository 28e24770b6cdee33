"""`deputy audit`: verify the chain and answer forensic queries."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from deputy.audit.log import AuditFilter
from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, load_or_exit
from deputy.store.sqlite.audit_reader import open_audit_reader

app = typer.Typer(help="The audit trail.", no_args_is_help=True)

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float) -> float:
    """``30m``, ``2h``, ``7d``, epoch seconds, or an ISO 8601 time (UTC if no offset)."""
    m = _RELATIVE.match(value)
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "use a duration like 30m, 2h, 7d, epoch seconds, or an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@app.command()
def verify(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Check the hash chain; name the first bad record. Exit 1 if the chain is broken."""
    settings = load_or_exit(config)
    report = open_audit_reader(settings.data_dir).verify()
    if report.ok:
        typer.echo(f"audit chain ok: {report.records} records")
        return
    typer.echo(f"audit chain BROKEN at record {report.first_bad_seq}: {report.problem}", err=True)
    raise typer.Exit(1)


def _shown(value: object) -> str:
    """A field as one safe line: control characters escaped, so no value can forge a line."""
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _line(record: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(record["time"], UTC).isoformat(timespec="seconds")
    creds = ", ".join(
        f"{_shown(c['tool'])}:{_shown(c['jti'])}" for c in record.get("credentials", [])
    )
    revocation = record.get("revocation")
    if isinstance(revocation, dict):
        return "  ".join(
            [
                when,
                "REVOKE",
                f"{_shown(revocation.get('selector'))}={_shown(revocation.get('value'))}",
                f"by={_shown(record.get('requested_by'))}",
                f"via={_shown(record.get('endpoint'))}",
                f"live={_shown(revocation.get('live_credentials'))}",
                f"reason={_shown(revocation.get('reason'))}",
            ]
        )
    parts = [
        when,
        _shown(record["outcome"]).upper(),
        f"status={record['status']}",
        f"grant={_shown(record.get('grant_type') or 'issue')}",
        f"workflow={_shown(record.get('workflow'))}",
        f"workload={_shown(record.get('workload_id'))}",
        f"instance={_shown(record.get('agent_instance'))}",
        f"user={_shown(record.get('user_id'))} ({_shown(record.get('delegation'))})",
        f"execution={_shown(record.get('execution_id'))}",
    ]
    if creds:
        parts.append(f"credentials=[{creds}]")
    if record.get("parent_jti"):
        parts.append(f"from={_shown(record['parent_jti'])}")
    for reason in record.get("reasons", []):
        parts.append(f"\n    {_shown(reason['rule'])}: {_shown(reason['message'])}")
    return "  ".join(parts)


@app.command()
def query(
    config: ConfigOption = DEFAULT_CONFIG,
    execution: Annotated[str | None, typer.Option(help="Execution id.")] = None,
    agent_instance: Annotated[str | None, typer.Option(help="Agent instance id.")] = None,
    workload: Annotated[str | None, typer.Option(help="Workload id (e.g. a SPIFFE ID).")] = None,
    user: Annotated[str | None, typer.Option(help="User id.")] = None,
    jti: Annotated[str | None, typer.Option(help="Credential id (jti).")] = None,
    since: Annotated[str | None, typer.Option(help="30m, 2h, 7d, epoch or ISO time.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Which agent invocation used which credential for which user."""
    settings = load_or_exit(config)
    audit_filter = AuditFilter(
        execution_id=execution,
        agent_instance=agent_instance,
        workload_id=workload,
        user_id=user,
        jti=jti,
        since=parse_since(since, time.time()) if since else None,
        limit=limit,
    )
    for stored in open_audit_reader(settings.data_dir).query(audit_filter):
        if as_json:
            typer.echo(json.dumps({**stored.record, "seq": stored.seq, "hash": stored.hash}))
        else:
            typer.echo(f"#{stored.seq} {_line(stored.record)}")
