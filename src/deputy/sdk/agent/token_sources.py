"""Where an agent's own workload token comes from: a file, an environment variable, SPIFFE.

Every source answers :meth:`TokenSource.token` (sync) and :meth:`TokenSource.atoken`
(async) with the token to present now, and is asked again for every broker call, so a
rotated token is picked up without restarting the agent. No source logs a token or puts one
in an error message or ``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from deputy.clock import Clock, SystemClock
from deputy.sdk.agent.errors import WorkloadTokenUnavailable

_log = logging.getLogger("deputy.sdk.agent")

MAX_TOKEN_BYTES = 64 * 1024
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: a JWT, nothing a header could smuggle


class TokenSource(Protocol):
    """Gives the workload token to present to the broker now."""

    def token(self) -> str: ...

    async def atoken(self) -> str: ...


def checked(token: str, origin: str) -> str:
    """``token`` without surrounding whitespace, if it can be sent as a bearer token."""
    token = token.strip()
    if not token:
        raise WorkloadTokenUnavailable(f"the workload token from {origin} is empty")
    if not _TOKEN.fullmatch(token):
        raise WorkloadTokenUnavailable(
            f"the workload token from {origin} has characters a token cannot have"
        )
    return token


class StaticTokenSource:
    """A token fixed at construction: for scripts and tests; it is never refreshed."""

    def __init__(self, token: str) -> None:
        self._token = checked(token, "the value given")

    def token(self) -> str:
        return self._token

    async def atoken(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticTokenSource(<token>)"


class EnvTokenSource:
    """The token in an environment variable, read on every call."""

    def __init__(
        self, name: str = "DEPUTY_WORKLOAD_TOKEN", environ: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self._environ = environ

    def token(self) -> str:
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(self.name)
        if value is None:
            raise WorkloadTokenUnavailable(f"the environment variable {self.name} is not set")
        return checked(value, f"the environment variable {self.name}")

    async def atoken(self) -> str:
        return self.token()

    def __repr__(self) -> str:
        return f"EnvTokenSource({self.name!r})"


class FileTokenSource:
    """A token file, re-read whenever it changes (e.g. a Kubernetes projected token).

    Each call costs one ``stat``; the file is read again when its device, inode, size or
    modification time differ from the last read. ``stat`` follows symlinks, so the atomic
    swap of a ``..data`` symlink that Kubernetes does for projected volumes is seen as a new
    file even if the new token has the same size and time stamp.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        try:
            info = os.stat(self.path)
        except OSError as err:
            raise WorkloadTokenUnavailable(
                f"cannot read the workload token file {self.path}: {err.strerror}"
            ) from None
        seen = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            if seen != self._seen:
                self._token = self._read()
                self._seen = seen
                _log.debug("read the workload token file %s", self.path)
            return self._token

    async def atoken(self) -> str:
        # A stat, and rarely a read of a few hundred bytes: cheaper inline than in a thread.
        return self.token()

    def _read(self) -> str:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_TOKEN_BYTES + 1)
        except OSError as err:
            raise WorkloadTokenUnavailable(
                f"cannot read the workload token file {self.path}: {err.strerror}"
            ) from None
        if len(raw) > MAX_TOKEN_BYTES:
            raise WorkloadTokenUnavailable(
                f"the workload token file {self.path} is larger than {MAX_TOKEN_BYTES} bytes"
            )
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise WorkloadTokenUnavailable(
                f"the workload token file {self.path} is not ASCII text"
            ) from None
        return checked(text, f"the file {self.path}")

    def __repr__(self) -> str:
        return f"FileTokenSource({str(self.path)!r})"


class JwtSvidLike(Protocol):
    """What the SPIFFE Workload API gives back: ``spiffe.JwtSvid`` has these."""

    @property
    def token(self) -> str: ...

    @property
    def expiry(self) -> int: ...


class JwtSvidFetcher(Protocol):
    """The part of ``spiffe.WorkloadApiClient`` the SPIFFE source uses."""

    def fetch_jwt_svid(
        self, audience: set[str], subject: Any = None, timeout: float | None = None
    ) -> JwtSvidLike: ...


class SpiffeTokenSource:
    """JWT-SVIDs for ``audience`` from the SPIFFE Workload API (needs ``deputy[spiffe]``).

    The SVID is fetched on first use and again once ``refresh_fraction`` of its lifetime has
    passed (half, by default, as SPIFFE recommends), so it never reaches the broker close to
    expiry. If a refresh fails while the held SVID is still valid, the held one is used and
    the error logged. ``socket_path`` is the Workload API socket (``unix:///…`` or a path);
    without it, ``SPIFFE_ENDPOINT_SOCKET`` is used. ``subject`` asks for one SPIFFE ID when
    the workload has several. ``client`` replaces the Workload API client (anything with
    ``fetch_jwt_svid``); one the source made itself is closed by :meth:`close`.
    """

    def __init__(
        self,
        audience: str = "deputy",
        *,
        socket_path: str | None = None,
        subject: str | None = None,
        timeout: float = 5.0,
        refresh_fraction: float = 0.5,
        clock: Clock | None = None,
        client: JwtSvidFetcher | None = None,
    ) -> None:
        if not 0 < refresh_fraction <= 1:
            raise ValueError("refresh_fraction must be in (0, 1]")
        self.audience = audience
        self.subject = subject
        self._socket_path = socket_path
        self._timeout = timeout
        self._refresh_fraction = refresh_fraction
        self._clock = clock or SystemClock()
        self._client = client
        self._owned: Any = None  # the WorkloadApiClient this source made, to close
        self._lock = threading.Lock()
        self._token = ""
        self._expiry = 0.0
        self._refresh_at = 0.0

    def _fresh(self) -> str | None:
        return self._token if self._token and self._clock.now() < self._refresh_at else None

    def token(self) -> str:
        held = self._fresh()
        if held is not None:
            return held
        with self._lock:
            held = self._fresh()
            if held is not None:
                return held
            try:
                self._fetch()
            except WorkloadTokenUnavailable as err:
                if self._token and self._clock.now() < self._expiry:
                    _log.warning("refreshing the JWT-SVID failed; using the held one: %s", err)
                    return self._token
                raise
            return self._token

    async def atoken(self) -> str:
        held = self._fresh()
        if held is not None:
            return held
        return await asyncio.to_thread(self.token)

    def _fetch(self) -> None:
        client = self._workload_api()
        now = self._clock.now()
        try:
            svid = client.fetch_jwt_svid(
                {self.audience}, subject=self._subject(), timeout=self._timeout
            )
            token, expiry = svid.token, float(svid.expiry)
        except Exception as err:
            # The spiffe package wraps gRPC and parsing failures in its own errors.
            raise WorkloadTokenUnavailable(
                f"the SPIFFE Workload API gave no JWT-SVID for audience {self.audience!r}: "
                f"{type(err).__name__}"
            ) from err
        self._token = checked(token, "the SPIFFE Workload API")
        self._expiry = expiry
        self._refresh_at = now + max(0.0, expiry - now) * self._refresh_fraction
        _log.debug(
            "fetched a JWT-SVID for audience %s, valid for %.0f s", self.audience, expiry - now
        )

    def _workload_api(self) -> JwtSvidFetcher:
        if self._client is not None:
            return self._client
        try:
            from spiffe import WorkloadApiClient
        except ImportError as err:
            raise WorkloadTokenUnavailable(
                "the SPIFFE token source needs the spiffe package: pip install 'deputy[spiffe]'"
            ) from err
        try:
            client = WorkloadApiClient(self._socket_path, default_timeout=self._timeout)
        except Exception as err:
            raise WorkloadTokenUnavailable(f"cannot reach the SPIFFE Workload API: {err}") from err
        self._client = self._owned = client
        return client

    def _subject(self) -> Any:
        if self.subject is None:
            return None
        from spiffe import SpiffeId

        return SpiffeId(self.subject)

    def close(self) -> None:
        """Close the Workload API client this source made (not one passed in)."""
        owned, self._owned = self._owned, None
        if owned is not None:
            self._client = None
            owned.close()

    def __enter__(self) -> SpiffeTokenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SpiffeTokenSource(audience={self.audience!r})"
