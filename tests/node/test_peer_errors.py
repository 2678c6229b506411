"""Every bad input to a peer endpoint: the right status and code, and nothing stored changes."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._identity import Identity
from kernel._messages import make_notice, notice_nonce, open_ack
from kernel._signed import sign_bytes
from kernel.cid import CID
from usagi_p2p.node.httpsig import sign_request
from usagi_p2p.node.invitation import make_invitation
from usagi_p2p.node.node import INTRODUCE_PATH, MAX_BODY, NOTICES_PATH, Node
from usagi_p2p.peer.app import REPLAY_KEY

from .conftest import Pair

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]


async def snapshot(node: Node) -> tuple[Any, ...]:
    db = node.ledger.db
    counts = []
    for table in ("documents", "acks", "nonces", "outbox", "partners"):
        async with db.execute(f"SELECT count(*) FROM {table}") as cur:
            counts.append((await cur.fetchone())[0])
    blocks = sorted([cid.raw async for cid, _ in node.store.blocks()])
    return tuple(counts), blocks


async def post(node: Node, body: bytes, path: str = NOTICES_PATH) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        node.config.endpoint + path, data=body,
        headers={"Content-Type": "application/cbor"},
    ) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, json.loads(raw)
        return resp.status, dagcbor.decode(raw)


def document(sender: Node | Identity, to: str, **extra: Any) -> dict[str, Any]:
    did = sender.did
    doc = {"v": 1, "kind": "quote", "from": did, "to": to, "issued_at": "2026-11-22T05:00:00Z",
           "ref": "Q-bad", "lines": LINES}
    doc.update(extra)
    return doc


def batch(notices: list[bytes], blocks: list[bytes] | None = None) -> bytes:
    body: dict[str, Any] = {"notices": notices}
    if blocks is not None:
        body["blocks"] = blocks
    return dagcbor.encode(body)


async def test_batch_level_errors(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    sealed = kenvelope.seal(document(seller, buyer.did), seller.identity)
    good = make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
    stranger = Identity.generate()
    stranger_notice = make_notice(stranger, sealed.cid, buyer.did, seller.now())
    flipped = bytearray(good)
    flipped[10] ^= 0x01  # inside the signature
    cases = [
        ("malformed body", b"\xff\x00 not cbor", 400, "malformed"),
        ("non-canonical body", bytes.fromhex("a1676e6f7469636573") + b"\x9f\xff", 400,
         "non_canonical"),
        ("wrong shape", dagcbor.encode({"notes": []}), 400, "malformed"),
        ("empty batch", batch([]), 413, "too_large"),
        ("unknown sender", batch([stranger_notice], [sealed.block]), 403, "unknown_sender"),
        ("bad signature", batch([bytes(flipped)], [sealed.block]), 401, "invalid_signature"),
        ("wrong recipient", batch([make_notice(seller.identity, sealed.cid,
                                               Identity.generate().did, seller.now())]),
         421, "wrong_recipient"),
        ("expired", batch([make_notice(seller.identity, sealed.cid, buyer.did,
                                       seller.now() - timedelta(hours=2))]), 400, "expired"),
        ("tampered pushed block", batch([good], [sealed.block[:-1] + b"\x00"]), 422,
         "cid_mismatch"),
    ]
    before = await snapshot(buyer)
    for name, body, status, code in cases:
        got_status, answer = await post(buyer, body)
        assert (got_status, answer.get("error")) == (status, code), name
    assert await snapshot(buyer) == before


async def test_oversized_body_is_413(pair: Pair) -> None:
    before = await snapshot(pair.buyer)
    status, answer = await post(pair.buyer, b"\x00" * (MAX_BODY + 1))
    assert status == 413
    assert await snapshot(pair.buyer) == before


def rejected_reason(answer: dict[str, Any]) -> str | None:
    ack = open_ack(answer["acks"][0])
    assert ack.status == "rejected"
    return ack.reason


async def test_per_document_rejections(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    before = await snapshot(buyer)
    # Tampered ciphertext, re-hashed so the CID matches: the envelope does not open.
    sealed = kenvelope.seal(document(seller, buyer.did), seller.identity)
    env = dagcbor.decode(sealed.block)
    env["c"] = env["c"][:-1] + bytes([env["c"][-1] ^ 1])
    tampered = dagcbor.encode(env)
    notice = make_notice(seller.identity, CID.for_block(tampered), buyer.did, seller.now())
    status, answer = await post(buyer, batch([notice], [tampered]))
    assert status == 200 and rejected_reason(answer) == "decryption_failed"

    # Signed by a third key but claiming to be from the seller: wrong signer.
    forger = Identity.generate()
    body = dagcbor.encode(document(seller, buyer.did))
    forged = kenvelope.seal_signed(sign_bytes(forger, "document", body), [seller.did, buyer.did])
    notice = make_notice(seller.identity, forged.cid, buyer.did, seller.now())
    status, answer = await post(buyer, batch([notice], [forged.block]))
    assert status == 200 and rejected_reason(answer) == "wrong_signer"

    # Sealed to someone else entirely: this node is not a recipient.
    other = Identity.generate()
    elsewhere = kenvelope.seal(document(seller, other.did), seller.identity)
    notice = make_notice(seller.identity, elsewhere.cid, buyer.did, seller.now())
    status, answer = await post(buyer, batch([notice], [elsewhere.block]))
    assert status == 200 and rejected_reason(answer) == "not_recipient"

    # A block the sender neither pushes nor serves.
    ghost = CID.for_block(b"no such block")
    notice = make_notice(seller.identity, ghost, buyer.did, seller.now())
    status, answer = await post(buyer, batch([notice]))
    assert status == 200 and rejected_reason(answer) == "block_not_found"
    assert await snapshot(buyer) == before


async def test_replayed_notice_gets_the_same_ack_and_is_stored_once(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    sealed = kenvelope.seal(document(seller, buyer.did), seller.identity)
    notice = make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
    body = batch([notice], [sealed.block])
    status, first = await post(buyer, body)
    assert status == 200 and open_ack(first["acks"][0]).status == "received"
    after_first = await snapshot(buyer)
    status, second = await post(buyer, body)
    assert status == 200
    assert second["acks"][0] == first["acks"][0]
    assert await snapshot(buyer) == after_first
    assert await buyer.ledger.count_documents("in") == 1


async def test_same_block_under_a_new_notice_is_stored_once(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    sealed = kenvelope.seal(document(seller, buyer.did), seller.identity)
    for _ in range(2):
        notice = make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
        status, answer = await post(buyer, batch([notice], [sealed.block]))
        assert status == 200 and open_ack(answer["acks"][0]).status == "received"
    assert await buyer.ledger.count_documents("in") == 1


async def test_one_document_named_twice_in_a_batch_gets_one_ack(pair: Pair) -> None:
    """Two notices (two nonces) for one block in one batch: one document, one
    ack stored for it, and each notice answered for its own nonce (a sender
    takes an ack only for the nonce it sent, spec section 8); a replay of
    either gets its own answer again."""
    seller, buyer = pair.seller, pair.buyer
    sealed = kenvelope.seal(document(seller, buyer.did), seller.identity)
    notices = [make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
               for _ in range(2)]
    status, answer = await post(buyer, batch(notices, [sealed.block]))
    assert status == 200
    acks = [open_ack(raw) for raw in answer["acks"]]
    assert [a.status for a in acks] == ["received", "received"]
    assert [a.nonce for a in acks] == [notice_nonce(n) for n in notices]
    assert acks[0].digest == acks[1].digest == sealed.digest
    assert (await buyer.ledger.ack(sealed.cid))[0] == answer["acks"][0]  # type: ignore[index]
    counts, _ = await snapshot(buyer)
    assert counts[:3] == (1, 1, 2)  # documents, acks, nonces
    for notice, first in zip(notices, answer["acks"], strict=True):
        status, again = await post(buyer, batch([notice]))
        assert status == 200 and again["acks"] == [first]


async def test_removed_partner_is_refused(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    await buyer.ledger.set_partner(seller.did, status="removed")
    before = await snapshot(buyer)
    sealed = kenvelope.seal(document(seller, buyer.did), seller.identity)
    notice = make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
    status, answer = await post(buyer, batch([notice], [sealed.block]))
    assert (status, answer["error"]) == (403, "unknown_sender")
    assert await snapshot(buyer) == before


async def test_expired_or_unknown_introduction_is_refused(pair: Pair) -> None:
    seller = pair.seller
    newcomer = Identity.generate()
    before = await snapshot(seller)
    # An introduction answering no invitation of ours.
    intro = make_invitation(newcomer, "Nobody Ltd", "http://127.0.0.1:9", seller.now(),
                            type="introduction")
    status, answer = await post(seller, intro.raw, INTRODUCE_PATH)
    assert (status, answer["error"]) == (403, "unknown_partner")
    # An invitation that expired before it was pasted.
    invitation = make_invitation(seller.identity, "Kanto", seller.config.endpoint,
                                 seller.now() - timedelta(days=8))
    with pytest.raises(Exception) as info:
        await pair.buyer.add_partner(invitation.text())
    assert getattr(info.value, "code", None) == "invalid_invitation"
    counts, blocks = await snapshot(seller)
    assert counts[4] == before[0][4] and blocks == before[1]


async def test_gateway_serves_only_a_party(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    result = await seller.send("quote", "Osaka", {"ref": "Q-gw", "lines": LINES})
    assert await seller.wait_for_ack(result.cid, timeout=15)
    path = f"/ipfs/{result.cid}"

    async def fetch(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        url = seller.config.endpoint + path + "?format=raw"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
            return r.status, await r.read()

    status, data = await fetch(path, sign_request(buyer.identity, "GET", path, "format=raw",
                                                  created=int(buyer.clock())))
    assert status == 200 and hashlib.sha256(data).digest() == result.cid.digest
    unknown = await fetch(path, {})
    stranger = await fetch(path, sign_request(Identity.generate(), "GET", path, "format=raw",
                                              created=int(buyer.clock())))
    absent_path = f"/ipfs/{CID.for_block(b'absent')}"
    absent = await fetch(absent_path,
                         sign_request(buyer.identity, "GET", absent_path, "format=raw",
                                      created=int(buyer.clock())))
    assert unknown[0] == stranger[0] == absent[0] == 404, (unknown, stranger, absent)
    # Only the request that was served is remembered against replay: a stranger's
    # signed requests cannot fill (and so flush) the guard.
    guard = pair.seller_service.app[REPLAY_KEY]
    for _ in range(5):
        await fetch(path, sign_request(Identity.generate(), "GET", path, "format=raw",
                                       created=int(buyer.clock())))
    assert len(guard) == 1
    # A refusal looks exactly like a block that does not exist.
    assert unknown[1].replace(str(result.cid).encode(), b"") == \
        absent[1].replace(str(CID.for_block(b"absent")).encode(), b"")
