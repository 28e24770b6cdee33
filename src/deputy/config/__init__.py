"""Configuration: YAML in, frozen typed settings out."""

from deputy.config.loader import load_settings, parse_settings
from deputy.config.settings import Settings

__all__ = ["Settings", "load_settings", "parse_settings"]
