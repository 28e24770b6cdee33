"""`deputy clients`: credentials for resource servers and operators."""

from __future__ import annotations

import typer

from deputy.oauth.client_auth import new_secret

app = typer.Typer(help="Clients: resource servers and operators.", no_args_is_help=True)


@app.command("new-secret")
def new_client_secret() -> None:
    """Make a client secret: give the secret to the client, put its hash in the config."""
    secret, digest = new_secret()
    typer.echo(f"secret (give to the client, shown once): {secret}")
    typer.echo(f"secret_sha256 (for deputy.yaml):        {digest}")
