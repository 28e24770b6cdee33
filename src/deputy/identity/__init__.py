"""Who is asking: verified workload identities and the users they act for."""

from deputy.identity.errors import KeySourceError
from deputy.identity.jwks import DiscoveryKeySource, FileKeySource, JwksCache, UrlKeySource
from deputy.identity.key_set import KeySet
from deputy.identity.spiffe import SpiffeId
from deputy.identity.token_cache import VerifiedTokenCache
from deputy.identity.user import Principal, UserIssuerTrust, UserVerifier
from deputy.identity.workload import OidcWorkloadTrust, SpiffeTrust, Workload, WorkloadVerifier

__all__ = [
    "DiscoveryKeySource",
    "FileKeySource",
    "JwksCache",
    "KeySet",
    "KeySourceError",
    "OidcWorkloadTrust",
    "Principal",
    "SpiffeId",
    "SpiffeTrust",
    "UrlKeySource",
    "UserIssuerTrust",
    "UserVerifier",
    "VerifiedTokenCache",
    "Workload",
    "WorkloadVerifier",
]
