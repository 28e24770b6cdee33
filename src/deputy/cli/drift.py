"""`deputy drift`: per workflow, what policy grants that nobody was issued, and a narrower
policy to review (a diff of the config file)."""

from __future__ import annotations

import copy
import difflib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from deputy.audit.log import AuditFilter
from deputy.cli.audit import parse_since
from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, load_or_exit
from deputy.config.loader import parse_settings
from deputy.errors import ConfigError
from deputy.policy.drift import Issued, Used, WorkflowDrift, drift
from deputy.policy.model import Policy, policy_from_settings
from deputy.store.sqlite.audit_reader import DB_FILE, open_audit_reader

_ALL = 2**62


def activity_since(data_dir: Path, since: float) -> tuple[list[Issued], list[Used] | None]:
    """Every credential issued since ``since``, and the reported uses of them (``None`` when
    no API reported any use in the window), as the audit log records them."""
    if not (data_dir / DB_FILE).exists():
        return [], None
    issued: list[Issued] = []
    workflow_of: dict[str, str] = {}
    uses: list[tuple[str, str]] = []
    reports = False
    for stored in open_audit_reader(data_dir).query(AuditFilter(since=since, limit=_ALL)):
        record = stored.record
        if record.get("outcome") == "usage":
            reports = True
            uses += [(str(u.get("jti")), str(u.get("tool"))) for u in record.get("uses") or ()]
            continue
        workflow = record.get("workflow")
        if record.get("outcome") != "allow" or not isinstance(workflow, str):
            continue
        for c in record.get("credentials") or ():
            issued.append(Issued(workflow, str(c["tool"]), frozenset(str(c["scope"]).split())))
            workflow_of[str(c["jti"])] = workflow
    if not reports:
        return issued, None
    return issued, [Used(workflow_of[j], tool) for j, tool in uses if j in workflow_of]


def suggested(document: dict[str, Any], policy: Policy, report: list[WorkflowDrift]) -> Any:
    """The config with each workflow narrowed to what was issued; unused ones removed."""
    narrowed = copy.deepcopy(document)
    workflows = narrowed.get("workflows", {})
    for entry in report:
        if not entry.drifted or entry.workflow not in workflows:
            continue
        tools = entry.narrowed_tools(policy.workflows[entry.workflow].tools)
        if entry.credentials == 0 or not tools:
            del workflows[entry.workflow]
            continue
        section = workflows[entry.workflow]
        section["tools"] = tools
        categories = {policy.tools[t].category for t in tools}
        limits = section.get("rate_limits")
        if isinstance(limits, dict):
            section["rate_limits"] = {c: n for c, n in limits.items() if c in categories}
    return narrowed


def _count(n: int) -> str:
    return f"{n} credential" + ("" if n == 1 else "s")


def _dump(document: Any) -> list[str]:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).splitlines(True)


def drift_command(
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[
        str, typer.Option(help="Window: 30d, 12h, epoch seconds or an ISO 8601 time.")
    ] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Tools and scopes granted by policy but never issued in the window, tools issued but
    never used (when APIs report uses), and a narrower policy as a diff of the config file."""
    settings = load_or_exit(config)
    policy = policy_from_settings(settings)
    start = parse_since(since, time.time())
    issued, used = activity_since(settings.data_dir, start)
    report = drift(policy, issued, used)
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    proposal = suggested(document, policy, report)
    try:
        parse_settings(proposal, config.resolve().parent)
        valid = True
    except ConfigError:
        valid = False  # e.g. every workflow unused: nothing left to run
    diff = "".join(
        difflib.unified_diff(_dump(document), _dump(proposal), str(config), f"{config} (narrowed)")
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "since": start,
                    "workflows": [
                        {
                            "workflow": e.workflow,
                            "credentials": e.credentials,
                            "unissued_tools": list(e.unissued_tools),
                            "unissued_scopes": {t: list(s) for t, s in e.unissued_scopes.items()},
                            "unused_tools": list(e.unused_tools),
                        }
                        for e in report
                    ],
                    "uses_reported": used is not None,
                    "suggested_diff": diff,
                    "suggestion_valid": valid,
                },
                indent=2,
            )
        )
        return
    for e in report:
        if not e.drifted:
            every = "every grant issued" + (" and used" if used is not None else "")
            typer.echo(f"workflow {e.workflow}: {_count(e.credentials)}; {every}")
            continue
        if e.credentials == 0:
            typer.echo(f"workflow {e.workflow}: no credential issued in the window")
            continue
        parts = [f"tool {t} never issued" for t in e.unissued_tools]
        parts += [f"{t} scopes {' '.join(s)} never issued" for t, s in e.unissued_scopes.items()]
        parts += [f"tool {t} issued but never used" for t in e.unused_tools]
        typer.echo(f"workflow {e.workflow}: {_count(e.credentials)}; " + "; ".join(parts))
    if used is None:
        typer.echo("(no API reported uses in the window: drift counts issuance only)")
    if not diff:
        typer.echo("no narrower policy to suggest")
        return
    typer.echo("\nsuggested policy (review before applying):")
    typer.echo(diff, nl=False)
    if not valid:
        typer.echo("note: the suggestion is not a valid configuration as it stands", err=True)
