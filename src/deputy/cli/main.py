"""`deputy` command: serve, keys, audit, revoke, clients, policy, db, blast-radius, drift, demo."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from deputy.cli import audit, blast_radius, clients, db, keys, policy
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
app.add_typer(db.app, name="db")
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
    """Run the broker: JSON logs on stderr, SIGTERM stops gracefully, SIGHUP reloads the policy."""
    import uvicorn

    from deputy.server.app import create_app
    from deputy.server.logs import configure_logging
    from deputy.server.wiring import build_broker, check_key_files

    settings = load_or_exit(config)
    configure_logging(settings.logging)
    clock = SystemClock()
    try:
        check_key_files(settings)
        application = create_app(build_broker(settings, clock), clock, config_path=config)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    # Until the app takes SIGHUP over, it must not end the process (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it
    # found: a clean stop exits 0 rather than dying of the signal.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        application,
        host=host or settings.server.host,
        port=settings.server.port if port is None else port,
        log_config=None,  # uvicorn's own records go through the JSON handler too
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=settings.server.shutdown_grace_seconds,
    )


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM once uvicorn has drained (or before it started): a clean stop, exit 0."""
    raise SystemExit(0)


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
