"""Fixtures for the archive tests: two real nodes on 127.0.0.1 that have traded.

``kubo_url`` (the offline loopback IPFS daemon) comes from tests/ipfs/conftest.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ipfs.conftest import kubo_url  # noqa: F401  (re-exported fixture)
from tests.node.conftest import free_port
from usagi_p2p.node.home import Home
from usagi_p2p.node.node import Node
from usagi_p2p.peer.service import Service

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
SEED_C = bytes(range(64, 96))


@dataclass
class Traded:
    root: Path
    a: Home
    b: Home
    cids: list[str]


async def _trade(root: Path) -> Traded:
    a, b = Home(root / "a"), Home(root / "b")
    a.create("Kanto Machine Tools", None, seed=SEED_A, port=free_port())
    b.create("Osaka Precision", None, seed=SEED_B, port=free_port())
    cids: list[str] = []
    async with Node.load(a, None) as na, Node.load(b, None) as nb, \
            Service(na), Service(nb):
        await nb.add_partner((await na.invite()).text())
        for t in range(3):
            q = await na.send("quote", "Osaka", {"ref": f"Q-{t}", "currency": "JPY", "lines": [
                {"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs",
                 "unit_price": "12.50"}]})
            assert await na.wait_for_ack(q.cid, 10)
            o = await nb.send("order", "Kanto", {"ref": f"PO-{t}", "lines": [
                {"text": "M6x20 SUS304 hex bolt", "qty": "500"}]}, reply_to=q.cid)
            assert await nb.wait_for_ack(o.cid, 10)
            m = await na.send("message", "Osaka", {"note": f"secret-note-{t}"}, reply_to=o.cid)
            assert await na.wait_for_ack(m.cid, 10)
            cids += [str(q.cid), str(o.cid), str(m.cid)]
        # One more thread Osaka starts.
        r = await nb.send("message", "Kanto", {"note": "hello from Osaka"})
        assert await nb.wait_for_ack(r.cid, 10)
        cids.append(str(r.cid))
    return Traded(root, a, b, cids)


@pytest.fixture(scope="module")
def traded(tmp_path_factory: pytest.TempPathFactory) -> Traded:
    return asyncio.run(_trade(tmp_path_factory.mktemp("traded")))
