"""SQLite failures are classified by SQLite's result code, never by the words of the message.

Each failure is a real one on a real database file: a write lock held by
another connection (SQLITE_BUSY), a database at its page limit (SQLITE_FULL),
one that refuses writes (SQLITE_READONLY), and a failure whose message says
"locked" without anything being locked (SQLITE_ERROR). Busy or locked is
``store_unavailable`` (temporary, 503); every other failure is ``store_error``
(docs/spec.md §14). The ledger (usagi_p2p/node/ledger.py) and the block store
(ipfs/sqlite.py) follow one rule, :func:`ipfs.sqlite.busy`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ipfs.blockstore import StoreError, StoreUnavailableError
from ipfs.sqlite import SQLiteBlockStore, busy
from usagi_p2p.node.ledger import Ledger

INSERT = "INSERT INTO invitations (nonce, expires) VALUES (?, ?)"


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection (a backup tool, a second process) holds the write lock."""
    lock = sqlite3.connect(str(path), isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN IMMEDIATE")
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def sqlite_cause(exc: BaseException) -> str:
    cause = exc.__cause__
    assert isinstance(cause, sqlite3.Error), repr(cause)
    return str(cause.sqlite_errorname)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.db.execute("PRAGMA busy_timeout=200")  # a quick test, not a patient node
        yield ledger


async def invitations(ledger: Ledger) -> int:
    rows = await ledger.db.execute_fetchall("SELECT count(*) FROM invitations")
    return int(next(iter(rows))[0])


async def test_a_write_locked_ledger_is_busy(ledger: Ledger) -> None:
    with write_locked(Path(ledger.path)), pytest.raises(StoreUnavailableError) as info:
        await ledger.write([(INSERT, (b"a", 1.0))])
    assert sqlite_cause(info.value) == "SQLITE_BUSY"
    assert info.value.code == "store_unavailable"
    assert await invitations(ledger) == 0
    await ledger.write([(INSERT, (b"a", 1.0))])  # once free, the same write goes through
    assert await invitations(ledger) == 1


async def test_a_full_ledger_is_a_store_error(ledger: Ledger) -> None:
    pages = int(next(iter(await ledger.db.execute_fetchall("PRAGMA page_count")))[0])
    await ledger.db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StoreError) as info:
        await ledger.write([(INSERT, (bytes([i]) * 4096, 1.0)) for i in range(64)])
    assert sqlite_cause(info.value) == "SQLITE_FULL"
    assert type(info.value) is StoreError and info.value.code == "store_error"
    assert await invitations(ledger) == 0  # the transaction went whole or not at all
    await ledger.db.execute("PRAGMA max_page_count=1073741823")
    await ledger.write([(INSERT, (b"a", 1.0))])
    assert await invitations(ledger) == 1


async def test_a_read_only_ledger_is_a_store_error(ledger: Ledger) -> None:
    await ledger.db.execute("PRAGMA query_only=1")
    with pytest.raises(StoreError) as info:
        await ledger.write([(INSERT, (b"a", 1.0))])
    assert sqlite_cause(info.value) == "SQLITE_READONLY"
    assert type(info.value) is StoreError


async def test_a_message_that_says_locked_is_not_a_lock(ledger: Ledger) -> None:
    # Before the result code was used, the words "locked" and "busy" in the
    # message made any failure a temporary one, to be retried for ever.
    with pytest.raises(StoreError) as info:
        await ledger.write([("INSERT INTO locked_busy (x) VALUES (?)", (1,))])
    assert "locked" in str(info.value.__cause__)
    assert sqlite_cause(info.value) == "SQLITE_ERROR"
    assert type(info.value) is StoreError


async def test_the_block_store_follows_the_same_rule(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    async with SQLiteBlockStore(path) as store:
        assert isinstance(store, SQLiteBlockStore)
        await store._conn.execute("PRAGMA busy_timeout=200")  # noqa: SLF001 (a quick test)
        with write_locked(path), pytest.raises(StoreUnavailableError) as info:
            await store.put_many([b"\xa1ab\x01", b"\xa1ab\x02"])
        assert sqlite_cause(info.value) == "SQLITE_BUSY"
        assert [cid async for cid, _ in store.blocks()] == []

        pages = int(next(iter(await store._conn.execute_fetchall("PRAGMA page_count")))[0])  # noqa: SLF001
        await store._conn.execute(f"PRAGMA max_page_count={pages}")  # noqa: SLF001
        with pytest.raises(StoreError) as info:
            await store.put_many([b"\x59\x10\x00" + bytes([i]) * 4096 for i in range(64)])
        assert sqlite_cause(info.value) == "SQLITE_FULL"
        assert type(info.value) is StoreError
        assert [cid async for cid, _ in store.blocks()] == []


def test_only_sqlite_result_codes_make_busy(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        conn.execute("SELECT 1")  # raised by the sqlite3 module: no result code at all
    assert not busy(info.value)
    assert not busy(sqlite3.OperationalError("database is locked"))  # words, no code
