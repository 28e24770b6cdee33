"""Signing keys as files in the data dir: a manifest plus one private PEM per key (0600);
and the other secrets the data dir holds as small 0600 files (the audit head key, the
key-encryption key)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from deputy.errors import ConfigError
from deputy.tokens.key_ring import KeyChange, SigningKey, key_type

MANIFEST = "keys.json"
KEYS_DIR = "keys"  # under the data dir


def open_secret_file(path: Path, size: int) -> bytes:
    """The ``size`` random bytes in ``path`` (0600), created with its directory (0700) if new."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a private name, then linked into place: a process starting at
        # the same moment sees either no key or the complete one, never half of it.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(size))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) != size:
        raise ConfigError(f"{path} must hold exactly {size} bytes; restore it from backup")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by the owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class FileKeyStore:
    """Keys under ``<data_dir>/keys``; the directory is created 0700.

    ``public_only`` stores read the public keys from the manifest and never open a private
    key file: that is the broker's view, which only publishes the JWKS.
    """

    def __init__(self, directory: Path, *, public_only: bool = False) -> None:
        self._dir = directory
        self._public_only = public_only

    def _ensure_dir(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def version(self) -> object:
        try:
            st = (self._dir / MANIFEST).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> list[SigningKey]:
        try:
            manifest = json.loads((self._dir / MANIFEST).read_text())
        except FileNotFoundError:
            return []
        keys = []
        for entry in manifest["keys"]:
            key_cls = key_type(entry["alg"])
            if self._public_only:
                key = key_cls.import_key(entry["public"])
            else:
                key = key_cls.import_key((self._dir / f"{entry['kid']}.pem").read_bytes())
            keys.append(SigningKey.restore(key, entry))
        return keys

    def update(self, change: KeyChange) -> list[SigningKey]:
        """``KeyStore.update`` under an exclusive ``flock`` on the key directory."""
        if self._public_only:
            raise PermissionError("a public-only key store cannot save keys")
        self._ensure_dir()
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
            current = self.load()
            changed = change(current)
            if changed is None:
                return current
            self.save(changed)
            return list(changed)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def save(self, keys: Sequence[SigningKey]) -> None:
        if self._public_only:
            raise PermissionError("a public-only key store cannot save keys")
        self._ensure_dir()
        for k in keys:
            pem_path = self._dir / f"{k.kid}.pem"
            if not pem_path.exists():
                write_private(pem_path, k.key.as_pem(private=True))
        manifest = {
            "keys": [{**k.lifecycle(), "public": k.key.as_dict(private=False)} for k in keys]
        }
        write_private(self._dir / MANIFEST, json.dumps(manifest, indent=2).encode())
        kept = {f"{k.kid}.pem" for k in keys}
        for old in self._dir.glob("*.pem"):
            if old.name not in kept:
                old.unlink()
