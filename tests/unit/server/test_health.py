"""/readyz's checks against fakes of the parts it asks: writer, reader, key ring."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

from deputy.errors import StoreUnavailable
from deputy.server.health import Readiness
from deputy.server.wiring import Broker


@dataclass
class FakeWriter:
    fails: bool = False
    stalls: asyncio.Event | None = None
    starts: int = 0

    async def start(self) -> None:
        self.starts += 1
        if self.stalls is not None:
            await self.stalls.wait()
        if self.fails:
            raise StoreUnavailable("audit store unavailable")


@dataclass
class FakeReader:
    fails: bool = False
    asked: list[str] = field(default_factory=list)

    def committed(self, decision_id: str) -> bool:
        self.asked.append(decision_id)
        if self.fails:
            raise StoreUnavailable("audit store unavailable")
        return False


@dataclass
class FakeKeys:
    active_key: bool = True

    def active(self) -> object:
        if not self.active_key:
            raise LookupError("no active signing key")
        return object()


def readiness(
    writer: FakeWriter, reader: FakeReader, keys: FakeKeys, timeout: float = 2.0
) -> Readiness:
    parts = SimpleNamespace(audit=writer, audit_reader=reader, key_ring=keys, counters=None)
    ready = Readiness(cast(Broker, parts), timeout=timeout)
    ready.started = True
    return ready


async def test_every_check_ok_is_ready() -> None:
    reader = FakeReader()
    writer = FakeWriter()
    status, body = await readiness(writer, reader, FakeKeys()).document()
    assert status == 200 and body["status"] == "ready"
    assert set(body["checks"].values()) == {"ok"}
    assert writer.starts == 1 and len(reader.asked) == 1


async def test_every_failing_check_is_named() -> None:
    ready = readiness(FakeWriter(fails=True), FakeReader(fails=True), FakeKeys(active_key=False))
    status, body = await ready.document()
    assert status == 503
    assert body["not_ready"] == ["audit_store", "audit_writer", "signing_keys"]
    assert body["checks"] == {
        "lifecycle": "ok",
        "audit_writer": "the audit writer cannot start",
        "audit_store": "the audit database does not answer reads",
        "signing_keys": "no signing key is active",
    }


async def test_a_writer_still_starting_is_not_ready_yet_and_finishes_starting() -> None:
    stalls = asyncio.Event()
    writer = FakeWriter(stalls=stalls)
    status, body = await readiness(writer, FakeReader(), FakeKeys(), timeout=0.01).document()
    assert status == 503 and body["checks"]["audit_writer"] == "the audit writer is starting"
    stalls.set()  # the start goes on after the probe gave up, as an append would wait for it
    status, _ = await readiness(writer, FakeReader(), FakeKeys()).document()
    assert status == 200


async def test_before_start_and_while_stopping_nothing_is_touched() -> None:
    writer, reader = FakeWriter(), FakeReader()
    ready = readiness(writer, reader, FakeKeys())
    ready.started = False
    assert await ready.document() == (
        503,
        {"status": "not_ready", "not_ready": ["lifecycle"], "checks": {"lifecycle": "starting"}},
    )
    ready.started, ready.stopping = True, True
    _, body = await ready.document()
    assert body["checks"] == {"lifecycle": "stopping"}
    assert writer.starts == 0 and reader.asked == []
