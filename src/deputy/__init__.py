"""Deputy: per-execution, per-tool credentials for AI agents."""

__version__ = "0.1.0"
