"""An execution: what one broker decision issued, one credential per tool."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from deputy.clock import Clock, SystemClock
from deputy.sdk.agent.auth import CredentialAuth, Renewer
from deputy.sdk.agent.credentials import Credential, RenewalPolicy


class Execution:
    """The credentials the broker issued for one execution, keyed by tool.

    ``credentials`` is what was issued and never changes; :meth:`auth` gives the one
    ``httpx.Auth`` per tool that renews its credential when due (its ``credential`` is the
    one held now).
    """

    __slots__ = (
        "_auths",
        "_clock",
        "_credentials",
        "_decision_id",
        "_execution_id",
        "_policy",
        "_renewer",
    )

    def __init__(
        self,
        execution_id: str,
        decision_id: str,
        credentials: Mapping[str, Credential],
        *,
        renewer: Renewer | None = None,
        clock: Clock | None = None,
        renewal: RenewalPolicy | None = None,
    ) -> None:
        self._execution_id = execution_id
        self._decision_id = decision_id
        self._credentials: Mapping[str, Credential] = MappingProxyType(dict(credentials))
        self._renewer = renewer
        self._clock = clock or SystemClock()
        self._policy = renewal or RenewalPolicy()
        self._auths: dict[str, CredentialAuth] = {}

    @property
    def execution_id(self) -> str:
        return self._execution_id

    @property
    def decision_id(self) -> str:
        return self._decision_id

    @property
    def credentials(self) -> Mapping[str, Credential]:
        return self._credentials

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(self._credentials)

    def auth(self, tool: str) -> CredentialAuth:
        """The ``httpx.Auth`` for ``tool`` (the same object on every call)."""
        try:
            credential = self._credentials[tool]
        except KeyError:
            raise KeyError(
                f"no credential for tool {tool!r} in this execution; it has {sorted(self.tools)}"
            ) from None
        auth = self._auths.get(tool)
        if auth is None:
            auth = CredentialAuth(
                credential, self._renewer, clock=self._clock, renewal=self._policy
            )
            auth = self._auths.setdefault(tool, auth)
        return auth

    def __repr__(self) -> str:
        return (
            f"Execution(execution_id={self._execution_id!r}, decision_id={self._decision_id!r}, "
            f"credentials={dict(self._credentials)!r})"
        )
