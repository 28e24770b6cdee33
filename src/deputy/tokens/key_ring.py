"""Signing keys: creation, rotation with overlap, and the published JWKS."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from joserfc.jwk import ECKey, RSAKey

from deputy.clock import Clock

ALG_CURVES = {"ES256": "P-256", "ES384": "P-384"}
RSA_BITS = 3072
_STALE: object = object()  # a version no store reports: the next refresh reloads


@dataclass(frozen=True)
class SigningKey:
    """A private signing key and its lifecycle times (epoch seconds)."""

    kid: str
    alg: str
    key: ECKey | RSAKey
    created_at: float
    activates_at: float
    retired_at: float | None = None
    publish_until: float | None = None

    def lifecycle(self) -> dict[str, Any]:
        """Everything but the key itself, by field name: what a store keeps beside the key."""
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at,
            "activates_at": self.activates_at,
            "retired_at": self.retired_at,
            "publish_until": self.publish_until,
        }

    @classmethod
    def restore(cls, key: ECKey | RSAKey, lifecycle: Mapping[str, Any]) -> SigningKey:
        """The key with the fields :meth:`lifecycle` gave (optional times may be absent)."""
        return cls(
            kid=lifecycle["kid"],
            alg=lifecycle["alg"],
            key=key,
            created_at=lifecycle["created_at"],
            activates_at=lifecycle["activates_at"],
            retired_at=lifecycle.get("retired_at"),
            publish_until=lifecycle.get("publish_until"),
        )

    def public_jwk(self) -> dict[str, Any]:
        jwk = self.key.as_dict(private=False)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk


def key_type(alg: str) -> type[ECKey] | type[RSAKey]:
    """The JWK class that holds keys for ``alg``."""
    return RSAKey if alg.startswith(("RS", "PS")) else ECKey


KeyChange = Callable[[list[SigningKey]], Sequence[SigningKey] | None]


class KeyStore(Protocol):
    """Where signing keys live (files in the data dir by default, or PostgreSQL)."""

    def load(self) -> list[SigningKey]: ...

    def save(self, keys: Sequence[SigningKey]) -> None: ...

    def update(self, change: KeyChange) -> list[SigningKey]:
        """Read the stored keys under a lock every writer takes, store what ``change`` makes
        of them (``None``: leave them) and return the keys stored afterwards.

        ``change`` sees the keys as they are now, never a caller's older copy, so writers
        that run at once (two rotations, two replicas creating the first key) lose nothing.
        """
        ...

    def version(self) -> object:
        """Changes whenever the stored keys change (so a running broker can reload)."""
        ...

    def close(self) -> None:
        """Release what the store holds open (connections); a no-op for files."""
        ...


def generate_key(alg: str, now: float, activates_at: float | None = None) -> SigningKey:
    """A fresh private key for ``alg`` with a random ``kid``."""
    if alg in ALG_CURVES:
        key: ECKey | RSAKey = ECKey.generate_key(ALG_CURVES[alg], private=True)
    else:
        key = RSAKey.generate_key(RSA_BITS, private=True)
    kid = secrets.token_urlsafe(12)
    return SigningKey(kid, alg, key, now, now if activates_at is None else activates_at)


class KeyRing:
    """The active signing key and every key still published, reloaded when the store changes."""

    def __init__(self, store: KeyStore, clock: Clock, alg: str) -> None:
        self._store = store
        self._clock = clock
        self._alg = alg
        self._keys: list[SigningKey] = []
        self._version: object = _STALE
        self._jwks: dict[str, Any] = {"keys": []}

    def load(self, *, require_configured_alg: bool = True) -> None:
        """Load the keys, creating the first one if the store is empty.

        A store without a key of the configured algorithm is refused unless told otherwise
        (rotation is how such a key gets added), so ``signing_alg`` is never silently ignored.
        Several processes starting on one empty store at once end up with one first key.
        """
        version = self._store.version()
        keys = self._store.load()
        if not keys:
            first = generate_key(self._alg, self._clock.now())  # made before the store's lock
            self._store.update(lambda current: None if current else [first])
            version = self._store.version()
            keys = self._store.load()
        if require_configured_alg and not any(k.alg == self._alg for k in keys):
            held = ", ".join(sorted({k.alg for k in keys}))
            raise ValueError(
                f"signing_alg is {self._alg} but the stored signing keys are {held}; "
                "run `deputy keys rotate` to add a key for it"
            )
        self._set(keys, version)

    def refresh(self) -> bool:
        """Reload if the store changed; return whether it did.

        The version is read before the keys: a change that lands in between is loaded now
        or at the next refresh, never missed.
        """
        version = self._store.version()
        if version == self._version:
            return False
        self._set(self._store.load(), version)
        return True

    def _set(self, keys: Sequence[SigningKey], version: object) -> None:
        # Built whole, then swapped in: a refresh may run on a worker thread while requests
        # read the ring.
        # By activation; at equal times a key not yet retired is the newer (a rotation retires
        # the keys before it), whatever order the store lists them in.
        ordered = sorted(keys, key=lambda k: (k.activates_at, k.retired_at is None))
        jwks = {"keys": [k.public_jwk() for k in ordered]}
        self._keys = ordered
        self._jwks = jwks
        self._version = version

    def close(self) -> None:
        """Release the store's connections, if it has any."""
        self._store.close()

    def active(self) -> SigningKey:
        """The newest key whose activation time has come."""
        now = self._clock.now()
        usable = [
            k
            for k in self._keys
            if k.activates_at <= now and (k.publish_until is None or k.publish_until > now)
        ]
        if not usable:
            raise LookupError("no active signing key")
        return usable[-1]

    def jwks(self) -> dict[str, Any]:
        """Every key that is published: upcoming, active, and retired ones still in use.

        The same document object while the published keys stay the same, so whoever builds
        something from it (a verifier's key set) can reuse that until it changes.
        """
        now = self._clock.now()
        published = [k for k in self._keys if k.publish_until is None or k.publish_until > now]
        if len(published) != len(self._jwks["keys"]):
            self._jwks = {"keys": [k.public_jwk() for k in published]}
        return self._jwks

    def rotate(self, *, activate_after: float, max_token_lifetime: float) -> SigningKey:
        """Add a key that signs from ``now + activate_after``; keep the old ones published.

        The keys retired are those stored when the store's lock is held, not this ring's
        copy: a rotation elsewhere since this ring loaded is kept (and retired in turn).
        """
        now = self._clock.now()
        new = generate_key(self._alg, now, now + activate_after)

        def add(current: list[SigningKey]) -> list[SigningKey]:
            kept = []
            for k in current:
                if k.publish_until is not None and k.publish_until <= now:
                    continue  # no token signed by it can still be valid
                if k.retired_at is None:
                    k = replace(
                        k,
                        retired_at=new.activates_at,
                        publish_until=new.activates_at + max_token_lifetime,
                    )
                kept.append(k)
            return [*kept, new]

        self._set(self._store.update(add), _STALE)
        return new

    def all_keys(self) -> list[SigningKey]:
        return list(self._keys)
