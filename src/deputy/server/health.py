"""Liveness and readiness: ``/healthz`` says the process serves, ``/readyz`` that it can issue.

A broker is ready when a request could get a credential now: it has started and is not
stopping, its audit writer runs, the audit database answers a read, a signing key is
active, and the shared counters (Redis, when configured) answer. A trusted issuer whose
keys cannot be fetched does not make it unready: every replica would be equally affected,
and requests of the other issuers still succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from deputy.errors import StoreUnavailable
from deputy.server.wiring import Broker

READY_CHECK_TIMEOUT_SECONDS = 2.0
# A decision id no record has: the indexed read finds nothing, quickly.
_PROBE_DECISION_ID = "dec_readiness_probe"
OK = "ok"


class Readiness:
    """The checks behind ``/readyz``, each answered with ``"ok"`` or what is wrong."""

    def __init__(self, broker: Broker, timeout: float = READY_CHECK_TIMEOUT_SECONDS) -> None:
        self._broker = broker
        self._timeout = timeout
        self.started = False
        self.stopping = False

    async def checks(self) -> dict[str, str]:
        if self.stopping:
            return {"lifecycle": "stopping"}
        if not self.started:
            return {"lifecycle": "starting"}
        writer, store = await asyncio.gather(self._audit_writer(), self._audit_store())
        checks = {
            "lifecycle": OK,
            "audit_writer": writer,
            "audit_store": store,
            "signing_keys": self._signing_keys(),
        }
        counters = self._broker.counters
        if counters is not None:
            checks["counters"] = await self._bounded(
                counters.ping(),
                "the counter store (Redis) does not answer",
                f"the counter store (Redis) did not answer within {self._timeout:g} s",
            )
        return checks

    async def document(self) -> tuple[int, dict[str, Any]]:
        """The status code and body of ``/readyz``: 200 when every check is ok, else 503."""
        checks = await self.checks()
        failing = sorted(name for name, result in checks.items() if result != OK)
        if failing:
            return 503, {"status": "not_ready", "not_ready": failing, "checks": checks}
        return 200, {"status": "ready", "checks": checks}

    async def _audit_writer(self) -> str:
        """The writer process runs; started again here if it had stopped, as an append would."""
        start = asyncio.ensure_future(self._broker.audit.start())
        start.add_done_callback(_retrieve)
        return await self._bounded(
            asyncio.shield(start), "the audit writer cannot start", "the audit writer is starting"
        )

    async def _audit_store(self) -> str:
        """The audit database answers a trivial indexed read."""
        read = asyncio.to_thread(self._broker.audit_reader.committed, _PROBE_DECISION_ID)
        return await self._bounded(
            read,
            "the audit database does not answer reads",
            f"the audit database did not answer within {self._timeout:g} s",
        )

    def _signing_keys(self) -> str:
        try:
            self._broker.key_ring.active()
        except LookupError:
            return "no signing key is active"
        return OK

    async def _bounded(self, check: Awaitable[object], failed: str, late: str) -> str:
        try:
            await asyncio.wait_for(check, self._timeout)
        except TimeoutError:
            return late
        except StoreUnavailable:
            return failed
        return OK


def _retrieve(task: asyncio.Future[None]) -> None:
    """A start that finishes after its probe gave up must not log an unretrieved exception."""
    if not task.cancelled():
        task.exception()
