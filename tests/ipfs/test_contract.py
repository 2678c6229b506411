"""The BlockStore contract (ipfs/blockstore.py), run against every store.

One suite, parametrized over the stores: whatever passes here may replace the
embedded store in the node. Store-specific behaviour (on-disk corruption, WAL,
the Kubo daemon's quirks) lives in the store's own test module.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipfs.blockstore import (
    BlockNotFoundError,
    BlockStore,
    BlockTooLargeError,
    PinnedError,
)
from ipfs.sqlite import SQLiteBlockStore
from kernel.cid import CID, DAG_CBOR, RAW

MAX_BLOCK = 64 * 1024

# To run the suite against Kubo as well, add "kubo" here (needs ipfs/kubo.py and
# the session fixture ``kubo_url`` from tests/ipfs/conftest.py):
STORES = ["sqlite", "kubo"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlockStore]:
    s: BlockStore
    if request.param == "sqlite":
        s = SQLiteBlockStore(tmp_path / "blocks.db", max_block=MAX_BLOCK)
    elif request.param == "kubo":  # pragma: no cover - enabled by the Kubo suite
        url = request.getfixturevalue("kubo_url")
        from ipfs.kubo import KuboBlockStore

        s = KuboBlockStore(url, max_block=MAX_BLOCK)
    else:  # pragma: no cover
        raise AssertionError(request.param)
    async with s:
        yield s


def unique(label: str) -> bytes:
    # Kubo keeps blocks across tests in one session: make every block new.
    return label.encode() + b"/" + os.urandom(16)


async def test_put_returns_the_cid_of_the_block(store: BlockStore) -> None:
    block = unique("put")
    cid = await store.put(block)
    assert cid == CID.for_block(block, DAG_CBOR)
    assert cid.version == 1 and cid.codec == DAG_CBOR


async def test_put_is_idempotent(store: BlockStore) -> None:
    block = unique("twice")
    first = await store.put(block)
    second = await store.put(block)
    assert first == second
    assert await store.get(first) == block


async def test_get_round_trip(store: BlockStore) -> None:
    block = unique("round trip") * 100
    assert await store.get(await store.put(block)) == block


async def test_get_absent(store: BlockStore) -> None:
    absent = CID.for_block(unique("absent"))
    with pytest.raises(BlockNotFoundError):
        await store.get(absent)
    assert not await store.has(absent)
    with pytest.raises(BlockNotFoundError):
        await store.stat(absent)


async def test_has_and_stat(store: BlockStore) -> None:
    block = unique("stat")
    cid = await store.put(block)
    assert await store.has(cid)
    stat = await store.stat(cid)
    assert (stat.cid, stat.size, stat.pinned) == (cid, len(block), False)


async def test_pin_unpin_pins(store: BlockStore) -> None:
    cid = await store.put(unique("pin"))
    await store.pin(cid)
    assert cid in await store.pins()
    assert (await store.stat(cid)).pinned
    await store.unpin(cid)
    assert cid not in await store.pins()
    assert not (await store.stat(cid)).pinned
    await store.unpin(cid)  # unpinning an unpinned block is a no-op


async def test_pin_absent(store: BlockStore) -> None:
    with pytest.raises(BlockNotFoundError):
        await store.pin(CID.for_block(unique("never stored")))


async def test_delete_refuses_pinned_then_works_after_unpin(store: BlockStore) -> None:
    block = unique("delete")
    cid = await store.put(block)
    await store.pin(cid)
    with pytest.raises(PinnedError):
        await store.delete(cid)
    assert await store.get(cid) == block  # the refusal changed nothing
    await store.unpin(cid)
    await store.delete(cid)
    assert not await store.has(cid)
    await store.delete(cid)  # deleting an absent block is a no-op


async def test_oversized_block_is_refused_and_not_stored(store: BlockStore) -> None:
    block = unique("big").ljust(MAX_BLOCK + 1, b"x")
    with pytest.raises(BlockTooLargeError):
        await store.put(block)
    assert not await store.has(CID.for_block(block))


async def test_put_many_with_one_oversized_block_stores_none(store: BlockStore) -> None:
    small = unique("small")
    big = unique("big").ljust(MAX_BLOCK + 1, b"x")
    with pytest.raises(BlockTooLargeError):
        await store.put_many([small, big])
    assert not await store.has(CID.for_block(small))


async def test_block_of_exactly_the_limit_is_accepted(store: BlockStore) -> None:
    block = unique("edge").ljust(MAX_BLOCK, b"y")
    assert await store.get(await store.put(block)) == block


async def test_put_many(store: BlockStore) -> None:
    blocks = [unique(f"many {i}") for i in range(20)]
    blocks.append(blocks[0])  # a duplicate in the batch is fine
    cids = await store.put_many(blocks)
    assert cids == [CID.for_block(b) for b in blocks]
    for cid, block in zip(cids, blocks, strict=True):
        assert await store.get(cid) == block
    assert await store.put_many([]) == []


async def test_blocks_iterates_everything_stored(store: BlockStore) -> None:
    # The contract identifies an iterated block by its multihash: a store that
    # keys blocks by hash alone (Kubo) cannot know the codec it was put with.
    blocks = {unique(f"iter {i}") for i in range(30)}
    cids = set(await store.put_many(blocks))
    seen = {}
    async for cid, data in store.blocks():
        cid.verify(data)
        seen[cid.digest] = data
    for cid in cids:
        assert seen[cid.digest] in blocks
        cid.verify(seen[cid.digest])


async def test_raw_codec(store: BlockStore) -> None:
    block = unique("raw")
    cid = await store.put(block, RAW)
    assert cid == CID.for_block(block, RAW)
    assert cid.codec == RAW
    assert await store.get(cid) == block
    assert (await store.stat(cid)).size == len(block)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.binary(max_size=4096), codec=st.sampled_from([DAG_CBOR, RAW]))
async def test_any_bytes_round_trip(store: BlockStore, block: bytes, codec: int) -> None:
    cid = await store.put(block, codec)
    assert cid == CID.for_block(block, codec)
    assert await store.get(cid) == block


# -- capabilities: what a store says it can do, callers rely on ---------------


async def test_a_store_s_sqlite_file_holds_its_blocks_read_only(store: BlockStore) -> None:
    import sqlite3

    from ipfs.sqlite import attach_blocks

    block = unique("attached")
    cid = await store.put(block)
    path = store.sqlite_path
    assert (path is not None) == isinstance(store, SQLiteBlockStore)
    if path is None:
        return
    con = sqlite3.connect(":memory:")
    try:
        table = attach_blocks(con, path, "blk")
        assert con.execute(f"SELECT data FROM {table} WHERE cid = ?",  # noqa: S608
                           (cid.raw,)).fetchone() == (block,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute(f"DELETE FROM {table}")  # noqa: S608
    finally:
        con.close()
    assert await store.get(cid) == block


async def test_a_store_that_keeps_everything_says_so(store: BlockStore) -> None:
    # The embedded store never collects garbage; a Kubo daemon does (test_kubo.py
    # shows its collector at work on an unpinned block).
    assert store.collects_garbage is not isinstance(store, SQLiteBlockStore)
