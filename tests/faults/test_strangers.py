"""A partner prying at blocks that are not its own, against real nodes on loopback.

docs/spec.md §11.1 and §11.3. Each test checks both that the attack is held
and that nothing the node already held was lost or changed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from kernel import dagcbor
from kernel.cid import CID
from kernel.messages import make_notice, open_ack
from usagi_p2p.httpsig import sign_request
from usagi_p2p.node import NOTICES_PATH, Node
from usagi_p2p.peer import REPLAY_KEY

from ..node.conftest import Pair, make_home, pair, start  # noqa: F401  (the fixture)

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]


async def snapshot(node: Node) -> tuple[Any, ...]:
    """Every ledger row count and every stored block: what an attack must not change."""
    counts = []
    for table in ("documents", "acks", "nonces", "outbox", "partners", "invitations"):
        async with node.ledger.db.execute(f"SELECT count(*) FROM {table}") as cur:  # noqa: S608
            counts.append((await cur.fetchone())[0])
    async with node.ledger.db.execute("SELECT cid, signed FROM documents ORDER BY cid") as cur:
        documents = list(await cur.fetchall())
    async with node.store._conn.execute("SELECT cid, data FROM blocks ORDER BY cid") as cur:  # noqa: SLF001
        blocks = list(await cur.fetchall())
    return tuple(counts), documents, blocks


async def send_and_ack(p: Pair, n: int, ref: str) -> list[CID]:
    """The seller sends ``n`` quotes to the buyer; each must come back acknowledged."""
    results = await p.seller.send_many([("quote", "Osaka", {"ref": f"{ref}-{i}", "lines": LINES},
                                         None) for i in range(n)])
    for result in results:
        ack = await p.seller.wait_for_ack(result.cid, timeout=30)
        assert ack is not None, f"{result.cid} not acknowledged"
        assert ack[1] == "received", ack
    return [r.cid for r in results]


async def buyer_has(p: Pair, cids: list[CID]) -> bool:
    return all([await p.buyer.ledger.document(cid) is not None for cid in cids])


def _without_date(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "date"}


# -- 15. what a partner can learn about blocks that are not its own ----------------------


@contextlib.asynccontextmanager
async def third_partner(p: Pair) -> AsyncIterator[Node]:
    """A third node, serving, paired with the seller (a partner, no party to its trades)."""
    third, service = await start(make_home(p.seller.home.path.parent / "third", "Third KK"))
    try:
        await third.add_partner((await p.seller.invite()).text())
        yield third
    finally:
        await service.close()
        await third.close()


def _statements(trace: list[str]) -> list[str]:
    """SQL as run, with the literals (CIDs, DIDs, times) taken out."""
    return [re.sub(r"X'[0-9A-Fa-f]*'|'[^']*'|\b\d+(\.\d+)?\b", "?", s) for s in trace]


async def test_a_partner_cannot_tell_held_blocks_from_absent_ones(pair: Pair) -> None:  # noqa: F811
    seller = pair.seller
    held = (await send_and_ack(pair, 1, "Q-other-trade"))[0]  # between seller and buyer only
    absent = CID.for_block(b"\xa1ac\x40never stored")
    async with third_partner(pair) as third, aiohttp.ClientSession() as session:
        answers = []
        traces = []
        for cid in (held, absent):
            trace: list[str] = []
            await seller.ledger.db.set_trace_callback(trace.append)
            path = f"/ipfs/{cid}"
            for method in ("GET", "HEAD"):
                headers = sign_request(third.identity, method, path, "format=raw")
                async with session.request(method, f"{seller.config.endpoint}{path}?format=raw",
                                           headers=headers) as resp:
                    body = await resp.read()
                    answers.append((method, resp.status, _without_date(dict(resp.headers)),
                                    body.replace(str(cid).encode(), b"CID")))
            await seller.ledger.db.set_trace_callback(None)
            traces.append(_statements(trace))
        # Same status, headers and body; and the ledger was asked the same questions.
        assert answers[:2] == answers[2:], answers
        assert answers[0][1] == 404
        assert traces[0] == traces[1], traces

        # Through a notice: naming a block the seller holds (from another trade) or an
        # absent one, the third partner gets the same answer (it does not get the seller's copy).
        before = await snapshot(seller)
        acks = []
        for cid in (held, absent):
            batch = dagcbor.encode({"notices": [make_notice(third.identity, cid, seller.did,
                                                            third.now())]})
            async with session.post(seller.config.endpoint + NOTICES_PATH, data=batch,
                                    headers={"Content-Type": "application/cbor"}) as resp:
                assert resp.status == 200
                ack = open_ack(dagcbor.decode(await resp.read())["acks"][0])
                acks.append((ack.status, ack.reason))
        assert acks[0] == acks[1] == ("rejected", "block_not_found"), acks
        assert (await snapshot(seller))[1:] == before[1:]  # documents and blocks unchanged


async def test_one_partner_cannot_fill_the_replay_memory_of_others(pair: Pair) -> None:  # noqa: F811
    seller = pair.seller
    guard = pair.seller_service.app[REPLAY_KEY]
    guard.per_signer = 5
    buyers_block = (await send_and_ack(pair, 1, "Q-buyer"))[0]
    async with third_partner(pair) as third, aiohttp.ClientSession() as session:
        result = await seller.send("quote", "Third", {"ref": "Q-third", "lines": LINES})
        assert await seller.wait_for_ack(result.cid, timeout=30)

        async def fetch(who: Node, cid: CID) -> int:
            path = f"/ipfs/{cid}"
            headers = sign_request(who.identity, "GET", path, "format=raw")
            async with session.get(f"{seller.config.endpoint}{path}?format=raw",
                                   headers=headers) as resp:
                await resp.read()
                return resp.status

        # The buyer uses up its share of the window ...
        assert [await fetch(pair.buyer, buyers_block) for _ in range(6)] == [200] * 5 + [404]
        assert guard.held(pair.buyer.did) == 5
        # ... and the third partner is served all the same.
        assert await fetch(third, result.cid) == 200
        assert guard.held(third.did) == 1


async def test_an_unpadded_signature_is_the_concealed_404(pair: Pair) -> None:  # noqa: F811
    held = (await send_and_ack(pair, 1, "Q-sig"))[0]
    absent = CID.for_block(b"never stored here either")
    async with aiohttp.ClientSession() as session:
        answers = []
        for cid, unpad in ((held, True), (absent, False)):
            path = f"/ipfs/{cid}"
            headers = sign_request(pair.buyer.identity, "GET", path, "format=raw")
            if unpad:  # RFC 4648 without its "==": an otherwise valid signature
                headers["Signature"] = headers["Signature"].replace("==:", ":")
            async with session.get(f"{pair.seller.config.endpoint}{path}?format=raw",
                                   headers=headers) as resp:
                answers.append((resp.status, _without_date(dict(resp.headers)),
                                (await resp.read()).replace(str(cid).encode(), b"CID")))
    assert answers[0] == answers[1] and answers[0][0] == 404, answers
