"""Issuance benchmark: drive /issue and /oauth2/token over loopback with wrk; compare with the peer.

Usage: python bench/issue_bench.py [--seconds 10] [--connections 16] [--no-peer] [--profile]
Prints one line per scenario; see BENCHMARKS.md for the method and recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from deputy.clock import SystemClock
from deputy.devtools.broker_process import BrokerProcess
from deputy.devtools.example import ExampleIdentities, example_config, write_example_trust

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "bench" / "peer-oidc-provider" / "run.sh"
LUA = Path(__file__).with_name("post.lua")
FORM = "application/x-www-form-urlencoded"
RESULT = re.compile(r"non2xx=(\d+) requests=(\d+) rps=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)")
UNLIMITED = 1_000_000_000
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"


def deployment(directory: Path) -> tuple[Path, ExampleIdentities]:
    """The example config with limits out of the way (quota is still taken on every call)."""
    doc: dict[str, Any] = yaml.safe_load(example_config())
    for wf in doc["workflows"].values():
        if "rate_limits" in wf:
            wf["rate_limits"] = dict.fromkeys(wf["rate_limits"], UNLIMITED)
    config = directory / "deputy.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config, write_example_trust(directory, SystemClock())


def request_lines(identities: ExampleIdentities, distinct: int) -> list[str]:
    """Each line a workload token and a body: one tool, agent + user token."""
    idp, svids = identities.idp, identities.svids
    lines = []
    for i in range(distinct):
        svid = svids.jwt_svid(f"/agents/support/agent-{i}", lifetime=900)
        body = {
            "agent_id": f"instance-{i}",
            "user_token": idp.user_token(f"user-{i % 50}", "pro"),
            "tools": ["customer_data_api"],
            "ttl_seconds": 300,
        }
        lines.append(f"/issue\tBearer {svid}\t{json.dumps(body)}")
    return lines


def client_credentials_lines(identities: ExampleIdentities, distinct: int) -> list[str]:
    """Each line a client_credentials request authenticated by a fresh JWT-SVID assertion."""
    return [
        "/oauth2/token\t-\t"
        + urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_SPIFFE,
                "client_assertion": identities.svids.jwt_svid("/agents/price-sync", lifetime=900),
                "scope": "rates:read",
            }
        )
        for _ in range(distinct)
    ]


def exchange_lines(identities: ExampleIdentities) -> list[str]:
    """An RFC 8693 exchange: the user's token as subject, the agent's SVID as actor."""
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": identities.idp.user_token("user-1", "pro"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "actor_token": identities.svids.jwt_svid("/agents/support/agent-1", lifetime=900),
        "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": "https://crm.internal",
    }
    return [f"/oauth2/token\t-\t{urlencode(form)}"]


def wrk(
    url: str,
    requests: Path,
    seconds: int,
    connections: int,
    delay_ms: int = 0,
    content_type: str = "application/json",
) -> dict[str, float]:
    env = {
        **os.environ,
        "REQUESTS": str(requests),
        "DELAY_MS": str(delay_ms),
        "CONTENT_TYPE": content_type,
    }
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA), url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = RESULT.search(out)
    if not m:
        raise RuntimeError(f"unexpected wrk output: {out}")
    non2xx, count, rps, p50, p99 = m.groups()
    return {
        "non2xx": int(non2xx),
        "requests": int(count),
        "rps": float(rps),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
    }


PACED_CONNECTIONS = 8


def paced(url: str, requests: Path, seconds: int, target: float) -> dict[str, float]:
    """Run at about ``target`` requests/s: calibrate the per-connection delay, then measure."""
    delay = PACED_CONNECTIONS * 1000 / target
    for _ in range(5):
        probe = wrk(url, requests, 2, PACED_CONNECTIONS, max(1, round(delay)))
        if abs(probe["rps"] - target) <= 0.05 * target:
            break
        delay = max(1.0, delay * probe["rps"] / target)
    return wrk(url, requests, seconds, PACED_CONNECTIONS, max(1, round(delay)))


def show(name: str, r: dict[str, float]) -> None:
    print(
        f"deputy {name:<38} rps={r['rps']:8.1f} p50_ms={r['p50_ms']:6.2f} "
        f"p99_ms={r['p99_ms']:6.2f} non2xx={r['non2xx']}",
        flush=True,
    )


def peer(seconds: int, connections: int) -> dict[str, float] | None:
    if not PEER.exists() or not shutil.which("node"):
        print("peer: skipped (shared/bench/peer-oidc-provider or node missing)")
        return None
    out = subprocess.run(
        ["bash", str(PEER), str(seconds), str(connections)], capture_output=True, text=True
    )
    m = RESULT.search(out.stdout)
    if out.returncode != 0 or not m:
        print(f"peer: failed: {out.stdout}{out.stderr}")
        return None
    print(out.stdout.strip(), flush=True)
    return {"rps": float(m.group(3)), "p50_ms": float(m.group(4)), "p99_ms": float(m.group(5))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--profile", action="store_true", help="run the broker under cProfile")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, one broker worker, SQLite audit synchronous=FULL"
    )
    with tempfile.TemporaryDirectory(prefix="deputy-bench-") as tmp:
        work = Path(tmp)
        config, identities = deployment(work)
        warm = work / "warm.txt"
        warm.write_text("\n".join(request_lines(identities, 1)) + "\n")
        fresh = work / "fresh.txt"
        fresh.write_text("\n".join(request_lines(identities, args.seconds * 3000)) + "\n")
        exchange = work / "exchange.txt"
        exchange.write_text("\n".join(exchange_lines(identities)) + "\n")
        assertions = work / "client_credentials.txt"
        assertions.write_text(
            "\n".join(client_credentials_lines(identities, args.seconds * 3000)) + "\n"
        )
        profile = work / "broker.prof" if args.profile else None
        broker = BrokerProcess(config).start(
            *(["-m", "cProfile", "-o", str(profile)] if profile else [])
        )
        url = broker.url
        results: dict[str, Any] = {}
        try:
            wrk(url, warm, 2, args.connections)  # warm-up
            results["max"] = wrk(url, warm, args.seconds, args.connections)
            show("max rate, tokens seen before", results["max"])
            results["fresh"] = wrk(url, fresh, args.seconds, args.connections)
            show("max rate, new tokens every request", results["fresh"])
            half = results["max"]["rps"] / 2
            results["half"] = paced(url, warm, args.seconds, half)
            show(f"paced at half max ({half:.0f}/s target)", results["half"])
            results["exchange"] = wrk(url, exchange, args.seconds, args.connections, 0, FORM)
            show("token exchange, tokens seen before", results["exchange"])
            results["client_credentials"] = wrk(
                url, assertions, args.seconds, args.connections, 0, FORM
            )
            show("client_credentials, new assertion each", results["client_credentials"])
        finally:
            broker.stop()  # SIGINT: uvicorn shuts down cleanly, cProfile writes its file
        if profile:
            import pstats

            pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)
        if not args.no_peer:
            p = peer(args.seconds, args.connections)
            if p:
                results["peer"] = p
                print(
                    f"ratio deputy/peer issuances/s: {results['max']['rps'] / p['rps']:.2f} "
                    f"(new tokens every request: {results['fresh']['rps'] / p['rps']:.2f}; "
                    f"token exchange: {results['exchange']['rps'] / p['rps']:.2f}; "
                    "client_credentials with a new assertion each: "
                    f"{results['client_credentials']['rps'] / p['rps']:.2f})"
                )
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "issue.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
