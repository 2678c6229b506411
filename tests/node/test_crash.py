"""SIGKILL in the middle of a 1,000-document send: nothing lost, nothing twice.

Both nodes run as real ``usagi serve`` processes. The test queues 1,000
documents on the seller's home, kills one side with SIGKILL while notices
are in flight, restarts it, and checks that every document ends stored
exactly once on the receiver and acknowledged exactly once on the sender.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from usagi_p2p.node.node import Node

from .conftest import make_home, serve_process, wait_serving

N = 1000


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("victim", ["receiver", "sender"])
async def test_sigkill_mid_send(tmp_path: Path, victim: str) -> None:
    seller = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    buyer = make_home(tmp_path / "osaka", "Osaka Precision")
    procs = {"sender": serve_process(seller.path), "receiver": serve_process(buyer.path)}
    homes = {"sender": seller, "receiver": buyer}
    try:
        for side, proc in procs.items():
            wait_serving(homes[side].path, proc)
        async with Node.load(seller, None) as node:
            invitation = await node.invite()
        async with Node.load(buyer, None) as node:
            await node.add_partner(invitation.text())
        async with Node.load(seller, None) as node:
            body = {"ref": "PO", "lines": [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]}
            for _ in range(0, N, 100):
                await node.send_many([("order", "Osaka", body, None)] * 100)
        from usagi_p2p.company.api.client import kick

        await kick(seller.path)
        received = lambda: count(buyer.ledger_path, "SELECT count(*) FROM documents")  # noqa: E731
        await wait_until(lambda: received() >= 150, 60, "the first deliveries")
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        assert received() < N, "the kill came too late to test anything"
        await asyncio.sleep(0.5)
        procs[victim] = serve_process(homes[victim].path)
        (homes[victim].path / "serve.json").unlink(missing_ok=True)
        wait_serving(homes[victim].path, procs[victim])
        await kick(seller.path)
        delivered = lambda: count(  # noqa: E731
            seller.ledger_path, "SELECT count(*) FROM outbox WHERE state = 'delivered'")
        await wait_until(lambda: delivered() == N, 120, "every document to be acknowledged")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
    assert count(buyer.ledger_path, "SELECT count(*) FROM documents") == N
    assert count(buyer.ledger_path, "SELECT count(DISTINCT cid) FROM documents") == N
    assert count(buyer.ledger_path, "SELECT count(*) FROM acks") == N
    assert count(seller.ledger_path, "SELECT count(*) FROM acks") == N
    assert count(seller.ledger_path,
                 "SELECT count(*) FROM documents WHERE status = 'delivered'") == N
    assert count(buyer.blocks_path, "SELECT count(*) FROM blocks") == N
