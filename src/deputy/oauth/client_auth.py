"""Authentication of configured clients (resource servers, operators), RFC 6749 §2.3.

Three methods are accepted, exactly one per request: ``client_secret_basic`` (§2.3.1, the
``Authorization: Basic`` header), ``client_secret_post`` (§2.3.1, ``client_id`` and
``client_secret`` in the form) and ``private_key_jwt`` (RFC 7523 §2.2, a signed assertion).
Failures give one generic description so that client names cannot be probed; the cause goes
to ``debug`` (logged, never sent). No secret or assertion is ever put in an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from deputy.clock import Clock
from deputy.errors import (
    InvalidClient,
    InvalidRequest,
    StoreUnavailable,
    TemporarilyUnavailable,
    TokenRejected,
)
from deputy.identity.errors import KeysUnavailable
from deputy.identity.jose import (
    ALLOWED_ASYMMETRIC_ALGS,
    MAX_TOKEN_BYTES,
    KeyLookup,
    check_subject,
    check_type,
    client_safe,
    expiry,
    parse_compact,
    verify_for_issuer,
)
from deputy.identity.replay import ReplayCache, ReplayGuard
from deputy.identity.workload import index_unique
from deputy.oauth.form import Form

SECRET_BASIC = "client_secret_basic"  # noqa: S105 - method name, not a secret
SECRET_POST = "client_secret_post"  # noqa: S105 - method name, not a secret
PRIVATE_KEY_JWT = "private_key_jwt"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

MAX_ASSERTION_LIFETIME = 300  # seconds from now to the assertion's exp
MAX_JTI_LENGTH = 256
MAX_AUTHORIZATION_BYTES = 4096

FAILED = "client authentication failed"
REQUIRED = (
    "client authentication is required: use HTTP Basic, client_id and client_secret in the "
    f"body, or a {JWT_BEARER_ASSERTION} client_assertion"
)

# A DPoP proof (RFC 9449) or an access token (RFC 9068) is never a client assertion.
ASSERTION_FORBIDDEN_TYPES = frozenset({"at+jwt", "dpop+jwt"})

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Compared against when the client is unknown or has no secret, so every failure costs a hash.
_DUMMY_SHA256 = hashlib.sha256(b"deputy: no such client").hexdigest()


def hash_secret(secret: str) -> str:
    """The SHA-256 of ``secret`` (UTF-8) as lowercase hex: the configured ``secret_sha256``."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh random client secret (256 bits, base64url) and its :func:`hash_secret`."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


@dataclass(frozen=True, slots=True)
class Client:
    """An authenticated client and the method it used."""

    name: str
    audiences: frozenset[str]
    admin: bool
    method: str  # SECRET_BASIC | SECRET_POST | PRIVATE_KEY_JWT


@dataclass(frozen=True)
class ClientEntry:
    """One configured client: exactly one of a secret hash or the keys of its assertions."""

    name: str
    audiences: frozenset[str]
    admin: bool
    secret_sha256: str | None = None
    keys: KeyLookup | None = None

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name or not self.name.isprintable():
            raise ValueError("client name must be non-empty, printable and without ':'")
        if (self.secret_sha256 is None) == (self.keys is None):
            raise ValueError(f"client {self.name!r}: give exactly one of secret_sha256 or keys")
        if self.secret_sha256 is not None and not _SHA256_HEX.fullmatch(self.secret_sha256):
            raise ValueError(f"client {self.name!r}: secret_sha256 must be 64 lowercase hex digits")


class ClientAuthenticator:
    """Authenticates a request as one of the configured clients, or raises.

    ``audiences`` are the values an assertion's ``aud`` may carry (the issuer and the endpoint
    URLs); it must contain at least one of them.
    """

    def __init__(
        self,
        clients: Sequence[ClientEntry],
        clock: Clock,
        *,
        audiences: frozenset[str],
        replay: ReplayGuard | None = None,
    ) -> None:
        if not audiences or not all(audiences):
            raise ValueError("audiences must be a non-empty set of non-empty strings")
        self._clients = index_unique(clients, lambda entry: entry.name, "client")
        self._clock = clock
        self._audiences = audiences
        self._replay: ReplayGuard = replay if replay is not None else ReplayCache(clock)

    def asserts(self, assertion: str | None) -> bool:
        """Whether a client assertion claims to come from a configured ``private_key_jwt``
        client (so an endpoint that also takes agents' workload tokens can tell them apart).
        """
        if assertion is None or len(assertion) > MAX_TOKEN_BYTES:
            return False
        try:
            iss = parse_compact(assertion).claims.get("iss")
        except TokenRejected:
            return False
        entry = self._clients.get(iss) if isinstance(iss, str) else None
        return entry is not None and entry.keys is not None

    async def authenticate(self, authorization: str | None, form: Form) -> Client:
        """The client that ``authorization`` (the header) and ``form`` authenticate.

        Raises :class:`InvalidClient` (401) or :class:`InvalidRequest` (400); lets
        :class:`KeysUnavailable` through for the caller to answer 503.
        """
        basic = _basic_credentials(authorization)
        jwt = "client_assertion" in form or "client_assertion_type" in form
        used = [
            method
            for method, present in (
                (SECRET_BASIC, basic is not None),
                (SECRET_POST, "client_secret" in form),
                (PRIVATE_KEY_JWT, jwt),
            )
            if present
        ]
        if len(used) > 1:
            raise InvalidRequest(
                f"use exactly one client authentication method, not {' and '.join(used)}"
            )
        client_id = form.get("client_id")
        if basic is not None:
            try:
                name, secret = _decode_basic(basic)
                if client_id is not None and client_id != name:
                    raise InvalidClient(FAILED, debug="form client_id differs from the Basic user")
                return self._check_secret(name, secret, SECRET_BASIC)
            except InvalidClient as err:
                # RFC 6749 §5.2: the challenge names the scheme the client used.
                err.challenge = "Basic"
                raise
        if (posted := form.get("client_secret")) is not None:
            if client_id is None:
                raise InvalidRequest("client_secret needs client_id")
            return self._check_secret(client_id, posted, SECRET_POST)
        if jwt:
            return await self._check_assertion(form, client_id)
        raise InvalidClient(REQUIRED)

    def _check_secret(self, name: str, secret: str, method: str) -> Client:
        entry = self._clients.get(name)
        expected = entry.secret_sha256 if entry is not None else None
        matches = hmac.compare_digest(hash_secret(secret), expected or _DUMMY_SHA256)
        if entry is None:
            raise InvalidClient(FAILED, debug=f"unknown client {client_safe(name)}")
        if expected is None:
            raise InvalidClient(
                FAILED, debug=f"client {name!r} authenticates with private_key_jwt, not a secret"
            )
        if not matches:
            raise InvalidClient(FAILED, debug=f"wrong secret for client {name!r}")
        return _client(entry, method)

    async def _check_assertion(self, form: Form, client_id: str | None) -> Client:
        assertion_type = form.get("client_assertion_type")
        if assertion_type is None:
            raise InvalidRequest(f"client_assertion_type is required: use {JWT_BEARER_ASSERTION}")
        if assertion_type != JWT_BEARER_ASSERTION:
            raise InvalidRequest(
                f"client_assertion_type {client_safe(assertion_type)} is not supported; "
                f"use {JWT_BEARER_ASSERTION}"
            )
        assertion = form.get("client_assertion")
        if assertion is None:
            raise InvalidRequest("client_assertion is required with client_assertion_type")
        try:
            entry = await self._verify_assertion(assertion, client_id)
        except KeysUnavailable:
            raise TemporarilyUnavailable(
                "the keys of this client cannot be fetched; retry shortly", retry_after=1
            ) from None
        except StoreUnavailable:
            # The replay guard could not record the jti: refusing beats accepting a replay.
            raise TemporarilyUnavailable(
                "client assertions cannot be checked for replay now; retry shortly",
                retry_after=1,
            ) from None
        except TokenRejected as exc:
            raise InvalidClient(FAILED, debug=f"client assertion: {exc.reason}") from None
        return _client(entry, PRIVATE_KEY_JWT)

    async def _verify_assertion(self, assertion: str, client_id: str | None) -> ClientEntry:
        """RFC 7523 §3: the checks in order of cost; the jti is recorded only once verified."""
        if len(assertion) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"assertion is larger than {MAX_TOKEN_BYTES} bytes")
        parsed = parse_compact(assertion)
        check_type(parsed.header, ASSERTION_FORBIDDEN_TYPES)
        claims = parsed.claims
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise TokenRejected("assertion has no iss")
        if check_subject(claims) != iss:
            raise TokenRejected("assertion sub differs from iss")
        if client_id is not None and client_id != iss:
            raise TokenRejected("form client_id differs from the assertion's iss")
        entry = self._clients.get(iss)
        if entry is None:
            raise TokenRejected(f"unknown client {client_safe(iss)}")
        if entry.keys is None:
            raise TokenRejected(f"client {iss!r} authenticates with a secret, not private_key_jwt")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_LENGTH:
            raise TokenRejected(f"assertion needs a jti of 1 to {MAX_JTI_LENGTH} characters")
        now = self._clock.now()
        exp = expiry(claims)
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise TokenRejected(
                f"assertion expires more than {MAX_ASSERTION_LIFETIME} s from now; "
                "client assertions must be short-lived"
            )
        await verify_for_issuer(
            parsed,
            audience=self._audience(claims),
            keys=entry.keys,
            algorithms=ALLOWED_ASYMMETRIC_ALGS,
            now=now,
        )
        if not await self._replay.first_use(f"{entry.name}:{jti}", exp):
            if self._replay.full:
                raise TokenRejected("assertion replay cache is full")
            raise TokenRejected("assertion jti was already used")
        return entry

    def _audience(self, claims: Mapping[str, Any]) -> str:
        """The one ``aud``, naming this server (RFC 7523 §3 item 3).

        A single audience only: an assertion also addressed to someone else could be replayed
        here by that someone (draft-ietf-oauth-rfc7523bis).
        """
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str):
            raise TokenRejected("assertion aud must be this server alone")
        if aud not in self._audiences:
            raise TokenRejected("assertion aud does not name this server")
        return aud


def _client(entry: ClientEntry, method: str) -> Client:
    return Client(name=entry.name, audiences=entry.audiences, admin=entry.admin, method=method)


def _basic_credentials(authorization: str | None) -> str | None:
    """What follows the scheme if the header is Basic (RFC 7617, scheme case-insensitive)."""
    if authorization is None:
        return None
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise InvalidClient(FAILED, debug="Authorization header is too long")
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "basic" else None


def _decode_basic(credentials: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: base64 of ``urlencode(id):urlencode(secret)``; both non-empty."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        raw_id, colon, raw_secret = decoded.partition(":")
        name = unquote_plus(raw_id, errors="strict")
        secret = unquote_plus(raw_secret, errors="strict")
    except (binascii.Error, ValueError):
        # UnicodeDecodeError is a ValueError.
        raise InvalidClient(FAILED, debug="Basic credentials are not base64 of UTF-8") from None
    if not colon or not name or not secret:
        raise InvalidClient(FAILED, debug="Basic credentials need a client id and a secret")
    return name, secret
