"""A ledger that cannot be written while a batch arrives: no ack, and a clear, typed answer.

The write lock is held by another connection (as a backup tool or a second
process would); the node's busy timeout is shortened so the test is quick.
"""

from __future__ import annotations

import sqlite3

import aiohttp
import pytest

from ipfs.blockstore import StoreUnavailableError
from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._messages import make_notice
from usagi_p2p.node.node import NOTICES_PATH

from ..node.conftest import Pair, pair  # noqa: F401  (the fixture)


async def post_while_locked(p: Pair) -> tuple[int, str, bytes, int]:
    seller, buyer = p.seller, p.buyer
    doc = {"v": 1, "kind": "quote", "from": seller.did, "to": buyer.did, "ref": "Q-lock",
           "issued_at": "2026-11-22T05:00:00Z", "lines": [{"text": "bolts"}]}
    sealed = kenvelope.seal(doc, seller.identity)
    notice = make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
    await buyer.ledger.db.execute("PRAGMA busy_timeout=200")
    lock = sqlite3.connect(str(buyer.home.ledger_path), isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN IMMEDIATE")
        async with aiohttp.ClientSession() as session, session.post(
            buyer.config.endpoint + NOTICES_PATH,
            data=dagcbor.encode({"notices": [notice], "blocks": [sealed.block]}),
            headers={"Content-Type": "application/cbor"}, timeout=aiohttp.ClientTimeout(30),
        ) as resp:
            status, ctype, body = resp.status, resp.content_type, await resp.read()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    return status, ctype, body, await buyer.ledger.count_documents("in")


async def test_no_ack_while_the_ledger_cannot_be_written(pair: Pair) -> None:  # noqa: F811
    status, _, _, stored = await post_while_locked(pair)
    assert status >= 500  # no 200, hence no ack
    assert stored == 0


# Found by bench/faults.py (c2); fixed in eea1197 (node: type every ledger failure).
async def test_a_ledger_failure_is_a_typed_json_error(pair: Pair) -> None:  # noqa: F811
    status, ctype, body, _ = await post_while_locked(pair)
    assert ctype == "application/json", body[:80]
    assert b'"error"' in body


async def test_a_send_the_ledger_refuses_leaves_no_block_behind(pair: Pair) -> None:  # noqa: F811
    seller = pair.seller
    before = [cid async for cid, _ in seller.store.blocks()]
    await seller.ledger.db.execute("PRAGMA busy_timeout=200")
    lock = sqlite3.connect(str(seller.home.ledger_path), isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError):
            await seller.send("quote", "Osaka", {"lines": [{"text": "bolts"}]})
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # The sealed block was stored first, then taken back when the ledger refused.
    assert [cid async for cid, _ in seller.store.blocks()] == before
    assert await seller.ledger.count_documents("out") == 0
    # The same send works once the ledger is free.
    result = await seller.send("quote", "Osaka", {"lines": [{"text": "bolts"}]})
    assert await seller.store.has(result.cid)


async def test_cancelled_while_committing_keeps_the_cancellation_and_the_rows(
        tmp_path, monkeypatch) -> None:  # noqa: ANN001
    # A task cancelled while it awaits COMMIT: the COMMIT still runs on the
    # connection's thread. The caller must see the cancellation (not a store
    # error that would make send_many discard blocks the ledger now refers to).
    # Statement by statement (aiosqlite's public calls only):
    import asyncio

    import usagi_p2p.node.ledger as ledger_module
    from usagi_p2p.node.ledger import Ledger

    monkeypatch.setattr(ledger_module, "ONE_CALL", False)
    async with Ledger(tmp_path / "ledger.db") as ledger:
        db = ledger.db
        real = db.execute

        def cancelled_commit(sql: str, *args: object, **kw: object):  # noqa: ANN202
            if sql == "COMMIT":
                asyncio.ensure_future(real(sql, *args, **kw))  # queued to the thread

                async def cancel() -> None:
                    await asyncio.sleep(0)
                    raise asyncio.CancelledError()
                return cancel()
            return real(sql, *args, **kw)

        db.execute = cancelled_commit  # type: ignore[method-assign]
        try:
            with pytest.raises(asyncio.CancelledError):
                await ledger.write([
                    ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"a", 1.0)),
                    ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"b", 1.0))])
        finally:
            db.execute = real  # type: ignore[method-assign]
        await asyncio.sleep(0.1)
        assert (await ledger._all("SELECT count(*) FROM invitations"))[0][0] == 2


class HeldTransaction:
    """Holds the ledger's one-call transactions on the SQLite thread until
    released (``running`` once one is held, ``finished`` once it has run)."""

    def __init__(self, monkeypatch) -> None:  # noqa: ANN001
        import threading

        import usagi_p2p.node.ledger as ledger_module

        assert ledger_module.ONE_CALL, "aiosqlite no longer has the call this path uses"
        self.running, self.release, self.finished = (threading.Event(), threading.Event(),
                                                     threading.Event())
        real = ledger_module._jobs_transaction

        def held(conn, *rest):  # noqa: ANN001, ANN002, ANN202
            self.running.set()
            self.release.wait(5)
            try:
                return real(conn, *rest)
            finally:
                self.finished.set()

        monkeypatch.setattr(ledger_module, "_jobs_transaction", held)

    async def started(self) -> None:
        import asyncio

        while not self.running.is_set():  # noqa: ASYNC110 (set by the SQLite thread)
            await asyncio.sleep(0.001)


async def test_cancelled_during_a_one_call_transaction_keeps_it_whole(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    # The whole transaction is one call on the connection's thread: a task
    # cancelled while it runs sees the cancellation, and the transaction
    # still completes, all of it.
    import asyncio

    from usagi_p2p.node.ledger import Ledger

    async with Ledger(tmp_path / "ledger.db") as ledger:
        hold = HeldTransaction(monkeypatch)
        task = asyncio.ensure_future(ledger.write([
            ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"a", 1.0)),
            ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"b", 1.0))]))
        await hold.started()
        task.cancel()
        hold.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await ledger._all("SELECT count(*) FROM invitations"))[0][0] == 2


@pytest.mark.parametrize("one_call", [True, False], ids=["one call", "statement by statement"])
async def test_a_failing_transaction_stores_none_of_its_statements(tmp_path, monkeypatch,  # noqa: ANN001
                                                                   one_call: bool) -> None:
    import usagi_p2p.node.ledger as ledger_module
    from usagi_p2p.node.errors import UsagiError
    from usagi_p2p.node.ledger import Ledger

    monkeypatch.setattr(ledger_module, "ONE_CALL", one_call)
    async with Ledger(tmp_path / "ledger.db") as ledger:
        await ledger.write([("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"old", 1.0))])
        with pytest.raises(UsagiError):
            await ledger.write([
                ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"new", 1.0)),
                ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"old", 2.0))])  # duplicate
        rows = await ledger._all("SELECT nonce, expires FROM invitations")
        assert rows == [(b"old", 1.0)]
        # and the connection is usable afterwards: no transaction left open
        await ledger.write([
            ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"x", 3.0)),
            ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"y", 3.0))])
        assert len(await ledger._all("SELECT nonce FROM invitations")) == 3


@pytest.mark.parametrize("failure_first", [False, True],
                         ids=["cancellation reaches the caller first", "the failure comes first"])
async def test_a_transaction_failing_after_its_caller_left_is_logged(tmp_path, caplog,  # noqa: ANN001
                                                                     monkeypatch,  # noqa: ANN001
                                                                     failure_first: bool) -> None:
    # Cancelled while its one-call transaction runs, a caller cannot be told
    # that the transaction then failed: the failure is logged, and nothing of
    # the transaction is stored. Either order of the two events: the loop
    # may be too busy to deliver the cancellation before the thread fails.
    import asyncio
    import logging

    from usagi_p2p.node.ledger import Ledger

    async with Ledger(tmp_path / "ledger.db") as ledger:
        await ledger.write([("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"old", 1.0))])
        hold = HeldTransaction(monkeypatch)
        with caplog.at_level(logging.WARNING, logger="usagi.store"):
            task = asyncio.ensure_future(ledger.write([
                ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"new", 1.0)),
                ("INSERT INTO invitations (nonce, expires) VALUES (?, ?)", (b"old", 2.0))]))
            await hold.started()
            task.cancel()
            if failure_first:  # the loop blocked until the thread has failed
                hold.release.set()
                assert hold.finished.wait(5)
            else:
                for _ in range(3):  # let the cancellation reach the caller first
                    await asyncio.sleep(0)
                hold.release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            rows = await ledger._all("SELECT nonce FROM invitations")  # queued after it
        assert rows == [(b"old",)]
        failures = [r for r in caplog.records if "after its caller was cancelled" in r.getMessage()]
        assert len(failures) == 1 and "UNIQUE" in failures[0].getMessage()
