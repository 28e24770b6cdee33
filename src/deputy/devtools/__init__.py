"""Local stand-ins for an identity provider and a SPIFFE signer, for the demo and tests."""

from deputy.devtools.signer import LocalIdp, SvidSigner, TokenSigner

__all__ = ["LocalIdp", "SvidSigner", "TokenSigner"]
