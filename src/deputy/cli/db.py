"""`deputy db`: the schema of a PostgreSQL audit store (`storage:` in the config)."""

from __future__ import annotations

import typer

from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, exit_on_store_errors, load_or_exit
from deputy.store.audit_store import upgrade_schema

app = typer.Typer(help="The PostgreSQL store's schema.", no_args_is_help=True)


@app.command()
def upgrade(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create or migrate the schema to what this Deputy needs (safe to run from every replica)."""
    settings = load_or_exit(config)
    with exit_on_store_errors():
        revision = upgrade_schema(settings)
    typer.echo(f"schema at revision {revision}")
