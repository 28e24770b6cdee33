"""The broker protocol without I/O: requests, answers, retries.

A broker call is a generator that yields what it needs — the workload token, an HTTP
request sent, a pause — and returns what the broker issued. :func:`run_sync` and
:func:`run_async` do the I/O, so the sync and async clients share every decision.
"""

from __future__ import annotations

import email.utils
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC
from types import MappingProxyType
from typing import Final

import httpx

from deputy import __version__
from deputy.clock import Clock
from deputy.sdk.agent.credentials import Credential
from deputy.sdk.agent.errors import BrokerResponseInvalid
from deputy.sdk.agent.retry import RetryPolicy
from deputy.sdk.agent.token_sources import TokenSource
from deputy.sdk.errors import BrokerRefused, BrokerUnavailable, RateLimited, SdkError

_log = logging.getLogger("deputy.sdk.agent")

ISSUE_PATH: Final = "/issue"
TOKEN_PATH: Final = "/oauth2/token"  # noqa: S105 - a path
TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
ID_TOKEN: Final = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN
JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_SPIFFE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
USER_AGENT: Final = f"deputy-sdk/{__version__}"

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_DELTA_SECONDS = re.compile(r"\d{1,9}")
_UNAVAILABLE = frozenset({502, 503, 504})  # 502/504: a proxy in front of the broker


@dataclass(frozen=True, slots=True)
class Target:
    """Where the broker is, and how long to wait for it."""

    url: str  # without a trailing slash
    timeout: httpx.Timeout

    def post(
        self,
        path: str,
        headers: Mapping[str, str],
        *,
        json: object = None,
        data: Mapping[str, str | list[str]] | None = None,
    ) -> httpx.Request:
        return httpx.Request(
            "POST",
            self.url + path,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT, **headers},
            json=json,
            data=data,
            extensions={"timeout": self.timeout.as_dict()},
        )


@dataclass(frozen=True, slots=True)
class Issued:
    """A validated success answer."""

    execution_id: str
    decision_id: str
    credentials: Mapping[str, Credential]


class Call(ABC):
    """One kind of broker request, with what it takes to ask again for a single tool."""

    __slots__ = ()

    @abstractmethod
    def request(self, target: Target, workload_token: str) -> httpx.Request: ...

    @abstractmethod
    def narrow(self, credential: Credential) -> Call:
        """The same request for ``credential``'s tool alone: how it is renewed."""

    @abstractmethod
    def check(self, issued: Issued) -> None:
        """Refuse an answer that does not fit the request."""


@dataclass(frozen=True, slots=True)
class IssueCall(Call):
    """``POST /issue``: the workload token as Bearer, a JSON body."""

    agent_id: str
    tools: tuple[str, ...]
    scopes: Mapping[str, tuple[str, ...]] | None = None  # tool -> scopes, when asked as a map
    user_token: str | None = field(default=None, repr=False)
    user_id: str | None = None
    ttl_seconds: int | None = None
    workflow: str | None = None

    def body(self) -> dict[str, object]:
        tools: object = (
            list(self.tools)
            if self.scopes is None
            else {t: list(self.scopes[t]) for t in self.tools}
        )
        body: dict[str, object] = {"agent_id": self.agent_id, "tools": tools}
        optional = {
            "user_token": self.user_token,
            "user_id": self.user_id,
            "ttl_seconds": self.ttl_seconds,
            "workflow": self.workflow,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        return body

    def request(self, target: Target, workload_token: str) -> httpx.Request:
        return target.post(
            ISSUE_PATH, {"Authorization": f"Bearer {workload_token}"}, json=self.body()
        )

    def narrow(self, credential: Credential) -> IssueCall:
        tool = credential.tool
        scopes = None if self.scopes is None else MappingProxyType({tool: self.scopes[tool]})
        return replace(self, tools=(tool,), scopes=scopes)

    def check(self, issued: Issued) -> None:
        if set(issued.credentials) != set(self.tools):
            raise BrokerResponseInvalid(
                f"the broker issued credentials for {sorted(issued.credentials)}, "
                f"not for the tools asked, {sorted(self.tools)}"
            )


@dataclass(frozen=True, slots=True)
class Presentation:
    """How the workload token goes to the token endpoint: actor token, client assertion, both."""

    actor_token: bool = True
    client_assertion_type: str | None = None

    def form(self, workload_token: str) -> dict[str, str]:
        form: dict[str, str] = {}
        if self.actor_token:
            form.update(actor_token=workload_token, actor_token_type=JWT)
        if self.client_assertion_type is not None:
            form.update(
                client_assertion=workload_token,
                client_assertion_type=self.client_assertion_type,
            )
        return form


@dataclass(frozen=True, slots=True)
class ExchangeCall(Call):
    """``POST /oauth2/token``: an RFC 8693 token exchange."""

    subject_token: str = field(repr=False)
    subject_token_type: str
    presentation: Presentation
    resource: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    scope: str | None = None
    workflow: str | None = None
    requested_token_type: str | None = None

    def form(self, workload_token: str) -> dict[str, str | list[str]]:
        form: dict[str, str | list[str]] = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": self.subject_token,
            "subject_token_type": self.subject_token_type,
            **self.presentation.form(workload_token),
        }
        if self.resource:
            form["resource"] = list(self.resource)
        if self.audience:
            form["audience"] = list(self.audience)
        optional = {
            "scope": self.scope,
            "workflow": self.workflow,
            "requested_token_type": self.requested_token_type,
        }
        form.update((k, v) for k, v in optional.items() if v is not None)
        return form

    def request(self, target: Target, workload_token: str) -> httpx.Request:
        return target.post(TOKEN_PATH, {}, data=self.form(workload_token))

    def check(self, issued: Issued) -> None:
        if self.resource and not self.audience:
            stray = {c.audience for c in issued.credentials.values()} - set(self.resource)
            if stray:
                raise BrokerResponseInvalid(
                    f"the broker issued credentials for {sorted(stray)}, "
                    f"not for the resources asked, {sorted(self.resource)}"
                )

    def narrow(self, credential: Credential) -> ExchangeCall:
        return replace(
            self, resource=(credential.audience,), audience=(), scope=credential.scope or None
        )


# Answers.


def _invalid(what: str) -> BrokerResponseInvalid:
    return BrokerResponseInvalid(f"the broker's answer is malformed: {what}")


def _text(doc: Mapping[str, object], key: str, where: str, *, empty: bool = False) -> str:
    value = doc.get(key)
    if value is None:
        raise _invalid(f"{where}{key} is missing")
    if not isinstance(value, str):
        raise _invalid(f"{where}{key} is not a string")
    if not value and not empty:
        raise _invalid(f"{where}{key} is empty")
    return value


def _seconds(doc: Mapping[str, object], key: str, where: str, *, required: bool) -> int | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(f"{where}{key} is not a number of seconds")
    return value


def _credential(
    tool: str, entry: object, execution_id: str, decision_id: str, now: float
) -> Credential:
    where = f"credentials[{tool!r}]."
    if not isinstance(entry, dict):
        raise _invalid(f"credentials[{tool!r}] is not an object")
    token = _text(entry, "access_token", where)
    if not _VISIBLE_ASCII.fullmatch(token):
        raise _invalid(f"{where}access_token has characters a token cannot have")
    token_type = _text(entry, "token_type", where)
    if token_type.lower() != "bearer":
        raise _invalid(f"{where}token_type is {token_type[:20]!r}, not Bearer")
    expires_in = _seconds(entry, "expires_in", where, required=True)
    assert expires_in is not None
    _seconds(entry, "expires_at", where, required=False)
    return Credential(
        tool=tool,
        access_token=token,
        scope=_text(entry, "scope", where, empty=True),
        audience=_text(entry, "audience", where),
        issued_at=now,
        expires_at=now + expires_in,
        execution_id=execution_id,
        decision_id=decision_id,
    )


def parse_issued(body: object, now: float) -> Issued:
    """Validate a success answer of either endpoint; ``now`` is when it arrived."""
    if not isinstance(body, dict):
        raise _invalid("not a JSON object")
    execution_id = _text(body, "execution_id", "")
    decision_id = _text(body, "decision_id", "")
    raw = body.get("credentials")
    if not isinstance(raw, dict) or not raw:
        raise _invalid("credentials is not a non-empty object")
    credentials = {
        tool: _credential(tool, entry, execution_id, decision_id, now)
        for tool, entry in raw.items()
    }
    return Issued(execution_id, decision_id, MappingProxyType(credentials))


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:  # not JSON, or not UTF-8
        return None


def retry_after(response: httpx.Response, now: float) -> float | None:
    """``Retry-After`` in seconds from ``now`` (RFC 9110 §10.2.3), if present and readable."""
    value = response.headers.get("retry-after", "").strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def refusal(response: httpx.Response, now: float) -> tuple[SdkError, float | None, bool]:
    """The error for a non-200 answer, its ``Retry-After``, and whether to try again."""
    status = response.status_code
    body = _json(response)
    after = retry_after(response, now)
    if status in _UNAVAILABLE:
        doc = body if isinstance(body, dict) else {}
        error, description = doc.get("error"), doc.get("error_description")
        detail = f" {error}: {description}" if isinstance(error, str) and description else ""
        return BrokerUnavailable(f"the broker answered {status}{detail}", after), after, True
    if 400 <= status <= 500:
        err = BrokerRefused.from_body(status, body, retry_after=after)
        return err, after, isinstance(err, RateLimited) and after is not None
    return BrokerResponseInvalid(f"the broker answered HTTP {status}"), None, False


# The call, as a generator of effects.


class _NeedToken:
    """Effect: the workload token, sent back as a ``str``."""

    __slots__ = ()


NEED_TOKEN: Final = _NeedToken()


@dataclass(frozen=True, slots=True)
class Sleep:
    """Effect: pause for ``seconds``."""

    seconds: float


Effect = httpx.Request | Sleep | _NeedToken
Flow = Generator[Effect, object, Issued]

# Failures to connect mean the request never reached the broker: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def call_flow(call: Call, target: Target, retry: RetryPolicy, clock: Clock) -> Flow:
    """Send ``call`` until it succeeds, is refused, or the retry budget is spent."""
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        token = yield NEED_TOKEN
        assert isinstance(token, str)
        cause: Exception | None = None
        try:
            reply = yield call.request(target, token)
        except httpx.TransportError as err:
            cause = err
            failure: SdkError = BrokerUnavailable(
                f"the broker at {target.url} could not be reached ({type(err).__name__})"
            )
            after, again = None, isinstance(err, _NOT_SENT)
        else:
            assert isinstance(reply, httpx.Response)
            now = clock.now()
            if reply.status_code == 200:
                body = _json(reply)
                if body is None:
                    raise _invalid("not JSON")
                issued = parse_issued(body, now)
                call.check(issued)
                return issued
            failure, after, again = refusal(reply, now)
        wait = retry.delay(attempt, after, waited) if again else None
        if wait is None:
            raise failure from cause
        _log.warning(
            "broker call %d of %d failed (%s); trying again in %.2f s",
            attempt,
            retry.max_attempts,
            failure,
            wait,
        )
        yield Sleep(wait)
        waited += wait


def run_sync(
    flow: Flow,
    http: httpx.Client,
    workload_token: TokenSource,
    sleep: Callable[[float], object],
) -> Issued:
    """Drive ``flow`` with blocking I/O."""
    value: object = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                issued: Issued = stop.value
                return issued
            value, error = None, None
            if isinstance(effect, httpx.Request):
                try:
                    value = http.send(effect)
                except httpx.TransportError as err:
                    error = err
            elif isinstance(effect, Sleep):
                sleep(effect.seconds)
            else:
                value = workload_token.token()
    finally:
        flow.close()


async def run_async(
    flow: Flow,
    http: httpx.AsyncClient,
    workload_token: TokenSource,
    sleep: Callable[[float], Awaitable[object]],
) -> Issued:
    """Drive ``flow`` with async I/O."""
    value: object = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                issued: Issued = stop.value
                return issued
            value, error = None, None
            if isinstance(effect, httpx.Request):
                try:
                    value = await http.send(effect)
                except httpx.TransportError as err:
                    error = err
            elif isinstance(effect, Sleep):
                await sleep(effect.seconds)
            else:
                value = await workload_token.atoken()
    finally:
        flow.close()
