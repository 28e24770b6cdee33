"""Issuance throughput on PostgreSQL + Redis: 1 worker, 2 workers, 3 replicas behind nginx.

Usage: python bench/scale_bench.py [--seconds 10] [--connections 16] [--postgres URL]
           [--redis URL]

Every scenario drives ``POST /issue`` with wrk (bench/post.lua) for ``--seconds`` after a
2 s warm-up, cycling through 50 agents and 50 users whose tokens the broker has seen before
(one tool, one credential, one durable audit record per request, quota taken each time).
In one run, on the same machine:

* SQLite, one process: the embedded default, for comparison;
* PostgreSQL + Redis, one worker; the same with ``--workers 2``; three single-worker
  replicas behind nginx on this host (round robin, keep-alive to the upstreams).

Each PostgreSQL scenario gets a fresh database (dropped afterwards) and its own Redis key
prefix (deleted afterwards). Prints one line per scenario and a Markdown block for
BENCHMARKS.md; writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml
from issue_bench import deployment, request_lines, wrk
from sqlalchemy.engine import make_url

import redis
from deputy.devtools.balancer import Balancer
from deputy.devtools.broker_process import BrokerProcess
from deputy.store.postgres import upgrade

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
DISTINCT = 50  # agents and users the requests cycle through
WARM_UP_SECONDS = 2
READY_SECONDS = 60.0
REPLICAS = 3


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database at the schema's head revision; dropped on the way out."""
    name = f"deputy_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@contextlib.contextmanager
def fresh_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix no one else uses; its keys are deleted on the way out."""
    prefix = f"deputy-bench:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)


def configure(config: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(config.read_text())
    change(doc)
    config.write_text(yaml.safe_dump(doc))


def ready_lines(broker: BrokerProcess) -> int:
    return sum('"broker ready"' in line for line in broker.log.read_text().splitlines())


def wait_ready(broker: BrokerProcess, workers: int) -> None:
    """Bounded polling until every worker of ``broker`` has logged that it is ready."""
    deadline = time.monotonic() + READY_SECONDS
    while ready_lines(broker) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers not ready:\n{broker.log.read_text()}")
        time.sleep(0.05)


def measure(url: str, requests: Path, args: argparse.Namespace) -> dict[str, float]:
    wrk(url, requests, WARM_UP_SECONDS, args.connections)
    return wrk(url, requests, args.seconds, args.connections)


def sqlite(work: Path, args: argparse.Namespace) -> dict[str, float]:
    config, identities = deployment(work)
    requests = work / "requests.txt"
    requests.write_text("\n".join(request_lines(identities, DISTINCT)) + "\n")
    broker = BrokerProcess(config).start()
    try:
        return measure(broker.url, requests, args)
    finally:
        broker.stop()


def postgres(work: Path, args: argparse.Namespace, workers: int, replicas: int) -> dict[str, float]:
    config, identities = deployment(work)
    requests = work / "requests.txt"
    requests.write_text("\n".join(request_lines(identities, DISTINCT)) + "\n")
    with fresh_database(args.postgres) as url, fresh_prefix(args.redis) as prefix:

        def shared(doc: dict[str, Any]) -> None:
            doc.update(storage=url, counters=args.redis, counters_prefix=prefix)
            doc["server"] = {"workers": workers}

        configure(config, shared)
        brokers: list[BrokerProcess] = []
        try:
            for n in range(replicas):
                broker = BrokerProcess(config, log=work / f"broker-{n}.log").start()
                brokers.append(broker)
                wait_ready(broker, workers)
            if replicas == 1:
                return measure(brokers[0].url, requests, args)
            nginx = Balancer(work / "nginx", [b.port for b in brokers], keepalive=64)
            try:
                return measure(nginx.url, requests, args)
            finally:
                nginx.stop()
        finally:
            for broker in brokers:
                broker.stop()


SCENARIOS: list[tuple[str, str, Callable[[Path, argparse.Namespace], dict[str, float]]]] = [
    ("sqlite", "SQLite, one process", sqlite),
    ("pg_1_worker", "PostgreSQL + Redis, 1 worker", lambda w, a: postgres(w, a, 1, 1)),
    ("pg_2_workers", "PostgreSQL + Redis, 2 workers", lambda w, a: postgres(w, a, 2, 1)),
    (
        "pg_3_replicas",
        f"PostgreSQL + Redis, {REPLICAS} replicas behind nginx",
        lambda w, a: postgres(w, a, 1, REPLICAS),
    ),
]


def markdown(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    lines = [
        f"{today}, {args.seconds} s per scenario (after {WARM_UP_SECONDS} s warm-up), "
        f"`wrk -t1 -c{args.connections}`, {os.cpu_count()} cores:",
        "",
        "| scenario | issuances/s | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name, _ in SCENARIOS:
        r = results[key]
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{int(r['non2xx'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--postgres", default=ADMIN_URL, help="administrator URL (CREATE DATABASE)")
    parser.add_argument("--redis", default=REDIS_URL)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load generator, brokers, PostgreSQL and Redis on one host",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    for key, name, run in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="deputy-scale-") as tmp:
            r = results[key] = run(Path(tmp), args)
        print(
            f"{name:<45} rps={r['rps']:8.1f} p50_ms={r['p50_ms']:6.2f} "
            f"p99_ms={r['p99_ms']:6.2f} non2xx={int(r['non2xx'])}",
            flush=True,
        )
    print()
    print(markdown(results, args))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 1 if any(r["non2xx"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
