"""A partner that is down: bounded retries, then 'undelivered', then 'usagi outbox retry'."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from kernel._messages import open_ack
from kernel.cid import CID
from kernel.errors import UsagiError
from usagi_p2p.peer.service import Service

from .conftest import REPO, Pair


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_down_partner_retries_then_undelivered_then_retry_delivers(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    await pair.seller_service.close()  # this test drives delivery itself, on its own clock
    await pair.buyer_service.close()  # the partner goes down
    clock = Clock(seller.clock())
    seller.clock = clock
    seller.max_attempts = 4
    result = await seller.send("quote", "Osaka", {"ref": "Q-down", "lines": [{"text": "bolts"}]})
    waits = []
    for _ in range(20):
        outbox = (await seller.ledger.outbox())[0]
        if outbox.state == "undelivered":
            break
        clock.now = max(clock.now, outbox.next_attempt)
        waits.append(outbox.next_attempt)
        await seller.deliver_once()
    row = await seller.ledger.document(result.cid)
    assert row is not None and row.status == "undelivered"
    assert "undelivered after 4 attempts" in (row.reason or "")
    assert "cannot reach Osaka Precision" in (row.reason or "")
    # Bounded exponential backoff: each wait longer than the one before it.
    gaps = [b - a for a, b in zip(waits, waits[1:], strict=False)]
    assert all(g > 0 for g in gaps)
    assert await seller.ledger.ack(result.cid) is None
    # Listed as undelivered (found through the outbox's index: ledger._document_where),
    # also for its partner, and not among the other states.
    from usagi_p2p.node import operations
    for who in (None, "Osaka"):
        page = await operations.page_documents(seller, direction="out", status="undelivered",
                                               partner=who)
        assert [e.cid for e in page.entries] == [result.cid]
    assert not (await operations.page_documents(seller, direction="in",
                                                status="undelivered")).entries
    assert not (await operations.page_documents(seller, status="delivered")).entries

    # The partner comes back; 'usagi outbox retry' (a real CLI process) delivers.
    service = Service(buyer)
    await service.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "usagi_p2p", "--home", str(seller.home.path), "--json",
            "outbox", "retry", env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b'"requeued": 1' in out
        ack = await seller.ledger.ack(result.cid)
        assert ack is not None and open_ack(ack[0]).status == "received"
        assert (await seller.ledger.document(result.cid)).status == "delivered"
        assert await buyer.ledger.count_documents("in") == 1
        assert not (await operations.page_documents(seller, status="undelivered")).entries
    finally:
        await service.close()


async def test_suspended_partner_is_not_sent_to(pair: Pair) -> None:
    await pair.seller.ledger.set_partner(pair.buyer.did, status="suspended")
    try:
        await pair.seller.send("quote", "Osaka", {"lines": [{"text": "bolts"}]})
    except Exception as exc:  # noqa: BLE001
        assert getattr(exc, "code", "") == "unknown_partner"
    else:
        raise AssertionError("sending to a suspended partner must fail")
    assert await pair.seller.ledger.count_documents() == 0


async def test_two_deliveries_of_one_notice_hand_over_the_ack_that_is_stored(pair: Pair) -> None:
    """One notice delivered by two processes on the seller's home (e.g. a `serve`
    that started and released the leases while another process's batch was out).
    The receiver answers both, with acks signed apart; the seller keeps the first
    one stored, and whoever waits gets exactly that one."""
    from usagi_p2p.node.node import Node

    seller, buyer = pair.seller, pair.buyer
    await pair.seller_service.close()  # this test drives delivery itself
    other = Node.load(seller.home, None)  # the second process
    await other.open()
    real = buyer.ledger.record_received_checked
    entered, release, calls = asyncio.Event(), asyncio.Event(), 0

    async def first_commits_last(items, **kwargs):  # noqa: ANN001, ANN003, ANN202
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await release.wait()
            return await real(items, **kwargs)
        result = await real(items, **kwargs)
        release.set()
        return result

    buyer.ledger.record_received_checked = first_commits_last  # type: ignore[method-assign]
    try:
        sent = await seller.send("quote", "Osaka", {"ref": "Q-twice", "lines": [{"text": "x"}]})
        waiting = asyncio.ensure_future(seller.wait_for_ack(sent.cid, 10))
        first = asyncio.ensure_future(seller.deliver_once())
        await entered.wait()
        await other.ledger.release_leases()
        assert await other.deliver_once() == 1  # answered and stored first
        assert await first == 1  # answered with another ack, which is not stored
        got = await waiting
    finally:
        await other.close()
    stored = await seller.ledger.ack(sent.cid)
    assert got == stored
    assert (await seller.ledger.document(sent.cid)).status == "delivered"  # type: ignore[union-attr]


async def test_a_small_batch_gathers_behind_the_partners_batch_in_flight(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery.loop's rule (delivery.py, GATHER, ORDER_WAIT, "In order"): with a batch
    to the partner not yet answered, notices that answer nothing in it wait GATHER for
    more to join them, then go; a reply to a document in that batch (and a reply to
    that reply) waits for its answer, or ORDER_WAIT; a partner with nothing unanswered
    gets them at once. The batches started are recorded, not sent."""
    import dataclasses

    from usagi_p2p.node.delivery import GATHER, ORDER_WAIT

    seller = pair.seller
    await pair.seller_service.close()  # this test drives the seller's delivery itself
    for i in range(4):
        await seller.send("quote", "Osaka", {"ref": f"Q-{i}", "lines": [{"text": "bolts"}]})
    first, new, reply, reply_to_reply = await seller.ledger.claim_due(seller.clock(), 100)
    did = first.partner
    assert first.prev == new.prev == ()  # quotes answer nothing
    # ``reply`` answers ``first``, ``reply_to_reply`` answers ``reply``
    reply = dataclasses.replace(reply, prev=(first.cid,))
    reply_to_reply = dataclasses.replace(reply_to_reply, prev=(reply.cid,))
    delivery = seller._delivery  # noqa: SLF001
    started: list[list[str]] = []

    def recorded(to: str, rows: list):  # noqa: ANN001, ANN202 (a coroutine, as deliver_to)
        assert to == did
        started.append([str(row.cid) for row in rows])
        return asyncio.sleep(0, len(rows))

    monkeypatch.setattr(delivery, "deliver_to", recorded)
    names = {str(first.cid): "first", str(new.cid): "new", str(reply.cid): "reply",
             str(reply_to_reply.cid): "reply_to_reply"}

    def run(since: float, rows: list, now: bool = False) -> list[list[str]]:  # noqa: ANN001
        inflight: dict = {}
        gathering = {did: (since, list(rows))} if rows else {}
        started.clear()
        delivery._start_batches(inflight, gathering, now)  # noqa: SLF001
        for task in inflight:
            task.cancel()
        waiting = [names[str(row.cid)] for _, left in gathering.values() for row in left]
        return [[names[c] for c in batch] for batch in started] + [["waiting", *waiting]]

    # Nothing unanswered: everything goes at once, in one batch, in order.
    clock = seller.clock()
    assert run(clock, [first, new, reply, reply_to_reply])[:1] == [
        ["first", "new", "reply", "reply_to_reply"]]
    # ``first`` posted and not answered yet:
    delivery._unanswered[did] = {first.cid}  # noqa: SLF001
    rows = [new, reply, reply_to_reply]
    assert run(clock, rows) == [["waiting", "new", "reply", "reply_to_reply"]]  # gathering
    assert run(clock - GATHER, rows) == [["new"], ["waiting", "reply", "reply_to_reply"]]
    assert run(clock - GATHER, [reply, reply_to_reply]) == [
        ["waiting", "reply", "reply_to_reply"]]  # behind ``first`` still
    assert run(clock - ORDER_WAIT, [reply, reply_to_reply]) == [
        ["reply", "reply_to_reply"], ["waiting"]]  # waited long enough
    assert run(clock, [reply, reply_to_reply], now=True)[0] == ["reply", "reply_to_reply"]
    # ``first`` answered: the replies go at once (``new`` is unanswered, but they
    # answer nothing in it, and they have gathered GATHER).
    delivery._unanswered[did] = {first.cid, new.cid}  # noqa: SLF001
    delivery._answered_batch(did, [first])  # noqa: SLF001
    assert delivery._answered.is_set()  # noqa: SLF001
    assert run(clock - GATHER, [reply, reply_to_reply]) == [
        ["reply", "reply_to_reply"], ["waiting"]]
    assert delivery._unanswered[did] == {new.cid, reply.cid, reply_to_reply.cid}  # noqa: SLF001
    delivery._answered_batch(did, [new, reply, reply_to_reply])  # noqa: SLF001
    assert delivery._unanswered == {}  # noqa: SLF001
    # ORDER_WAIT counts from each reply's own claim: one claimed long ago goes, one
    # claimed just now behind another unanswered batch still waits.
    late = dataclasses.replace(reply_to_reply, prev=(new.cid,))
    delivery._unanswered[did] = {first.cid, new.cid}  # noqa: SLF001
    delivery._claimed_at[late.cid] = clock  # noqa: SLF001
    assert run(clock - ORDER_WAIT, [reply, late]) == [["reply"], ["waiting", "reply_to_reply"]]
    assert delivery._gathered_until(did, clock - ORDER_WAIT, [late]) == clock + ORDER_WAIT  # noqa: SLF001
    delivery._unanswered.clear()  # noqa: SLF001


class _CountedReads:
    """Counts the ledger reads of wait_for_ack (ack_or_status), passing them through."""

    def __init__(self, node) -> None:  # noqa: ANN001
        self.calls = 0
        self.answered = asyncio.Event()  # the first read has answered
        self.real = node.ledger.ack_or_status
        node.ledger.ack_or_status = self  # the real ledger still answers

    async def __call__(self, cid):  # noqa: ANN001, ANN204
        self.calls += 1
        try:
            return await self.real(cid)
        finally:
            self.answered.set()


async def test_a_waiter_is_woken_by_the_ack_this_process_stores(pair: Pair, monkeypatch) -> None:  # noqa: ANN001
    """wait_for_ack reads the ledger once, then is handed the ack by this process's
    delivery when it stores it: no polling (ACK_POLL is made longer than the wait, so
    a waiter that needed a second read would find the ack only at its deadline)."""
    from usagi_p2p.node import delivery

    monkeypatch.setattr(delivery, "ACK_POLL", (3600.0, 3600.0))
    seller = pair.seller
    await pair.seller_service.close()  # this test drives the seller's delivery itself
    sent = await seller.send("quote", "Osaka", {"ref": "Q-woken", "lines": [{"text": "bolts"}]})
    reads = _CountedReads(seller)
    waiting = asyncio.ensure_future(seller.wait_for_ack(sent.cid, 60))
    await reads.answered.wait()  # the waiter has looked in the ledger: nothing there yet
    assert await seller.deliver_once() == 1
    got = await waiting
    assert got is not None and got == await seller.ledger.ack(sent.cid)
    assert got[1] == "received"
    assert reads.calls == 1
    # The ack as the delivery verified it, handed over opened (not verified twice);
    # bytes it did not hand over are verified when opened.
    assert seller.opened_ack(got[0]) == open_ack(got[0])
    assert seller.opened_ack(got[0]) == open_ack(got[0])  # taken: opened again
    forged = bytearray(got[0])
    forged[-1] ^= 1
    with pytest.raises(UsagiError):
        seller.opened_ack(bytes(forged))


async def test_a_waiter_hears_at_once_that_its_document_was_given_up(pair: Pair,
                                                                     monkeypatch) -> None:  # noqa: ANN001
    """A document given up by this process's delivery wakes its waiter with None (no
    ack will come), without a second ledger read."""
    from usagi_p2p.node import delivery

    monkeypatch.setattr(delivery, "ACK_POLL", (3600.0, 3600.0))
    seller = pair.seller
    await pair.seller_service.close()
    await pair.buyer_service.close()  # the partner is down
    seller.max_attempts = 1
    sent = await seller.send("quote", "Osaka", {"ref": "Q-given-up", "lines": [{"text": "x"}]})
    reads = _CountedReads(seller)
    waiting = asyncio.ensure_future(seller.wait_for_ack(sent.cid, 60))
    await reads.answered.wait()
    assert await seller.deliver_once() == 0
    assert await waiting is None
    row = await seller.ledger.document(sent.cid)
    assert row is not None and row.status == "undelivered"
    assert reads.calls == 1
async def test_a_fresh_wait_reads_no_ledger_before_or_after_its_ack(pair: Pair,
                                                                   monkeypatch) -> None:  # noqa: ANN001
    """``fresh`` (the local API, for a document it has just sent): the wait does not
    look in the ledger first. Its ack is handed over when this process's delivery
    stores it, and an ack stored before the wait began is found in memory."""
    from usagi_p2p.node import delivery

    monkeypatch.setattr(delivery, "ACK_POLL", (3600.0, 3600.0))
    seller = pair.seller
    await pair.seller_service.close()  # this test drives the seller's delivery itself
    reads = _CountedReads(seller)
    sent = await seller.send("quote", "Osaka", {"ref": "Q-fresh", "lines": [{"text": "bolts"}]})
    waiting = asyncio.ensure_future(seller.wait_for_ack(sent.cid, 60, fresh=True))
    await asyncio.sleep(0)
    assert await seller.deliver_once() == 1
    got = await waiting
    assert got is not None and got == await seller.ledger.ack(sent.cid)
    early = await seller.send("quote", "Osaka", {"ref": "Q-early", "lines": [{"text": "nuts"}]})
    assert await seller.deliver_once() == 1  # acked before anyone waits
    assert await seller.wait_for_ack(early.cid, 60, fresh=True) == await seller.ledger.ack(
        early.cid)
    assert reads.calls == 0
    # Without ``fresh`` the ledger is read, as for a document sent by another process.
    assert await seller.wait_for_ack(early.cid, 60) == await seller.ledger.ack(early.cid)
    assert reads.calls == 1


async def test_a_threads_documents_reach_a_slow_partner_in_order(
        pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An order response, its delivery note and its invoice, answered a moment apart
    (what a company's program does on an order), reach a partner that takes a while
    to store each batch without a refusal: each reply waits for the batch carrying
    what it answers (delivery.py, ORDER_WAIT). Before, the delivery note went GATHER
    later, while the order response was still being stored there, and was refused
    ``unknown_prev`` once and sent again a backoff later (bench/mesh.py: ~0.1-0.4
    extra requests per trade)."""
    from usagi_p2p.node import operations

    seller, buyer = pair.seller, pair.buyer
    quote = await operations.send(seller, "quote", {"ref": "Q-1", "lines": [
        {"text": "M6x20 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "12.50"}]},
        to=buyer.did)
    assert (await operations.await_ack(seller, quote.cid)).status == "received"
    order = await operations.answer(buyer, "order", quote.cid, {"ref": "PO-1"})
    assert (await operations.await_ack(buyer, order.cid)).status == "received"

    # The buyer's disk is slow: each batch's blocks take 0.3 s to store (the real
    # write follows, unchanged), and the batch is answered after its commit.
    put_recorded = buyer.put_recorded
    arrived: list[int] = []

    async def slow_put(blocks: Sequence[tuple[CID, bytes]]) -> None:
        arrived.append(len(blocks))
        await asyncio.sleep(0.3)
        await put_recorded(blocks)

    monkeypatch.setattr(buyer, "put_recorded", slow_put)
    caplog.set_level(logging.INFO, logger="usagi.node")
    cids = [order.cid]
    for kind, fields in (("order_response", {"response": "accept"}), ("delivery_note", {}),
                         ("invoice", {})):
        cids.append((await operations.answer(seller, kind, cids[-1], fields)).cid)
        await asyncio.sleep(0.05)  # a moment apart: longer than GATHER, shorter than 0.3 s
    for cid in cids[1:]:
        assert (await operations.await_ack(seller, cid)).status == "received"
    refusals = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(("rejecting", "delivery failed"))]
    assert refusals == []
    # Two batches: the order response alone, then what queued behind it.
    assert arrived == [1, 2]
    held = {d.cid for d in await operations.list_documents(buyer, "in", limit=10)}
    assert set(cids[1:]) <= held


async def test_documents_that_answer_nothing_in_flight_do_not_wait_for_it(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new document sent while the partner is still storing an earlier batch goes
    in a batch of its own at once (nothing in it waits for the first: delivery.py,
    "In order"): the partner holds the first batch until the second has arrived.
    Before, the second waited for the first's answer (up to ORDER_WAIT, 10 s)."""
    from usagi_p2p.node import operations

    seller, buyer = pair.seller, pair.buyer
    put_recorded = buyer.put_recorded
    arrived: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    overlapped = False

    async def held_put(blocks: Sequence[tuple[CID, bytes]]) -> None:
        nonlocal overlapped
        index = sum(event.is_set() for event in arrived)
        arrived[index].set()
        if index == 0:  # the first batch: stored once the second is here too
            await asyncio.wait_for(arrived[1].wait(), 5)
            overlapped = True
        await put_recorded(blocks)

    monkeypatch.setattr(buyer, "put_recorded", held_put)
    lines = [{"text": "M6 nut", "qty": "10", "unit": "pcs", "unit_price": "3.00"}]
    first = await operations.send(seller, "quote", {"ref": "Q-0", "lines": lines},
                                  to=buyer.did)
    await asyncio.wait_for(arrived[0].wait(), 5)  # the first batch is at the partner
    second = await operations.send(seller, "quote", {"ref": "Q-1", "lines": lines},
                                   to=buyer.did)
    for result in (first, second):
        assert (await operations.await_ack(seller, result.cid)).status == "received"
    assert overlapped


async def test_a_reply_goes_at_the_answer_to_what_it_answers_before_its_acks_are_stored(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply waiting behind the batch carrying what it answers goes as soon as the
    partner's answer to that batch is read, while this side still checks and stores
    its acks: here the seller stores the first batch's acks only once the reply has
    reached the buyer."""
    from usagi_p2p.node import operations

    seller, buyer = pair.seller, pair.buyer
    order = await operations.send(buyer, "order", {"ref": "PO-9", "lines": [
        {"text": "M6 nut", "qty": "10", "unit": "pcs", "unit_price": "3.00"}]}, to=seller.did)
    assert (await operations.await_ack(buyer, order.cid)).status == "received"
    response = await operations.answer(seller, "order_response", order.cid,
                                       {"response": "accept"})
    assert (await operations.await_ack(seller, response.cid)).status == "received"
    put_recorded = buyer.put_recorded
    reply_here = asyncio.Event()
    note: list[CID] = []

    async def watched_put(blocks: Sequence[tuple[CID, bytes]]) -> None:
        await asyncio.sleep(0.2)  # slow enough for the reply to be queued meanwhile
        await put_recorded(blocks)
        if note and any(cid == note[0] for cid, _ in blocks):
            reply_here.set()

    mark_delivered = seller.ledger.mark_delivered
    held_acks: list[int] = []

    async def slow_marks(items):  # noqa: ANN001, ANN202
        if any(item[0] == delivery_note_cid[0] for item in items):
            held_acks.append(len(items))
            await asyncio.wait_for(reply_here.wait(), 5)  # the reply went before this
        return await mark_delivered(items)

    delivery_note_cid: list[CID] = []
    monkeypatch.setattr(buyer, "put_recorded", watched_put)
    monkeypatch.setattr(seller.ledger, "mark_delivered", slow_marks)
    delivery_note = await operations.answer(seller, "delivery_note", response.cid)
    delivery_note_cid.append(delivery_note.cid)
    await asyncio.sleep(0.05)  # the delivery note is in flight (at the slow partner)
    invoice = await operations.answer(seller, "invoice", delivery_note.cid)
    note.append(invoice.cid)
    for cid in (delivery_note.cid, invoice.cid):
        assert (await operations.await_ack(seller, cid)).status == "received"
    assert held_acks == [1]


async def test_a_notice_claimed_again_while_its_batch_is_in_flight_is_not_sent_again(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch slower than its notices' lease: the loop claims them again (the lease
    ran out) but leaves them to the batch still in flight, which settles them; the
    partner gets the notice once."""
    from usagi_p2p.node import operations

    seller, buyer = pair.seller, pair.buyer
    claim_due = seller.ledger.claim_due

    async def short_lease(now: float, limit: int, lease: float = 30.0) -> list[Any]:
        return await claim_due(now, limit, 0.2)

    monkeypatch.setattr(seller.ledger, "claim_due", short_lease)
    receive = buyer.receive
    batches = 0

    async def counted(body: bytes) -> list[bytes]:
        nonlocal batches
        batches += 1
        return await receive(body)

    monkeypatch.setattr(buyer, "receive", counted)
    put_recorded = buyer.put_recorded

    async def slow_put(blocks: Sequence[tuple[CID, bytes]]) -> None:
        await asyncio.sleep(1.0)  # five leases long
        await put_recorded(blocks)

    monkeypatch.setattr(buyer, "put_recorded", slow_put)
    sent = await operations.send(seller, "quote", {"ref": "Q-slow", "lines": [
        {"text": "M6 nut", "qty": "10", "unit": "pcs", "unit_price": "3.00"}]}, to=buyer.did)
    assert (await operations.await_ack(seller, sent.cid)).status == "received"
    assert batches == 1


async def test_notices_are_claimed_in_the_order_they_were_queued(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage a reply may be due before what it answers (fewer failed
    attempts, a shorter backoff); claimed together, they are handed to delivery in
    the order queued, so when they fill more than one batch the original is in the
    first (review of the "In order" rule: else the reply went first and was
    refused unknown_prev). The same with SQLite's claim without RETURNING."""
    import usagi_p2p.node.ledger as ledger_module
    from usagi_p2p.node.delivery import SEND_BATCH

    seller = pair.seller
    await pair.seller_service.close()  # this test drives the seller's delivery itself
    first = await seller.send("quote", "Osaka", {"ref": "A", "lines": [{"text": "bolts"}]})
    reply = await seller.send("quote", "Osaka", {"ref": "B", "lines": [{"text": "bolts"}]},
                              reply_to=first.cid)
    for i in range(SEND_BATCH - 1):
        await seller.send("quote", "Osaka", {"ref": f"F-{i}", "lines": [{"text": "nuts"}]})
    now = seller.clock()
    for returning in (True, False):
        monkeypatch.setattr(ledger_module, "_RETURNING", returning)
        # as a partner outage leaves them: the original failed twice, its reply once
        await seller.ledger.write([
            ("UPDATE outbox SET attempts = 2, next_attempt = ?, lease_until = 0 WHERE cid = ?",
             (now + 9, first.cid.raw)),
            ("UPDATE outbox SET attempts = 1, next_attempt = ?, lease_until = 0 WHERE cid = ?",
             (now + 6, reply.cid.raw)),
            ("UPDATE outbox SET lease_until = 0", ())])
        rows = await seller.ledger.claim_due(now + 10, 400)
        cids = [row.cid for row in rows]
        assert len(rows) == SEND_BATCH + 1
        assert cids.index(first.cid) < cids.index(reply.cid)
        assert next(row for row in rows if row.cid == reply.cid).prev == (first.cid,)
        delivery = seller._delivery  # noqa: SLF001
        started: list[list[CID]] = []

        def recorded(to: str, batch: list, started: list = started):  # noqa: ANN001, ANN202
            started.append([row.cid for row in batch])
            return asyncio.sleep(0, len(batch))

        monkeypatch.setattr(delivery, "deliver_to", recorded)
        inflight: dict = {}
        delivery._start_batches(inflight, {rows[0].partner: (now + 10, rows)}, False)  # noqa: SLF001
        for task in inflight:
            task.cancel()
        delivery._unanswered.clear()  # noqa: SLF001 (nothing was sent)
        where = {cid: i for i, batch in enumerate(started) for cid in batch}
        assert where[first.cid] <= where[reply.cid]


async def test_an_idle_node_claims_nothing_yet_sends_what_another_process_queues(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle delivery loop reads when the next notice may be claimed and claims only
    then (delivery.py, the idle look): no write transaction a look for nothing. A
    notice another process queues (no wake here) still goes out within IDLE_MAX."""
    from usagi_p2p.node import operations
    from usagi_p2p.node.delivery import IDLE_MAX
    from usagi_p2p.node.node import Node

    seller = pair.seller
    claims: list[float] = []
    claim_due = seller.ledger.claim_due

    async def counted(now: float, limit: int, lease: float = 30.0) -> list[Any]:
        claims.append(now)
        return await claim_due(now, limit, lease)

    monkeypatch.setattr(seller.ledger, "claim_due", counted)
    await asyncio.sleep(IDLE_MAX * 2)  # the loop has backed off and looked a few times
    assert claims == []
    # Another process on the same home (a `usagi send` that could not reach the
    # local API) queues a quote; nothing wakes the serving node's loop.
    other = Node.load(seller.home, None)
    await other.open()
    try:
        sent = await operations.send(other, "quote", {"ref": "Q-other", "lines": [
            {"text": "M8 nut", "qty": "100", "unit": "pcs", "unit_price": "3"}]},
            to=pair.buyer.did)
    finally:
        await other.close()
    assert (await operations.await_ack(seller, sent.cid, timeout=IDLE_MAX * 10)
            ).status == "received"
    assert len(claims) >= 1
