"""The agent SDK: ask Deputy for per-tool credentials and send them, sync or async.

Needs only the base install (``pip install deputy``); the SPIFFE token source needs
``deputy[spiffe]``.

```python
from deputy.sdk.agent import AsyncDeputyClient, FileTokenSource

source = FileTokenSource("/var/run/secrets/tokens/deputy")
async with AsyncDeputyClient("https://deputy.internal", source, agent_id="triage-7") as deputy:
    execution = await deputy.open_execution(
        ["customer_data_api", "ticketing_api"], user_token=user_id_token, ttl_seconds=300
    )
    async with httpx.AsyncClient(auth=execution.auth("customer_data_api")) as crm:
        accounts = await crm.get("https://crm.internal/accounts/42")
```

Each tool's ``httpx.Auth`` renews its credential shortly before it expires and once after
a ``401``. A renewal asks the broker again for that tool alone, on the terms of the first
request (same agent, user, scopes, TTL): it is a **new policy decision**, audited on its
own and carrying its own ``execution_id`` and ``decision_id``, and policy may refuse it.

With ``dpop=True`` (on the client, or on a call) the credentials are DPoP-bound (RFC 9449)
to a key made in memory for that execution: ``execution.token_type`` is ``DPoP``,
``execution.jkt`` the key's thumbprint, and each tool's ``httpx.Auth`` sends
``Authorization: DPoP`` with a fresh proof per request, adding the nonce an API asks for.
A credential the broker bound is never sent as a Bearer token.

Refusals raise :class:`PolicyDenied` (with the broker's ``reasons``), :class:`RateLimited`,
or :class:`BrokerRefused`; a broker that cannot answer now raises
:class:`BrokerUnavailable` once the bounded retries of :class:`RetryPolicy` are spent; an
answer that breaks the API's promises raises :class:`BrokerResponseInvalid`. Tokens are
never logged, and left out of every ``repr``.
"""

from deputy.sdk.agent._wire import ACCESS_TOKEN, ID_TOKEN, JWT, JWT_BEARER, JWT_SPIFFE
from deputy.sdk.agent.auth import CredentialAuth, Renewer
from deputy.sdk.agent.client import DEFAULT_TIMEOUT, AsyncDeputyClient, DeputyClient
from deputy.sdk.agent.credentials import Credential, RenewalPolicy
from deputy.sdk.agent.errors import BrokerResponseInvalid, WorkloadTokenUnavailable
from deputy.sdk.agent.execution import Execution
from deputy.sdk.agent.retry import RetryPolicy
from deputy.sdk.agent.token_sources import (
    EnvTokenSource,
    FileTokenSource,
    SpiffeTokenSource,
    StaticTokenSource,
    TokenSource,
)
from deputy.sdk.errors import (
    BrokerRefused,
    BrokerUnavailable,
    DenialReason,
    PolicyDenied,
    RateLimited,
    SdkError,
)

__all__ = [
    "ACCESS_TOKEN",
    "DEFAULT_TIMEOUT",
    "ID_TOKEN",
    "JWT",
    "JWT_BEARER",
    "JWT_SPIFFE",
    "AsyncDeputyClient",
    "BrokerRefused",
    "BrokerResponseInvalid",
    "BrokerUnavailable",
    "Credential",
    "CredentialAuth",
    "DenialReason",
    "DeputyClient",
    "EnvTokenSource",
    "Execution",
    "FileTokenSource",
    "PolicyDenied",
    "RateLimited",
    "RenewalPolicy",
    "Renewer",
    "RetryPolicy",
    "SdkError",
    "SpiffeTokenSource",
    "StaticTokenSource",
    "TokenSource",
    "WorkloadTokenUnavailable",
]
