"""`deputy revoke`: the kill switch from the command line, on the broker's own store."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, load_or_exit
from deputy.clock import SystemClock
from deputy.errors import OAuthError
from deputy.server.wiring import revoke_now


def revoke(
    config: ConfigOption = DEFAULT_CONFIG,
    jti: Annotated[str | None, typer.Option(help="One credential, by its jti.")] = None,
    execution: Annotated[
        str | None, typer.Option(help="Every credential of an execution (and its sub-agents).")
    ] = None,
    instance: Annotated[
        str | None, typer.Option(help="Every credential of an agent instance.")
    ] = None,
    workload: Annotated[
        str | None,
        typer.Option(help="Every credential a workload holds or handed to sub-agents."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="Every credential issued for a user.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; kept in the audit record.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Revoke credentials now: introspection says inactive at once, and the feed lists them.

    Only credentials issued up to now are revoked; to stop new ones, change the policy.
    """
    chosen = {
        "jti": jti,
        "execution_id": execution,
        "agent_instance": instance,
        "workload_id": workload,
        "user_id": user,
    }
    named = [(k, v) for k, v in chosen.items() if v is not None]
    if len(named) != 1:
        typer.echo(
            "error: name exactly one of --jti, --execution, --instance, --workload, --user",
            err=True,
        )
        raise typer.Exit(2)
    [(selector, value)] = named
    settings = load_or_exit(config)
    clock = SystemClock()
    try:
        outcome = asyncio.run(revoke_now(settings, selector, value, reason, clock))
    except OAuthError as err:
        typer.echo(f"error: {err.description}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(outcome.body(), indent=2))
        return
    typer.echo(
        f"revoked {selector}={value}: {outcome.live.credentials} live credential(s) for "
        f"{outcome.live.users} user(s); audit record {outcome.decision_id}"
    )
