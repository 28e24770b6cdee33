"""The hash chain that makes the audit log tamper-evident (``SECURITY.md`` "Audit")."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from deputy.audit.log import ChainReport
from deputy.audit.record import DecisionRecord, IssuedCredential, StoredRecord

GENESIS_HASH = "0" * 64
_LINK_DOMAIN = b"deputy-audit-link-v1\x00"
LOGGED_AT = "logged_at"
_RECORD_FIELDS = tuple(f.name for f in fields(DecisionRecord))
_CREDENTIAL_FIELDS = tuple(f.name for f in fields(IssuedCredential))


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Serialise one record the single way the chain hashes it; ASCII only, no NaN."""
    text = json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def record_body(record: DecisionRecord, logged_at: float) -> bytes:
    """Canonical bytes of ``record.as_dict()`` plus ``logged_at``, built without deep copies."""
    data: dict[str, Any] = {name: getattr(record, name) for name in _RECORD_FIELDS}
    data["credentials"] = [
        {name: getattr(cred, name) for name in _CREDENTIAL_FIELDS} for cred in record.credentials
    ]
    data[LOGGED_AT] = logged_at
    return canonical_json(data)


def link_hash(seq: int, prev_hash: str, body: bytes) -> str:
    """SHA-256 hex over an unambiguous, length-prefixed encoding of seq, prev_hash and body."""
    prev = prev_hash.encode("utf-8", "backslashreplace")
    digest = hashlib.sha256(_LINK_DOMAIN)
    digest.update(seq.to_bytes(8, "big", signed=False))
    digest.update(len(prev).to_bytes(4, "big"))
    digest.update(prev)
    digest.update(len(body).to_bytes(8, "big"))
    digest.update(body)
    return digest.hexdigest()


def head_mac(head_key: bytes, seq: int, hash_: str) -> str:
    """HMAC-SHA256 hex that authenticates the chain head ``f"{seq}:{hash}"``."""
    return hmac.new(head_key, f"{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The authenticated last link: only the key holder can move it, so truncation shows."""

    seq: int
    hash: str
    mac: str

    @classmethod
    def sign(cls, head_key: bytes, seq: int, hash_: str) -> ChainHead:
        """Build the head for the record ``seq`` whose hash is ``hash_``."""
        return cls(seq=seq, hash=hash_, mac=head_mac(head_key, seq, hash_))

    def is_authentic(self, head_key: bytes) -> bool:
        """True when the MAC was made with ``head_key``."""
        try:
            return hmac.compare_digest(head_mac(head_key, self.seq, self.hash), self.mac)
        except (TypeError, UnicodeEncodeError):
            return False


class ChainVerifier:
    """Checks links one at a time in seq order, so a whole log verifies in constant memory."""

    def __init__(self, head_key: bytes) -> None:
        self._head_key = head_key
        self._count = 0
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._bad: ChainReport | None = None

    @property
    def failed(self) -> bool:
        """True once a bad link has been found; later links are not examined."""
        return self._bad is not None

    def fail(self, seq: int, problem: str) -> None:
        """Record a problem found outside the chain itself (e.g. an index column)."""
        if self._bad is None:
            self._bad = ChainReport(
                ok=False, records=self._count, first_bad_seq=seq, problem=problem
            )

    def feed(self, seq: int, body: bytes, prev_hash: str, hash_: str) -> bool:
        """Check one stored link; return False (and stop) at the first bad one."""
        if self._bad is not None:
            return False
        expected = self._last_seq + 1
        if seq != expected:
            if seq > expected:
                self.fail(expected, f"record {expected} is missing or out of order (found {seq})")
            else:
                self.fail(expected, f"record {seq} appears again where record {expected} belongs")
            return False
        self._count += 1
        if link_hash(seq, prev_hash, body) != hash_:
            self.fail(seq, f"record {seq} does not match its hash: it was edited")
            return False
        if prev_hash != self._last_hash:
            self.fail(seq, f"record {seq} does not link to record {seq - 1}: inserted or reordered")
            return False
        self._last_seq = seq
        self._last_hash = hash_
        return True

    def finish(self, head: ChainHead | None) -> ChainReport:
        """Check the tail against the authenticated head and return the report."""
        if self._bad is not None:
            return self._bad
        last = self._last_seq
        if head is None:
            if last == 0:
                return ChainReport(ok=True, records=0)
            self.fail(last + 1, f"chain head is missing: records after {last} may have been cut")
        elif not head.is_authentic(self._head_key):
            self.fail(last + 1, "chain head signature does not verify: the head was forged")
        elif head.seq > last:
            self.fail(last + 1, f"log ends at record {last} but the head names record {head.seq}")
        elif head.seq < last:
            self.fail(head.seq + 1, f"record {head.seq + 1} lies beyond the authenticated head")
        elif head.hash != self._last_hash:
            self.fail(last, f"record {last} does not match the authenticated head")
        if self._bad is not None:
            return self._bad
        return ChainReport(ok=True, records=self._count)


def verify_chain(
    records: Iterable[StoredRecord], head: ChainHead | None, head_key: bytes
) -> ChainReport:
    """Verify records in the order given; name the first bad seq and the problem in words."""
    verifier = ChainVerifier(head_key)
    for stored in records:
        try:
            body = canonical_json(stored.record)
        except (TypeError, ValueError):
            verifier.fail(stored.seq, f"record {stored.seq} cannot be serialised canonically")
            break
        if not verifier.feed(stored.seq, body, stored.prev_hash, stored.hash):
            break
    return verifier.finish(head)
