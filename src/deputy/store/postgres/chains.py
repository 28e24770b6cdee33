"""The hashes and MACs of the PostgreSQL audit chains (one chain per writer, and a registry).

Record links bind the chain, the record's place in it and its global id, so no record can
be moved between chains, renumbered or moved in the global order without its hash breaking.
Heads are MAC'd with the head key over their chain, seq and hash, with a domain of their own
so a MAC made for one kind of head never verifies as another.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from deputy.audit.chain import GENESIS_HASH

__all__ = [
    "GENESIS_HASH",
    "Head",
    "chain_head_mac",
    "record_link",
    "registry_head_mac",
    "registry_link",
]

_RECORD_LINK = b"deputy-audit-pg-record-link-v1\x00"
_REGISTRY_LINK = b"deputy-audit-pg-registry-link-v1\x00"
_CHAIN_HEAD = b"deputy-audit-pg-chain-head-v1\x00"
_REGISTRY_HEAD = b"deputy-audit-pg-registry-head-v1\x00"

# Registry events.
REGISTER, CHECKPOINT, RETIRE = "register", "checkpoint", "retire"
EVENTS = (REGISTER, CHECKPOINT, RETIRE)


def _int(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "backslashreplace")
    return len(data).to_bytes(4, "big") + data


def record_link(chain: int, chain_seq: int, record_id: int, prev_hash: str, body: bytes) -> str:
    """SHA-256 hex over chain, seq in the chain, global id, previous hash and body."""
    digest = hashlib.sha256(_RECORD_LINK)
    digest.update(_int(chain) + _int(chain_seq) + _int(record_id) + _text(prev_hash))
    digest.update(len(body).to_bytes(8, "big"))
    digest.update(body)
    return digest.hexdigest()


def registry_link(seq: int, prev_hash: str, body: bytes) -> str:
    """SHA-256 hex over a registry entry's seq, previous hash and body."""
    digest = hashlib.sha256(_REGISTRY_LINK)
    digest.update(_int(seq) + _text(prev_hash))
    digest.update(len(body).to_bytes(8, "big"))
    digest.update(body)
    return digest.hexdigest()


def chain_head_mac(key: bytes, chain: int, seq: int, hash_: str) -> str:
    return hmac.new(key, _CHAIN_HEAD + _int(chain) + _int(seq) + _text(hash_), "sha256").hexdigest()


def registry_head_mac(key: bytes, seq: int, hash_: str) -> str:
    return hmac.new(key, _REGISTRY_HEAD + _int(seq) + _text(hash_), "sha256").hexdigest()


@dataclass(frozen=True, slots=True)
class Head:
    """A stored head (of a chain, or of the registry when ``chain`` is None)."""

    chain: int | None
    seq: int
    hash: str
    mac: str

    @classmethod
    def sign(cls, key: bytes, chain: int | None, seq: int, hash_: str) -> Head:
        if chain is None:
            return cls(None, seq, hash_, registry_head_mac(key, seq, hash_))
        return cls(chain, seq, hash_, chain_head_mac(key, chain, seq, hash_))

    def is_authentic(self, key: bytes) -> bool:
        try:
            if self.chain is None:
                expected = registry_head_mac(key, self.seq, self.hash)
            else:
                expected = chain_head_mac(key, self.chain, self.seq, self.hash)
            return hmac.compare_digest(expected, self.mac)
        except (TypeError, ValueError, OverflowError, AttributeError):
            return False
