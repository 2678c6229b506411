"""The embedded block store: one SQLite table in WAL mode (docs/operations.md).

Implements the :class:`ipfs.blockstore.BlockStore` contract on aiosqlite. The
schema is one table::

    blocks(cid BLOB PRIMARY KEY, data BLOB NOT NULL, pinned INTEGER NOT NULL DEFAULT 0)

keyed by the binary CIDv1 the store computes itself (the caller never names
one on ``put``). Every block handed out is hashed again against its key, so a
row damaged on disk raises :class:`kernel.errors.CIDMismatchError` instead of
returning wrong bytes.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode
``NORMAL`` only syncs at checkpoints, so a commit that returned may still be
lost on power failure. The node signs and sends an acknowledgement as soon
as ``put`` returns, and a signed ack for a block we no longer hold is a lie;
``FULL`` syncs the WAL on every commit, which makes "put returned" mean "on
disk".

A rowid table, not ``WITHOUT ROWID``: blocks are ~2 KB, half a page, and a
``WITHOUT ROWID`` table keeps whole rows in its key order, so every insert
under a random CID moved kilobytes around its B-tree (53 us of CPU per block
against 21 us, measured with batches of 100 at synchronous=FULL; reads 23
against 10 us). Rows now go in arrival order and only the small CID index is
random. A store made as ``WITHOUT ROWID`` is converted on open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import aiosqlite

from kernel.cid import CID, DAG_CBOR
from kernel.errors import UsagiError

from .blockstore import (
    DEFAULT_MAX_BLOCK,
    BlockNotFoundError,
    BlockStat,
    BlockStore,
    PinnedError,
    StoreError,
    StoreUnavailableError,
)

__all__ = ["SQLiteBlockStore", "PRAGMAS", "SCHEMA", "ONE_CALL", "in_thread", "create_private",
           "busy", "store_error", "attach_blocks", "Migration", "migrate", "MIGRATIONS",
           "SchemaTooNewError"]

T = TypeVar("T")

log = logging.getLogger("usagi.store")

#: Connection settings; ``bench/store.py`` applies the same ones to its floor.
PRAGMAS: Final = (
    # 8 KiB pages hold three ~2.5 KiB blocks where 4 KiB pages hold one (and
    # waste ~40 %): fewer pages, WAL frames and write calls per block. Only a
    # new file takes it (a WAL database keeps the page size it was made with),
    # so it comes before journal_mode, which writes the header.
    "PRAGMA page_size=8192",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    # The node may open the same file from a second connection (its ledger).
    "PRAGMA busy_timeout=5000",
)

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS blocks ("
    " cid BLOB PRIMARY KEY,"
    " data BLOB NOT NULL,"
    " pinned INTEGER NOT NULL DEFAULT 0"
    ")"
)

#: An earlier version's table kept whole rows in CID order; copied once into
#: the rowid table above, in one transaction.
_CONVERT: Final = (
    "ALTER TABLE blocks RENAME TO blocks_without_rowid",
    SCHEMA,
    "INSERT INTO blocks (cid, data, pinned) SELECT cid, data, pinned FROM blocks_without_rowid",
    "DROP TABLE blocks_without_rowid",
)

#: One schema change: statements on the connection, run inside the transaction
#: :func:`migrate` opens (so no ``executescript``, which would commit it).
Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


class SchemaTooNewError(UsagiError):
    """The database was written by a newer version of the program: upgrade it."""

    #: Not a store failure that passes: the node's files are newer than its code,
    #: which only an upgrade mends (exit 78, like every other setup problem).
    code = "config_error"


async def _user_version(db: aiosqlite.Connection, steps: int) -> int:
    version = int(next(iter(await db.execute_fetchall("PRAGMA user_version")))[0])
    if version > steps:
        raise SchemaTooNewError(
            f"the database is at schema version {version}; this version of the "
            f"program knows {steps}: upgrade it")
    return version


async def migrate(db: aiosqlite.Connection, steps: Sequence[Migration], *,
                  versioned: bool = True) -> None:
    """Apply the ``steps`` a database has not had yet, numbered by ``PRAGMA user_version``.

    Step N runs when ``user_version`` is below N, in its own ``BEGIN IMMEDIATE``
    transaction that sets ``user_version`` to N: a step is applied whole or not
    at all, and of two connections migrating one file at once the second finds
    it done (the version is read again inside the transaction). A database that
    is current takes no write lock at all: opening it never waits for another
    process's write (``serve`` busy while a CLI command opens the home). A
    database newer than ``steps`` is refused (:class:`SchemaTooNewError`) rather
    than written by code that does not know it. ``versioned=False`` (a store on
    another's connection, whose ``user_version`` is not ours) runs every step,
    which must then be idempotent, and leaves the version alone.
    """
    done = await _user_version(db, len(steps)) if versioned else 0
    for number, step in enumerate(steps, 1):
        if number <= done:
            continue  # a version never goes down: nothing to check under a lock
        await db.execute("BEGIN IMMEDIATE")
        try:
            version = await _user_version(db, len(steps)) if versioned else 0
            if version < number or not versioned:
                await step(db)
                if versioned:
                    await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")
        except BaseException:
            try:
                await db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting
            raise


async def _blocks_table(db: aiosqlite.Connection) -> None:
    """1: the blocks table, as a rowid table (see the module docstring)."""
    await db.execute(SCHEMA)
    rows = await db.execute_fetchall(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'blocks'")
    if "WITHOUT ROWID" in str(next(iter(rows))[0]).upper():
        for statement in _CONVERT:
            await db.execute(statement)


#: blocks.db's migrations (:func:`migrate`); step N brings ``user_version`` to N.
MIGRATIONS: Final[tuple[Migration, ...]] = (_blocks_table,)

#: How many keys ``blocks()`` reads per page, and how many bytes of block data
#: it holds at once: iteration stays in constant memory whatever the store's size.
_KEY_PAGE: Final = 1024
_DATA_PAGE: Final = 4 << 20


#: aiosqlite runs every call as a function queued to the connection's thread;
#: ``Connection._execute`` (and ``_conn``, the sqlite3 connection it owns) queue
#: one of ours, so a transaction of several statements is one round trip.
#: Both are private, and unchanged from aiosqlite 0.17 to 0.22; if a release
#: drops them, callers go statement by statement (one round trip each).
#:
#: Why they are kept (issue 15), though aiosqlite's public calls would do:
#: a transaction that is one call on the connection's thread is one unit there.
#: Statement by statement, the ledger's lock keeps writes apart, but a read
#: of another coroutine on the same connection runs between two statements and
#: sees rows not yet committed (a nonce whose transaction then rolls back);
#: a caller cancelled mid-transaction leaves the rest of it to a ROLLBACK it
#: must still issue; and the outbox claim commits unsynced only as one call
#: (``_lease`` in the ledger: PRAGMA, UPDATE, PRAGMA; statement by statement
#: another write could run between the PRAGMAs unsynced, so that path syncs
#: every claim). One call avoids all three. Measured cost of the public path (bench/store.py
#: and bench/exchange.py --docs 5000, three interleaved A/B rounds on a
#: shared 2-core machine at load 5-8): throughput within the noise (store
#: 1.18x vs 1.14x its raw-SQLite floor; exchange seller+buyer CPU 970 vs
#: 830 us/doc, medians), idle p50 worse without it (13.3/7.5/19.6 ms against
#: 21.3/8.8/39.3 ms). What keeps this honest: a test fails the day aiosqlite
#: changes these names (tests/ipfs/test_sqlite.py), and the public fallback
#: stays tested (``ONE_CALL`` patched off in tests/faults/test_ledger_errors.py).
ONE_CALL: Final = callable(getattr(aiosqlite.Connection, "_execute", None)) and \
    isinstance(getattr(aiosqlite.Connection, "_conn", None), property)


async def in_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection, *args)`` on ``db``'s own thread, in one round trip (needs ONE_CALL).

    A caller cancelled while ``fn`` runs does not stop it (a transaction is
    finished or rolled back whole). If ``fn`` fails and its caller has been,
    or is then, cancelled, no one is left to raise the error to, so it is
    logged rather than lost: by whichever side comes second, under a lock.
    """
    lock = threading.Lock()
    abandoned = False
    failure: Exception | None = None

    def report(exc: Exception) -> None:
        log.warning("%s failed after its caller was cancelled (rolled back): %s",
                    getattr(fn, "__name__", "a transaction"), exc)

    def run(conn: sqlite3.Connection, *args: Any) -> T:
        nonlocal failure
        try:
            return fn(conn, *args)
        except Exception as exc:
            with lock:
                if abandoned:
                    report(exc)
                else:
                    failure = exc
            raise

    try:
        result: T = await db._execute(run, db._conn, *args)  # type: ignore[no-untyped-call]
    except asyncio.CancelledError:
        with lock:
            abandoned = True
            if failure is not None:
                report(failure)
        raise
    return result


_INSERT: Final = "INSERT OR IGNORE INTO blocks (cid, data) VALUES (?, ?)"


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[bytes, bytes]]) -> None:
    # On an autocommit connection (isolation_level None: a ledger's, shared
    # through on_connection) executemany would commit row by row: open the
    # transaction ourselves. Otherwise sqlite3 opens it before the first row.
    if conn.isolation_level is None:
        conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.commit()  # commits any open transaction, whichever way it began
    except BaseException:
        try:
            conn.rollback()
        except sqlite3.Error:
            pass  # the original error is the one worth reporting
        raise


#: SQLite's primary result codes for "another connection holds the database".
#: An extended code keeps its primary code in the low byte (SQLITE_BUSY_SNAPSHOT
#: is 517 = 5 + 2 << 8).
_BUSY: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because another connection holds the database
    (SQLITE_BUSY, SQLITE_LOCKED or one of their extended codes): temporary.

    Told by SQLite's result code, never by the words of the message (a table
    named ``locked`` is no lock). An error the sqlite3 module raised itself (a
    closed connection, say) has no result code and is not busy.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _BUSY


def store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """A SQLite failure as a typed store error: busy or locked is
    :class:`StoreUnavailableError` (``store_unavailable``: 503, retry later);
    any other (SQLITE_FULL, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_READONLY, ...)
    is :class:`StoreError` (``store_error``). The message names SQLite's code."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if busy(exc):
        return StoreUnavailableError(f"{what}: busy ({name}): {exc}")
    return StoreError(f"{what} ({name}): {exc}")


def create_private(path: str | os.PathLike[str]) -> None:
    """Create the database file ``path`` empty and readable by its owner only
    (0600, whatever the umask) before SQLite opens it. SQLite would create it
    0644 less the umask, and it gives its -wal, -shm and -journal files the
    mode of the database file. An existing file, a URI or ``:memory:`` is left
    alone; a path that cannot be created is left for SQLite to report."""
    path = os.fspath(path)
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def attach_blocks(conn: sqlite3.Connection, path: str, schema: str) -> str:
    """Attach the store file ``path`` read-only to ``conn`` as ``schema``; return the
    name of its table of blocks, whose columns ``cid`` (the binary CID) and ``data``
    a reader may join to its own tables. Reading only: no one but this module
    writes a store's file. The blocks read so are the raw rows: check each
    against its CID before trusting it (``CARWriter.write`` does)."""
    conn.execute("ATTACH DATABASE ? AS " + schema, (f"file:{path}?mode=ro",))
    return f"{schema}.blocks"


class SQLiteBlockStore(BlockStore):
    """Blocks in one SQLite file. Use as ``async with SQLiteBlockStore(path) as store:``."""

    #: Nothing is ever collected: a block stays until it is deleted.
    collects_garbage = False

    def __init__(self, path: str | os.PathLike[str], *, max_block: int = DEFAULT_MAX_BLOCK):
        self.path = os.fspath(path)
        self.max_block = max_block
        self._db: aiosqlite.Connection | None = None
        self._owned = True
        self._closed = False
        # One connection is one transaction at a time: without the lock, a
        # rollback after a failed put_many could undo another task's insert
        # that was waiting for its own commit.
        self._write = asyncio.Lock()
        # Rows waiting for the batch being committed; the next commit takes them all.
        self._queued: list[tuple[list[tuple[bytes, bytes]], asyncio.Future[None]]] = []

    @classmethod
    async def on_connection(
        cls, db: aiosqlite.Connection, *, max_block: int = DEFAULT_MAX_BLOCK
    ) -> SQLiteBlockStore:
        """A store sharing the node's open connection (and database file).

        The store applies :data:`PRAGMAS`, creates its table and commits after
        each write, which also commits whatever the owner left pending: the
        owner must not hold a transaction open across an ``await``. ``close``
        leaves the connection open for its owner.
        """
        store = cls(":shared:", max_block=max_block)
        store._db = db
        store._owned = False
        await store._setup(db)
        return store

    @property
    def sqlite_path(self) -> str | None:
        # A store on another's connection, or in memory, has no file of its own to attach.
        return None if self.path in (":shared:", ":memory:") else self.path

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        if self._closed:
            raise StoreError("the block store was closed; open a new one")
        create_private(self.path)
        try:
            db = await aiosqlite.connect(self.path)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open block store {self.path!r}: {exc}") from exc
        try:
            await self._setup(db)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def _setup(self, db: aiosqlite.Connection) -> None:
        try:
            for pragma in PRAGMAS:
                await db.execute(pragma)
            mode = await db.execute_fetchall("PRAGMA journal_mode")
            if str(next(iter(mode))[0]).lower() != "wal" and self.path != ":memory:":
                raise StoreUnavailableError(f"cannot enable WAL mode on {self.path!r}")
            await db.commit()
            # On another's connection the file's user_version is its owner's.
            await migrate(db, MIGRATIONS, versioned=self._owned)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot set up block store: {exc}") from exc

    async def close(self) -> None:
        db, self._db = self._db, None
        self._closed = True
        if db is not None and self._owned:
            await db.close()

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            state = "closed" if self._closed else "not open (use 'async with' or open())"
            raise StoreError(f"the block store is {state}")
        return self._db

    # -- writes -------------------------------------------------------------

    async def put(self, block: bytes, codec: int = DAG_CBOR) -> CID:
        self._check_size(block)
        cid = CID.for_block(block, codec)
        await self._write_rows([(cid.raw, block)])
        return cid

    async def put_many(self, blocks: Iterable[bytes], codec: int = DAG_CBOR) -> list[CID]:
        items = list(blocks)
        # Refuse the whole batch before writing any of it.
        for block in items:
            self._check_size(block)
        cids = [CID.for_block(block, codec) for block in items]
        if items:
            await self._write_rows([(c.raw, b) for c, b in zip(cids, items, strict=True)])
        return cids

    async def _write_rows(self, rows: list[tuple[bytes, bytes]]) -> None:
        db = self._conn
        if ONE_CALL:
            await self._grouped(rows)
            return
        async with self._write:
            try:
                # One executemany runs inside one implicit transaction: the
                # batch is committed (and synced) once, or not at all.
                if db.isolation_level is None:  # autocommit: see _insert_rows
                    await db.execute("BEGIN IMMEDIATE")
                await db.executemany(_INSERT, rows)
                await db.commit()
            except sqlite3.Error as exc:
                await self._rollback(db)
                raise store_error("cannot store blocks", exc) from exc

    async def _grouped(self, rows: list[tuple[bytes, bytes]]) -> None:
        """Group commit: batches that arrive while one is committed wait, and the
        first of them to get the lock commits every batch waiting by then as one
        (one executemany, one sync; every row is INSERT OR IGNORE, so batches
        cannot fail one another). Eight senders at once cost one commit, not eight.
        A batch whose caller is cancelled before it is taken is not written."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((rows, done))
        try:
            async with self._write:
                if not done.done():
                    taken, self._queued = self._queued, []
                    # Shielded: every caller of the batch waits for it.
                    await asyncio.shield(asyncio.ensure_future(self._commit_rows(taken)))
        except asyncio.CancelledError:
            if (rows, done) in self._queued:
                self._queued.remove((rows, done))
            raise
        done.result()

    async def _commit_rows(self, taken: list[tuple[list[tuple[bytes, bytes]],
                                                   asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:  # _insert_rows rolls back itself on a failure
            await in_thread(self._conn, _insert_rows, [r for rows, _ in taken for r in rows])
        except sqlite3.Error as exc:
            error = store_error("cannot store blocks", exc)
            error.__cause__ = exc  # as ``raise … from exc`` would: the SQLite code stays
        except BaseException as exc:
            error = exc
        for _, done in taken:
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        if error is not None and not isinstance(error, Exception):
            raise error  # cancelled, or the interpreter stopping

    async def _modify(self, sql: str, cid: CID) -> int:
        """Run one UPDATE/DELETE and commit; return how many rows it changed."""
        db = self._conn
        async with self._write:
            try:
                cursor = await db.execute(sql, (cid.raw,))
                changed = cursor.rowcount
                await cursor.close()
                await db.commit()
            except sqlite3.Error as exc:
                await self._rollback(db)
                raise store_error("cannot update the block store", exc) from exc
        return changed

    @staticmethod
    async def _rollback(db: aiosqlite.Connection) -> None:
        try:
            await db.rollback()
        except sqlite3.Error:
            pass  # the original error is the one worth reporting

    async def pin(self, cid: CID) -> None:
        if not await self._modify("UPDATE blocks SET pinned = 1 WHERE cid = ?", cid):
            raise BlockNotFoundError(f"cannot pin {cid}: not in the store")

    async def unpin(self, cid: CID) -> None:
        await self._modify("UPDATE blocks SET pinned = 0 WHERE cid = ?", cid)

    async def delete(self, cid: CID) -> None:
        if await self._modify("DELETE FROM blocks WHERE cid = ? AND pinned = 0", cid):
            return
        # Nothing deleted: either absent (a no-op) or pinned (refused).
        if (await self._row("SELECT pinned FROM blocks WHERE cid = ?", cid)) is not None:
            raise PinnedError(f"{cid} is pinned; unpin it before deleting it")

    # -- reads --------------------------------------------------------------

    async def _row(self, sql: str, cid: CID) -> sqlite3.Row | tuple[object, ...] | None:
        try:
            rows = await self._conn.execute_fetchall(sql, (cid.raw,))
        except sqlite3.Error as exc:
            raise store_error("cannot read the block store", exc) from exc
        for row in rows:
            return row
        return None

    async def get(self, cid: CID) -> bytes:
        row = await self._row("SELECT data FROM blocks WHERE cid = ?", cid)
        if row is None:
            raise BlockNotFoundError(f"{cid} is not in the store")
        data = row[0]
        assert isinstance(data, bytes)
        cid.verify(data)  # a damaged row raises CIDMismatchError, never returns
        return data

    async def has(self, cid: CID) -> bool:
        return (await self._row("SELECT 1 FROM blocks WHERE cid = ?", cid)) is not None

    async def stat(self, cid: CID) -> BlockStat:
        row = await self._row("SELECT length(data), pinned FROM blocks WHERE cid = ?", cid)
        if row is None:
            raise BlockNotFoundError(f"{cid} is not in the store")
        size, pinned = row
        assert isinstance(size, int)
        return BlockStat(cid=cid, size=size, pinned=bool(pinned))

    async def pins(self) -> list[CID]:
        try:
            rows = await self._conn.execute_fetchall(
                "SELECT cid FROM blocks WHERE pinned = 1 ORDER BY cid"
            )
        except sqlite3.Error as exc:
            raise store_error("cannot read the block store", exc) from exc
        return [CID.from_bytes(row[0]) for row in rows]

    async def blocks(self) -> AsyncIterator[tuple[CID, bytes]]:
        """Every block in CID order, verified, in pages (constant memory).

        Keys and sizes are read first, a page at a time; the data is then read
        in runs of keys whose blocks together fit in a few MiB, so a store of
        many large blocks never sits in memory at once. Blocks inserted while
        iterating may or may not be seen.
        """
        db = self._conn
        after = b""
        while True:
            try:
                keys = list(
                    await db.execute_fetchall(
                        "SELECT cid, length(data) FROM blocks WHERE cid > ? ORDER BY cid LIMIT ?",
                        (after, _KEY_PAGE),
                    )
                )
            except sqlite3.Error as exc:
                raise store_error("cannot read the block store", exc) from exc
            if not keys:
                return
            start = 0
            while start < len(keys):
                end, total = start + 1, keys[start][1]
                while end < len(keys) and total + keys[end][1] <= _DATA_PAGE:
                    total += keys[end][1]
                    end += 1
                rows = await db.execute_fetchall(
                    "SELECT cid, data FROM blocks WHERE cid >= ? AND cid <= ? ORDER BY cid",
                    (keys[start][0], keys[end - 1][0]),
                )
                for raw, data in rows:
                    cid = CID.from_bytes(raw)
                    cid.verify(data)
                    yield cid, data
                start = end
            after = keys[-1][0]
