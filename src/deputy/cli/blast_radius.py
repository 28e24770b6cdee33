"""`deputy blast-radius`: what a workload (or pattern), or the agents acting for a user, can
obtain under the policy, and what they hold right now according to the audit ledger."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from deputy.audit.forensics import ledger_snapshot
from deputy.cli.options import (
    DEFAULT_CONFIG,
    ConfigOption,
    audit_reader,
    exit_on_store_errors,
    load_or_exit,
)
from deputy.config.settings import Settings
from deputy.policy.blast_radius import (
    LedgerSnapshot,
    LiveSummary,
    WorkflowReach,
    user_reach,
)
from deputy.policy.blast_radius import (
    blast_radius as compute_blast_radius,
)
from deputy.policy.model import policy_from_settings
from deputy.store.audit_store import has_audit_log


def read_ledger(
    settings: Settings, now: float, *, workload: str | None = None, user: str | None = None
) -> LedgerSnapshot:
    """The ledger as the configured audit log tells it; empty if the broker never wrote one."""
    if not has_audit_log(settings):
        return LedgerSnapshot(now)
    with audit_reader(settings) as reader:
        return asyncio.run(ledger_snapshot(reader, now, workload=workload, user=user))


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _live_line(live: LiveSummary) -> str:
    users = f"{live.users} user" + ("" if live.users == 1 else "s")
    line = f"live now: {live.credentials} unexpired unrevoked credentials for {users}"
    if live.by_tool:
        line += " (" + ", ".join(f"{t} {n}" for t, n in live.by_tool) + ")"
    if live.latest_expiry is not None:
        line += f", latest expiry {_when(live.latest_expiry)}"
    if live.revoked:
        line += f"; {live.revoked} revoked not counted"
    return line


def _workflow_lines(w: WorkflowReach) -> list[str]:
    limits = ", ".join(
        f"{r.category} {'unlimited' if r.per_day is None else r.per_day}" for r in w.rate_limits
    )
    return [
        f"workflow {w.workflow} (agents {', '.join(w.agents)})",
        f"  for: {w.for_whom}",
        *(f"  tool: {t.tool} [{' '.join(t.scopes)}] at {t.audience}" for t in w.tools),
        f"  max lifetime: {w.ttl_max}s",
        f"  max credentials per user per day: {limits}",
        f"  may delegate to: {', '.join(w.delegate_to) or 'none'}",
        f"  dpop: {'required' if w.require_dpop else 'not required'}",
    ]


def blast_radius(
    target: Annotated[
        str | None, typer.Argument(help="A workload id, or a pattern (* one segment, ** any).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="The reverse view: agents for this user.")
    ] = None,
    tier: Annotated[str | None, typer.Option(help="The user's tier (with --user).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """What a workload can obtain, for whom, for how long, and what it holds right now."""
    if (target is None) == (user is None):
        raise typer.BadParameter("give a workload id or pattern, or --user (not both)")
    if tier is not None and user is None:
        raise typer.BadParameter("--tier goes with --user")
    settings = load_or_exit(config)
    policy = policy_from_settings(settings)
    with exit_on_store_errors():
        ledger = read_ledger(settings, time.time(), workload=target, user=user)
    if user is not None:
        reach = user_reach(policy, user, tier, ledger)
        if as_json:
            typer.echo(json.dumps(reach.as_dict(), indent=2))
            return
        typer.echo(
            f"agents that can act for user {user} "
            f"(tier {tier or 'not given: every tier shown'}; policy {policy.version})"
        )
        for w in reach.workflows:
            typer.echo("\n".join(_workflow_lines(w)))
        if not reach.workflows:
            typer.echo("no workflow can act for this user")
        typer.echo(_live_line(reach.live))
        return
    assert target is not None
    radius = compute_blast_radius(policy, target, ledger)
    if as_json:
        typer.echo(json.dumps(radius.as_dict(), indent=2))
        return
    kind = "pattern" if radius.pattern else "workload id"
    typer.echo(f"blast radius of {target} ({kind}; policy {policy.version})")
    for w in radius.workflows:
        typer.echo("\n".join(_workflow_lines(w)))
    if not radius.workflows:
        typer.echo("no workflow admits it")
    else:
        scopes = "; ".join(f"{t} [{' '.join(s)}]" for t, s in radius.scopes.items())
        typer.echo(f"in all: {scopes}; max lifetime {radius.ttl_max}s")
        if radius.any_user:
            typer.echo("acts for ANY user (asserted delegation)")
    typer.echo(
        f"accepted as a sub-agent by: {', '.join(radius.sub_agent_of) or 'none'}"
        f" (max delegation depth {radius.max_delegation_depth})"
    )
    seen = ", ".join(radius.workloads_seen) or "none"
    typer.echo(f"workloads active while live credentials were issued: {seen}")
    typer.echo(_live_line(radius.live))
