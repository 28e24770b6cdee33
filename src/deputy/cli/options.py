"""Options shared by the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deputy.config import Settings, load_settings
from deputy.errors import ConfigError

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
