"""Reloading the config file on SIGHUP: the policy changes live, the rest waits for a restart.

The policy (``tools``, ``workflows``, ``max_delegation_depth``) is swapped in one step: a
request decided under the old policy finishes under it, every later one uses the new one,
and each decision records the version it was made under. A file that does not load, or
whose policy does not fit the running configuration (a ``user_token`` workflow with no
user issuer running, say), changes nothing and is logged as an error naming the problem.
Other changed keys (issuer, data_dir, server, signing_alg, trust, clients, …) are left as
they run and reported as needing a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from deputy.config.loader import load_settings, parse_settings
from deputy.config.settings import Settings
from deputy.errors import ConfigError
from deputy.policy.model import policy_from_settings
from deputy.server.wiring import Broker

LIVE_KEYS = ("tools", "workflows", "max_delegation_depth")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: whether it applied, the policy in force, and what waits."""

    applied: bool
    policy_version: str
    restart_needed: tuple[str, ...] = ()
    problem: str | None = None


class ConfigReloader:
    """Re-reads one config file into a running broker."""

    def __init__(self, path: Path, broker: Broker) -> None:
        self._path = path
        self._broker = broker

    def reload(self) -> ReloadOutcome:
        current = self._broker.settings
        try:
            loaded = load_settings(self._path)
            effective = _with_policy_of(current, loaded, self._path.resolve().parent)
        except ConfigError as err:
            _log.error(
                "config reload rejected; the running configuration is unchanged",
                extra={"config": str(self._path), "problem": str(err)},
            )
            self._broker.metrics.reloaded(applied=False)
            return ReloadOutcome(False, self._broker.policy.version, problem=str(err))
        restart = _restart_needed(current, loaded)
        previous = self._broker.policy.version
        policy = policy_from_settings(effective)
        self._broker.use_policy(policy, effective)
        self._broker.metrics.reloaded(applied=True, restart_needed=bool(restart))
        _log.info(
            "config reloaded",
            extra={
                "config": str(self._path),
                "policy_version": policy.version,
                "previous_policy_version": previous,
            },
        )
        if restart:
            _log.warning(
                "config changes that need a restart were not applied",
                extra={"config": str(self._path), "restart_needed": list(restart)},
            )
        return ReloadOutcome(True, policy.version, restart)


def _with_policy_of(current: Settings, loaded: Settings, base_dir: Path) -> Settings:
    """The running settings with the policy of ``loaded``, validated as a whole."""
    document = current.model_dump()
    document.update(loaded.model_dump(include=set(LIVE_KEYS)))
    try:
        return parse_settings(document, base_dir)
    except ConfigError as err:
        raise ConfigError(
            f"the new policy does not fit the running configuration (the keys it needs "
            f"change only with a restart): {err}"
        ) from None


def _restart_needed(current: Settings, loaded: Settings) -> tuple[str, ...]:
    """Top-level keys, other than the policy's, whose value differs from the running one."""
    others = set(Settings.model_fields) - set(LIVE_KEYS)
    before = current.model_dump(mode="json", include=others)
    after = loaded.model_dump(mode="json", include=others)
    return tuple(sorted(key for key in others if before.get(key) != after.get(key)))
