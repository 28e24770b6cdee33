"""Key sources against a real loopback HTTP server and real files."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.identity import (
    DiscoveryKeySource,
    FileKeySource,
    JwksCache,
    KeySourceError,
    UrlKeySource,
)
from deputy.identity.jwks import MAX_DOCUMENT_BYTES

from .tokens import ec_key, jwks


class Site:
    """A loopback HTTP server answering from a path → (status, headers, body) table."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits.append(self.path)
                status, headers, body = site.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def json(self, path: str, document: Any) -> None:
        self.routes[path] = (
            200,
            {"Content-Type": "application/json"},
            json.dumps(document).encode(),
        )


def _serve() -> Iterator[Site]:
    site = Site()
    site.thread.start()
    yield site
    site.server.shutdown()
    site.server.server_close()
    site.thread.join()


@pytest.fixture
def site() -> Iterator[Site]:
    yield from _serve()


@pytest.fixture
def other_site() -> Iterator[Site]:
    """A second host: redirects may point here, and must never reach it."""
    yield from _serve()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


DOCUMENT = jwks(("k1", ec_key("svid")))


async def test_url_source_fetches_a_jwks(site: Site, client: httpx.AsyncClient) -> None:
    site.json("/jwks", DOCUMENT)
    keys = await UrlKeySource(f"{site.base}/jwks", client).fetch()
    assert keys.kids == frozenset({"k1"})


async def test_redirects_are_never_followed(
    site: Site, other_site: Site, client: httpx.AsyncClient
) -> None:
    other_site.json("/jwks", jwks(("k1", ec_key("attacker"))))
    site.routes["/jwks"] = (302, {"Location": f"{other_site.base}/jwks"}, b"")
    site.routes["/same-host"] = (301, {"Location": "/jwks-moved"}, b"")
    site.json("/jwks-moved", DOCUMENT)
    with pytest.raises(KeySourceError, match="answered HTTP 302"):
        await UrlKeySource(f"{site.base}/jwks", client).fetch()
    with pytest.raises(KeySourceError, match="answered HTTP 301"):
        await UrlKeySource(f"{site.base}/same-host", client).fetch()
    assert other_site.hits == []
    assert "/jwks-moved" not in site.hits


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>oops</html>", "body is not valid JSON"),
        (200, b"\x00\xff\xfe garbage", "body is not UTF-8"),
        (200, b"[1, 2]", "body is not a JSON object"),
        (200, b'{"keys": [], "keys": []}', "body has a duplicate member"),
        (200, b'{"keys":' + b"[" * 100 + b"]" * 100 + b"}", "body is nested too deeply"),
        (200, b'{"keys": "none"}', "no 'keys' list"),
        (200, b" " * (MAX_DOCUMENT_BYTES + 1), f"larger than {MAX_DOCUMENT_BYTES}"),
        (500, b"{}", "answered HTTP 500"),
        (404, b"{}", "answered HTTP 404"),
    ],
    ids=[
        "html",
        "binary",
        "array",
        "duplicate",
        "deep",
        "keys-not-list",
        "oversize",
        "server-error",
        "not-found",
    ],
)
async def test_bad_responses(
    site: Site, client: httpx.AsyncClient, status: int, body: bytes, message: str
) -> None:
    site.routes["/jwks"] = (status, {}, body)
    with pytest.raises(KeySourceError, match=message):
        await UrlKeySource(f"{site.base}/jwks", client).fetch()


async def test_unreachable_server(client: httpx.AsyncClient) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(KeySourceError, match="ConnectError"):
        await UrlKeySource(f"http://127.0.0.1:{port}/jwks", client).fetch()


async def test_garbage_after_a_good_fetch_keeps_the_cache(
    site: Site, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    site.json("/jwks", DOCUMENT)
    cache = JwksCache(UrlKeySource(f"{site.base}/jwks", client), clock)
    await cache.load()
    site.routes["/jwks"] = (200, {}, b"garbage")
    clock.advance(301)
    assert await cache.key("k1") is not None
    assert site.hits == ["/jwks", "/jwks"]


# --- OpenID Connect Discovery -------------------------------------------------------------


async def test_discovery(site: Site, client: httpx.AsyncClient) -> None:
    issuer = f"{site.base}/tenant"
    site.json(
        "/tenant/.well-known/openid-configuration",
        {
            "issuer": issuer,
            "jwks_uri": f"{site.base}/tenant/keys",
        },
    )
    site.json("/tenant/keys", DOCUMENT)
    keys = await DiscoveryKeySource(issuer, client).fetch()
    assert keys.kids == frozenset({"k1"})
    assert site.hits == ["/tenant/.well-known/openid-configuration", "/tenant/keys"]


async def test_discovery_with_trailing_slash_issuer(site: Site, client: httpx.AsyncClient) -> None:
    issuer = f"{site.base}/"
    site.json("/.well-known/openid-configuration", {"issuer": issuer, "jwks_uri": f"{site.base}/k"})
    site.json("/k", DOCUMENT)
    assert len(await DiscoveryKeySource(issuer, client).fetch()) == 1


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"issuer": "{base}/other", "jwks_uri": "{base}/keys"}, "issuer does not match"),
        ({"issuer": "{base}/tenant/", "jwks_uri": "{base}/keys"}, "issuer does not match"),
        ({"issuer": "{BASE}/tenant", "jwks_uri": "{base}/keys"}, "issuer does not match"),
        ({"jwks_uri": "{base}/keys"}, "issuer does not match"),
        ({"issuer": "{base}/tenant"}, "jwks_uri is missing"),
        ({"issuer": "{base}/tenant", "jwks_uri": 7}, "jwks_uri is missing"),
        ({"issuer": "{base}/tenant", "jwks_uri": "http://keys.example/jwks"}, "not https"),
        ({"issuer": "{base}/tenant", "jwks_uri": "file:///etc/passwd"}, "not https"),
        ({"issuer": "{base}/tenant", "jwks_uri": "https://"}, "not https"),
    ],
    ids=[
        "other-issuer",
        "trailing-slash-issuer",
        "uppercase-issuer",
        "no-issuer",
        "no-jwks-uri",
        "jwks-uri-int",
        "plain-http-remote",
        "file-url",
        "https-without-host",
    ],
)
async def test_discovery_rejections(
    site: Site, client: httpx.AsyncClient, metadata: dict[str, Any], message: str
) -> None:
    filled = {
        name: value.format(base=site.base, BASE=site.base.upper())
        if isinstance(value, str)
        else value
        for name, value in metadata.items()
    }
    site.json("/tenant/.well-known/openid-configuration", filled)
    site.json("/keys", DOCUMENT)
    with pytest.raises(KeySourceError, match=message):
        await DiscoveryKeySource(f"{site.base}/tenant", client).fetch()
    assert "/keys" not in site.hits


async def test_discovery_does_not_follow_redirects(
    site: Site, other_site: Site, client: httpx.AsyncClient
) -> None:
    site.routes["/.well-known/openid-configuration"] = (
        307,
        {"Location": f"{other_site.base}/.well-known/openid-configuration"},
        b"",
    )
    with pytest.raises(KeySourceError, match="answered HTTP 307"):
        await DiscoveryKeySource(site.base, client).fetch()
    assert other_site.hits == []


# --- files --------------------------------------------------------------------------------


async def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(DOCUMENT))
    assert (await FileKeySource(path).fetch()).kids == frozenset({"k1"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"not json", "body is not valid JSON"),
        (b'{"keys": [{"kty": "EC", "d": "x"}]}', "private key material"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "larger than"),
    ],
    ids=["missing", "garbage", "private-key", "oversize"],
)
async def test_file_source_failures(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bundle.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeySourceError, match=message):
        await FileKeySource(path).fetch()
