from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deputy.config import Settings, load_settings, parse_settings
from deputy.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "examples" / "deputy.yaml"
PACKAGED = Path(__file__).parents[3] / "src" / "deputy" / "devtools" / "example.yaml"


def example() -> dict[str, object]:
    loaded = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_example_config_is_accepted_as_written() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.issuer == "https://deputy.internal"
    assert settings.data_dir == (EXAMPLE.parent / ".deputy").resolve()
    assert settings.agents.spiffe[0].bundle == str(
        (EXAMPLE.parent / "trust/prod.example.jwks.json").resolve()
    )
    wf = settings.workflows["customer-support"]
    assert wf.tools["ticketing_api"] == ("tickets:read", "tickets:write")
    assert wf.rate_limits == {"customer-data": 100, "ticketing": 20}
    assert settings.workflows["nightly-billing"].delegation == "asserted"


def test_packaged_example_matches_examples_folder() -> None:
    assert PACKAGED.read_text() == EXAMPLE.read_text()


def test_urls_are_not_resolved_as_paths(tmp_path: Path) -> None:
    doc = example()
    doc["users"] = [
        {
            "issuer": "https://login.example.com",
            "audience": "portal",
            "jwks": "https://login.example.com/jwks",
        }
    ]
    settings = parse_settings(doc, tmp_path)
    assert settings.users[0].jwks == "https://login.example.com/jwks"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(isser="x"), "isser: unknown key"),
        (
            lambda d: d["workflows"]["customer-support"].update(tool={}),
            "workflows.customer-support.tool: unknown key",
        ),
        (
            lambda d: d["workflows"]["customer-support"]["ttl"].update(max="900"),
            "workflows.customer-support.ttl.max: Input should be a valid integer",
        ),
        (
            lambda d: d["workflows"]["customer-support"]["ttl"].update(default=1000),
            "default (1000) must not exceed max (900)",
        ),
        (
            lambda d: d["workflows"]["customer-support"]["tools"].update(billing_api=["x:y"]),
            "workflows.customer-support.tools.billing_api: unknown tool",
        ),
        (
            lambda d: d["workflows"]["nightly-billing"]["tools"].update(
                customer_data_api=["accounts:delete"]
            ),
            "scopes ['accounts:delete'] are not scopes of the tool",
        ),
        (
            lambda d: d["workflows"]["customer-support"]["rate_limits"].update(payments=3),
            "rate_limits.payments: no tool of this workflow has that category",
        ),
        (
            lambda d: d["workflows"]["customer-support"].update(delegation="trust_me"),
            "workflows.customer-support.delegation: Input should be 'user_token', 'asserted' or "
            "'none'",
        ),
        (lambda d: d.pop("issuer"), "issuer: required key is missing"),
        (lambda d: d.update(issuer="deputy.internal"), "issuer: must be an http(s) URL"),
        (lambda d: d.update(issuer="https://deputy.internal/"), "or trailing slash"),
        (
            lambda d: d["agents"]["spiffe"][0].update(trust_domain="Prod.Example"),
            "agents.spiffe.0.trust_domain",
        ),
        (
            lambda d: d["workflows"]["nightly-billing"].update(tiers=["pro"]),
            "delegation `asserted` has no verified tier",
        ),
        (
            lambda d: d["tools"]["pricing_api"].update(scopes=["rates read"]),
            "tools.pricing_api.scopes.0",
        ),
        (
            lambda d: d["users"][0].update(jwks="http://login.example.com/jwks"),
            "users.0.jwks: 'http://login.example.com/jwks' must use https://",
        ),
        (
            lambda d: d["agents"]["oidc"][0].update(jwks=None, issuer="http://k8s.example"),
            "agents.oidc.0.issuer (OIDC discovery): 'http://k8s.example' must use https://",
        ),
        (
            lambda d: d["agents"]["spiffe"][0].update(bundle="http://127.0.0.1.evil.example/b"),
            "agents.spiffe.0.bundle",
        ),
    ],
    ids=[
        "unknown-top-key",
        "unknown-workflow-key",
        "ttl-wrong-type",
        "ttl-default-over-max",
        "unknown-tool",
        "scope-not-of-tool",
        "rate-limit-unknown-category",
        "bad-delegation",
        "missing-issuer",
        "issuer-not-url",
        "issuer-trailing-slash",
        "trust-domain-uppercase",
        "tiers-on-asserted",
        "scope-with-space",
        "plain-http-jwks",
        "plain-http-discovery",
        "loopback-lookalike",
    ],
)
def test_invalid_config_names_the_key(mutate, expected: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    doc = example()
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, tmp_path)
    assert expected in str(err.value)


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deputy.yaml"
    path.write_text(EXAMPLE.read_text() + "issuer: https://other.example\n")
    with pytest.raises(ConfigError, match="duplicate key 'issuer'"):
        load_settings(path)


def test_unknown_top_level_key_is_refused_even_if_internal_sounding(tmp_path: Path) -> None:
    doc = example()
    doc["config_dir"] = "/etc"
    with pytest.raises(ConfigError, match="config_dir: unknown key"):
        parse_settings(doc, tmp_path)


def test_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deputy.yaml"
    path.write_text("issuer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path)


SECRET_SHA256 = "0" * 64


@pytest.mark.parametrize(
    ("operations", "expected"),
    [
        ({"metrics": {"enabled": True, "clients": ["prometheus"]}}, "'prometheus' is not a client"),
        (
            {
                "clients": {"prometheus": {"jwks": "https://idp.example/jwks"}},
                "metrics": {"enabled": True, "clients": ["prometheus"]},
            },
            "client 'prometheus' has no `secret_sha256`",
        ),
        ({"metrics": {"enabled": "yes"}}, "metrics.enabled: Input should be a valid boolean"),
        ({"logging": {"level": "verbose"}}, "logging.level: Input should be 'debug'"),
        ({"server": {"shutdown_grace_seconds": 0}}, "server.shutdown_grace_seconds"),
    ],
    ids=["unknown-scraper", "scraper-without-secret", "enabled-not-bool", "level", "grace-0"],
)
def test_operations_settings_are_checked(
    operations: dict[str, object], expected: str, tmp_path: Path
) -> None:
    doc = {**example(), **operations}
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, tmp_path)
    assert expected in str(err.value)


def test_operations_defaults_are_quiet_and_closed(tmp_path: Path) -> None:
    settings = parse_settings(example(), tmp_path)
    assert settings.metrics.enabled is False and settings.metrics.clients == ()
    assert settings.logging.level == "info" and settings.logging.access is False
    assert settings.server.shutdown_grace_seconds == 30
    doc = {
        **example(),
        "clients": {"prometheus": {"secret_sha256": SECRET_SHA256}},
        "metrics": {"enabled": True, "clients": ["prometheus"]},
    }
    assert parse_settings(doc, tmp_path).metrics.clients == ("prometheus",)


REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        ({"counters_prefix": ""}, "counters_prefix: String should match pattern"),
        ({"counters_prefix": "deputy:*"}, "counters_prefix: String should match pattern"),
        ({"counters_prefix": "deputy prod:"}, "counters_prefix: String should match pattern"),
        ({"counters_prefix": "d\u00e9puty:"}, "counters_prefix: String should match pattern"),
        ({"counters_prefix": "x" * 65}, "counters_prefix: String should match pattern"),
        ({"counters_prefix": "deputy:\n"}, "counters_prefix: String should match pattern"),
        ({"counters_prefix": 7}, "counters_prefix: Input should be a valid string"),
        (
            {"counters": None, "counters_prefix": "tenant-a:"},
            "counters_prefix: names keys in Redis; set `counters",
        ),
    ],
    ids=["empty", "glob", "space", "non-ascii", "too-long", "newline", "number", "no-counters"],
)
def test_counters_prefix_is_a_short_plain_prefix_of_configured_counters(
    counters: dict[str, object], expected: str, tmp_path: Path
) -> None:
    doc = {**example(), "counters": REDIS, **counters}
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, tmp_path)
    assert expected in str(err.value)


def test_counters_prefix_defaults_to_deputy_and_keeps_what_is_given(tmp_path: Path) -> None:
    assert parse_settings({**example(), "counters": REDIS}, tmp_path).counters_prefix == "deputy:"
    given = {**example(), "counters": REDIS, "counters_prefix": "tenant-a:deputy_2:"}
    assert parse_settings(given, tmp_path).counters_prefix == "tenant-a:deputy_2:"


def test_settings_validate_again_from_their_own_dump(tmp_path: Path) -> None:
    """A reload re-validates the running settings' dump, every default then given."""
    for doc in ({**example()}, {**example(), "counters": REDIS, "counters_prefix": "t:"}):
        settings = parse_settings(doc, tmp_path)
        assert Settings.model_validate(settings.model_dump()) == settings
