"""Thread injection by a malicious partner (issue 14, finding 5; docs/spec.md section 9).

Three real nodes on loopback: a seller, its honest buyer, and Mallory, a real
partner of the seller turned malicious. CIDs are not secret, so Mallory can
name documents of the seller's thread with the buyer. It crafts replies with
the kernel primitives and posts them as a signed notice batch, as its node
would. The seller must refuse every reply that links outside Mallory's own
trade, answer it exactly like a link to a document it does not hold, store
nothing, and keep the honest thread verifiable (`usagi verify`, `usagi thread`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._document import format_time
from kernel._messages import Ack, make_notice, open_ack
from kernel.cid import CID
from usagi_p2p.company.views import thread_documents, verify_document
from usagi_p2p.node.node import NOTICES_PATH, Node
from usagi_p2p.peer.service import Service

from .conftest import REPO, make_home, start

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]


@dataclass
class Trio:
    seller: Node
    buyer: Node
    mallory: Node
    services: dict[str, Service]
    homes: dict[str, Path]


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    homes = {name: make_home(tmp_path / name, title) for name, title in (
        ("kanto", "Kanto Machine Tools"), ("osaka", "Osaka Precision"), ("mallory", "Mallory"))}
    started = {name: await start(home) for name, home in homes.items()}
    seller, buyer, mallory = (started[n][0] for n in ("kanto", "osaka", "mallory"))
    try:
        await buyer.add_partner((await seller.invite()).text())
        await mallory.add_partner((await seller.invite()).text())
        yield Trio(seller, buyer, mallory, {n: s for n, (_, s) in started.items()},
                   {n: h.path for n, h in homes.items()})
    finally:
        for _, service in started.values():
            await service.close()
        for node, _ in started.values():
            await node.close()


async def honest_thread(trio: Trio) -> tuple[CID, CID]:
    """The seller's quote to the buyer and the buyer's order answering it, both acked."""
    quote = await trio.seller.send("quote", "Osaka", {"ref": "Q-1", "lines": LINES})
    assert await trio.seller.wait_for_ack(quote.cid, 15)
    order = await trio.buyer.send("order", "Kanto", {"ref": "PO-1", "lines": LINES},
                                  reply_to=quote.cid)
    ack = await trio.buyer.wait_for_ack(order.cid, 15)
    assert ack is not None and ack[1] == "received"
    return quote.cid, order.cid


def crafted(mallory: Node, to: str, **links: Any) -> dict[str, Any]:
    doc = {"v": 1, "kind": "order", "from": mallory.did, "to": to, "ref": "PO-EVIL",
           "issued_at": format_time(mallory.now()), "lines": LINES}
    doc.update(links)
    return doc


async def post_batch(sender: Node, receiver: Node, documents: list[dict[str, Any]]
                     ) -> tuple[list[CID], list[Ack]]:
    """Seal each document with the sender's key, post one signed notice batch with the
    blocks pushed, and return the CIDs and the receiver's acks (opened)."""
    sealed = [kenvelope.seal(doc, sender.identity) for doc in documents]
    notices = [make_notice(sender.identity, s.cid, receiver.did, sender.now()) for s in sealed]
    body = dagcbor.encode({"notices": notices, "blocks": [s.block for s in sealed]})
    async with aiohttp.ClientSession() as session, session.post(
            receiver.config.endpoint + NOTICES_PATH, data=body,
            headers={"Content-Type": "application/cbor"}) as resp:
        assert resp.status == 200, await resp.text()
        answer = dagcbor.decode(await resp.read())
    return [s.cid for s in sealed], [open_ack(raw) for raw in answer["acks"]]


async def state(node: Node) -> tuple[Any, ...]:
    """Everything a refused reply must leave as it was."""
    db = node.ledger.db
    tables = []
    for sql in ("SELECT cid, partner, thread, status, digest FROM documents ORDER BY cid",
                "SELECT cid, raw FROM acks ORDER BY cid", "SELECT sender, nonce FROM nonces "
                "ORDER BY sender, nonce"):
        async with db.execute(sql) as cur:
            tables.append(await cur.fetchall())
    blocks = sorted([cid.raw async for cid, _ in node.store.blocks()])
    return tuple(tables), blocks


async def usagi(home: Path, *args: str) -> tuple[int, str]:
    """The CLI as a person runs it, beside the running node (same home)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("USAGI_PASSPHRASE", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "usagi_p2p", "--home", str(home), "--json", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out or err).decode()


async def test_a_reply_into_another_partners_thread_is_refused(
        trio: Trio, caplog: pytest.LogCaptureFixture) -> None:
    seller, mallory = trio.seller, trio.mallory
    quote, order = await honest_thread(trio)
    # Mallory's own trade with the seller, sent the honest way.
    own = await mallory.send("order", "Kanto", {"ref": "PO-M", "lines": LINES})
    assert (await mallory.wait_for_ack(own.cid, 15) or ("", ""))[1] == "received"
    before = await state(seller)
    nowhere = CID.for_block(b"a document the seller never held")
    attacks = [
        crafted(mallory, seller.did, thread=quote, prev=[order]),  # into the honest thread
        crafted(mallory, seller.did, thread=quote, prev=[quote]),
        crafted(mallory, seller.did, thread=own.cid, prev=[own.cid, order]),  # foreign prev
        crafted(mallory, seller.did, thread=nowhere, prev=[nowhere]),  # held by nobody
    ]
    with caplog.at_level(logging.WARNING, logger="usagi.activity"):
        cids, acks = await post_batch(mallory, seller, attacks)
    for cid, ack in zip(cids, acks, strict=True):
        assert (ack.cid, ack.by, ack.status) == (cid, seller.did, "rejected")
        # A link into another partner's trade reads exactly like one to nothing.
        assert ack.reason == "unknown_prev" and ack.digest is None
    assert sum("foreign_thread" in r.getMessage() for r in caplog.records) == 3
    assert await state(seller) == before  # nothing stored, nothing changed

    # Sent again (same notices), it is judged again, not answered from a record.
    _, again = await post_batch(mallory, seller, attacks[:1])
    assert again[0].reason == "unknown_prev" and await state(seller) == before

    # The honest thread still verifies, in the node and on the command line.
    for cid in (quote, order):
        report = await verify_document(seller, cid)
        assert report["ok"], report
    assert [r["cid"] for r in await thread_documents(seller, order)] == [str(quote), str(order)]
    code, out = await usagi(trio.homes["kanto"], "verify", str(order))
    assert code == 0 and json.loads(out)["ok"], out
    code, out = await usagi(trio.homes["kanto"], "thread", str(quote))
    assert code == 0 and [r["cid"] for r in json.loads(out)] == [str(quote), str(order)], out


async def test_a_partner_still_answers_its_own_trade(trio: Trio) -> None:
    """What Mallory may do: answer its own trade, even in the batch that carries the
    document it answers, in any order; but not with a link of its pair gone wrong."""
    seller, mallory = trio.seller, trio.mallory
    await honest_thread(trio)
    first = kenvelope.seal(crafted(mallory, seller.did), mallory.identity)
    answer = crafted(mallory, seller.did, kind="message", thread=first.cid, prev=[first.cid])
    # The answer first, the document it answers second: both taken.
    sealed_answer = kenvelope.seal(answer, mallory.identity)
    notices = [make_notice(mallory.identity, s.cid, seller.did, mallory.now())
               for s in (sealed_answer, first)]
    body = dagcbor.encode({"notices": notices, "blocks": [sealed_answer.block, first.block]})
    async with aiohttp.ClientSession() as session, session.post(
            seller.config.endpoint + NOTICES_PATH, data=body,
            headers={"Content-Type": "application/cbor"}) as resp:
        acks = [open_ack(a) for a in dagcbor.decode(await resp.read())["acks"]]
    assert [a.status for a in acks] == ["received", "received"]
    report = await verify_document(seller, sealed_answer.cid)
    assert report["ok"], report
    # Within the pair, a reply naming a non-first document as its thread is final.
    before = await state(seller)
    _, [ack] = await post_batch(mallory, seller, [crafted(
        mallory, seller.did, kind="message", thread=sealed_answer.cid, prev=[first.cid])])
    assert (ack.status, ack.reason) == ("rejected", "invalid_thread")
    assert await state(seller) == before


async def test_a_reply_that_overtakes_what_it_answers_is_retried(trio: Trio) -> None:
    """An honest buyer's answer to its own document can arrive first (batches in
    flight at once, a retry): refused for now, delivered on a later attempt."""
    seller, buyer = trio.seller, trio.buyer
    await trio.services["osaka"].close()  # the buyer delivers by hand from here on
    first = await buyer.send("message", "Kanto", {"note": "price list attached"})
    second = await buyer.send("message", "Kanto", {"note": "and the washers"},
                              reply_to=first.cid)
    later = 1e12

    async def hold(cid: CID, until: float) -> None:
        await buyer.ledger.write([("UPDATE outbox SET next_attempt = ? WHERE cid = ?",
                                   (until, cid.raw))])

    await hold(first.cid, later)
    assert await buyer.deliver_once() == 0  # the answer alone: not taken yet
    assert await seller.ledger.document(second.cid) is None
    [queued] = [r for r in await buyer.ledger.outbox("pending") if r.cid == second.cid]
    assert queued.attempts == 1 and "unknown_prev" in (queued.last_error or "")
    assert (await buyer.ledger.document(second.cid)).status == "queued"  # type: ignore[union-attr]
    assert await buyer.ledger.ack(second.cid) is None
    await hold(second.cid, later)
    await hold(first.cid, 0)
    assert await buyer.deliver_once() == 1
    await hold(second.cid, 0)
    assert await buyer.deliver_once() == 1
    ack = await buyer.ledger.ack(second.cid)
    assert ack is not None and ack[1] == "received"
    report = await verify_document(seller, second.cid)
    assert report["ok"], report


async def _post_sealed(sender: Node, receiver: Node, sealed: list[Any]) -> tuple[int, Any]:
    notices = [make_notice(sender.identity, s.cid, receiver.did, sender.now()) for s in sealed]
    body = dagcbor.encode({"notices": notices, "blocks": [s.block for s in sealed]})
    async with aiohttp.ClientSession() as session, session.post(
            receiver.config.endpoint + NOTICES_PATH, data=body,
            headers={"Content-Type": "application/cbor"}) as resp:
        raw = await resp.read()
        return resp.status, (dagcbor.decode(raw) if resp.status == 200 else raw)


async def test_a_reply_to_a_refused_document_of_its_batch_is_not_stored(trio: Trio) -> None:
    """A reply may link a document of its own batch only if that one is stored with
    it: Mallory answers a second envelope of a document she sent before (refused as
    a duplicate) in the same batch; the reply is refused too, nothing dangles."""
    seller, mallory = trio.seller, trio.mallory
    doc = crafted(mallory, seller.did)
    first = kenvelope.seal(doc, mallory.identity)
    status, _ = await _post_sealed(mallory, seller, [first])
    assert status == 200
    before = await state(seller)
    again = kenvelope.seal(doc, mallory.identity)  # the same signed document
    assert again.cid != first.cid and again.digest == first.digest
    reply = kenvelope.seal(crafted(mallory, seller.did, thread=again.cid, prev=[again.cid],
                                   ref="R-1"), mallory.identity)
    status, answer = await _post_sealed(mallory, seller, [reply, again])
    assert status == 200
    assert [(a.status, a.reason) for a in map(open_ack, answer["acks"])] == [
        ("rejected", "unknown_prev"), ("rejected", "duplicate")]
    assert await state(seller) == before


async def test_a_reply_whose_root_the_quota_leaves_out_waits_for_it(trio: Trio) -> None:
    """The quota takes a batch's documents in notice order: a reply placed before
    the first document it answers, with room for one document left, is not stored
    without it; both are stored once the window has room (here: a new quota)."""
    from usagi_p2p.node.home import Home

    seller, mallory = trio.seller, trio.mallory
    home = Home(trio.homes["kanto"])
    config = home.load_config()
    config.partner_quotas[mallory.did] = {"docs": 1}
    home.save_config(config)
    before = await state(seller)
    root = kenvelope.seal(crafted(mallory, seller.did), mallory.identity)
    reply = kenvelope.seal(crafted(mallory, seller.did, thread=root.cid, prev=[root.cid],
                                   ref="R-2"), mallory.identity)
    status, _ = await _post_sealed(mallory, seller, [reply, root])
    assert status == 429
    assert await state(seller) == before  # neither: the reply alone would dangle
    config.partner_quotas[mallory.did] = {"docs": 10}
    config.quota_period = 60  # a new window: the refused partner may send again
    home.save_config(config)
    # (the window the refusal closed is the old day's; a 60 s period starts a new one)
    status, answer = await _post_sealed(mallory, seller, [reply, root])
    assert status == 200, answer
    assert [a.status for a in map(open_ack, answer["acks"])] == ["received", "received"]
    code, out = await usagi(trio.homes["kanto"], "thread", str(reply.cid))
    assert code == 0, out
