"""Where each endpoint lives, and the RFC 8414 metadata that announces them."""

from __future__ import annotations

from typing import Any

from deputy.identity.jose import ALLOWED_ASYMMETRIC_ALGS
from deputy.oauth.token_request import (
    ACTOR_TOKEN_TYPES,
    ASSERTION_TYPES,
    GRANT_TYPES,
    REQUESTED_TOKEN_TYPES,
    SUBJECT_TOKEN_TYPES,
)

ISSUE_PATH = "/issue"
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path
INTROSPECTION_PATH = "/oauth2/introspect"
REVOCATION_PATH = "/oauth2/revoke"
FEED_PATH = "/revocations"
ADMIN_REVOCATIONS_PATH = "/admin/revocations"
USAGE_PATH = "/usage"
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"

# Agents send their workload token as an RFC 7523 client assertion (jwt-bearer, or the
# SPIFFE profile's jwt-spiffe, listed under client_assertion_types_supported), or only as
# the actor_token of a token exchange ("none": no client authentication beyond it).
AGENT_AUTH_METHODS = ("private_key_jwt", "none")
ALGS = sorted(ALLOWED_ASYMMETRIC_ALGS)
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


def endpoint_urls(issuer: str) -> frozenset[str]:
    """What a client assertion's ``aud`` may name: the issuer, or the endpoint it is sent to."""
    paths = (TOKEN_PATH, INTROSPECTION_PATH, REVOCATION_PATH, ADMIN_REVOCATIONS_PATH)
    return frozenset({issuer, *(issuer + p for p in paths)})


def metadata(issuer: str, signing_alg: str, scopes: frozenset[str]) -> dict[str, Any]:
    """RFC 8414 §2: only what this broker actually supports."""
    return {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "introspection_endpoint": issuer + INTROSPECTION_PATH,
        "revocation_endpoint": issuer + REVOCATION_PATH,
        "issue_endpoint": issuer + ISSUE_PATH,
        "revocation_feed_endpoint": issuer + FEED_PATH,
        "usage_endpoint": issuer + USAGE_PATH,
        "response_types_supported": [],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(AGENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ALGS,
        "client_assertion_types_supported": list(ASSERTION_TYPES),
        "introspection_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "introspection_endpoint_auth_signing_alg_values_supported": ALGS,
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": ALGS,
        "scopes_supported": sorted(scopes),
        "subject_token_types_supported": list(SUBJECT_TOKEN_TYPES),
        "actor_token_types_supported": list(ACTOR_TOKEN_TYPES),
        "requested_token_types_supported": list(REQUESTED_TOKEN_TYPES),
        "issued_token_types_supported": list(REQUESTED_TOKEN_TYPES),
        "access_token_signing_alg_values_supported": [signing_alg],
        "dpop_signing_alg_values_supported": ALGS,
    }
