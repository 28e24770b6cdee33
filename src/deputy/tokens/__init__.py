"""Credentials Deputy mints: signing keys, their rotation and JWKS, RFC 9068 minting."""
