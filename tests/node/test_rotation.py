"""Key rotation: old key signs the move, new key confirms, overlap both ways, then revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._identity import Identity
from kernel._messages import make_notice, open_ack
from kernel._rotation import make_rotation, open_rotation
from kernel._signed import open_signed, sign
from kernel.errors import InvalidSignatureError, WrongSignerError
from usagi_p2p.company.views import verify_document
from usagi_p2p.node.node import NOTICES_PATH, Node

from .conftest import Pair

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]
NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def test_rotation_statement_needs_both_keys() -> None:
    old, new, other = Identity(b"\x01" * 32), Identity(b"\x02" * 32), Identity(b"\x03" * 32)
    statement = make_rotation(old, new, NOW, NOW + timedelta(days=14))
    rotation = open_rotation(statement)
    assert (rotation.old, rotation.new) == (old.did, new.did)
    assert rotation.overlap_until == NOW + timedelta(days=14)
    # The new key must confirm: a statement naming a key its author does not hold fails.
    body = open_signed(statement, "rotation", "old").body
    forged = dict(body, new=other.did)
    with pytest.raises(InvalidSignatureError):
        open_rotation(sign(old, "rotation", forged))
    # Only the old key can retire itself.
    with pytest.raises(WrongSignerError):
        open_rotation(sign(other, "rotation", body))
    flipped = bytearray(statement)
    flipped[10] ^= 1
    with pytest.raises(InvalidSignatureError):
        open_rotation(bytes(flipped))


async def post(node: Node, body: bytes) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.post(
            node.config.endpoint + NOTICES_PATH, data=body) as resp:
        raw = await resp.read()
        return resp.status, (dagcbor.decode(raw) if resp.status == 200 else await resp.json())


async def test_rotation_end_to_end(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    # Before: a quote sealed to the buyer's first key.
    quote = await seller.send("quote", "Osaka", {"ref": "Q-1", "lines": LINES})
    assert await seller.wait_for_ack(quote.cid, 15)
    old_buyer = buyer.identity

    statement, told = await buyer.rotate(None, timedelta(days=1))
    assert told == {"Kanto Machine Tools": "ok"}
    assert buyer.did != old_buyer.did
    # The seller now knows the new key under the same name; the old one is "rotated".
    current = await seller.resolve_partner("Osaka")
    assert current.did == buyer.did and current.active
    retired = await seller.ledger.partner(old_buyer.did)
    assert retired is not None and retired.status == "rotated"
    assert retired.rotated_to == buyer.did

    # New documents are sealed to the new key and acked by it.
    order_reply = await buyer.send("order", "Kanto", {"ref": "PO-1", "lines": LINES},
                                   reply_to=quote.cid)
    ack = await buyer.wait_for_ack(order_reply.cid, 15)
    assert ack is not None and open_ack(ack[0]).status == "received"
    invoice = await seller.send("invoice", "Osaka", {"ref": "INV-1", "lines": LINES},
                                reply_to=order_reply.cid)
    ack = await seller.wait_for_ack(invoice.cid, 15)
    assert ack is not None and open_ack(ack[0]).by == buyer.did

    # A partner's history spans its keys: the quote went to the old one.
    dids = await seller.partner_dids("Osaka")
    assert dids[0] == buyer.did and old_buyer.did in dids
    sent = await seller.ledger.documents(direction="out", partners=dids, newest=True)
    assert [r.ref for r in sent] == ["Q-1", "INV-1"]

    # Documents sealed to the old key still open, and the thread spans the rotation.
    for node in (buyer, seller):
        report = await verify_document(node, invoice.cid)
        assert report["ok"], report
    report = await verify_document(buyer, quote.cid)
    assert report["ok"], report

    # During the overlap the old key is still accepted: a late notice signed with it.
    late = kenvelope.seal({"v": 1, "kind": "message", "from": old_buyer.did, "to": seller.did,
                           "issued_at": "2026-11-22T05:00:00Z", "note": "sent before"},
                          old_buyer)
    notice = make_notice(old_buyer, late.cid, seller.did, seller.now())
    status, answer = await post(seller, dagcbor.encode({"notices": [notice],
                                                        "blocks": [late.block]}))
    assert status == 200 and open_ack(answer["acks"][0]).status == "received"  # type: ignore[index]

    # After the overlap the old key is revoked: refused, and nothing is stored.
    later = seller.clock() + 2 * 86400
    seller.clock = lambda: later
    buyer.clock = lambda: later
    before = await seller.ledger.count_documents()
    again = kenvelope.seal({"v": 1, "kind": "message", "from": old_buyer.did, "to": seller.did,
                            "issued_at": "2026-11-24T05:00:00Z", "note": "too late"}, old_buyer)
    notice = make_notice(old_buyer, again.cid, seller.did, seller.now())
    status, answer = await post(seller, dagcbor.encode({"notices": [notice],
                                                        "blocks": [again.block]}))
    assert status == 403 and answer["error"] == "unknown_sender"  # type: ignore[index]
    assert "rotated" in answer["message"]  # type: ignore[index]
    assert await seller.ledger.count_documents() == before
    # And the buyer no longer answers to its old DID.
    to_old = kenvelope.seal({"v": 1, "kind": "message", "from": seller.did, "to": old_buyer.did,
                             "issued_at": "2026-11-24T05:00:00Z", "note": "old"},
                            seller.identity)
    notice = make_notice(seller.identity, to_old.cid, old_buyer.did, buyer.now())
    status, answer = await post(buyer, dagcbor.encode({"notices": [notice],
                                                       "blocks": [to_old.block]}))
    assert status == 421 and answer["error"] == "wrong_recipient"  # type: ignore[index]


async def test_rotation_from_a_stranger_is_refused(pair: Pair) -> None:
    stranger, new = Identity.generate(), Identity.generate()
    statement = make_rotation(stranger, new, pair.seller.now(), pair.seller.now() + timedelta(1))
    async with aiohttp.ClientSession() as session, session.post(
            pair.seller.config.endpoint + "/usagi/v1/rotate", data=statement) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "unknown_sender"
    assert await pair.seller.ledger.partner(new.did) is None


async def test_rotated_key_survives_restart(pair: Pair) -> None:
    buyer = pair.buyer
    old = buyer.did
    await buyer.rotate(None, timedelta(days=1))
    reloaded = Node.load(buyer.home, None)
    assert reloaded.did == buyer.did != old
    assert [i.did for i in reloaded.retired] == [old]


async def test_a_rotation_announced_while_a_batch_is_out_costs_no_attempt(pair: Pair) -> None:
    """The partner rotates (and tells us) while answering our batch: its acks are
    signed with a key we did not know when the batch left. They are receipts."""
    seller, buyer = pair.seller, pair.buyer
    real = buyer.receive
    rotated: dict[str, str] = {}

    async def rotate_first(body: bytes) -> list[bytes]:
        if not rotated:
            _, told = await buyer.rotate(None, timedelta(days=1))  # announces to the seller
            rotated.update(told)
        return await real(body)

    buyer.receive = rotate_first  # type: ignore[method-assign]
    sent = await seller.send("quote", "Osaka", {"ref": "Q-rot", "lines": [{"text": "x"}]})
    ack = await seller.wait_for_ack(sent.cid, 10)
    assert rotated == {"Kanto Machine Tools": "ok"}
    assert ack is not None and open_ack(ack[0]).by == buyer.did  # the new key
    row = (await seller.ledger.outbox())[0]
    assert (row.state, row.attempts, row.last_error) == ("delivered", 0, None)
