"""A replica's audit writer in a process of its own, for the tests in this directory.

``python -m tests.postgres.writer_process URL PREFIX COUNT [revoke-every]``: says ``ready``,
waits for a line on stdin, then appends COUNT records (decision ids ``PREFIX-<n>``) in
concurrent waves, printing each committed id on a line of its own; COUNT 0 appends until
killed. Every ``revoke-every``-th record is a
revocation of the execution ``PREFIX-<n>``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from dataclasses import replace

from deputy.audit.record import DecisionRecord
from deputy.errors import StoreUnavailable
from deputy.store.postgres import PostgresAuditLog
from tests.audit_records import KEY, make_record, revocation_record

WAVE = 50


def record(prefix: str, n: int, revoke_every: int = 0) -> DecisionRecord:
    """Record ``n`` of writer ``prefix``: ids of its own, a revocation every so often."""
    if revoke_every and n % revoke_every == 0:
        item = revocation_record(n, f"{prefix}-exec-{n}")
    else:
        item = make_record(n, user_id=f"{prefix}-user")
    return replace(
        item,
        decision_id=f"{prefix}-{n}",
        credentials=tuple(replace(c, jti=f"{prefix}-jti-{n}") for c in item.credentials),
    )


async def main(url: str, prefix: str, count: int, revoke_every: int) -> None:
    numbers = itertools.count(1) if count == 0 else iter(range(1, count + 1))
    with PostgresAuditLog(url, KEY, checkpoint_seconds=0.2) as audit_log:
        await audit_log.start()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go": every writer starts at once
        while wave := list(itertools.islice(numbers, WAVE)):
            results = await asyncio.gather(
                *(audit_log.append(record(prefix, n, revoke_every)) for n in wave),
                return_exceptions=True,
            )
            for n, result in zip(wave, results, strict=True):
                if isinstance(result, StoreUnavailable):
                    print(f"failed {prefix}-{n}", flush=True)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    print(f"{prefix}-{n}", flush=True)


if __name__ == "__main__":
    url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(main(url, prefix, count, int(sys.argv[4]) if len(sys.argv) > 4 else 0))
