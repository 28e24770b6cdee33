"""What the agent SDK raises besides the broker's own answers (``deputy.sdk.errors``)."""

from __future__ import annotations

from deputy.sdk.errors import SdkError


class BrokerResponseInvalid(SdkError):
    """The broker's answer is not what its API promises: not JSON, a field missing or of the
    wrong type, a credential that is not a bearer token. The message names the field, never
    a token."""


class WorkloadTokenUnavailable(SdkError):
    """The agent's own workload token could not be obtained: a missing or empty token file,
    an unset environment variable, an unreachable SPIFFE Workload API."""
