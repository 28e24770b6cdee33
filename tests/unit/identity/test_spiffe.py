"""SPIFFE ID parsing per the SPIFFE-ID specification."""

from __future__ import annotations

import pytest

from deputy.identity import SpiffeId


@pytest.mark.parametrize(
    ("value", "trust_domain", "path"),
    [
        ("spiffe://prod.example/agents/support/a1", "prod.example", "/agents/support/a1"),
        ("spiffe://prod.example", "prod.example", ""),
        ("spiffe://a-b_c.9/x.y/Z-_.", "a-b_c.9", "/x.y/Z-_."),
        ("spiffe://td/...", "td", "/..."),
    ],
)
def test_valid_ids(value: str, trust_domain: str, path: str) -> None:
    spiffe_id = SpiffeId(value)
    assert spiffe_id.trust_domain == trust_domain
    assert spiffe_id.path == path
    assert str(spiffe_id) == value
    assert spiffe_id == SpiffeId(value)
    assert hash(spiffe_id) == hash(SpiffeId(value))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must start with 'spiffe://'"),
        ("https://prod.example/a", "must start with 'spiffe://'"),
        ("SPIFFE://prod.example/a", "must start with 'spiffe://'"),
        ("spiffe:/prod.example/a", "must start with 'spiffe://'"),
        ("spiffe://", "no trust domain"),
        ("spiffe:///a", "no trust domain"),
        ("spiffe://Prod.example/a", "trust domain has characters"),
        ("spiffe://prod.example:8443/a", "trust domain has characters"),
        ("spiffe://user@prod.example/a", "trust domain has characters"),
        ("spiffe://prod.example?x=1", "trust domain has characters"),
        ("spiffe://prod.example#frag", "trust domain has characters"),
        ("spiffe://pröd.example/a", "trust domain has characters"),
        ("spiffe://prod.example/a?x=1", "path has characters"),
        ("spiffe://prod.example/a#frag", "path has characters"),
        ("spiffe://prod.example/a%2Fb", "path has characters"),
        ("spiffe://prod.example/a b", "path has characters"),
        ("spiffe://prod.example/", "empty segment"),
        ("spiffe://prod.example/a/", "empty segment"),
        ("spiffe://prod.example//a", "empty segment"),
        ("spiffe://prod.example/./a", "'.' or '..' segment"),
        ("spiffe://prod.example/a/..", "'.' or '..' segment"),
        ("spiffe://" + "a" * 256 + "/x", "longer than 255"),
        ("spiffe://prod.example/" + "a" * 2048, "longer than 2048 bytes"),
    ],
    ids=[
        "empty",
        "https",
        "uppercase-scheme",
        "single-slash",
        "scheme-only",
        "no-trust-domain",
        "uppercase-trust-domain",
        "port",
        "userinfo",
        "query-on-domain",
        "fragment-on-domain",
        "non-ascii-domain",
        "query",
        "fragment",
        "percent-encoded",
        "space",
        "trailing-slash",
        "trailing-slash-after-path",
        "double-slash",
        "dot-segment",
        "dot-dot-segment",
        "trust-domain-too-long",
        "too-long",
    ],
)
def test_invalid_ids(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpiffeId(value)
