"""A short overload run (bench/overload.py): many senders at once, everything delivered once.

Asserts outcomes only: every document stored exactly once and acknowledged,
nothing undelivered (a 503 costs no attempt), the receiver still answering.
How many batches were shed depends on timing and is reported, not asserted.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import load_bench

overload = load_bench("overload")


async def test_many_senders_at_once_all_delivered_once(tmp_path: Path) -> None:
    r = await overload.run(tmp_path, senders=12, docs=30, timeout=120)
    assert (r["stored"], r["delivered"]) == (360, 360), r
    assert (r["lost"], r["duplicated"], r["unacked"], r["undelivered"], r["ack_mismatch"]) == \
        (0, 0, 0, 0, 0), r
    assert r["other_failures"] == 0, r  # only shedding (503), never a counted failure
