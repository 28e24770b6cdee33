"""Soak: legitimate issuances at a steady rate, then the same with a hostile mix alongside.

Usage: python bench/soak.py [--minutes 10] [--clean-seconds 60] [--rate 150]
           [--hostile-rate 300] [--backend sqlite|postgres] [--sample-seconds 5]

1. Clean run: legitimate ``POST /issue`` requests only (200 agents and users whose tokens
   the broker has seen before), paced at ``--rate`` per second: the baseline p99.
2. Soak, ``--minutes`` long: the same legitimate traffic, and alongside it ``--hostile-rate``
   requests per second split evenly over six hostile kinds, each of which must get its own
   4xx: oversized workload tokens (401), oversized bodies (400), workload tokens with random
   ``kid``s (401), user tokens with random ``kid``s (400), workload tokens with a bad
   signature (401), malformed JSON (400).

Each stream is its own wrk process (bench/soak.lua counts every status it gets). The RSS of
the broker process and of its audit writer child (SQLite) is sampled every
``--sample-seconds``; trusted issuers' key fetches are read from ``/metrics`` before and
after the soak. It fails (exit 1) when any request gets a status other than its expected
one (any 5xx included) or a socket error; when the broker or the writer grows by more than
``--max-growth-mb`` over the second half of the soak (the least-squares slope over that half
times its length, so one noisy sample does not decide); when the legitimate p99 during the
soak is above ``--max-p99-ratio`` times the clean run's; or when the key fetches exceed one
per issuer per 30 s (unknown ``kid``s must not cause a fetch each). Prints a Markdown block
for BENCHMARKS.md; writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from issue_bench import deployment
from scale_bench import ADMIN_URL, REDIS_URL, fresh_database, fresh_prefix

from deputy.devtools.broker_process import BrokerProcess
from deputy.devtools.example import ExampleIdentities
from deputy.identity.jose import MAX_TOKEN_BYTES
from deputy.service.request import MAX_BODY_BYTES

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("soak.lua")
LEGIT_AGENTS = 200
HOSTILE_LINES = 2000  # distinct requests of each hostile kind (random kids stay unknown)
LEGIT_CONNECTIONS = 8
HOSTILE_CONNECTIONS = 2  # per kind
KEY_REFETCH_SECONDS = 30  # the key caches' minimum interval between fetches of one issuer
RESULT = re.compile(
    r"requests=(\d+) rps=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+) max_ms=([\d.]+) "
    r"errors=(\d+) statuses=([\d:,]*)"
)
MB = 1024 * 1024


@dataclass(frozen=True)
class Stream:
    """One kind of request, the status each must get, and how many per second."""

    name: str
    expected: int
    lines: list[str]
    rate: float
    connections: int


@dataclass
class Outcome:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    statuses: dict[int, int] = field(default_factory=dict)


def line(svid: str, body: str) -> str:
    return f"/issue\tBearer {svid}\t{body}"


def issue_body(user_token: str, agent: int) -> str:
    body = {"agent_id": f"instance-{agent}", "user_token": user_token, "tools": ["pricing_api"]}
    return json.dumps(body)


def hostile_streams(ids: ExampleIdentities, rate: float, lifetime: int) -> list[Stream]:
    """Six kinds, ``rate`` requests per second in all, each kind with its expected status."""
    svids, idp = ids.svids, ids.idp
    good_user = idp.user_token("user-0", "pro", lifetime=lifetime)

    def svid(i: int, **header: Any) -> str:
        now = int(time.time())
        claims = {
            "sub": f"spiffe://prod.example/agents/support/agent-{i}",
            "aud": ["deputy"],
            "iat": now,
            "exp": now + lifetime,
        }
        return svids.sign(claims, header=header or None)

    def random_kid_user(i: int) -> str:
        now = int(time.time())
        claims = {
            "iss": idp.issuer,
            "sub": f"user-{i}",
            "aud": idp.audience,
            "iat": now,
            "exp": now + lifetime,
            idp.tier_claim: "pro",
        }
        return idp.sign(claims, header={"kid": secrets.token_urlsafe(12)})

    def bad_signature(token: str) -> str:
        head, payload, signature = token.split(".")
        flipped = "A" if signature[5] != "A" else "B"  # a signature of the same length
        return f"{head}.{payload}.{signature[:5]}{flipped}{signature[6:]}"

    n = HOSTILE_LINES
    valid = [svid(i) for i in range(n)]
    kinds = [
        ("oversized workload token", 401, [line(v + "x" * MAX_TOKEN_BYTES, "{}") for v in valid]),
        (
            "oversized body",
            400,
            [line(v, issue_body(good_user, i) + " " * MAX_BODY_BYTES) for i, v in enumerate(valid)],
        ),
        (
            "workload token, random kid",
            401,
            [
                line(svid(i, kid=secrets.token_urlsafe(12)), issue_body(good_user, i))
                for i in range(n)
            ],
        ),
        (
            "user token, random kid",
            400,
            [line(v, issue_body(random_kid_user(i), i)) for i, v in enumerate(valid)],
        ),
        (
            "workload token, bad signature",
            401,
            [line(bad_signature(v), issue_body(good_user, i)) for i, v in enumerate(valid)],
        ),
        ("malformed JSON", 400, [line(v, '{"agent_id": "a", "tools": [') for v in valid]),
    ]
    return [
        Stream(name, status, lines, rate / len(kinds), HOSTILE_CONNECTIONS)
        for name, status, lines in kinds
    ]


def legit_stream(ids: ExampleIdentities, rate: float, lifetime: int) -> Stream:
    """Agent + user token, one tool, one credential; tokens valid to the end of the run."""
    lines = []
    for i in range(LEGIT_AGENTS):
        svid = ids.svids.jwt_svid(f"/agents/support/agent-{i}", lifetime=lifetime)
        body = {
            "agent_id": f"instance-{i}",
            "user_token": ids.idp.user_token(f"user-{i % 50}", "pro", lifetime=lifetime),
            "tools": ["customer_data_api"],
            "ttl_seconds": 300,
        }
        lines.append(line(svid, json.dumps(body)))
    return Stream("legitimate", 200, lines, rate, LEGIT_CONNECTIONS)


def start_wrk(url: str, stream: Stream, seconds: int, work: Path) -> subprocess.Popen[str]:
    requests = work / f"{stream.name.replace(' ', '_').replace(',', '')}.txt"
    requests.write_text("\n".join(stream.lines) + "\n")
    delay = max(1, round(stream.connections * 1000 / stream.rate))
    env = {**os.environ, "REQUESTS": str(requests), "DELAY_MS": str(delay)}
    command = ["wrk", "-t1", f"-c{stream.connections}", f"-d{seconds}s", "--timeout", "5s"]
    return subprocess.Popen(
        [*command, "-s", str(LUA), url], env=env, stdout=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> Outcome:
    out, _ = proc.communicate(timeout=120)
    m = RESULT.search(out)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"unexpected wrk output: {out}")
    count, rps, p50, p99, worst, errors, statuses = m.groups()
    pairs = (s.split(":") for s in statuses.split(",") if s)
    return Outcome(
        int(count),
        float(rps),
        float(p50),
        float(p99),
        float(worst),
        int(errors),
        {int(s): int(n) for s, n in pairs},
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def rss(pid: int) -> int:
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith("VmRSS:"):
            return int(entry.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Memory:
    """RSS samples of the broker and its audit writer (if it has one), in bytes."""

    series: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def sample(self, broker: int, at: float) -> None:
        """RSS of the broker and its writer child, ``at`` seconds into the soak."""
        processes = {"broker": broker}
        for pid in descendants(broker):
            with contextlib.suppress(FileNotFoundError):
                if b"audit_process" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    processes["audit writer"] = pid
        for name, pid in processes.items():
            self.series.setdefault(name, []).append((at, rss(pid)))

    def report(self, name: str) -> dict[str, float]:
        values = [v for _, v in self.series[name]]
        half = len(values) // 2
        xs, ys = [t for t, _ in self.series[name][half:]], values[half:]
        slope = least_squares_slope(xs, ys)  # bytes per second
        return {
            "start_mb": values[0] / MB,
            "mid_mb": values[half] / MB,
            "end_mb": values[-1] / MB,
            "max_mb": max(values) / MB,
            "slope_mb_per_min": slope * 60 / MB,
            "growth_second_half_mb": slope * (xs[-1] - xs[0]) / MB,
        }


def least_squares_slope(xs: list[float], ys: list[int]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def key_fetches(url: str) -> float:
    """Fetches of trusted issuers' keys so far (``deputy_key_set_fetches_total``)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(entry.rsplit(" ", 1)[1])
        for entry in text.splitlines()
        if entry.startswith("deputy_key_set_fetches_total{")
    )


@contextlib.contextmanager
def backend(args: argparse.Namespace, config: Path) -> Iterator[None]:
    """``config`` edited for the chosen backend (a fresh database and Redis prefix), metrics on."""
    doc = yaml.safe_load(config.read_text())
    doc["metrics"] = {"enabled": True}
    if args.backend == "sqlite":
        config.write_text(yaml.safe_dump(doc))
        yield
        return
    with fresh_database(args.postgres) as url, fresh_prefix(args.redis) as prefix:
        doc.update(storage=url, counters=args.redis, counters_prefix=prefix)
        config.write_text(yaml.safe_dump(doc))
        yield


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    soak_seconds = round(args.minutes * 60)
    lifetime = args.clean_seconds + soak_seconds + 900
    config, ids = deployment(work)
    legit = legit_stream(ids, args.rate, lifetime)
    hostile = hostile_streams(ids, args.hostile_rate, lifetime)
    memory = Memory()
    with backend(args, config):
        broker = BrokerProcess(config).start()
        try:
            warm = start_wrk(broker.url, legit, 5, work)  # every legitimate token seen once
            finish(warm)
            clean = finish(start_wrk(broker.url, legit, args.clean_seconds, work))
            before = key_fetches(broker.url)
            started = time.monotonic()
            procs = [start_wrk(broker.url, s, soak_seconds, work) for s in [legit, *hostile]]
            while time.monotonic() - started < soak_seconds:
                memory.sample(broker.pid, time.monotonic() - started)
                time.sleep(args.sample_seconds)
            outcomes = [finish(p) for p in procs]
            memory.sample(broker.pid, time.monotonic() - started)
            after = key_fetches(broker.url)
        finally:
            broker.stop()
    return {
        "clean": clean,
        "soak": dict(zip([s.name for s in [legit, *hostile]], outcomes, strict=True)),
        "streams": [legit, *hostile],
        "memory": {name: memory.report(name) for name in memory.series},
        "key_fetches": after - before,
        "soak_seconds": soak_seconds,
    }


def verdict(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What failed; empty when the soak passed."""
    failures = []
    clean: Outcome = result["clean"]
    if clean.errors or set(clean.statuses) != {200}:
        failures.append(f"clean run: statuses {clean.statuses}, {clean.errors} socket errors")
    for stream in result["streams"]:
        o: Outcome = result["soak"][stream.name]
        other = {s: n for s, n in o.statuses.items() if s != stream.expected}
        if other or o.errors or not o.requests:
            failures.append(
                f"{stream.name}: expected {stream.expected}, also got {other}, "
                f"{o.errors} socket errors"
            )
    for name, m in result["memory"].items():
        if m["growth_second_half_mb"] > args.max_growth_mb:
            failures.append(
                f"{name}: grew {m['growth_second_half_mb']:.1f} MB over the second half "
                f"(limit {args.max_growth_mb} MB)"
            )
    ratio = result["soak"]["legitimate"].p99_ms / clean.p99_ms
    if ratio > args.max_p99_ratio:
        failures.append(f"legitimate p99 {ratio:.2f}x the clean run's (limit {args.max_p99_ratio})")
    bound = key_fetch_bound(result["soak_seconds"])
    if result["key_fetches"] > bound:
        failures.append(f"{result['key_fetches']:.0f} key fetches during the soak (bound {bound})")
    return failures


def key_fetch_bound(seconds: int) -> int:
    """Two issuers get unknown kids (the SPIFFE bundle and the user IdP)."""
    return 2 * (math.ceil(seconds / KEY_REFETCH_SECONDS) + 1)


def markdown(result: dict[str, Any], args: argparse.Namespace, failures: list[str]) -> str:
    clean: Outcome = result["clean"]
    soak: Outcome = result["soak"]["legitimate"]
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    minutes = result["soak_seconds"] / 60
    lines = [
        f"{today}, backend {args.backend}, {os.cpu_count()} cores: clean run "
        f"{args.clean_seconds} s, then a soak of {minutes:g} min; legitimate {args.rate:g}/s "
        f"({LEGIT_CONNECTIONS} connections), hostile {args.hostile_rate:g}/s "
        f"(6 kinds, {HOSTILE_CONNECTIONS} connections each); RSS sampled every "
        f"{args.sample_seconds:g} s.",
        "",
        "| legitimate | requests | /s | p50 ms | p99 ms | max ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, o in (("clean", clean), ("soak", soak)):
        non200 = sum(n for s, n in o.statuses.items() if s != 200) + o.errors
        lines.append(
            f"| {phase} | {o.requests:,} | {o.rps:.0f} | {o.p50_ms:.2f} | {o.p99_ms:.2f} | "
            f"{o.max_ms:.1f} | {non200} |"
        )
    lines += [
        "",
        f"Legitimate p99, soak / clean: **{soak.p99_ms / clean.p99_ms:.2f}x** "
        f"(limit {args.max_p99_ratio:g}x).",
        "",
        "| hostile kind | expected | requests | /s | as expected | anything else |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for stream in result["streams"][1:]:
        o = result["soak"][stream.name]
        other = {s: n for s, n in o.statuses.items() if s != stream.expected}
        extra = ", ".join(f"{n} x {s}" for s, n in sorted(other.items()))
        if o.errors:
            extra = ", ".join(filter(None, [extra, f"{o.errors} socket errors"]))
        lines.append(
            f"| {stream.name} | {stream.expected} | {o.requests:,} | {o.rps:.0f} | "
            f"{o.statuses.get(stream.expected, 0):,} | {extra or 'none'} |"
        )
    lines += [
        "",
        "| process | RSS start MB | mid | end | max | slope, second half MB/min "
        "| growth, second half MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["memory"].items():
        lines.append(
            f"| {name} | {m['start_mb']:.1f} | {m['mid_mb']:.1f} | {m['end_mb']:.1f} | "
            f"{m['max_mb']:.1f} | {m['slope_mb_per_min']:+.2f} | "
            f"{m['growth_second_half_mb']:+.1f} |"
        )
    lines += [
        "",
        f"Trusted issuers' key fetches during the soak: {result['key_fetches']:.0f} "
        f"(bound {key_fetch_bound(result['soak_seconds'])}: one per issuer per "
        f"{KEY_REFETCH_SECONDS} s). Verdict: "
        + ("**pass**." if not failures else "**fail**: " + "; ".join(failures) + "."),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--clean-seconds", type=int, default=60, help="length of the clean run")
    parser.add_argument("--rate", type=float, default=150.0, help="legitimate requests/s")
    parser.add_argument("--hostile-rate", type=float, default=300.0, help="hostile requests/s")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default=ADMIN_URL, help="administrator URL (postgres)")
    parser.add_argument("--redis", default=REDIS_URL, help="counters (postgres backend)")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--max-growth-mb", type=float, default=8.0)
    parser.add_argument("--max-p99-ratio", type=float, default=2.0)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; backend {args.backend}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="deputy-soak-") as tmp:
        result = run(args, Path(tmp))
    failures = verdict(result, args)
    print(markdown(result, args, failures))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    saved = {
        "args": vars(args),
        "clean": vars(result["clean"]),
        "soak": {k: vars(v) for k, v in result["soak"].items()},
        "memory": result["memory"],
        "key_fetches": result["key_fetches"],
        "failures": failures,
    }
    (out / "soak.json").write_text(json.dumps(saved, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
