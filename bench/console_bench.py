"""Console benchmark: page latency over real HTTP on a 1-million-record audit log.

Usage: python bench/console_bench.py [--records 1000000] [--requests 100]

Builds the same audit log as ``audit_query_bench.py`` (through the real writer) in a data
dir, starts a real broker on it with the console enabled (its clock at the end of the log, so
the last hour of records is "now"), and times ``--requests`` GETs per page kind from one
client on loopback, each page a full server-side render: the first page of records (50,
newest first), the same filtered by user, by a common and a rare tool, by outcome, a page
deep in the log (``before_seq``), a decision, a credential with its uses, an execution's
timeline, a workload's blast radius (its live part reads the last ``MAX_TTL_SECONDS`` of
records) and the drift report over the last hour and over the whole log (a window scan).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audit_query_bench as log

from deputy.clock import FakeClock
from deputy.config.loader import load_settings
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.example import example_config, write_example_trust
from deputy.store.sqlite.audit_reader import DB_FILE, KEY_FILE

ADMIN = ("security-team", "console-bench-secret")
TARGET_MS = 50.0


def write_config(directory: Path) -> Path:
    """The example trust, with the bench log's tools and workflows and the console on."""
    document: dict[str, Any] = yaml.safe_load(example_config())
    tools = (*log.TOOLS, log.RARE_TOOL)
    document["tools"] = {
        name: {"audience": audience, "category": category, "scopes": [scope]}
        for name, audience, scope, category in tools
    }
    document["workflows"] = {
        workflow: {
            "agents": [f"spiffe://prod.example.com/agents/{workflow}/*"],
            "delegation": "asserted",
            "tools": {name: [scope] for name, _, scope, _ in tools},
            "ttl": {"default": 300, "max": 900},
        }
        for workflow in log.WORKFLOWS
    }
    document["clients"] = {
        ADMIN[0]: {"secret_sha256": hashlib.sha256(ADMIN[1].encode()).hexdigest(), "admin": True}
    }
    document["console"] = {"enabled": True}
    document["data_dir"] = str(directory / "data")
    path = directory / "deputy.yaml"
    path.write_text(yaml.safe_dump(document))
    write_example_trust(directory, FakeClock(log.T0))
    return path


def sample(db: Path, count: int, requests: int, seed: int) -> dict[str, list[str]]:
    """The paths to request, per page kind."""
    keys = {
        kind: [str(getattr(f, kind)) for f in filters]
        for kind, filters in log.sample_keys(db, count, requests, seed, 1).items()
        if kind in ("execution_id", "user_id", "jti")
    }
    rng = random.Random(seed + 2)
    conn = sqlite3.connect(db)
    try:
        decisions = [
            conn.execute("SELECT decision_id FROM records WHERE seq = ?", (s,)).fetchone()[0]
            for s in (rng.randint(1, count) for _ in range(requests))
        ]
        workloads = [
            conn.execute("SELECT workload_id FROM records WHERE seq = ?", (s,)).fetchone()[0]
            for s in (rng.randint(1, count) for _ in range(requests))
        ]
    finally:
        conn.close()
    deep = [str(rng.randint(2, count)) for _ in range(requests)]
    return {
        "records, first page": ["/console"] * requests,
        "records, by user": [f"/console?user={u}" for u in keys["user_id"]],
        "records, by common tool": ["/console?tool=github"] * requests,
        "records, by rare tool": [f"/console?tool={log.RARE_TOOL[0]}"] * requests,
        "records, denials": ["/console?outcome=deny"] * requests,
        "records, deep page": [f"/console?before_seq={s}" for s in deep],
        "decision": [f"/console/decisions/{d}" for d in decisions],
        "credential": [f"/console/credentials/{j}" for j in keys["jti"]],
        "execution": [f"/console/executions/{x}" for x in keys["execution_id"]],
        "blast radius": [f"/console/blast-radius?workload={w}" for w in workloads],
        "drift, last hour": ["/console/drift?since=1h"] * max(3, requests // 10),
        "drift, whole log": ["/console/drift?since=0"] * 3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100, help="GETs per page kind.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--dir", type=Path, help="Keep the built log here; reuse it when it is already there."
    )
    args = parser.parse_args()
    print(log.machine())
    with tempfile.TemporaryDirectory(prefix="deputy-console-bench-") as tmp:
        base = args.dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        config = write_config(base)
        settings = load_settings(config)
        db = settings.data_dir / DB_FILE
        if not db.exists():
            settings.data_dir.mkdir(mode=0o700)
            (settings.data_dir / KEY_FILE).write_bytes(log.KEY)
            (settings.data_dir / KEY_FILE).chmod(0o600)
            print(f"building {args.records:,} records ...", flush=True)
            seconds, credentials = log.build(db, args.records, args.seed)
            print(f"built in {seconds:.0f} s: {credentials:,} credentials, ", end="")
        print(f"{db.stat().st_size / 2**20:,.0f} MiB of audit log")
        paths = sample(db, args.records, args.requests, args.seed)
        end = FakeClock(log.T0 + args.records * 0.05)
        print(f"\n{'page':26} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  kB")
        worst = 0.0
        with (
            BrokerThread(settings, end) as broker,
            httpx.Client(base_url=broker.url, auth=ADMIN, timeout=120) as client,
        ):
            for kind, kind_paths in paths.items():
                timings: list[float] = []
                size = 0
                for path in kind_paths:
                    started = time.perf_counter()
                    response = client.get(path)
                    timings.append((time.perf_counter() - started) * 1000)
                    if response.status_code != 200:
                        raise SystemExit(f"{path}: {response.status_code} {response.text[:200]}")
                    size = len(response.content)
                p50, p99 = log.percentile(timings, 0.5), log.percentile(timings, 0.99)
                if not kind.startswith("drift"):
                    worst = max(worst, p99)
                print(
                    f"{kind:26} {len(timings):>4} {p50:8.1f} {p99:8.1f} {max(timings):8.1f}"
                    f"  {size / 1000:.0f}"
                )
        verdict = "within" if worst <= TARGET_MS else "OVER"
        target = f"{verdict} the {TARGET_MS:.0f} ms target"
        print(f"\nworst p99 outside drift: {worst:.1f} ms ({target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
