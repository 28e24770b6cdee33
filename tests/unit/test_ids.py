from __future__ import annotations

import re

from deputy.clock import FakeClock
from deputy.ids import IdSource


def test_ids_are_unique_time_ordered_and_plain() -> None:
    clock = FakeClock()
    ids = IdSource(clock)
    made = []
    for _ in range(3000):
        made.append(ids.token())
        clock.advance(0.0005)
    assert len(set(made)) == 3000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    # the first 12 hex digits are the time: text order follows creation order
    prefixes = [i[:12] for i in made]
    assert prefixes == sorted(prefixes) and len(set(prefixes)) > 100


def test_same_millisecond_ids_differ_in_80_random_bits() -> None:
    ids = IdSource(FakeClock())
    a, b = ids.token(), ids.token()
    assert a[:12] == b[:12] and a != b
    assert ids.prefixed("dec").startswith("dec_")
