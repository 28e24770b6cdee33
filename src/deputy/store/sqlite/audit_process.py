"""Group commit in a child process, so SQLite work never competes with requests for the GIL.

The broker sends each event-loop turn's records as one frame to a child process that owns
the writer (:class:`SqliteAuditLog`); the child answers each frame, once its records are
committed, with one status byte per record. A record counts as committed only on that
answer. If the child dies, every unanswered record fails with ``StoreUnavailable`` and the
next append starts a new child: no restart of the broker is needed.

Frames, both ways: ``frame id (u32) | length (u32) | payload``. Requests carry a pickle of
the records as plain tuples (the child trusts only its parent, over its own pipes);
answers carry a status byte per record: 0 committed, 1 not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deputy.audit.record import DecisionRecord
from deputy.clock import SystemClock
from deputy.errors import CommitOutcomeUnknown, StoreUnavailable
from deputy.store.key_files import KEYS_DIR, FileKeyStore
from deputy.store.sqlite.audit_reader import UNAVAILABLE, SqliteAuditReader
from deputy.store.sqlite.audit_writer import open_audit_writer
from deputy.tokens.key_ring import KeyRing
from deputy.tokens.mint import TokenSigner

FRAME = struct.Struct(">II")
COMMITTED, FAILED, UNSIGNED = 0, 1, 2  # UNSIGNED: committed, but signing failed
Claims = Sequence[Mapping[str, Any]]
_Tokens = tuple[str, ...]
_Pending = tuple[DecisionRecord, Claims, "asyncio.Future[_Tokens]"]
CHILD_START_TIMEOUT_SECONDS = 30.0
COMMIT_TIMEOUT_SECONDS = 5.0  # a stalled writer must not hold requests forever
MAX_UNSENT_BYTES = 16 << 20  # nor let unsent records pile up in memory
READ_CHUNK_BYTES = 1 << 20

_log = logging.getLogger(__name__)


class ProcessAuditLog:
    """The :class:`~deputy.audit.log.AuditLog` of a broker: records are committed in a child."""

    def __init__(self, data_dir: Path, reader: SqliteAuditReader, signing_alg: str) -> None:
        self._data_dir = data_dir
        self._reader = reader
        self._signing_alg = signing_alg
        self._child: asyncio.subprocess.Process | None = None
        self._answers: asyncio.Task[None] | None = None
        self._spawning = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._in_flight: dict[int, tuple[list[_Pending], asyncio.TimerHandle]] = {}
        self._next_frame = 0
        self._closed = False

    async def append(self, record: DecisionRecord, claims: Claims = ()) -> _Tokens:
        """Commit ``record``; the writer then signs ``claims`` with the active signing key."""
        if self._closed:
            raise StoreUnavailable(UNAVAILABLE)
        if self._child is None:
            await self._spawn()
        future: asyncio.Future[_Tokens] = asyncio.get_running_loop().create_future()
        # The answer may come after the caller gave up waiting; it must not go unread.
        future.add_done_callback(_consume_outcome)
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._send)
        self._pending.append((record, claims, future))
        return await future

    async def start(self) -> None:
        """Start the writer now rather than on the first append."""
        await self._spawn()

    async def _spawn(self) -> None:
        async with self._spawning:
            if self._child is not None:
                return
            try:
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    __name__,
                    str(self._data_dir),
                    self._signing_alg,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                assert child.stdout is not None
                ready = await asyncio.wait_for(
                    child.stdout.readexactly(1), CHILD_START_TIMEOUT_SECONDS
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                _log.warning("audit writer did not start: %s", exc)
                raise StoreUnavailable(UNAVAILABLE) from exc
            if ready != b"\x00":
                raise StoreUnavailable(UNAVAILABLE)
            self._child = child
            self._answers = asyncio.create_task(self._read_answers(child))

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        child = self._child
        if (
            child is None
            or child.stdin is None
            or child.stdin.is_closing()
            or child.stdin.transport.get_write_buffer_size() > MAX_UNSENT_BYTES
        ):
            _fail([f for _, _, f in batch])  # never sent: surely not committed
            return
        self._next_frame = (self._next_frame + 1) & 0xFFFFFFFF
        rows = [(r.as_tuple(), [dict(c) for c in claims]) for r, claims, _ in batch]
        payload = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.write(FRAME.pack(self._next_frame, len(payload)) + payload)
        # One deadline per frame: a stalled writer must not hold its requests forever.
        deadline = asyncio.get_running_loop().call_later(
            COMMIT_TIMEOUT_SECONDS, _fail, [f for _, _, f in batch], CommitOutcomeUnknown
        )
        self._in_flight[self._next_frame] = (batch, deadline)

    async def _read_answers(self, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        try:
            while True:
                frame, size = FRAME.unpack(await child.stdout.readexactly(FRAME.size))
                answers = pickle.loads(await child.stdout.readexactly(size))  # noqa: S301
                batch, deadline = self._in_flight.pop(frame)
                deadline.cancel()
                for (_, _, future), (status, tokens) in zip(batch, answers, strict=True):
                    if future.done():
                        continue
                    if status == COMMITTED:
                        future.set_result(tuple(tokens))
                    elif status == UNSIGNED:  # recorded, so the quota stays taken
                        future.set_exception(CommitOutcomeUnknown(UNAVAILABLE))
                    else:
                        future.set_exception(StoreUnavailable(UNAVAILABLE))
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ValueError,
            KeyError,
            pickle.UnpicklingError,
        ) as exc:
            if not self._closed:
                _log.warning("audit writer stopped: %s", exc)
        finally:
            if self._child is child:
                self._child = None
            unanswered = [p for batch, deadline in self._in_flight.values() for p in batch]
            for _, deadline in self._in_flight.values():
                deadline.cancel()
            self._in_flight.clear()
            await child.wait()  # a dead writer commits nothing more: the log now says all
            self._settle_unanswered(unanswered)

    def _settle_unanswered(self, unanswered: list[_Pending]) -> None:
        """Look up what the gone writer had not answered: recorded (tokens lost), or not."""
        for record, _, future in unanswered:
            if future.done():
                continue
            try:
                committed = self._reader.committed(record.decision_id)
            except StoreUnavailable:
                committed = True  # unknown: keep the quota
            if committed:
                future.set_exception(CommitOutcomeUnknown(UNAVAILABLE))
            else:
                future.set_exception(StoreUnavailable(UNAVAILABLE))

    async def aclose(self) -> None:
        """Let the child commit what it was sent, then wait for it to exit."""
        self._closed = True
        child = self._child
        if child is None or child.stdin is None:
            return
        if self._pending:
            self._send()
        child.stdin.close()
        with contextlib.suppress(Exception):
            if self._answers is not None:
                await self._answers
            await child.wait()


def _consume_outcome(future: asyncio.Future[_Tokens]) -> None:
    if not future.cancelled():
        future.exception()


def _fail(
    futures: list[asyncio.Future[_Tokens]], error: type[StoreUnavailable] = StoreUnavailable
) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error(UNAVAILABLE))


def _serve(data_dir: Path, signing_alg: str, requests: int = 0, answers: int = 1) -> None:
    """The child: commit what arrived, sign its credentials, answer each frame; until EOF.

    Everything that arrived while the previous transaction committed is read at once and
    committed as one transaction: group commit without threads or an event loop. The
    signing keys live here, so a credential is signed only after its record is committed.
    """
    writer = open_audit_writer(data_dir)
    ring = KeyRing(FileKeyStore(data_dir / KEYS_DIR), SystemClock(), signing_alg)
    ring.load(require_configured_alg=False)
    signer = TokenSigner(ring)
    buffer = bytearray()
    _write_all(answers, b"\x00")  # ready
    try:
        while chunk := os.read(requests, READ_CHUNK_BYTES):
            buffer += chunk
            frames: list[tuple[int, list[tuple[DecisionRecord, list[dict[str, Any]]]]]] = []
            while len(buffer) >= FRAME.size:
                frame, size = FRAME.unpack_from(buffer)
                if len(buffer) < FRAME.size + size:
                    break
                rows = pickle.loads(buffer[FRAME.size : FRAME.size + size])  # noqa: S301 - parent
                frames.append((frame, [(DecisionRecord.from_tuple(r), c) for r, c in rows]))
                del buffer[: FRAME.size + size]
            if not frames:
                continue
            try:
                ring.refresh()  # a rotation by `deputy keys rotate` is seen at the next batch
            except Exception as exc:  # a half-finished rotation: keep signing with what we had
                _log.warning("signing keys could not be reloaded: %s", exc)
            outcomes = iter(writer.write([r for _, items in frames for r, _ in items]))
            answer = bytearray()
            for frame, items in frames:
                payload = pickle.dumps([_answer(next(outcomes), c, signer) for _, c in items])
                answer += FRAME.pack(frame, len(payload)) + payload
            _write_all(answers, bytes(answer))
    finally:
        writer.close()


def _answer(
    outcome: BaseException | None, claims: list[dict[str, Any]], signer: TokenSigner
) -> tuple[int, list[str]]:
    """What the parent is told of one record: its status and, if committed, its tokens."""
    if outcome is not None:
        return FAILED, []
    try:
        return COMMITTED, [signer.sign(c) for c in claims]
    except Exception as exc:  # e.g. no active key: the record stands, no credential leaves
        _log.error("credential signing failed after commit: %s", exc)
        return UNSIGNED, []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    # The parent decides when the writer stops, by closing its stdin; a Ctrl-C or a group-wide
    # SIGTERM must not cut a commit short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(Path(sys.argv[1]), sys.argv[2])
