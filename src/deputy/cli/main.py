"""`deputy` command: serve, keys, audit, revoke, clients, policy, db, blast-radius, drift, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from deputy.cli import audit, blast_radius, clients, db, keys, policy
from deputy.cli.drift import drift_command
from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, exit_on_store_errors, load_or_exit
from deputy.cli.revoke import revoke
from deputy.clock import SystemClock
from deputy.config import Settings
from deputy.config.settings import MAX_WORKERS
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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_WORKERS,
            help="Processes serving on the one port (default: server.workers); more than 1 "
            "needs storage: postgresql://... and counters: redis://...",
        ),
    ] = None,
) -> None:
    """Run the broker: JSON logs on stderr, SIGTERM stops gracefully, SIGHUP reloads the policy."""
    from deputy.server.logs import configure_logging

    settings = load_or_exit(config)
    configure_logging(settings.logging)
    address = host or settings.server.host, settings.server.port if port is None else port
    count = settings.server.workers if workers is None else workers
    if count > 1:
        raise typer.Exit(_serve_workers(settings, config, address, count))
    import uvicorn

    from deputy.server.app import create_app
    from deputy.server.process import take_signals, uvicorn_options
    from deputy.server.wiring import build_broker, check_key_files

    clock = SystemClock()
    with exit_on_store_errors():
        check_key_files(settings)
        application = create_app(build_broker(settings, clock), clock, config_path=config)
    take_signals()
    uvicorn.run(application, host=address[0], port=address[1], **uvicorn_options(settings))


def _serve_workers(settings: Settings, config: Path, address: tuple[str, int], count: int) -> int:
    """``count`` worker processes on one socket, supervised by this one; the exit status."""
    from deputy.server.supervisor import Supervisor, check_workers, listen
    from deputy.server.wiring import check_key_files

    try:
        check_workers(settings, count)
        check_key_files(settings)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    try:
        sock = listen(*address)
    except OSError as err:
        typer.echo(f"error: cannot listen on {address[0]}:{address[1]}: {err}", err=True)
        return 1
    return Supervisor(config, sock, count).run()


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
