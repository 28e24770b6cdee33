"""DPoP (RFC 9449) on the agent's side: the broker endpoint a proof names, and nonces.

Servers may ask for a nonce in proofs (RFC 9449 §9): the broker with a ``400`` whose
``error`` is ``use_dpop_nonce``, an API with a ``401`` whose ``WWW-Authenticate: DPoP``
challenge says ``error="use_dpop_nonce"``; either sends the nonce in ``DPoP-Nonce``, and may
send a new one with any answer.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import httpx

from deputy.sdk.dpop import DpopKey

DPOP: Final = "DPoP"
NONCE_HEADER: Final = "DPoP-Nonce"
USE_DPOP_NONCE: Final = "use_dpop_nonce"
MAX_ORIGINS: Final = 64  # nonces remembered, one per origin

# RFC 9449 §8.1: nonce = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E (bounded here).
_NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,1024}")
# RFC 9110 §11.6.1: challenges are an auth-scheme, then a token68 or auth-params.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'[\s,]*({_TCHARS})\s*=\s*({_TCHARS}|"(?:[^"\\]|\\.)*")[ \t]*(?=,|$)')
_SCHEME = re.compile(rf"[\s,]*({_TCHARS})(?:[ \t]+[A-Za-z0-9\-._~+/]+=*(?=[ \t]*(?:,|$)))?")
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Binding:
    """The key an execution's credentials are bound to, and the public URL of the broker
    endpoint its proofs name (``htu``: the broker's issuer plus the path)."""

    key: DpopKey
    htu: str

    def proof(self, nonce: str | None = None) -> str:
        return self.key.proof("POST", self.htu, nonce=nonce)


def server_nonce(response: httpx.Response) -> str | None:
    """The ``DPoP-Nonce`` a server sent, if it is one (a single, well-formed value)."""
    values = response.headers.get_list(NONCE_HEADER)
    if len(values) != 1 or not _NONCE.fullmatch(values[0]):
        return None
    return values[0]


def challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """The challenges of one ``WWW-Authenticate`` value: scheme, and parameters by
    lower-case name. What cannot be read ends the list."""
    found: list[tuple[str, dict[str, str]]] = []
    position = 0
    while position < len(header) and header[position:].strip(" \t,"):
        param = _PARAM.match(header, position)
        if param is not None and found:
            value = param[2]
            if value.startswith('"'):
                value = _ESCAPE.sub(r"\1", value[1:-1])
            found[-1][1][param[1].lower()] = value
            position = param.end()
            continue
        scheme = _SCHEME.match(header, position)
        if scheme is None or scheme.end() == position:
            break
        found.append((scheme[1], {}))
        position = scheme.end()
    return found


def dpop_error(response: httpx.Response) -> str | None:
    """The ``error`` of the answer's ``DPoP`` challenge (RFC 9449 §7.1), if it has one."""
    for header in response.headers.get_list("www-authenticate"):
        for scheme, params in challenges(header):
            if scheme.lower() == DPOP.lower() and "error" in params:
                return params["error"]
    return None


def nonce_challenge(response: httpx.Response, sent: str | None) -> str | None:
    """The nonce an API asks for (RFC 9449 §9): a ``401`` (or ``400``) with a DPoP challenge
    ``use_dpop_nonce`` and a ``DPoP-Nonce`` other than the one sent; else None."""
    if response.status_code not in (400, 401) or dpop_error(response) != USE_DPOP_NONCE:
        return None
    nonce = server_nonce(response)
    return nonce if nonce != sent else None


def origin(url: httpx.URL) -> str:
    """Whose nonce a request needs: scheme, host and port."""
    port = url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)
    return f"{url.scheme}://{url.host}:{port}"


class NonceMemory:
    """The latest nonce each origin sent, for the next proof to it (bounded: the origin
    heard from longest ago is forgotten first)."""

    __slots__ = ("_lock", "_nonces")

    def __init__(self) -> None:
        self._nonces: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: httpx.URL) -> str | None:
        with self._lock:
            return self._nonces.get(origin(url))

    def remember(self, url: httpx.URL, nonce: str) -> None:
        key = origin(url)
        with self._lock:
            self._nonces[key] = nonce
            self._nonces.move_to_end(key)
            while len(self._nonces) > MAX_ORIGINS:
                self._nonces.popitem(last=False)
