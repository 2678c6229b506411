"""Two real nodes on loopback trade a whole thread; both ledgers agree."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from kernel._document import format_time
from kernel._messages import open_ack
from usagi_p2p.company.views import verify_document

from .conftest import Pair

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "12.50"}]


async def test_pairing_is_mutual(pair: Pair) -> None:
    seller_partners = await pair.seller.ledger.partners()
    buyer_partners = await pair.buyer.ledger.partners()
    assert [p.did for p in seller_partners] == [pair.buyer.did]
    assert [p.did for p in buyer_partners] == [pair.seller.did]
    assert seller_partners[0].name == "Osaka Precision"
    assert seller_partners[0].endpoint == pair.buyer.config.endpoint


async def test_full_thread_both_ledgers_agree(pair: Pair) -> None:
    steps = [
        (pair.seller, "Osaka", "quote", {"ref": "Q-1", "currency": "JPY", "lines": LINES}),
        (pair.buyer, "Kanto", "order", {"ref": "PO-1", "currency": "JPY", "lines": LINES}),
        (pair.seller, "Osaka", "order_response", {"ref": "OR-1", "response": "accept"}),
        (pair.seller, "Osaka", "delivery_note", {"ref": "DN-1", "lines": LINES}),
        (pair.seller, "Osaka", "invoice", {"ref": "INV-1", "currency": "JPY", "lines": LINES,
                                          "total": "6250"}),
    ]
    previous = None
    cids = []
    for node, to, kind, body in steps:
        result = await node.send(kind, to, body, reply_to=previous)
        ack = await node.wait_for_ack(result.cid, timeout=15)
        assert ack is not None, kind
        parsed = open_ack(ack[0])
        assert parsed.status == "received"
        assert parsed.digest == result.digest
        previous = result.cid
        cids.append(result.cid)

    for node in (pair.seller, pair.buyer):
        rows = await node.ledger.documents(limit=100)
        assert [r.cid for r in rows] == cids
        assert {r.thread for r in rows} == {cids[0]}
        report = await verify_document(node, cids[-1])
        assert report["ok"], report
    seller_rows = {r.cid: r for r in await pair.seller.ledger.documents()}
    buyer_rows = {r.cid: r for r in await pair.buyer.ledger.documents()}
    for cid in cids:
        assert seller_rows[cid].signed == buyer_rows[cid].signed
        assert seller_rows[cid].digest == buyer_rows[cid].digest
        assert seller_rows[cid].direction != buyer_rows[cid].direction
        # both sides hold the same ack, signed by the receiver, and store the
        # time signed into it
        assert (await pair.seller.ledger.ack(cid)) == (await pair.buyer.ledger.ack(cid))
        signed_at = format_time(open_ack((await pair.buyer.ledger.ack(cid))[0]).at)  # type: ignore[index]
        for node in (pair.seller, pair.buyer):
            with closing(sqlite3.connect(node.ledger.path)) as db:
                assert db.execute("SELECT at FROM acks WHERE cid = ?", (cid.raw,)).fetchone() == (signed_at,)
        assert await pair.seller.store.get(cid) == await pair.buyer.store.get(cid)


async def test_pull_from_gateway_when_blocks_are_not_pushed(pair: Pair) -> None:
    pair.seller.config.push_blocks = False
    result = await pair.seller.send("quote", "Osaka", {"ref": "Q-pull", "lines": LINES})
    ack = await pair.seller.wait_for_ack(result.cid, timeout=15)
    assert ack is not None and open_ack(ack[0]).status == "received"
    assert await pair.buyer.store.get(result.cid) == await pair.seller.store.get(result.cid)
