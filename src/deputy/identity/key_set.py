"""An immutable kid → public key map built from a JWKS (RFC 7517 §5) or SPIFFE bundle."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey

MIN_RSA_BITS = 2048

# SPIFFE Trust Domain and Bundle §4.2.1: "x509-svid" keys are CA certificates, not JWT keys.
_SIGNING_USES = frozenset({"sig", "jwt-svid"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
# Only key material and binding members reach the importer; x5c, x5u and friends never do.
_IMPORTED_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y")}
# Cannot collide with a token kid: "#" is outside the accepted kid characters.
_ANONYMOUS_KID = "#0"


class KeySet:
    """Public verification keys by ``kid``; the only place a token's ``kid`` is looked up."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, Key]) -> None:
        self._keys: Mapping[str, Key] = MappingProxyType(dict(keys))

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeySet:
        """Build from a JWKS or SPIFFE bundle; private keys are a config error (ValueError)."""
        if not isinstance(document, Mapping):
            raise ValueError("key set document is not a JSON object")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError("key set document has no 'keys' list")
        taken: list[tuple[str | None, Key]] = []
        for index, entry in enumerate(entries):
            imported = _import_entry(index, entry)
            if imported is not None:
                taken.append(imported)
        keys: dict[str, Key] = {}
        for kid, key in taken:
            if kid is None:
                if len(taken) != 1:
                    raise ValueError("a key without 'kid' is only allowed as the only key")
                kid = _ANONYMOUS_KID
            if kid in keys:
                raise ValueError(f"duplicate kid {kid!r} in key set")
            keys[kid] = key
        return cls(keys)

    def get(self, kid: str | None) -> Key | None:
        """The key for ``kid``; with no ``kid``, the key only when the set holds exactly one."""
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            return None
        return self._keys.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __repr__(self) -> str:
        return f"KeySet(kids={sorted(self._keys)!r})"


def _import_entry(index: int, entry: Any) -> tuple[str | None, Key] | None:
    """One JWK, or None when it is not a usable signature-verification key."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"key {index} is not a JSON object")
    if _PRIVATE_MEMBERS & entry.keys():
        raise ValueError(f"key {index} contains private key material; publish public keys only")
    use = entry.get("use")
    if use is not None and use not in _SIGNING_USES:
        return None  # "x509-svid" bundle CAs, "enc" keys and uses we do not know
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    kty = entry.get("kty")
    if kty not in _IMPORTED_MEMBERS:
        return None  # oct (symmetric) and OKP keys are never used for incoming tokens
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise ValueError(f"key {index} has a 'kid' that is not a non-empty string")
    alg = entry.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValueError(f"key {index} has an 'alg' that is not a string")
    if kty == "RSA" and _modulus_bits(entry.get("n")) < MIN_RSA_BITS:
        raise ValueError(f"key {index} is an RSA key shorter than {MIN_RSA_BITS} bits")
    material = {"kty": kty, **{m: entry[m] for m in _IMPORTED_MEMBERS[kty] if m in entry}}
    if alg is not None:
        material["alg"] = alg
    try:
        key: Key = RSAKey.import_key(material) if kty == "RSA" else ECKey.import_key(material)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"key {index} is not a valid {kty} JWK: {exc}") from None
    return kid, key


def _modulus_bits(n: Any) -> int:
    """Checked before import, which would only warn about a short modulus."""
    if not isinstance(n, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw, "big").bit_length()
