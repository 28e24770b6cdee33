from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deputy.config import parse_settings
from deputy.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "examples" / "deputy.yaml"
BOUND = "jwks.max_staleness_seconds"


def example(**extra: object) -> dict[str, object]:
    loaded = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(loaded, dict)
    return {**loaded, **extra}


def test_cached_keys_serve_a_day_unless_configured(tmp_path: Path) -> None:
    assert parse_settings(example(), tmp_path).jwks.max_staleness_seconds == 86_400
    given = example(jwks={"max_staleness_seconds": 60})
    assert parse_settings(given, tmp_path).jwks.max_staleness_seconds == 60


@pytest.mark.parametrize(
    ("jwks", "expected"),
    [
        ({"max_staleness_seconds": 59}, f"{BOUND}: Input should be greater than or equal to 60"),
        ({"max_staleness_seconds": 0}, f"{BOUND}: Input should be greater than or equal to 60"),
        (
            {"max_staleness_seconds": 604_801},
            f"{BOUND}: Input should be less than or equal to 604800",
        ),
        ({"max_staleness_seconds": "3600"}, f"{BOUND}: Input should be a valid integer"),
        ({"max_staleness_seconds": 3600.0}, f"{BOUND}: Input should be a valid integer"),
        ({"max_staleness_seconds": None}, f"{BOUND}: Input should be a valid integer"),
        ({"max_stale": 3600}, "jwks.max_stale: unknown key"),
    ],
    ids=["under-a-minute", "zero", "over-a-week", "string", "float", "null", "unknown-key"],
)
def test_staleness_bound_is_a_whole_number_of_seconds_within_limits(
    jwks: dict[str, object], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(example(jwks=jwks), tmp_path)
    assert expected in str(err.value)
