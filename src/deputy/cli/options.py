"""Options shared by the command groups."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from deputy.config import Settings, load_settings
from deputy.errors import ConfigError
from deputy.store.audit_store import AuditReaderStore, open_reader

DEFAULT_CONFIG = Path("deputy.yaml")
ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Path to deputy.yaml.", show_default=True)
]


def load_or_exit(path: Path) -> Settings:
    """Load the config or print what to fix and exit 2."""
    try:
        return load_settings(path)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def audit_reader(settings: Settings) -> Iterator[AuditReaderStore]:
    """The configured audit store's reader, closed after use; a config problem exits 2."""
    try:
        reader = open_reader(settings)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        yield reader
    finally:
        reader.close()
