"""Verification of the PostgreSQL audit: the registry, every chain, every derived row.

Fed rows in a fixed order from one snapshot (``PostgresAuditReader.verify``), it keeps only
a little state per chain, so a log of any size verifies in constant memory (per chain).
The first problem found is reported, naming the record (its global id, the ``seq`` queries
show) where there is one, and the chain and its own numbering in words.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from deputy.audit.chain import GENESIS_HASH
from deputy.audit.log import ChainReport
from deputy.audit.record import tools_of
from deputy.store.postgres.chains import (
    EVENTS,
    REGISTER,
    RETIRE,
    Head,
    record_link,
    registry_link,
)
from deputy.store.postgres.tables import INDEXED_COLUMNS, stored_text


def credential_keys(data: dict[str, Any]) -> Counter[tuple[Any, ...]] | None:
    """What the ``credentials`` rows of a body must hold (without record_id); None if malformed."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for cred in data.get("credentials") or ():
        if not isinstance(cred, dict):
            return None
        keys[
            (
                stored_text(cred.get("jti")),
                stored_text(data.get("user_issuer")),
                stored_text(data.get("user_id")),
                stored_text(cred.get("category")),
                stored_text(cred.get("tool")),
                cred.get("expires_at"),
                data.get("time"),
                stored_text(data.get("workflow")),
                stored_text(cred.get("scope")),
            )
        ] += 1
    return keys


def revocation_keys(data: dict[str, Any]) -> Counter[tuple[Any, ...]]:
    keys: Counter[tuple[Any, ...]] = Counter()
    revocation = data.get("revocation")
    if isinstance(revocation, dict):
        keys[
            (
                stored_text(revocation.get("selector")),
                stored_text(revocation.get("value")),
                revocation.get("issued_before"),
                revocation.get("expires_at"),
            )
        ] += 1
    return keys


def use_keys(data: dict[str, Any]) -> Counter[tuple[Any, ...]] | None:
    keys: Counter[tuple[Any, ...]] = Counter()
    for use in data.get("uses") or ():
        if not isinstance(use, dict):
            return None
        keys[
            (
                stored_text(use.get("jti")),
                stored_text(use.get("operation")),
                use.get("outcome"),
                use.get("time"),
                stored_text(data.get("requested_by")),
            )
        ] += 1
    return keys


def tool_keys(data: dict[str, Any]) -> Counter[tuple[Any, ...]]:
    return Counter((stored_text(tool),) for tool in tools_of(data))


def anchor_keys(data: dict[str, Any]) -> Counter[tuple[Any, ...]] | None:
    keys: Counter[tuple[Any, ...]] = Counter()
    anchors = data.get("anchors")
    if not isinstance(anchors, list):
        return None
    for anchor in anchors:
        if not (
            isinstance(anchor, list)
            and len(anchor) == 3
            and all(type(v) is int for v in anchor[:2])
            and isinstance(anchor[2], str)
        ):
            return None
        keys[tuple(anchor)] += 1
    return keys


class _Derived:
    """Rows derived from bodies, ``(owner, ...)`` in owner order, read in step with owners."""

    def __init__(self, rows: Iterable[tuple[Any, ...]], what: str) -> None:
        self._rows: Iterator[tuple[Any, ...]] = iter(rows)
        self._pending = next(self._rows, None)
        self.what = what

    def take(self, owner: int, name: str) -> tuple[Counter[tuple[Any, ...]], str | None]:
        """The rows of ``owner`` (without it), or a problem with rows before it."""
        stored: Counter[tuple[Any, ...]] = Counter()
        while self._pending is not None and self._pending[0] <= owner:
            row = tuple(self._pending)
            self._pending = next(self._rows, None)
            if row[0] != owner:
                return stored, f"{self.what} {row[1]} before {name} belongs to no record"
            stored[row[1:]] += 1
        return stored, None

    def leftover(self) -> str | None:
        return None if self._pending is None else str(self._pending[1])


@dataclass(slots=True)
class _Chain:
    registered_at: int
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    last_id: int | None = None
    beyond_id: int | None = None  # the first record past the stored head, if any
    retired: tuple[int, str] | None = None


class AuditVerifier:
    """Checks the registry, then records in global id order, then heads and anchors."""

    def __init__(self, head_key: bytes) -> None:
        self._key = head_key
        self._chains: dict[int, _Chain] = {}
        self._heads: dict[int, Head] = {}
        self._bad: ChainReport | None = None
        self._records = 0
        self._derived: list[_Derived] = []

    @property
    def failed(self) -> bool:
        return self._bad is not None

    def fail(self, record_id: int | None, problem: str) -> None:
        if self._bad is None:
            self._bad = ChainReport(
                ok=False, records=self._records, first_bad_seq=record_id, problem=problem
            )

    def report(self) -> ChainReport:
        return self._bad or ChainReport(ok=True, records=self._records)

    # -- the registry -------------------------------------------------------------------

    def registry(
        self,
        head_row: tuple[Any, ...] | None,
        entries: Iterable[tuple[Any, ...]],
        anchor_rows: Iterable[tuple[Any, ...]],
    ) -> bool:
        """Check the registry chain, its anchors and its head; learn which chains exist."""
        anchors = _Derived(anchor_rows, "anchor of chain")
        last_seq, last_hash = 0, GENESIS_HASH
        for seq, event, chain, time, body, prev_hash, hash_ in entries:
            where = f"chain registry entry {seq}"
            if seq != last_seq + 1:
                if seq > last_seq + 1:
                    self.fail(
                        None, f"chain registry entry {last_seq + 1} is missing or out of order"
                    )
                else:
                    self.fail(None, f"{where} appears again")
                return False
            if registry_link(seq, prev_hash, body.encode("utf-8")) != hash_:
                self.fail(None, f"{where} does not match its hash: it was edited")
                return False
            if prev_hash != last_hash:
                self.fail(None, f"{where} does not link to the one before: inserted or reordered")
                return False
            last_seq, last_hash = seq, hash_
            data = _object(body)
            problem = self._registry_entry(seq, event, chain, time, data)
            if problem is None and data is not None:
                stored, problem = anchors.take(seq, where)
                if problem is None and stored != anchor_keys(data):
                    problem = f"anchor rows of {where} do not match its hashed body"
            if problem is not None:
                self.fail(None, problem)
                return False
        if not self._registry_head(head_row, last_seq, last_hash):
            return False  # a cut tail also orphans anchor rows; the head names that better
        leftover = anchors.leftover()
        if leftover is not None:
            self.fail(None, f"anchor of chain {leftover} belongs to no chain registry entry")
            return False
        return True

    def _registry_entry(
        self, seq: int, event: str, chain: int, time: float, data: dict[str, Any] | None
    ) -> str | None:
        where = f"chain registry entry {seq}"
        if data is None:
            return f"{where} body is not a JSON object"
        if (data.get("event"), data.get("chain"), data.get("time")) != (event, chain, time):
            return f"{where} columns do not match its hashed body"
        if event not in EVENTS or type(chain) is not int:
            return f"{where} is not a registry event"
        keys = anchor_keys(data)
        if keys is None:
            return f"{where} holds malformed anchors"
        for anchored, anchored_seq, _ in keys:
            if anchored not in self._chains or anchored_seq < 0:
                return f"{where} witnesses chain {anchored}, which was not registered before it"
        if event == REGISTER:
            if chain != seq or chain in self._chains:
                return f"{where} registers chain {chain} out of turn"
            self._chains[chain] = _Chain(registered_at=seq)
            return None
        state = self._chains.get(chain)
        if state is None or state.retired is not None:
            return f"{where} speaks for chain {chain}, which is not registered or retired"
        if event == RETIRE:
            own = [(s, h) for c, s, h in keys if c == chain]
            if len(own) != 1:
                return f"{where} retires chain {chain} without naming its last record"
            state.retired = own[0]
        return None

    def _registry_head(self, row: tuple[Any, ...] | None, last_seq: int, last_hash: str) -> bool:
        if row is None or row[0] is None:
            if last_seq:
                self.fail(
                    None,
                    f"chain registry head is missing: entries after {last_seq} may have been cut",
                )
                return False
            return True
        head = Head(None, row[0], row[1], row[2])
        if not head.is_authentic(self._key):
            self.fail(None, "chain registry head signature does not verify: the head was forged")
        elif head.seq > last_seq:
            self.fail(
                None,
                f"chain registry ends at entry {last_seq} but its head names entry {head.seq}:"
                " entries were cut",
            )
        elif head.seq < last_seq:
            self.fail(
                None, f"chain registry entry {head.seq + 1} lies beyond the authenticated head"
            )
        elif head.hash != last_hash:
            self.fail(
                None, f"chain registry entry {last_seq} does not match the authenticated head"
            )
        return not self.failed

    # -- the records --------------------------------------------------------------------

    def heads(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for chain, seq, hash_, mac in rows:
            self._heads[chain] = Head(chain, seq, hash_, mac)

    def derived(
        self,
        credential_rows: Iterable[tuple[Any, ...]],
        revocation_rows: Iterable[tuple[Any, ...]],
        use_rows: Iterable[tuple[Any, ...]],
        tool_rows: Iterable[tuple[Any, ...]],
    ) -> None:
        self._derived = [
            _Derived(credential_rows, "credential"),
            _Derived(revocation_rows, "revocation of"),
            _Derived(use_rows, "use of"),
            _Derived(tool_rows, "tool"),
        ]

    def record(self, row: tuple[Any, ...]) -> bool:
        """Check one ``records`` row (global id order); False once something is wrong."""
        record_id, chain, chain_seq, body, prev_hash, hash_ = row[:6]
        state = self._chains.get(chain)
        if state is None:
            self.fail(
                record_id,
                f"record {record_id} belongs to chain {chain}, which was never registered:"
                " it was inserted",
            )
            return False
        expected = state.last_seq + 1
        if chain_seq != expected:
            gap = "is missing or out of order" if chain_seq > expected else "appears again"
            self.fail(
                record_id,
                f"chain {chain} record {min(expected, chain_seq)} {gap} (record {record_id}"
                f" is chain record {chain_seq}, expected {expected})",
            )
            return False
        self._records += 1
        try:
            link = record_link(chain, chain_seq, record_id, prev_hash, body.encode("utf-8"))
        except OverflowError:
            link = ""
        if link != hash_:
            self.fail(record_id, f"record {record_id} does not match its hash: it was edited")
            return False
        if prev_hash != state.last_hash:
            self.fail(
                record_id,
                f"record {record_id} does not link to chain {chain} record {chain_seq - 1}:"
                " inserted or reordered",
            )
            return False
        state.last_seq, state.last_hash, state.last_id = chain_seq, hash_, record_id
        head = self._heads.get(chain)
        if head is not None and chain_seq == head.seq + 1:
            state.beyond_id = record_id
        data = _object(body)
        if data is None:
            self.fail(record_id, f"record {record_id} body is not a JSON object")
            return False
        mismatch = self._columns(record_id, data, row[6:]) or self._derived_rows(record_id, data)
        if mismatch is not None:
            self.fail(record_id, mismatch)
            return False
        return True

    @staticmethod
    def _columns(record_id: int, data: dict[str, Any], columns: tuple[Any, ...]) -> str | None:
        for name, value in zip(INDEXED_COLUMNS, columns, strict=True):
            if stored_text(data.get(name)) != value:
                return f"record {record_id} column {name} does not match its hashed body"
        return None

    def _derived_rows(self, record_id: int, data: dict[str, Any]) -> str | None:
        credentials, revocations, uses, tools = self._derived
        name = f"record {record_id}"
        for rows, expected, what in (
            (credentials, credential_keys(data), "credential"),
            (revocations, revocation_keys(data), "revocation"),
            (uses, use_keys(data), "use"),
            (tools, tool_keys(data), "tool"),
        ):
            stored, problem = rows.take(record_id, name)
            if problem is not None:
                return problem
            if expected is None:
                return f"record {record_id} body holds a malformed {what}"
            if stored != expected:
                return f"{what} rows of record {record_id} do not match its hashed body"
        return None

    def finish_records(self) -> None:
        """Each chain's end against its authenticated head; then rows that belong to no record."""
        if self.failed:
            return
        for chain in sorted(self._chains.keys() | self._heads.keys()):
            self._chain_end(chain)
            if self.failed:
                return
        for rows in self._derived:
            leftover = rows.leftover()
            if leftover is not None:
                self.fail(None, f"{rows.what} {leftover} belongs to no record")
                return

    def _chain_end(self, chain: int) -> None:
        state, head = self._chains.get(chain), self._heads.get(chain)
        if state is None:
            self.fail(None, f"chain {chain} has a head but was never registered")
            return
        last = state.last_seq
        if head is None:
            self.fail(
                None,
                f"chain {chain} head is missing: records after chain record {last} may have been"
                " cut, or the chain deleted",
            )
        elif not head.is_authentic(self._key):
            self.fail(None, f"chain {chain} head signature does not verify: the head was forged")
        elif head.seq > last:
            self.fail(
                None,
                f"chain {chain} ends at chain record {last} but its head names chain record"
                f" {head.seq}: records were cut",
            )
        elif head.seq < last:
            self.fail(
                state.beyond_id,
                f"record {state.beyond_id} (chain {chain} record {head.seq + 1}) lies beyond the"
                " authenticated head",
            )
        elif head.hash != state.last_hash:
            self.fail(
                state.last_id, f"record {state.last_id} does not match the authenticated head"
            )
        elif state.retired is not None and state.retired != (last, state.last_hash):
            self.fail(
                state.last_id,
                f"chain {chain} was retired at chain record {state.retired[0]} but now ends at"
                f" chain record {last}",
            )

    def anchor_mismatch(self, row: tuple[Any, ...] | None) -> None:
        """The first anchor that no record matches (found by the reader with one join)."""
        if row is None or self.failed:
            return
        registry_seq, chain, seq, record_id = row
        self.fail(
            record_id,
            f"chain {chain} record {seq} is not what chain registry entry {registry_seq}"
            " witnessed: the chain was rolled back or rewritten",
        )


def _object(body: str) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
