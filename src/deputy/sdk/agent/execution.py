"""An execution: what one broker decision issued, one credential per tool."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from deputy.clock import Clock, SystemClock
from deputy.sdk.agent.auth import CredentialAuth, Renewer
from deputy.sdk.agent.credentials import BEARER, DPOP, Credential, RenewalPolicy
from deputy.sdk.dpop import DpopKey


class Execution:
    """The credentials the broker issued for one execution, keyed by tool.

    ``credentials`` is what was issued and never changes; :meth:`auth` gives the one
    ``httpx.Auth`` per tool that renews its credential when due (its ``credential`` is the
    one held now).

    A DPoP-bound execution (``token_type`` ``DPoP``) holds the key made for it,
    ``dpop_key``, which never leaves the process; ``jkt`` is its thumbprint, the ``cnf.jkt``
    of every credential of the execution (renewed ones included).
    """

    __slots__ = (
        "_auths",
        "_clock",
        "_credentials",
        "_decision_id",
        "_dpop_key",
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
        dpop_key: DpopKey | None = None,
    ) -> None:
        self._execution_id = execution_id
        self._decision_id = decision_id
        self._credentials: Mapping[str, Credential] = MappingProxyType(dict(credentials))
        self._renewer = renewer
        self._clock = clock or SystemClock()
        self._policy = renewal or RenewalPolicy()
        self._auths: dict[str, CredentialAuth] = {}
        self._dpop_key = dpop_key

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
    def token_type(self) -> str:
        """``DPoP`` when the credentials are bound to this execution's key, else ``Bearer``."""
        return BEARER if self._dpop_key is None else DPOP

    @property
    def dpop_key(self) -> DpopKey | None:
        return self._dpop_key

    @property
    def jkt(self) -> str | None:
        """The RFC 7638 thumbprint of the key the credentials are bound to, if any."""
        return None if self._dpop_key is None else self._dpop_key.jkt

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
