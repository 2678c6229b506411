"""Check-then-write races on the ledger: each write decides on the row as it is.

A failed delivery attempt and the ack for the same notice can arrive at the
same time (two processes on one home, or a lease that ran out while a slow
partner answered). Whichever comes second, an ack stored is never undone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kernel import Identity
from kernel.cid import CID
from usagi_p2p.node.ledger import DocumentRow, Ledger

A = Identity(b"\x01" * 32).did
AT = "2026-12-03T00:00:00Z"


def _row(i: int) -> tuple[DocumentRow, bytes, bytes]:
    cid = CID.for_block(b"block %d" % i)
    row = DocumentRow(cid, "out", A, "order", cid, None, AT, 1.0, "queued", None,
                      b"\x12\x20" + bytes([i]) * 32, b"signed", None)
    return row, b"\x80", b"notice %d" % i


async def _state(ledger: Ledger, cid: CID) -> tuple[str, str | None, str]:
    (state, error), = await ledger._all("SELECT state, last_error FROM outbox WHERE cid = ?",
                                        (cid.raw,))
    document = await ledger.document(cid)
    assert document is not None
    return state, error, document.status


async def test_a_failure_after_the_ack_changes_nothing(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        row = _row(1)
        cid = row[0].cid
        await ledger.record_sent_many([row])
        await ledger.mark_delivered([(cid, b"ack", "received", None, AT)])
        # The last attempt of the budget fails late, after another process stored the ack.
        assert await ledger.mark_failed([cid], "timeout", [5.0], max_attempts=1) == []
        assert await _state(ledger, cid) == ("delivered", None, "delivered")
        (attempts,), = await ledger._all("SELECT attempts FROM outbox WHERE cid = ?", (cid.raw,))
        assert attempts == 0


@pytest.mark.parametrize("ack_first", [True, False], ids=["ack queued first", "failure queued first"])
async def test_a_failure_racing_the_ack_never_overwrites_delivered(tmp_path: Path,
                                                                   ack_first: bool) -> None:
    """Both writes issued at once on one ledger, in either order, many times: the
    notice ends delivered (the ack won) or, if the failure's transaction ran
    first, the ack still lands on top of it; never undelivered with an ack."""
    async with Ledger(str(tmp_path / "ledger.db")) as ledger, \
            Ledger(str(tmp_path / "ledger.db")) as other:  # a second process's connection
        rows = [_row(i) for i in range(1, 41)]
        await ledger.record_sent_many(rows)
        for row, _, _ in rows:
            cid = row.cid
            ack = ledger.mark_delivered([(cid, b"ack", "received", None, AT)])
            failed = other.mark_failed([cid], "timeout", [5.0], max_attempts=1)
            await asyncio.gather(*((ack, failed) if ack_first else (failed, ack)))
            assert await _state(ledger, cid) == ("delivered", None, "delivered")
            assert await ledger.ack(cid) == (b"ack", "received", None)


async def test_a_failure_counts_on_the_row_as_it_is(tmp_path: Path) -> None:
    """Two failures of one notice at once count two attempts, not one (no read
    of the count before the write); the budget is kept."""
    async with Ledger(str(tmp_path / "ledger.db")) as ledger, \
            Ledger(str(tmp_path / "ledger.db")) as other:
        row = _row(1)
        cid = row[0].cid
        await ledger.record_sent_many([row])
        first, second = await asyncio.gather(
            ledger.mark_failed([cid], "refused", [5.0], max_attempts=2),
            other.mark_failed([cid], "refused", [6.0], max_attempts=2))
        assert first + second == [cid]  # whichever transaction ran second gave it up
        state, error, status = await _state(ledger, cid)
        assert (state, status) == ("undelivered", "undelivered")
        assert error == "undelivered after 2 attempts: refused"
        (attempts,), = await ledger._all("SELECT attempts FROM outbox WHERE cid = ?", (cid.raw,))
        assert attempts == 2
        assert (await ledger.document(cid)).reason == error  # type: ignore[union-attr]
        # given up, it takes no more attempts, and is not given up (reported) again
        assert await ledger.mark_failed([cid], "refused", [7.0], max_attempts=2) == []
        (attempts,), = await ledger._all("SELECT attempts FROM outbox WHERE cid = ?", (cid.raw,))
        assert attempts == 2
        assert await ledger.retry_undelivered() == 1
        assert await _state(ledger, cid) == ("pending", error, "queued")
        assert await ledger.retry_undelivered() == 0


async def test_a_failure_within_the_budget_schedules_the_next_attempt(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        rows = [_row(1), _row(2)]
        await ledger.record_sent_many(rows)
        cids = [r[0].cid for r in rows]
        assert await ledger.mark_failed(cids, "busy", [5.0, 6.0], max_attempts=3,
                                        count=False) == []
        assert await ledger.mark_failed(cids, "refused", [7.0, 8.0], max_attempts=3) == []
        got = await ledger._all("SELECT attempts, next_attempt, state, last_error FROM outbox "
                                "ORDER BY next_attempt")
        assert got == [(1, 7.0, "pending", "refused"), (1, 8.0, "pending", "refused")]
        assert {(await ledger.document(c)).status for c in cids} == {"queued"}  # type: ignore[union-attr]


@pytest.mark.parametrize("one_call", [True, False], ids=["one call", "statement by statement"])
async def test_a_failure_reports_only_the_notices_it_gave_up(tmp_path: Path, one_call: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Of notices given up before and one given up now, only the one given up now is
    returned: the "undelivered" warning is logged once per notice."""
    import usagi_p2p.node.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "ONE_CALL", one_call)
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        rows = [_row(i) for i in range(1, 4)]
        await ledger.record_sent_many(rows)
        old, new, pending = (r[0].cid for r in rows)
        assert await ledger.mark_failed([old], "refused", [5.0], max_attempts=1) == [old]
        assert await ledger.mark_failed([old, new], "refused", [6.0, 7.0], max_attempts=1) == [new]
        assert await ledger.mark_failed([old, new, pending], "busy", [8.0] * 3, max_attempts=1,
                                        count=False) == []
        assert [await _state(ledger, c) for c in (old, new)] == \
            [("undelivered", "undelivered after 1 attempts: refused", "undelivered")] * 2
        assert (await _state(ledger, pending))[0] == "pending"


async def test_concurrent_writes_commit_together_each_with_its_own_answer(tmp_path: Path) -> None:
    """Writes that queue while a transaction runs are committed together (group commit:
    Ledger._run); one that fails is rolled back alone, the others are kept."""
    from ipfs.blockstore import StoreError

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_invitation(b"taken", 2e9)
        results = await asyncio.gather(
            *(ledger.add_invitation(b"nonce %d" % i, 2e9) for i in range(10)),
            ledger.add_invitation(b"taken", 2e9),  # the primary key: refused
            *(ledger.record_sent_many([_row(i)]) for i in range(10)),
            return_exceptions=True)
        assert isinstance(results[10], StoreError)
        assert [r for i, r in enumerate(results) if i != 10] == [None] * 10 + [True] * 10
        rows = await ledger._all("SELECT count(*) FROM invitations")  # noqa: SLF001
        assert rows == [(11,)]
        assert await ledger.count_documents("out") == 10
        # a cancelled write that was still queued is not written
        task = asyncio.ensure_future(asyncio.gather(
            *(ledger.add_invitation(b"late %d" % i, 2e9) for i in range(5))))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        late = await ledger._all(  # noqa: SLF001 (after the shielded commit: one thread, FIFO)
            "SELECT count(*) FROM invitations WHERE substr(nonce, 1, 5) = CAST('late ' AS BLOB)")
        # The first had begun its transaction alone (the lock was free): it runs whole;
        # the four queued behind it were taken off the queue, never written.
        assert late == [(1,)]


async def test_a_guarded_receipt_committed_with_others_writes_nothing_of_its_own(
        tmp_path: Path) -> None:
    """record_received_checked joins a group commit with its own guard: a batch whose
    signed document is held under another CID writes nothing, the batch beside it is
    stored."""
    def received(i: int, digest: int) -> tuple[DocumentRow, bytes, bytes, str, str, str, bytes]:
        cid = CID.for_block(b"in %d" % i)
        row = DocumentRow(cid, "in", A, "order", cid, None, AT, 1.0, "received", None,
                          b"\x12\x20" + bytes([digest]) * 32, b"signed", None)
        return row, b"\x80", b"ack %d" % i, "received", AT, A, b"nonce %d" % i

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        assert await ledger.record_received_checked([received(1, 7)]) == ({}, set())
        # The first runs alone (the lock is free); the two queued behind it share a commit.
        (ok_held, ok_lost), (dup_held, dup_lost), (other_held, _) = await asyncio.gather(
            ledger.record_received_checked([received(3, 8)]),
            ledger.record_received_checked([received(2, 7)]),  # digest 7 is held by "in 1"
            ledger.record_received_checked([received(4, 9)]))
        assert dup_held == {b"\x12\x20" + bytes([7]) * 32: CID.for_block(b"in 1")}
        assert dup_lost == set() and ok_held == {} and ok_lost == set() and other_held == {}
        assert await ledger.document(CID.for_block(b"in 2")) is None
        assert await ledger.seen_nonce(A, b"nonce 2") is None
        for i in (1, 3, 4):
            assert await ledger.document(CID.for_block(b"in %d" % i)) is not None
