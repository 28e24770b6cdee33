"""The broker protocol without I/O: requests, answers, retries.

A broker call is a generator that yields what it needs — the workload token, an HTTP
request sent, a pause — and returns what the broker issued. :func:`run_sync` and
:func:`run_async` do the I/O, so the sync and async clients share every decision. Reading
the broker's metadata (:func:`metadata_flow`) is such a generator too.
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
from typing import ClassVar, Final, TypeVar

import httpx

from deputy import __version__
from deputy.clock import Clock
from deputy.sdk.agent._dpop import USE_DPOP_NONCE, Binding, server_nonce
from deputy.sdk.agent.credentials import BEARER, DPOP, Credential
from deputy.sdk.agent.errors import BrokerResponseInvalid
from deputy.sdk.agent.retry import RetryPolicy
from deputy.sdk.agent.token_sources import TokenSource
from deputy.sdk.dpop import DpopKey
from deputy.sdk.errors import BrokerRefused, BrokerUnavailable, RateLimited, SdkError

_log = logging.getLogger("deputy.sdk.agent")

ISSUE_PATH: Final = "/issue"
TOKEN_PATH: Final = "/oauth2/token"  # noqa: S105 - a path
METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
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
MAX_NONCE_RETRIES = 2  # per broker call: a broker asking for a new nonce each time is stuck


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

    def get(self, path: str) -> httpx.Request:
        return httpx.Request(
            "GET",
            self.url + path,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            extensions={"timeout": self.timeout.as_dict()},
        )


@dataclass(frozen=True, slots=True)
class Issued:
    """A validated success answer."""

    execution_id: str
    decision_id: str
    credentials: Mapping[str, Credential]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The broker's public URLs, as its issuer names them: what DPoP proofs name (``htu``)."""

    issue: str
    token: str

    @classmethod
    def of_issuer(cls, issuer: str) -> Endpoints:
        return cls(issuer + ISSUE_PATH, issuer + TOKEN_PATH)

    def url(self, path: str) -> str:
        return self.issue if path == ISSUE_PATH else self.token


class Call(ABC):
    """One kind of broker request, with what it takes to ask again for a single tool."""

    __slots__ = ()

    path: ClassVar[str]

    @property
    @abstractmethod
    def binding(self) -> Binding | None:
        """The DPoP key the credentials are to be bound to, if any."""

    @abstractmethod
    def request(
        self, target: Target, workload_token: str, nonce: str | None = None
    ) -> httpx.Request:
        """The HTTP request, with a fresh DPoP proof (carrying ``nonce``) when bound."""

    @abstractmethod
    def bind(self, binding: Binding) -> Call:
        """The same request, binding the credentials to ``binding``'s key."""

    @abstractmethod
    def narrow(self, credential: Credential) -> Call:
        """The same request for ``credential``'s tool alone: how it is renewed."""

    def proof_header(self, nonce: str | None) -> dict[str, str]:
        binding = self.binding
        return {} if binding is None else {"DPoP": binding.proof(nonce)}

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
    dpop: Binding | None = None

    path: ClassVar[str] = ISSUE_PATH

    @property
    def binding(self) -> Binding | None:
        return self.dpop

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

    def request(
        self, target: Target, workload_token: str, nonce: str | None = None
    ) -> httpx.Request:
        headers = {"Authorization": f"Bearer {workload_token}", **self.proof_header(nonce)}
        return target.post(ISSUE_PATH, headers, json=self.body())

    def bind(self, binding: Binding) -> IssueCall:
        return replace(self, dpop=binding)

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
    dpop: Binding | None = None

    path: ClassVar[str] = TOKEN_PATH

    @property
    def binding(self) -> Binding | None:
        return self.dpop

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

    def request(
        self, target: Target, workload_token: str, nonce: str | None = None
    ) -> httpx.Request:
        return target.post(TOKEN_PATH, self.proof_header(nonce), data=self.form(workload_token))

    def bind(self, binding: Binding) -> ExchangeCall:
        return replace(self, dpop=binding)

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


def _token_type(entry: Mapping[str, object], where: str, key: DpopKey | None) -> str:
    """``Bearer``, or ``DPoP`` when a proof was sent: never a credential the SDK cannot
    send as the broker meant it (a bound one without its key), nor an unbound one when
    binding was asked for."""
    token_type = _text(entry, "token_type", where)
    if token_type.lower() == BEARER.lower():
        if key is not None:
            raise BrokerResponseInvalid(
                f"{where}token_type is Bearer: the broker did not bind the credential to the "
                "DPoP key it was sent a proof of"
            )
        return BEARER
    if token_type.lower() == DPOP.lower():
        if key is None:
            raise BrokerResponseInvalid(
                f"{where}token_type is DPoP, not Bearer, but no DPoP proof was sent"
            )
        return DPOP
    raise _invalid(f"{where}token_type is {token_type[:20]!r}, not Bearer or DPoP")


def _credential(
    tool: str,
    entry: object,
    execution_id: str,
    decision_id: str,
    now: float,
    key: DpopKey | None,
) -> Credential:
    where = f"credentials[{tool!r}]."
    if not isinstance(entry, dict):
        raise _invalid(f"credentials[{tool!r}] is not an object")
    token = _text(entry, "access_token", where)
    if not _VISIBLE_ASCII.fullmatch(token):
        raise _invalid(f"{where}access_token has characters a token cannot have")
    token_type = _token_type(entry, where, key)
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
        token_type=token_type,
        dpop_key=key,
    )


def parse_issued(body: object, now: float, key: DpopKey | None = None) -> Issued:
    """Validate a success answer of either endpoint; ``now`` is when it arrived, ``key``
    the DPoP key a proof was sent of (the credentials must then be bound to it)."""
    if not isinstance(body, dict):
        raise _invalid("not a JSON object")
    execution_id = _text(body, "execution_id", "")
    decision_id = _text(body, "decision_id", "")
    raw = body.get("credentials")
    if not isinstance(raw, dict) or not raw:
        raise _invalid("credentials is not a non-empty object")
    credentials = {
        tool: _credential(tool, entry, execution_id, decision_id, now, key)
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
T = TypeVar("T")
Flow = Generator[Effect, object, Issued]

# Failures to connect mean the request never reached the broker: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def call_flow(call: Call, target: Target, retry: RetryPolicy, clock: Clock) -> Flow:
    """Send ``call`` until it succeeds, is refused, or the retry budget is spent.

    A bound call sends a fresh DPoP proof with every request; when the broker asks for a
    nonce in it (RFC 9449 §8), the request is sent again at once with that nonce.
    """
    waited = 0.0
    sent = 0
    nonce: str | None = None
    nonce_retries = 0  # sendings again with a nonce: not attempts of the retry policy
    key = None if call.binding is None else call.binding.key
    while True:
        sent += 1
        token = yield NEED_TOKEN
        assert isinstance(token, str)
        cause: Exception | None = None
        try:
            reply = yield call.request(target, token, nonce)
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
                issued = parse_issued(body, now, key)
                call.check(issued)
                return issued
            asked = _nonce_asked(key, reply, nonce)
            if asked is not None and nonce_retries < MAX_NONCE_RETRIES:
                nonce = asked
                nonce_retries += 1
                continue
            failure, after, again = refusal(reply, now)
        attempt = sent - nonce_retries
        waited += yield from _pause(failure, cause, after, again, attempt, waited, retry)


def _nonce_asked(key: DpopKey | None, reply: httpx.Response, sent: str | None) -> str | None:
    """The nonce the broker asks DPoP proofs to carry (RFC 9449 §8), if that is the refusal."""
    if key is None or reply.status_code != 400:
        return None
    body = _json(reply)
    if not isinstance(body, dict) or body.get("error") != USE_DPOP_NONCE:
        return None
    nonce = server_nonce(reply)
    return nonce if nonce != sent else None


def _pause(
    failure: SdkError,
    cause: Exception | None,
    after: float | None,
    again: bool,
    attempt: int,
    waited: float,
    retry: RetryPolicy,
) -> Generator[Effect, object, float]:
    """Wait before the next attempt, or raise ``failure`` when there is to be none."""
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
    return wait


def _public_url(doc: Mapping[str, object], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise BrokerResponseInvalid(f"the broker's metadata has no {key}")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or url.query:
        raise BrokerResponseInvalid(f"the broker's metadata {key} is not an http(s) URL")
    if url.fragment:
        raise BrokerResponseInvalid(f"the broker's metadata {key} has a fragment")
    return value


def parse_endpoints(body: object) -> Endpoints:
    """The endpoint URLs of the broker's RFC 8414 metadata (under its issuer by default)."""
    if not isinstance(body, dict):
        raise BrokerResponseInvalid("the broker's metadata is not a JSON object")
    issuer = _public_url(body, "issuer").rstrip("/")
    default = Endpoints.of_issuer(issuer)
    issue = _public_url(body, "issue_endpoint") if "issue_endpoint" in body else default.issue
    token = _public_url(body, "token_endpoint") if "token_endpoint" in body else default.token
    return Endpoints(issue, token)


def metadata_flow(
    target: Target, retry: RetryPolicy, clock: Clock
) -> Generator[Effect, object, Endpoints]:
    """Read the broker's public endpoint URLs from its metadata, retrying like a call."""
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        cause: Exception | None = None
        try:
            reply = yield target.get(METADATA_PATH)
        except httpx.TransportError as err:
            cause = err
            failure: SdkError = BrokerUnavailable(
                f"the broker at {target.url} could not be reached ({type(err).__name__})"
            )
            after, again = None, True  # a GET: safe to send again
        else:
            assert isinstance(reply, httpx.Response)
            if reply.status_code == 200:
                return parse_endpoints(_json(reply))
            failure, after, again = refusal(reply, clock.now())
        waited += yield from _pause(failure, cause, after, again, attempt, waited, retry)


def run_sync(
    flow: Generator[Effect, object, T],
    http: httpx.Client,
    workload_token: TokenSource,
    sleep: Callable[[float], object],
) -> T:
    """Drive ``flow`` with blocking I/O."""
    value: object = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
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
    flow: Generator[Effect, object, T],
    http: httpx.AsyncClient,
    workload_token: TokenSource,
    sleep: Callable[[float], Awaitable[object]],
) -> T:
    """Drive ``flow`` with async I/O."""
    value: object = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
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
