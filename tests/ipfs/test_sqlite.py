"""SQLiteBlockStore beyond the shared contract: disk damage, persistence, WAL, lifecycle."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipfs.blockstore import StoreError
from ipfs.sqlite import SQLiteBlockStore
from kernel.cid import CID
from kernel.errors import CIDMismatchError


def tamper(path: Path, cid: CID, data: bytes) -> None:
    """Overwrite a row behind the store's back, as a failing disk would."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE blocks SET data = ? WHERE cid = ?", (data, cid.raw))


async def test_corrupted_row_is_detected_on_get(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteBlockStore(path) as store:
        cid = await store.put(b"the original block")
        tamper(path, cid, b"the original blocK")
        with pytest.raises(CIDMismatchError):
            await store.get(cid)


async def test_corrupted_row_is_detected_by_blocks(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteBlockStore(path) as store:
        cid = await store.put(b"iterate me")
        tamper(path, cid, b"iterate mE")
        with pytest.raises(CIDMismatchError):
            async for _ in store.blocks():
                pass


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.binary(min_size=1, max_size=512), data=st.data())
async def test_any_flipped_byte_is_detected(
    tmp_path: Path, block: bytes, data: st.DataObject
) -> None:
    path = tmp_path / "flip.db"
    index = data.draw(st.integers(0, len(block) - 1))
    bad = bytearray(block)
    bad[index] ^= 1 << data.draw(st.integers(0, 7))
    async with SQLiteBlockStore(path) as store:
        cid = await store.put(block)
        tamper(path, cid, bytes(bad))
        with pytest.raises(CIDMismatchError):
            await store.get(cid)
        tamper(path, cid, block)  # restore for the next example


async def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteBlockStore(path) as store:
        cid = await store.put(b"kept")
        await store.pin(cid)
    async with SQLiteBlockStore(path) as store:
        assert await store.get(cid) == b"kept"
        assert await store.pins() == [cid]


async def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteBlockStore(path) as store:
        await store.put(b"x")
        assert store._db is not None
        assert list(await store._db.execute_fetchall("PRAGMA synchronous")) == [(2,)]
    with sqlite3.connect(path) as db:  # journal_mode=WAL is persistent in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA page_size").fetchone()[0])


async def test_a_new_store_has_8k_pages(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteBlockStore(path) as store:
        await store.put(b"x")
    assert page_size(path) == 8192


async def test_a_store_made_with_4k_pages_keeps_them_and_works(tmp_path: Path) -> None:
    """An earlier version's file: WAL fixes its page size, and nothing is lost."""
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL,"
                   " pinned INTEGER NOT NULL DEFAULT 0)")
        old = CID.for_block(b"old block")
        db.execute("INSERT INTO blocks (cid, data) VALUES (?, ?)", (old.raw, b"old block"))
    async with SQLiteBlockStore(path) as store:
        assert await store.get(old) == b"old block"
        new = await store.put_many([b"new %d" % i * 900 for i in range(20)])
    async with SQLiteBlockStore(path) as store:
        assert [await store.get(c) for c in new] == [b"new %d" % i * 900 for i in range(20)]
        assert await store.get(old) == b"old block"
    assert page_size(path) == 4096


async def test_schema_is_the_one_table(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteBlockStore(path):
        pass
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert names == ["blocks"]


async def test_unopened_and_closed_store_raise_store_error(tmp_path: Path) -> None:
    store = SQLiteBlockStore(tmp_path / "b.db")
    with pytest.raises(StoreError, match="not open"):
        await store.put(b"x")
    async with store:
        cid = await store.put(b"x")
    with pytest.raises(StoreError, match="closed"):
        await store.get(cid)
    with pytest.raises(StoreError, match="closed"):
        async for _ in store.blocks():
            pass
    with pytest.raises(StoreError, match="closed"):
        await store.open()


async def test_blocks_pages_through_large_stores(tmp_path: Path) -> None:
    # More keys than one page and more bytes than one data run.
    async with SQLiteBlockStore(tmp_path / "b.db") as store:
        blocks = [i.to_bytes(4, "big") * 2048 for i in range(1500)]  # 8 KiB each
        cids = await store.put_many(blocks)
        seen = [cid async for cid, _ in store.blocks()]
        assert seen == sorted(cids)


async def test_shared_connection(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with aiosqlite.connect(path) as db:
        await db.execute("CREATE TABLE ledger (x INTEGER)")
        store = await SQLiteBlockStore.on_connection(db)
        cid = await store.put(b"shared")
        await store.close()  # leaves the owner's connection open
        assert list(await db.execute_fetchall("SELECT count(*) FROM blocks")) == [(1,)]
    async with SQLiteBlockStore(path) as store:
        assert await store.get(cid) == b"shared"


async def test_a_without_rowid_store_is_converted_on_open(tmp_path: Path) -> None:
    # The layout of earlier versions: rows kept in CID order. Opening converts
    # it to a rowid table and keeps every block and pin.
    path = tmp_path / "old.db"
    blocks = [bytes([i]) * (100 + i) for i in range(20)]
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL, "
               "pinned INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")
    db.executemany("INSERT INTO blocks VALUES (?, ?, ?)",
                   [(CID.for_block(b, 0x55).raw, b, i % 2) for i, b in enumerate(blocks)])
    db.commit()
    db.close()
    async with SQLiteBlockStore(path) as store:
        for block in blocks:
            assert await store.get(CID.for_block(block, 0x55)) == block
        assert len([cid async for cid in store.blocks()]) == 20
    db = sqlite3.connect(path)
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'blocks'").fetchone()
    pinned = db.execute("SELECT count(*) FROM blocks WHERE pinned = 1").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "WITHOUT ROWID" not in sql.upper()
    assert pinned == 10 and tables == {"blocks"}


@pytest.mark.parametrize("one_call", [True, False], ids=["one call", "two calls"])
async def test_put_many_is_durable_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             one_call: bool) -> None:
    import ipfs.sqlite as store_module

    if one_call:
        assert store_module.ONE_CALL, "aiosqlite no longer has the call this path uses"
    monkeypatch.setattr(store_module, "ONE_CALL", one_call)
    blocks = [b"block %d" % i for i in range(50)]
    async with SQLiteBlockStore(str(tmp_path / "blocks.db")) as store:
        cids = await store.put_many(blocks)
        assert await store.put_many(blocks[:3]) == cids[:3]  # again: ignored, not an error
    db = sqlite3.connect(tmp_path / "blocks.db")  # another connection sees every row
    try:
        assert db.execute("SELECT count(*) FROM blocks").fetchone() == (50,)
        assert not db.in_transaction
    finally:
        db.close()


@pytest.mark.parametrize("one_call", [True, False], ids=["one call", "two calls"])
@pytest.mark.parametrize("autocommit", [False, True], ids=["own connection", "autocommit owner"])
async def test_a_failing_put_many_stores_none_of_its_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_call: bool, autocommit: bool) -> None:
    import ipfs.sqlite as store_module

    monkeypatch.setattr(store_module, "ONE_CALL", one_call)
    async with aiosqlite.connect(tmp_path / "node.db",
                                 **({"isolation_level": None} if autocommit else {})) as db:
        store = await SQLiteBlockStore.on_connection(db)
        await store.put(b"before")
        # The third block of the batch is refused by the database itself.
        await db.execute("CREATE TRIGGER refuse BEFORE INSERT ON blocks WHEN NEW.data = x'626164' "
                         "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        await db.commit()
        with pytest.raises(StoreError):
            await store.put_many([b"one", b"two", b"bad"])
        assert list(await db.execute_fetchall("SELECT count(*) FROM blocks")) == [(1,)]
        assert not db.in_transaction
        await db.execute("DROP TRIGGER refuse")
        await db.commit()
        await store.put_many([b"one", b"two"])  # the store still works
        assert list(await db.execute_fetchall("SELECT count(*) FROM blocks")) == [(3,)]
        await store.close()


async def test_the_store_s_schema_is_versioned_and_a_shared_file_s_version_is_left_alone(
        tmp_path: Path) -> None:
    from ipfs.sqlite import MIGRATIONS

    async with SQLiteBlockStore(tmp_path / "blocks.db") as store:
        await store.put(b"versioned")
    async with SQLiteBlockStore(tmp_path / "blocks.db") as store:  # nothing to do the second time
        assert await store.has(CID.for_block(b"versioned"))
    with sqlite3.connect(tmp_path / "blocks.db") as con:
        assert con.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    async with aiosqlite.connect(tmp_path / "node.db") as db:
        await db.execute("PRAGMA user_version = 7")  # the owner's own numbering
        await db.commit()
        store = await SQLiteBlockStore.on_connection(db)
        await store.put(b"shared")
        assert list(await db.execute_fetchall("PRAGMA user_version")) == [(7,)]


async def test_in_thread_still_runs_on_aiosqlite_s_own_connection_and_thread(
        tmp_path: Path) -> None:
    """``in_thread`` queues a whole function to aiosqlite's thread through two private
    names (``Connection._execute``, ``Connection._conn``; ipfs/sqlite.py says why
    they are kept). This fails the day an aiosqlite release changes what they
    mean, rather than letting the ledger and the store fall back unseen to one
    round trip per statement."""
    import threading

    from ipfs.sqlite import ONE_CALL, in_thread

    assert ONE_CALL, "aiosqlite no longer has Connection._execute and Connection._conn"
    async with aiosqlite.connect(tmp_path / "x.db") as db:
        public: list[int] = []
        await db.create_function("whose_thread", 0,
                                 lambda: public.append(threading.get_ident()) or 0)
        await db.execute_fetchall("SELECT whose_thread()")

        def ours(conn: sqlite3.Connection) -> int:
            conn.execute("CREATE TEMP TABLE mine (x)")  # visible to this connection only
            conn.execute("INSERT INTO mine VALUES (7)")
            return threading.get_ident()

        assert await in_thread(db, ours) == public[0] != threading.get_ident()
        assert list(await db.execute_fetchall("SELECT x FROM mine")) == [(7,)]


async def test_a_current_store_migrates_without_a_write_lock(tmp_path: Path) -> None:
    """``migrate`` on a current file reads ``user_version`` and stops: it does not
    wait for (or, without a busy timeout, fail on) another connection's write."""
    from ipfs.sqlite import MIGRATIONS, migrate

    path = tmp_path / "blocks.db"
    async with SQLiteBlockStore(path) as store:
        await store.put(b"kept")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM blocks")
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=0")  # a lock taken would fail at once
            await migrate(db, MIGRATIONS)
            assert list(await db.execute_fetchall("SELECT count(*) FROM blocks")) == [(1,)]
            # A step not yet applied still needs the lock, and says so.
            calls: list[int] = []

            async def step(db: aiosqlite.Connection) -> None:
                calls.append(1)

            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await migrate(db, (*MIGRATIONS, step))
            assert calls == []
        writer.execute("ROLLBACK")
    finally:
        writer.close()


async def test_a_newer_store_is_a_config_error(tmp_path: Path) -> None:
    from ipfs.sqlite import SchemaTooNewError

    path = tmp_path / "blocks.db"
    async with SQLiteBlockStore(path):
        pass
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNewError, match="upgrade") as refused:
        async with SQLiteBlockStore(path):
            pass
    assert refused.value.code == "config_error"


async def test_concurrent_batches_are_committed_together_and_all_kept(tmp_path: Path) -> None:
    """put_many calls that wait for a commit are committed as one (group commit); each
    caller gets its own CIDs, every block is there, a block put twice is kept once,
    and a batch whose caller was cancelled while it waited is not written."""
    import asyncio

    async with SQLiteBlockStore(tmp_path / "blocks.db") as store:
        batches = [[b"block %d.%d" % (i, j) for j in range(3)] for i in range(20)]
        batches.append([b"block 0.0"])  # again
        got = await asyncio.gather(*(store.put_many(batch) for batch in batches))
        assert got == [[CID.for_block(b) for b in batch] for batch in batches]
        for batch in batches:
            for block in batch:
                assert await store.get(CID.for_block(block)) == block
        first = asyncio.ensure_future(store.put_many([b"first"]))
        queued = asyncio.ensure_future(store.put_many([b"queued"]))
        await asyncio.sleep(0)  # both started: the first commits, the second waits
        queued.cancel()
        assert await first == [CID.for_block(b"first")]
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert await store.has(CID.for_block(b"first"))
        assert not await store.has(CID.for_block(b"queued"))
