"""docs/deployment.md: its configuration is one every replica could start with."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deputy.config.loader import parse_settings

GUIDE = Path(__file__).parents[2] / "docs" / "deployment.md"


def test_the_replica_config_is_valid_and_scales_out(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 1
    settings = parse_settings(yaml.safe_load(blocks[0]), tmp_path)
    assert settings.storage == "postgresql://deputy@db.internal:5432/deputy"
    assert settings.counters == "redis://redis.internal:6379/0"
    assert settings.metrics.enabled and settings.server.shutdown_grace_seconds == 30
