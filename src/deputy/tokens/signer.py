"""JWS signatures (RFC 7518 §3) with a signing key's private key object prepared once."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, RSAKey

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def signer_for(alg: str, key: ECKey | RSAKey) -> Callable[[bytes], bytes]:
    """A function that signs a JWS signing input with ``key`` under ``alg``."""
    digest = _HASHES[alg[2:]]()
    private = key.private_key
    if alg.startswith("ES") and isinstance(private, ec.EllipticCurvePrivateKey):
        size = (private.curve.key_size + 7) // 8
        ecdsa = ec.ECDSA(digest)

        def sign_ecdsa(message: bytes) -> bytes:
            # RFC 7518 §3.4: the JWS signature is R || S, each a fixed-width big-endian integer.
            r, s = decode_dss_signature(private.sign(message, ecdsa))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return sign_ecdsa
    if isinstance(private, rsa.RSAPrivateKey) and alg[:2] in ("RS", "PS"):
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if alg.startswith("RS")
            else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        )
        return lambda message: private.sign(message, pad, digest)
    raise ValueError(f"key of type {type(private).__name__} cannot sign {alg}")
