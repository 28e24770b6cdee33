from __future__ import annotations

import json

import pytest

from deputy.errors import InvalidRequest
from deputy.service.request import decode_json_body, parse_issue_request

SEED = {
    "agent_id": "a-1",
    "user_id": "alice",
    "tools": ["customer_data_api", "ticketing_api"],
    "ttl_seconds": 300,
}


def test_seed_body_parses() -> None:
    req = parse_issue_request(SEED)
    assert req.agent_id == "a-1" and req.user_id == "alice" and req.ttl_seconds == 300
    assert dict(req.tools) == {"customer_data_api": None, "ticketing_api": None}


def test_tools_as_map_of_scopes() -> None:
    req = parse_issue_request({"agent_id": "a", "tools": {"ticketing_api": ["tickets:read"]}})
    assert dict(req.tools) == {"ticketing_api": ("tickets:read",)}
    assert req.ttl_seconds is None and req.user_id is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body must be a JSON object"),
        ({**SEED, "admin": True}, "unknown field(s) 'admin'"),
        ({**SEED, "agent_id": None}, "`agent_id` is required"),
        ({**SEED, "agent_id": 7}, "`agent_id` must be a non-empty string"),
        ({**SEED, "agent_id": "a\nb"}, "printable"),
        ({**SEED, "agent_id": "a" * 257}, "at most 256"),
        ({**SEED, "user_id": ["alice"]}, "`user_id` must be a non-empty string"),
        ({**SEED, "tools": None}, "`tools` is required"),
        ({**SEED, "tools": "customer_data_api"}, "must be a list of tool names or a map"),
        ({**SEED, "tools": []}, "at least one tool"),
        ({**SEED, "tools": ["x", "x"]}, "lists a tool twice"),
        ({**SEED, "tools": ["../etc"]}, "entries must be tool names"),
        ({**SEED, "tools": [f"t{i}" for i in range(33)]}, "at most 32 tools"),
        ({**SEED, "tools": {"t": []}}, "non-empty list of scopes"),
        ({**SEED, "tools": {"t": ["a b"]}}, "not a valid scope"),
        ({**SEED, "tools": {"t": ["a", "a"]}}, "lists a scope twice"),
        ({**SEED, "ttl_seconds": 0}, "between 1 and 86400"),
        ({**SEED, "ttl_seconds": -5}, "between 1 and 86400"),
        ({**SEED, "ttl_seconds": 10**20}, "between 1 and 86400"),
        ({**SEED, "ttl_seconds": 30.5}, "whole number"),
        ({**SEED, "ttl_seconds": "300"}, "whole number"),
        ({**SEED, "ttl_seconds": True}, "whole number"),
        ({**SEED, "user_token": 12}, "`user_token` must be a non-empty string"),
    ],
    ids=[
        "not-object",
        "unknown-field",
        "agent-missing",
        "agent-not-string",
        "agent-newline",
        "agent-too-long",
        "user-not-string",
        "tools-missing",
        "tools-string",
        "tools-empty",
        "tools-duplicate",
        "tools-bad-name",
        "tools-too-many",
        "scopes-empty",
        "scope-space",
        "scope-duplicate",
        "ttl-zero",
        "ttl-negative",
        "ttl-huge",
        "ttl-float",
        "ttl-string",
        "ttl-bool",
        "user-token-not-string",
    ],
)
def test_bad_bodies_are_invalid_requests(body: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_issue_request(body)
    assert message in err.value.description
    assert err.value.status_code == 400 and err.value.error == "invalid_request"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"agent_id": "a", "agent_id": "b"}', "duplicate JSON member 'agent_id'"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "exceeds"),
        (b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
    ],
    ids=["duplicate", "truncated", "not-utf8", "oversized", "deep-nesting", "nan"],
)
def test_body_decoding_is_strict(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_json_body(raw)


def test_body_round_trip() -> None:
    assert decode_json_body(json.dumps(SEED).encode()) == SEED
