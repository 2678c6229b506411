"""A node whose blocks live in a Kubo node trades a whole thread (docs/scale.md,
"Blocks off the machine"): the scale-out store under the real node, against the
offline loopback IPFS daemon the suite starts (tests/ipfs/conftest.py).

An IPFS Cluster speaks the same RPC through its Kubo-compatible proxy
(``block/put``, ``block/get``, ``pin/add``, ``pin/rm``, ``pin/ls``), so what
holds here is what a company running its blocks on a cluster relies on: every
block the node sends or receives is pinned before the ledger records it, the
daemon's garbage collection keeps them, and the node serves and verifies its
history from the daemon after a restart.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from ipfs.kubo import KuboBlockStore
from tests.ipfs.conftest import kubo_url  # noqa: F401  (re-exported fixture)
from usagi_p2p.node import operations

from .conftest import make_home, start

pytestmark = pytest.mark.kubo

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "12.50"}]


async def test_a_whole_thread_on_the_kubo_store(tmp_path: Path, kubo_url: str) -> None:  # noqa: F811
    seller_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    seller_home.update_config(lambda config: setattr(config, "kubo_url", kubo_url))
    buyer_home = make_home(tmp_path / "osaka", "Osaka Precision")
    seller, seller_service = await start(seller_home)
    buyer, buyer_service = await start(buyer_home)
    cids = []
    try:
        assert isinstance(seller.store, KuboBlockStore) and seller.store.collects_garbage
        await operations.add_partner(buyer, (await operations.invite(seller)).text())
        sent = await operations.send(seller, "quote", {"ref": "Q-K1", "currency": "JPY",
                                                       "lines": LINES}, to=buyer.did)
        cids.append(sent.cid)
        authors = {"order": buyer}
        for done, kind in (("quote", "order"), ("order", "order_response"),
                           ("order_response", "delivery_note"), ("delivery_note", "invoice")):
            assert (await operations.await_ack(authors.get(done, seller), cids[-1])
                    ).status == "received"
            fields = {"response": "accept"} if kind == "order_response" else {}
            cids.append((await operations.answer(authors.get(kind, seller), kind, cids[-1],
                                                 fields)).cid)
        assert (await operations.await_ack(seller, cids[-1])).status == "received"
        # Sent and received alike: pinned in the daemon, so its GC keeps them.
        assert set(cids) <= set(await seller.store.pins())
        async with aiohttp.ClientSession() as session, session.post(
                f"{kubo_url.rstrip('/')}/api/v0/repo/gc",
                timeout=aiohttp.ClientTimeout(60)) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
    finally:
        for service in (seller_service, buyer_service):
            await service.close()
        for node in (seller, buyer):
            await node.close()
    # A restarted node reads its whole history from the daemon.
    seller, seller_service = await start(seller_home)
    try:
        for cid in cids:
            assert await seller.store.has(cid)
        verification = await operations.verify_document(seller, cids[-1])
        assert verification.ok, verification
        assert [e.kind for e in await operations.thread_documents(seller, cids[-1])] == [
            "quote", "order", "order_response", "delivery_note", "invoice"]
    finally:
        await seller_service.close()
        await seller.close()
        async with KuboBlockStore(kubo_url) as store:  # leave the shared daemon as found
            for cid in cids:
                await store.unpin(cid)
