"""The broker as a process: uvicorn's options for ``deputy serve`` and its signal dispositions.

Shared by the single-process broker and by each worker of ``deputy serve --workers N``.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from deputy.config.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` (or ``uvicorn.run``), without the address."""
    return {
        "log_config": None,  # uvicorn's own records go through the JSON handler too
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": settings.server.shutdown_grace_seconds,
    }


def take_signals() -> None:
    """Set the dispositions a broker process needs before uvicorn takes its signals over.

    Until the app handles SIGHUP (a policy reload), it must not end the process, its
    default action. uvicorn stops gracefully on SIGTERM or SIGINT (Ctrl-C), then raises the
    signal again with the handler it found: a clean stop exits 0 rather than dying of the
    signal (or, for SIGINT, ending in a KeyboardInterrupt), as ``--workers`` does.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)


def stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGINT once uvicorn has drained (or before it started): exit 0."""
    raise SystemExit(0)
