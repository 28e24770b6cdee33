"""`deputy keys`: list and rotate the signing keys (in the data dir, or in PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

import typer

from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, exit_on_store_errors, load_or_exit
from deputy.clock import SystemClock
from deputy.config import Settings
from deputy.policy.model import policy_from_settings
from deputy.server.wiring import open_key_ring
from deputy.tokens.key_ring import KeyRing

app = typer.Typer(help="Signing keys.", no_args_is_help=True)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def key_ring(settings: Settings) -> Iterator[KeyRing]:
    """The configured signing keys, closed after use; a config problem exits 2, a store that
    cannot be reached exits 1."""
    with exit_on_store_errors():
        ring = open_key_ring(settings, SystemClock(), for_rotation=True)
    try:
        yield ring
    finally:
        ring.close()


@app.command("list")
def list_keys(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Show every key with its activation, retirement and publication times."""
    with key_ring(load_or_exit(config)) as ring:
        for k in ring.all_keys():
            typer.echo(
                f"{k.kid}  {k.alg}  activates {_when(k.activates_at)}  "
                f"retired {_when(k.retired_at)}  published until {_when(k.publish_until)}"
            )


@app.command()
def rotate(
    config: ConfigOption = DEFAULT_CONFIG,
    activate_after: Annotated[
        int,
        typer.Option(
            min=0, help="Seconds the new key is published before it signs (verifiers' JWKS)."
        ),
    ] = 60,
) -> None:
    """Add a new signing key; older keys stay published until their last token expires."""
    settings = load_or_exit(config)
    max_lifetime = policy_from_settings(settings).max_ttl
    with key_ring(settings) as ring, exit_on_store_errors():
        new = ring.rotate(activate_after=activate_after, max_token_lifetime=max_lifetime)
    typer.echo(
        f"new key {new.kid} ({new.alg}) published now, signs from {_when(new.activates_at)}; "
        f"previous keys stay published for {max_lifetime} s after that"
    )
