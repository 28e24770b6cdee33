"""Signing keys in PostgreSQL, shared by every replica; private keys sealed with AES-256-GCM.

Each private key is sealed under a key-encryption key (KEK, 32 bytes that stay in each
replica's data dir, never in the database) with its ``kid`` and ``alg`` as associated data,
so a sealed key moved onto another row does not open. The one ``signing_key_ring`` row holds
a generation, bumped by every change (``version()`` reads only that), and a check value of
the KEK, so a replica given another KEK is refused when it loads the keys, with what to do.
Every change is a read-modify-write under a lock on that row. See ``docs/postgres-audit.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from deputy.errors import ConfigError, StoreUnavailable
from deputy.store.postgres.connect import Timeouts, Watchdog, driver_connection, make_engine
from deputy.store.postgres.schema import check_schema
from deputy.store.postgres.tables import signing_key_ring, signing_keys
from deputy.tokens.key_ring import KeyChange, SigningKey, key_type

KEK_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM nonce, random per seal
KEY_STORE_UNAVAILABLE = "signing key store unavailable"
_SEAL_DOMAIN = b"deputy-pg-signing-key-seal-v1\x00"
_CHECK_DOMAIN = b"deputy-pg-key-encryption-key-check-v1"

_T = TypeVar("_T")


class KeyEncryptionKeyMismatch(ConfigError):
    """The KEK this replica holds is not the one the stored signing keys are sealed with."""


class SealedKeyInvalid(ConfigError):
    """A stored key does not open (or does not match its public half) under the right KEK."""


def kek_check(kek: bytes) -> str:
    """The value that tells a KEK apart without revealing it: HMAC-SHA256 of a fixed label."""
    return hmac.new(kek, _CHECK_DOMAIN, hashlib.sha256).hexdigest()


def _associated_data(kid: str, alg: str) -> bytes:
    out = bytearray(_SEAL_DOMAIN)
    for part in (kid.encode(), alg.encode()):
        out += struct.pack(">I", len(part)) + part
    return bytes(out)


def seal(kek: bytes, kid: str, alg: str, private_key: bytes) -> bytes:
    """``nonce ‖ AES-256-GCM(private_key)``, bound to ``kid`` and ``alg``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, private_key, _associated_data(kid, alg))


def unseal(kek: bytes, kid: str, alg: str, sealed: bytes) -> bytes:
    """The private key :func:`seal` sealed for ``kid`` and ``alg``; raises ``InvalidTag``."""
    nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    return AESGCM(kek).decrypt(nonce, ciphertext, _associated_data(kid, alg))


def _public_jwk(key: SigningKey) -> str:
    return json.dumps(key.key.as_dict(private=False), sort_keys=True, separators=(",", ":"))


class PostgresKeyStore:
    """``KeyStore`` on PostgreSQL: the keys every replica signs with, sealed under ``kek``.

    ``kek_file`` names where the KEK came from, for the message that says what to fix.
    Safe to use from several threads at once (each call takes its own pooled connection).
    """

    def __init__(
        self,
        url: str | URL,
        kek: bytes,
        *,
        kek_file: str = "keys.kek",
        timeouts: Timeouts | None = None,
    ) -> None:
        if len(kek) != KEK_BYTES:
            raise ConfigError(f"{kek_file} must hold exactly {KEK_BYTES} bytes")
        self._kek = kek
        self._check = kek_check(kek)
        self._kek_file = kek_file
        self._timeouts = timeouts or Timeouts()
        self._engine = make_engine(
            url, self._timeouts, application_name="deputy signing keys", pool_size=1
        )
        self._watchdog = Watchdog("deputy-pg-keys-watchdog")

    def close(self) -> None:
        self._engine.dispose()
        self._watchdog.close()

    def __enter__(self) -> PostgresKeyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- KeyStore ------------------------------------------------------------------------

    def version(self) -> object:
        """The generation: one indexed read of one row, cheap enough to poll."""
        return self._read(
            lambda conn: conn.execute(
                select(signing_key_ring.c.generation).where(signing_key_ring.c.id == 1)
            ).scalar_one()
        )

    def load(self) -> list[SigningKey]:
        """Every stored key, opened; refused if this replica's KEK is not the stored one's."""

        def work(conn: Connection) -> list[SigningKey]:
            stored_check = conn.execute(
                select(signing_key_ring.c.kek_check).where(signing_key_ring.c.id == 1)
            ).scalar_one()
            self._require_kek(stored_check)
            return self._keys(conn)

        return self._read(work)

    def save(self, keys: Sequence[SigningKey]) -> None:
        """Replace the stored keys by ``keys`` (under the lock, as every change)."""
        self.update(lambda current: keys)

    def update(self, change: KeyChange) -> list[SigningKey]:
        """``KeyStore.update``: one transaction holding the ring row's lock (``FOR UPDATE``).

        ``change`` runs inside that transaction and must be quick (make keys before).
        """
        try:
            with (
                self._engine.connect() as conn,
                self._watchdog.guard(driver_connection(conn), self._timeouts.call),
                conn.begin(),
            ):
                row = conn.execute(
                    select(signing_key_ring.c.generation, signing_key_ring.c.kek_check)
                    .where(signing_key_ring.c.id == 1)
                    .with_for_update()
                ).one()
                self._require_kek(row.kek_check)
                current = self._keys(conn)
                changed = change(current)
                if changed is None:
                    return current
                self._write(conn, list(changed), row.generation + 1)
                return list(changed)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(KEY_STORE_UNAVAILABLE) from exc

    def check_schema(self) -> None:
        """Raise ``SchemaOutOfDate`` (naming ``deputy db upgrade``) unless at the head revision."""
        self._read(check_schema)

    # -- plumbing ------------------------------------------------------------------------

    def _read(self, work: Callable[[Connection], _T]) -> _T:
        """A read under the watchdog; a pooled connection a server restart closed is replaced
        once (the failure is immediate), so polling needs no ping before each query."""
        for attempt in (0, 1):
            started = time.monotonic()
            try:
                with (
                    self._engine.connect() as conn,
                    self._watchdog.guard(driver_connection(conn), self._timeouts.call),
                ):
                    return work(conn)
            except DBAPIError as exc:
                quick = time.monotonic() - started < self._timeouts.call / 2
                if attempt == 0 and exc.connection_invalidated and quick:
                    continue
                raise StoreUnavailable(KEY_STORE_UNAVAILABLE) from exc
            except SQLAlchemyError as exc:
                raise StoreUnavailable(KEY_STORE_UNAVAILABLE) from exc
        raise AssertionError("unreachable")

    def _require_kek(self, stored_check: str | None) -> None:
        if stored_check is not None and not hmac.compare_digest(stored_check, self._check):
            raise KeyEncryptionKeyMismatch(
                f"{self._kek_file} is not the key-encryption key the signing keys in this"
                " PostgreSQL database are sealed with: copy keys.kek from the data dir of a"
                " replica that already runs on this database (the same file on every"
                " replica, mode 0600), then start again"
            )

    def _keys(self, conn: Connection) -> list[SigningKey]:
        k = signing_keys.c
        rows = conn.execute(
            select(
                k.kid,
                k.alg,
                k.created_at,
                k.activates_at,
                k.retired_at,
                k.publish_until,
                k.public_jwk,
                k.sealed_key,
            ).order_by(k.activates_at, k.kid)
        )
        return [self._open(row) for row in rows]

    def _open(self, row: Any) -> SigningKey:
        broken = SealedKeyInvalid(
            f"the stored signing key {row.kid!r} does not open under {self._kek_file}, whose"
            " check value matches: its row in signing_keys was altered or its sealed key moved"
            " from another row; restore the table from a backup or rotate and delete the row"
        )
        try:
            private = unseal(self._kek, row.kid, row.alg, bytes(row.sealed_key))
        except (InvalidTag, ValueError):
            raise broken from None
        key = SigningKey.restore(key_type(row.alg).import_key(private), row._mapping)
        if _public_jwk(key) != row.public_jwk:
            raise broken
        return key

    def _write(self, conn: Connection, keys: list[SigningKey], generation: int) -> None:
        kids = [k.kid for k in keys]
        if len(set(kids)) != len(kids):
            raise ValueError("signing keys must have distinct kids")
        conn.execute(delete(signing_keys).where(signing_keys.c.kid.not_in(kids)))
        if keys:
            rows = [
                {
                    **k.lifecycle(),
                    "public_jwk": _public_jwk(k),
                    "sealed_key": seal(self._kek, k.kid, k.alg, k.key.as_pem(private=True)),
                }
                for k in keys
            ]
            statement = insert(signing_keys).values(rows)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[signing_keys.c.kid],
                    set_={name: statement.excluded[name] for name in rows[0] if name != "kid"},
                )
            )
        conn.execute(
            update(signing_key_ring)
            .where(signing_key_ring.c.id == 1)
            .values(generation=generation, kek_check=self._check)
        )
