"""Batches in flight at once each keep what they learned to themselves (issue 15).

What a batch reads of the ledger (replays, rotation aliases, documents held)
is judged as one snapshot, passed along as arguments: it used to sit on the
shared node (``Node._aliases``), where a batch read later overwrote it under
a batch still fetching. The victim here is a real node on 127.0.0.1; the
partner is crafted (its own aiohttp server is its gateway), so that one
batch can be held at its fetch while another is read, judged and stored.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._document import format_time
from kernel._identity import Identity
from kernel._messages import make_notice, open_ack
from kernel._rotation import make_rotation
from usagi_p2p.node.node import NOTICES_PATH, ROTATE_PATH

from .conftest import make_home
from .test_hostile_partner import introduce, post, server, victim

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]


def quote(sender: Identity, to: str, issued_at: str, **links: Any) -> dict[str, Any]:
    document = {"v": 1, "kind": "quote", "from": sender.did, "to": to, "ref": "Q-1",
                "issued_at": issued_at, "lines": LINES}
    document.update(links)
    return document


async def test_a_batch_is_judged_on_its_own_snapshot_while_another_is_stored(
        tmp_path: Path) -> None:
    """Batch A, from a partner's old key, is read before that partner moves to its new
    key and held at its fetch; batch B, from the new key, is read after the move and
    stored meanwhile. A's reply answers B's document: by A's own snapshot that is a
    document of another key, not known yet as this partner's (``unknown_prev``, which
    the sender retries), whatever B learned since. Sent again, A is read with the
    rotation known, and taken. (With the snapshot on the shared node, A was judged
    with B's aliases read in the middle of A's own work.)"""
    old, new = Identity.generate(), Identity.generate()
    fetching, release = asyncio.Event(), asyncio.Event()
    async with server() as partner, \
            victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        status, answer = await introduce(v, old, partner.url)
        assert status == 200, answer
        now = v.node.now()
        root = kenvelope.seal(quote(new, v.node.did, format_time(now)), new)
        reply = kenvelope.seal(quote(old, v.node.did, format_time(now + timedelta(seconds=1)),
                                     kind="order", thread=root.cid, prev=[root.cid]), old)

        async def held_back(request: web.Request) -> web.StreamResponse:
            fetching.set()
            await release.wait()
            return web.Response(body=reply.block, content_type="application/vnd.ipld.raw")

        partner.routes[f"/ipfs/{reply.cid}"] = held_back
        notice_a = make_notice(old, reply.cid, v.node.did, now)
        batch_a = asyncio.create_task(post(v.url + NOTICES_PATH,
                                           dagcbor.encode({"notices": [notice_a]})))
        await asyncio.wait_for(fetching.wait(), 20)
        # A is read and fetching: the partner moves to its new key ...
        status, answer = await post(v.url + ROTATE_PATH,
                                    make_rotation(old, new, now, now + timedelta(days=1)))
        assert status == 200, answer
        # ... and batch B, from the new key, is read, judged and stored meanwhile.
        status, answer = await post(v.url + NOTICES_PATH, dagcbor.encode({
            "notices": [make_notice(new, root.cid, v.node.did, now)], "blocks": [root.block]}))
        assert status == 200, answer
        ack_b = open_ack(dagcbor.decode(answer)["acks"][0])
        assert (ack_b.cid, ack_b.status) == (root.cid, "received")
        assert not batch_a.done()
        release.set()
        status, answer = await batch_a
        assert status == 200, answer
        ack_a = open_ack(dagcbor.decode(answer)["acks"][0])
        assert (ack_a.cid, ack_a.status, ack_a.reason) == (reply.cid, "rejected", "unknown_prev")
        assert await v.node.ledger.document(reply.cid) is None
        # Sent again (same notice), A is read with the rotation known: the same
        # partner's trade, taken.
        status, answer = await post(v.url + NOTICES_PATH, dagcbor.encode({
            "notices": [notice_a], "blocks": [reply.block]}))
        assert status == 200, answer
        ack_a = open_ack(dagcbor.decode(answer)["acks"][0])
        assert (ack_a.cid, ack_a.status) == (reply.cid, "received")
        stored = await v.node.ledger.document(reply.cid)
        assert stored is not None and stored.thread == root.cid
