"""`deputy` command: serve, keys, audit, revoke, clients, policy, blast-radius, drift, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from deputy.cli import audit, blast_radius, clients, keys, policy
from deputy.cli.drift import drift_command
from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, load_or_exit
from deputy.cli.revoke import revoke
from deputy.clock import SystemClock
from deputy.errors import ConfigError

app = typer.Typer(
    name="deputy",
    help="Credential broker that gives AI agents their own identity.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(clients.app, name="clients")
app.add_typer(policy.app, name="policy")
app.command(name="blast-radius")(blast_radius.blast_radius)
app.command(name="drift")(drift_command)
app.command()(revoke)


@app.command()
def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: server.host).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: server.port).")] = None,
) -> None:
    """Run the broker."""
    import uvicorn

    from deputy.server.app import create_app
    from deputy.server.wiring import build_broker, check_key_files

    settings = load_or_exit(config)
    clock = SystemClock()
    try:
        check_key_files(settings)
        application = create_app(build_broker(settings, clock), clock)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        application,
        host=host or settings.server.host,
        port=settings.server.port if port is None else port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Working directory for the demo's files.")
    ] = Path(".deputy-demo"),
) -> None:
    """Play a customer-support execution end to end on loopback, then its denials and audit."""
    from deputy.devtools.demo import run_demo

    raise typer.Exit(run_demo(directory))


def main() -> None:
    sys.exit(app())
