"""`deputy drift`: per workflow, what policy grants that nobody was issued, and a narrower
policy to review (a diff of the config file)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
import yaml

from deputy.audit.forensics import activity_since
from deputy.cli.audit import parse_since
from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, audit_reader, load_or_exit
from deputy.config.loader import parse_settings
from deputy.errors import ConfigError
from deputy.policy.drift import Issued, Used, document_diff, drift, suggested
from deputy.policy.model import policy_from_settings
from deputy.store.audit_store import has_audit_log


def _count(n: int) -> str:
    return f"{n} credential" + ("" if n == 1 else "s")


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
    issued: list[Issued] = []
    used: list[Used] | None = None
    if has_audit_log(settings):
        with audit_reader(settings) as reader:
            issued, used = activity_since(reader, start)
    report = drift(policy, issued, used)
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    proposal = suggested(document, policy, report)
    try:
        parse_settings(proposal, config.resolve().parent)
        valid = True
    except ConfigError:
        valid = False  # e.g. every workflow unused: nothing left to run
    diff = document_diff(document, proposal, str(config), f"{config} (narrowed)")
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
