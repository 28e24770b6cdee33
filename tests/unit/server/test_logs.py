"""JSON log lines: one object per line, the request id of the request, no secrets."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from deputy.server.logs import REQUEST_ID, json_formatter


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("deputy.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_its_request_id(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    def in_request() -> None:
        REQUEST_ID.set("req-42")
        logger.warning("writer\nstopped: %s", "EOF", extra={"decision_id": "dec_1"})

    contextvars.copy_context().run(in_request)
    logger.info("outside any request")
    first, second = lines(stream)
    assert stream.getvalue().count("\n") == 2  # the newline in the message is escaped
    assert first["message"] == "writer\nstopped: EOF"
    assert first["level"] == "warning" and first["logger"] == "deputy.test.logs"
    assert first["request_id"] == "req-42" and first["decision_id"] == "dec_1"
    assert first["time"].endswith("Z")
    assert "request_id" not in second


def test_fields_that_would_carry_secrets_are_redacted(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info(
        "oops",
        extra={"authorization": "Bearer eyJ.x.y", "user_token": "eyJ.a.b", "workflow": "wf"},
    )
    (line,) = lines(stream)
    assert line["authorization"] == "[redacted]" and line["user_token"] == "[redacted]"
    assert line["workflow"] == "wf"
    assert "eyJ" not in stream.getvalue()


def test_an_exception_is_rendered_inside_the_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (line,) = lines(stream)
    assert line["level"] == "error"
    assert "ValueError: boom" in line["exception"]
