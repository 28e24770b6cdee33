"""The PostgreSQL audit schema (SQLAlchemy Core), and how text from records is stored in it.

The tables mirror the SQLite store (``store/sqlite/audit_tables.py``): ``records`` hold the
hashed canonical body plus copies of a few fields for indexes; ``credentials``,
``revocations``, ``uses`` and ``record_tools`` are derived from record bodies, for queries
and the ledger. What differs is the chain: several writers (replicas) each append to a chain
of their own (``chain``, ``chain_seq``), with a MAC'd head row per chain, and every chain is
registered in ``chain_registry``, itself a hash chain with a MAC'd head, whose entries also
witness (anchor) the heads of the other chains. See ``docs/postgres-audit.md``.

The signing keys live here too (``signing_keys``, with their private halves sealed, and the
one ``signing_key_ring`` row every writer of keys locks); see ``store/postgres/keys.py``.

The migrations in ``migrations/versions`` create exactly this schema (a test compares them).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

# Byte order for every text column: prefix ranges (``workload_prefix``) are then exact, and
# comparisons never depend on the server's locale.
TEXT = Text(collation="C")

metadata = MetaData()

records = Table(
    "records",
    metadata,
    # Global order (paging cursor, export order); assigned by the writer before hashing.
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("chain", BigInteger, nullable=False),
    Column("chain_seq", BigInteger, nullable=False),
    Column("decision_id", TEXT, nullable=False),
    Column("time", Double, nullable=False),
    Column("outcome", TEXT, nullable=False),
    Column("execution_id", TEXT),
    Column("agent_instance", TEXT),
    Column("workload_id", TEXT),
    Column("user_id", TEXT),
    Column("body", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    UniqueConstraint("chain", "chain_seq", name="records_chain_seq"),
    UniqueConstraint("decision_id", name="records_decision_id"),
    Index("records_execution_id", "execution_id", "id"),
    Index("records_agent_instance", "agent_instance", "id"),
    Index("records_workload_id", "workload_id", "id"),
    Index("records_user_id", "user_id", "id"),
    Index("records_outcome", "outcome", "id"),
    Index("records_time", "time"),
)

credentials = Table(
    "credentials",
    metadata,
    Column("jti", TEXT, primary_key=True),
    Column("record_id", BigInteger, nullable=False),
    Column("user_issuer", TEXT),
    Column("user_id", TEXT),
    Column("category", TEXT),
    Column("tool", TEXT),
    Column("expires_at", BigInteger),
    Column("issued_at", Double),
    Column("workflow", TEXT),
    Column("scope", TEXT),
    Index("credentials_record_id", "record_id"),
    Index("credentials_user_category", "user_issuer", "user_id", "category", "issued_at"),
    Index("credentials_grants", "issued_at", "workflow", "tool", "scope"),
    Index("credentials_live", "expires_at", "issued_at"),
)

revocations = Table(
    "revocations",
    metadata,
    # Assigned under an advisory lock held to commit: ids are in commit order, so a reader
    # that has seen id N has seen every revocation below it (``revocations_after``).
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("record_id", BigInteger, nullable=False),
    Column("selector", TEXT, nullable=False),
    Column("value", TEXT, nullable=False),
    Column("issued_before", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("revocations_record_id", "record_id"),
    Index("revocations_expires_at", "expires_at"),
)

uses = Table(
    "uses",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("record_id", BigInteger, nullable=False),
    Column("jti", TEXT, nullable=False),
    Column("operation", TEXT, nullable=False),
    Column("outcome", BigInteger, nullable=False),
    Column("time", Double, nullable=False),
    Column("reported_by", TEXT),
    Index("uses_jti", "jti", "time"),
    Index("uses_record_id", "record_id"),
)

record_tools = Table(
    "record_tools",
    metadata,
    Column("tool", TEXT, nullable=False),
    Column("record_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("tool", "record_id", name="record_tools_pkey"),
    Index("record_tools_record_id", "record_id"),
)

# One row per chain, moved by its writer in the transaction of each batch.
chain_heads = Table(
    "chain_heads",
    metadata,
    Column("chain", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
    Column("mac", Text, nullable=False),
)

# Registrations, checkpoints and retirements of chains: a hash chain of its own.
chain_registry = Table(
    "chain_registry",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event", TEXT, nullable=False),
    Column("chain", BigInteger, nullable=False),
    Column("time", Double, nullable=False),
    Column("body", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
)

# The one registry head; created empty (NULLs) by the migration, MAC'd by the first writer.
chain_registry_head = Table(
    "chain_registry_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger),
    Column("hash", Text),
    Column("mac", Text),
    CheckConstraint("id = 1", name="chain_registry_head_one_row"),
)

# The chain heads each registry entry witnessed (derived from its body).
chain_anchors = Table(
    "chain_anchors",
    metadata,
    Column("registry_seq", BigInteger, nullable=False),
    Column("chain", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
    PrimaryKeyConstraint("registry_seq", "chain", name="chain_anchors_pkey"),
    Index("chain_anchors_chain", "chain", "registry_seq"),
)

# The one row writers of signing keys lock: a generation bumped by every change (what a
# running broker polls), and the check value of the key-encryption key the keys are sealed
# with (NULL until the first key is stored).
signing_key_ring = Table(
    "signing_key_ring",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("generation", BigInteger, nullable=False),
    Column("kek_check", Text),
    CheckConstraint("id = 1", name="signing_key_ring_one_row"),
)

# One row per signing key: lifecycle times and public JWK in clear, the private key sealed.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", TEXT, primary_key=True),
    Column("alg", TEXT, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("activates_at", Double, nullable=False),
    Column("retired_at", Double),
    Column("publish_until", Double),
    Column("public_jwk", Text, nullable=False),
    Column("sealed_key", LargeBinary, nullable=False),
)

# Columns copied out of the hashed body so queries can use indexes; verify checks they agree.
INDEXED_COLUMNS = (
    "decision_id",
    "time",
    "outcome",
    "execution_id",
    "agent_instance",
    "workload_id",
    "user_id",
)
EQUALITY_FILTERS = ("execution_id", "agent_instance", "workload_id", "user_id")


def stored_text(value: Any) -> Any:
    """A text value as its column holds it: PostgreSQL text cannot hold every Python string.

    NUL and lone surrogates (which JSON can carry) have no place in PostgreSQL text, so they
    are written as ``\\0`` and ``\\uXXXX``, and a backslash as ``\\\\``. The escapes form a
    prefix code: equal values stay equal, distinct ones distinct, and a prefix of a value
    stays a prefix of it (``workload_prefix``). Bodies are ASCII JSON and need none of this.
    Anything but a ``str`` is returned as it is.
    """
    if not isinstance(value, str):
        return value
    if value.isascii():
        if "\\" not in value and "\x00" not in value:
            return value
    elif "\\" not in value and "\x00" not in value:
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
    return "".join(_escape(ch) for ch in value)


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == "\x00":
        return "\\0"
    if "\ud800" <= ch <= "\udfff":
        return f"\\u{ord(ch):04x}"
    return ch


def text_value(stored: Any) -> Any:
    """The inverse of :func:`stored_text`, for text read back out of a column."""
    if not isinstance(stored, str) or "\\" not in stored:
        return stored
    out: list[str] = []
    i = 0
    while i < len(stored):
        ch = stored[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = stored[i + 1 : i + 2]
        if nxt == "\\":
            out.append("\\")
            i += 2
        elif nxt == "0":
            out.append("\x00")
            i += 2
        elif nxt == "u" and _is_hex4(stored[i + 2 : i + 6]):
            out.append(chr(int(stored[i + 2 : i + 6], 16)))
            i += 6
        else:  # not written by stored_text: keep it as it is
            out.append(ch)
            i += 1
    return "".join(out)


def _is_hex4(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdef" for c in text)
