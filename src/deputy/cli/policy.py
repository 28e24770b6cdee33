"""`deputy policy`: validate a config file, and compare two for widened permissions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deputy.cli.options import load_or_exit
from deputy.policy.diff import diff_policies
from deputy.policy.model import policy_from_settings

app = typer.Typer(help="Check and compare policies.", no_args_is_help=True)

FileArgument = Annotated[Path, typer.Argument(help="Path to a deputy.yaml.")]


@app.command()
def check(file: FileArgument) -> None:
    """Validate a config file. Exit 2 with what to fix if it is invalid."""
    settings = load_or_exit(file)
    policy = policy_from_settings(settings)
    typer.echo(
        f"{file}: valid: {len(settings.tools)} tools, {len(settings.workflows)} workflows"
        f" (policy {policy.version})"
    )


@app.command()
def diff(
    old: FileArgument,
    new: FileArgument,
    allow_widening: Annotated[
        bool, typer.Option("--allow-widening", help="Exit 0 even if permissions widen.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Permissions gained (+, widening) and lost (-, narrowing) from OLD to NEW.

    Exit 1 if anything widens (unless --allow-widening), 2 if a file is invalid.
    """
    result = diff_policies(
        policy_from_settings(load_or_exit(old)), policy_from_settings(load_or_exit(new))
    )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    elif not result.changes:
        typer.echo("no permission changes")
    else:
        for change in result.changes:
            typer.echo(change.line)
    if result.widening and not allow_widening:
        typer.echo(
            f"error: {len(result.widening)} widening change(s); "
            "review them and pass --allow-widening to accept",
            err=True,
        )
        raise typer.Exit(1)
