"""The /issue request as a typed value, validated from decoded JSON with precise errors."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deputy.config.settings import MAX_TTL_SECONDS, SCOPE_PATTERN
from deputy.errors import InvalidRequest

MAX_BODY_BYTES = 64 * 1024
MAX_TOOLS_PER_REQUEST = 32
MAX_ID_LENGTH = 256
FIELDS = ("agent_id", "user_id", "tools", "ttl_seconds", "user_token", "workflow")
_VISIBLE = re.compile(r"^[\x21-\x7e]+$")
_SCOPE = re.compile(SCOPE_PATTERN)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


GRANTS = ("issue", "token_exchange", "client_credentials")


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """What an agent asks for, whichever adapter it came through.

    ``/issue`` names ``tools`` (each with its scopes, ``None``: the workflow's); the token
    endpoint names ``targets`` (``resource``/``audience``) and a flat ``scopes`` list, which
    policy maps to tools once the workflow is known. ``user_token`` is the user's token (or
    a Deputy credential, for a sub-agent), and ``subject_field`` names it in messages.
    """

    agent_id: str | None
    tools: Mapping[str, tuple[str, ...] | None] | None = None
    user_id: str | None = None
    ttl_seconds: int | None = None
    user_token: str | None = field(default=None, repr=False)
    workflow: str | None = None
    targets: tuple[str, ...] = ()
    scopes: tuple[str, ...] | None = None
    grant: str = "issue"
    subject_field: str = "user_token"
    subject_is_id_token: bool = False  # the token endpoint's subject_token_type said id_token
    dpop_jkt: str | None = None  # the key a verified DPoP proof binds the credentials to

    def __post_init__(self) -> None:
        if self.grant not in GRANTS:
            raise ValueError(f"grant must be one of {GRANTS}")


def _identifier(body: Mapping[str, object], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"`{key}` is required")
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"`{key}` must be a non-empty string")
    if len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise InvalidRequest(f"`{key}` must be at most {MAX_ID_LENGTH} printable characters")
    return value


def _tool_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequest("`tools` entries must be tool names like 'customer_data_api'")
    return value


def _scopes(tool: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"`tools.{tool}` must be a non-empty list of scopes")
    if not all(isinstance(s, str) and _SCOPE.match(s) for s in value):
        raise InvalidRequest(f"`tools.{tool}` holds a value that is not a valid scope")
    if len(set(value)) != len(value):
        raise InvalidRequest(f"`tools.{tool}` lists a scope twice")
    return tuple(value)


def _tools(value: object) -> dict[str, tuple[str, ...] | None]:
    if value is None:
        raise InvalidRequest("`tools` is required")
    if isinstance(value, list):
        names = [_tool_name(v) for v in value]
        if len(set(names)) != len(names):
            raise InvalidRequest("`tools` lists a tool twice")
        tools: dict[str, tuple[str, ...] | None] = dict.fromkeys(names)
    elif isinstance(value, dict):
        tools = {_tool_name(k): _scopes(k, v) for k, v in value.items()}
    else:
        raise InvalidRequest("`tools` must be a list of tool names or a map of tool name to scopes")
    if not tools:
        raise InvalidRequest("`tools` must name at least one tool")
    if len(tools) > MAX_TOOLS_PER_REQUEST:
        raise InvalidRequest(f"`tools` may name at most {MAX_TOOLS_PER_REQUEST} tools")
    return tools


def _ttl(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("`ttl_seconds` must be a whole number of seconds")
    if not 1 <= value <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"`ttl_seconds` must be between 1 and {MAX_TTL_SECONDS}")
    return value


def parse_issue_request(body: object) -> IssueRequest:
    """Validate a decoded JSON body against the strict allow-list of fields."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}"
        )
    agent_id = _identifier(body, "agent_id", required=True)
    assert agent_id is not None
    token = body.get("user_token")
    if token is not None and (not isinstance(token, str) or not token):
        raise InvalidRequest("`user_token` must be a non-empty string")
    return IssueRequest(
        agent_id=agent_id,
        tools=_tools(body.get("tools")),
        user_id=_identifier(body, "user_id", required=False),
        ttl_seconds=_ttl(body.get("ttl_seconds")),
        user_token=token,
        workflow=_identifier(body, "workflow", required=False),
    )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidRequest(f"duplicate JSON member {key[:64]!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def decode_json_body(raw: bytes, limit: int = MAX_BODY_BYTES) -> object:
    """Strict JSON (RFC 8259 §8.1: UTF-8): bounded size, no duplicate members or runaway nesting."""
    if len(raw) > limit:
        raise InvalidRequest(f"the body exceeds {limit} bytes")
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON") from None
