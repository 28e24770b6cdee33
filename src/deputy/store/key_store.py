"""The signing-key store a configuration names: files in the data dir, or PostgreSQL by URL.

With ``storage: postgresql://...`` the keys live in the database, sealed under the
key-encryption key in ``<data_dir>/keys.kek`` (created like ``audit.key`` when missing; every
replica holds the same copy). A database without keys adopts the file keys of the data dir,
if there are any, so a deployment that kept its keys in files keeps its kids.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deputy.config.settings import Settings
from deputy.store.audit_store import require_postgres
from deputy.store.key_files import KEYS_DIR, FileKeyStore, open_secret_file
from deputy.tokens.key_ring import KeyStore, SigningKey

KEK_FILE = "keys.kek"  # under the data dir

_log = logging.getLogger(__name__)


def open_key_store(settings: Settings) -> KeyStore:
    """The configured store of the private signing keys; the caller closes it."""
    keys_dir = settings.data_dir / KEYS_DIR
    if settings.storage is None:
        return FileKeyStore(keys_dir)
    require_postgres()
    from deputy.store.postgres.keys import KEK_BYTES, PostgresKeyStore

    kek_path = settings.data_dir / KEK_FILE
    store = PostgresKeyStore(
        settings.storage, open_secret_file(kek_path, KEK_BYTES), kek_file=str(kek_path)
    )
    try:
        store.check_schema()
        import_file_keys(store, keys_dir)
    except BaseException:
        store.close()
        raise
    return store


def import_file_keys(store: KeyStore, keys_dir: Path) -> list[SigningKey]:
    """Copy the file keys in ``keys_dir`` into ``store`` if it holds none; what was copied.

    Decided under the store's lock: of several replicas starting at once, one imports and
    the others find the keys there.
    """
    files = FileKeyStore(keys_dir)
    if files.version() is None:
        return []
    imported: list[SigningKey] = []

    def adopt(current: list[SigningKey]) -> list[SigningKey] | None:
        if current:
            return None
        imported.extend(files.load())
        return imported or None

    store.update(adopt)
    if imported:
        _log.info(
            "imported %d signing key(s) (kids %s) from %s into the database, sealed under %s;"
            " the files are no longer read",
            len(imported),
            ", ".join(k.kid for k in imported),
            keys_dir,
            KEK_FILE,
        )
    return imported


__all__ = ["KEK_FILE", "import_file_keys", "open_key_store"]
