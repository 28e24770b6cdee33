"""Unique, unpredictable, time-ordered identifiers (jti, decision, execution, request ids)."""

from __future__ import annotations

import os
import threading

from deputy.clock import Clock

BLOCK_BYTES = 4096
RANDOM_BYTES = 10  # 80 bits: unguessable, and unique within a millisecond


class IdSource:
    """Identifiers made of a millisecond timestamp and 80 random bits, like UUIDv7 (RFC 9562).

    The hex text sorts in creation order, so audit indexes on these ids grow at their
    right edge instead of dirtying a random page per insert. Random bytes come from the OS
    CSPRNG, read a block at a time to spare a syscall per id. Identifiers are not secrets;
    they must only be unique and unguessable.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._block = b""
        self._offset = 0

    def _random(self, n: int) -> bytes:
        with self._lock:
            if self._offset + n > len(self._block):
                self._block = os.urandom(BLOCK_BYTES)
                self._offset = 0
            start = self._offset
            self._offset += n
            return self._block[start : self._offset]

    def token(self) -> str:
        """32 hex digits: 48-bit milliseconds then 80 random bits."""
        millis = int(self._clock.now() * 1000)
        return millis.to_bytes(6, "big").hex() + self._random(RANDOM_BYTES).hex()

    def prefixed(self, prefix: str) -> str:
        return f"{prefix}_{self.token()}"
