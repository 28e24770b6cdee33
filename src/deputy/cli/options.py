"""Options shared by the command groups."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from deputy.config import Settings, load_settings
from deputy.errors import ConfigError, StoreUnavailable
from deputy.store.audit_store import AuditReaderStore, open_reader

DEFAULT_CONFIG = Path("deputy.yaml")
ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Path to deputy.yaml.", show_default=True)
]


@contextlib.contextmanager
def exit_on_store_errors() -> Iterator[None]:
    """Print what went wrong and exit: 2 for a config problem (fix it and run again), 1 for a
    store that cannot be reached now (run again later)."""
    try:
        yield
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except StoreUnavailable as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


def load_or_exit(path: Path) -> Settings:
    """Load the config or print what to fix and exit 2."""
    with exit_on_store_errors():
        return load_settings(path)


@contextlib.contextmanager
def audit_reader(settings: Settings) -> Iterator[AuditReaderStore]:
    """The configured audit store's reader, closed after use; a config problem exits 2, a
    store that cannot be reached exits 1."""
    with exit_on_store_errors():
        reader = open_reader(settings)
    try:
        yield reader
    finally:
        reader.close()
