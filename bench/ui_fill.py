"""Filling a node's inbox with N received documents through the real exchange, for bench/ui.py.

A seller node in this process sends N documents (``Node.send_many``: each
built, checked, sealed, stored and queued) to a buyer node running as its own
``usagi serve`` process, which receives them as it receives any partner's
(notice batches over loopback HTTP, the block opened and validated, the
document, its ack, its search row recorded in one transaction). Nothing is
written into the buyer's ledger by this module.

:data:`FILLS` names the ways of filling; ``bench/ui.py --fill NAME`` picks
one, so a faster path of the same ledger code (bench/growth.py's, say) can be
added beside this one without changing the measurement.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import Node  # noqa: E402
from usagi_p2p.peer.service import Service  # noqa: E402

SELLERS = ("Kanto Machine Tools",)
PARTS = ["六角ナット", "六角ボルト", "平座金", "ばね座金", "キャップスクリュー", "止めねじ",
         "hex nut", "hex bolt", "washer", "set screw", "リベット", "アンカーボルト"]
GRADES = ["SUS304", "SUS316", "SS400", "SCM435", "S45C", "A2-70", "8.8"]
KINDS = ("quote", "delivery_note", "invoice", "quote")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(i: int, rng: random.Random) -> dict[str, object]:
    lines = [{"text": f"M{rng.choice((3, 4, 5, 6, 8, 10, 12, 16))} {rng.choice(PARTS)} "
                      f"{rng.choice(GRADES)} {rng.randint(1, 5000)}個",
              "qty": str(rng.randint(1, 5000)), "unit": "pcs",
              "unit_price": f"{rng.randint(1, 900)}.50"}
             for _ in range(rng.randint(1, 5))]
    return {"ref": f"Q-2026-{i:06d}", "currency": "JPY", "lines": lines}


async def fill_by_exchange(buyer_home: Home, seller_home: Home, count: int,
                           progress: Callable[[int], None] | None = None) -> None:
    """``count`` documents from the seller into the buyer's inbox, delivered and acked."""
    config = buyer_home.load_config()
    config.quota_docs = config.quota_bytes = 1 << 62  # 100k in one run is the point
    buyer_home.save_config(config)
    proc = subprocess.Popen(  # noqa: S603, ASYNC220 (started once, before timing)
        [sys.executable, "-m", "usagi_p2p", "--home", str(buyer_home.path), "serve"],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (buyer_home.path / "serve.json").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the buyer node did not start")
            await asyncio.sleep(0.05)  # noqa: ASYNC110 (another process writes the file)
        async with Node.load(buyer_home, None) as buyer:
            invitation = await buyer.invite()
        rng = random.Random(17)
        async with Node.load(seller_home, None) as seller, Service(seller):
            await seller.add_partner(invitation.text())
            name = config.name
            batch = 250
            for start in range(0, count, batch):
                await seller.send_many([(KINDS[i % len(KINDS)], name, body(i, rng), None)
                                        for i in range(start, min(count, start + batch))])
                # Keep the outbox short: delivery runs beside the sealing.
                while await seller.ledger.pending_count() > 2000:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                if progress:
                    progress(start + batch)
            while await seller.ledger.pending_count():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


#: name -> fill(buyer_home, seller_home, count, progress)
FILLS: dict[str, Callable[[Home, Home, int, Callable[[int], None] | None], Awaitable[None]]] = {
    "exchange": fill_by_exchange,
}


def make_homes(root: Path) -> tuple[Home, Home]:
    """(buyer, seller) homes, created; the buyer is the node whose inbox is filled."""
    buyer, seller = Home(root / "osaka"), Home(root / "kanto")
    buyer.create("Osaka Precision", None, port=_free_port())
    seller.create(SELLERS[0], None, port=_free_port())
    return buyer, seller
