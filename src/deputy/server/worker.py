"""One worker of ``deputy serve --workers N``: the broker on the socket its parent bound.

Started by :mod:`deputy.server.supervisor` as ``python -m deputy.server.worker``, never by
hand. A worker is the single-process broker in all but its socket: it loads the config file,
builds its own broker (its own audit chain in PostgreSQL, its own connections), reloads the
policy on SIGHUP and drains on SIGTERM. It also watches a pipe whose write end only the
parent holds: when the parent is gone the pipe reads end-of-file, and the worker stops
gracefully rather than serving on unsupervised.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from deputy.clock import SystemClock
from deputy.config.loader import load_settings
from deputy.errors import ConfigError
from deputy.server.app import create_app
from deputy.server.logs import configure_logging
from deputy.server.process import take_signals, uvicorn_options
from deputy.server.wiring import build_broker

_log = logging.getLogger(__name__)


def serve_supervised(server: uvicorn.Server, sock: socket.socket, lifeline: int) -> None:
    """Serve on ``sock`` until a signal stops ``server`` or ``lifeline`` reads end-of-file."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        def orphaned() -> None:
            loop.remove_reader(lifeline)
            _log.warning("the supervising process is gone; stopping")
            server.should_exit = True

        # The parent never writes: the pipe becomes readable only when its write end closes.
        loop.add_reader(lifeline, orphaned)
        await server.serve(sockets=[sock])

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(serve())


def main(argv: Sequence[str] | None = None) -> int:
    take_signals()
    parser = argparse.ArgumentParser(prog="python -m deputy.server.worker")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    clock = SystemClock()
    try:
        application = create_app(build_broker(settings, clock), clock, config_path=args.config)
    except ConfigError as err:
        _log.error("worker cannot start", extra={"problem": str(err)})
        return 2
    sock = socket.socket(fileno=args.listen_fd)
    server = uvicorn.Server(uvicorn.Config(application, **uvicorn_options(settings)))
    serve_supervised(server, sock, args.lifeline_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
