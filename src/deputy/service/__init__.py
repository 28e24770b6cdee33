"""Use cases that tie identity, policy, quota, minting and audit together."""
