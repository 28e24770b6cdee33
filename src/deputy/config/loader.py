"""Load deputy.yaml into :class:`Settings`, with messages that name the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deputy.config.settings import Settings
from deputy.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1}; keep only one"
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def is_url(value: str) -> bool:
    return value.startswith(("https://", "http://"))


def _resolve(base: Path, value: str) -> str:
    return value if is_url(value) else str((base / value).resolve())


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{where}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_settings(document: object, base_dir: Path) -> Settings:
    """Validate a parsed document; relative paths resolve against ``base_dir``."""
    if not isinstance(document, dict):
        raise ConfigError("invalid configuration: the top level must be a mapping of keys")
    try:
        settings = Settings.model_validate(document)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    agents = settings.agents.model_copy(
        update={
            "spiffe": tuple(
                s.model_copy(update={"bundle": _resolve(base_dir, s.bundle)})
                for s in settings.agents.spiffe
            ),
            "oidc": tuple(
                o.model_copy(update={"jwks": o.jwks and _resolve(base_dir, o.jwks)})
                for o in settings.agents.oidc
            ),
        }
    )
    users = tuple(
        u.model_copy(update={"jwks": u.jwks and _resolve(base_dir, u.jwks)}) for u in settings.users
    )
    clients = {
        name: c.model_copy(update={"jwks": c.jwks and _resolve(base_dir, c.jwks)})
        for name, c in settings.clients.items()
    }
    data_dir = (
        settings.data_dir if settings.data_dir.is_absolute() else base_dir / settings.data_dir
    )
    return settings.model_copy(
        update={
            "agents": agents,
            "users": users,
            "clients": clients,
            "data_dir": data_dir.resolve(),
        }
    )


def load_settings(path: Path) -> Settings:
    """Read and validate a YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_settings(document, path.resolve().parent)
