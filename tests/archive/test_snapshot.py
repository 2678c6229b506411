"""The archive asks the ledger for a snapshot and a restore, and the store for what it
can do: the same archive whether the blocks come with the ledger's rows (the embedded
store's file, attached) or from the store's own API (a Kubo daemon)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from ipfs.car import CARReader
from ipfs.kubo import KuboBlockStore
from ipfs.sqlite import SQLiteBlockStore
from kernel._identity import Identity
from kernel.cid import CID
from usagi_p2p.archive.archive import export_archive, verify_archive
from usagi_p2p.node.home import Home
from usagi_p2p.node.node import Node

from .conftest import SEED_A, Traded


def _blocks(path: Path) -> set[bytes]:
    with open(path, "rb") as fp:
        return {cid.raw for cid, _ in CARReader(fp)}


def test_the_archive_is_the_same_from_an_attached_file_and_from_a_daemon(
        traded: Traded, tmp_path: Path, kubo_url: str) -> None:
    attached, fetched = tmp_path / "attached.car", tmp_path / "fetched.car"

    async def run() -> None:
        async with SQLiteBlockStore(traded.a.blocks_path) as local, \
                KuboBlockStore(kubo_url) as kubo:
            assert local.sqlite_path is not None and kubo.sqlite_path is None
            await kubo.put_many([block async for _, block in local.blocks()])
            async with Node.load(traded.a, None) as node:
                await export_archive(node, attached)
            async with Node.load(traded.a, None, store=kubo) as node:
                await export_archive(node, fetched)

    asyncio.run(run())
    one, two = (verify_archive(p, Identity(SEED_A)) for p in (attached, fetched))
    assert (one.documents, one.acks, one.threads) == (two.documents, two.acks, two.threads) \
        == (10, 10, 4)
    documents = {CID.parse(c).raw for c in traded.cids}
    assert documents <= _blocks(attached) and documents <= _blocks(fetched)


def test_export_reads_one_snapshot_while_the_ledger_is_written(traded: Traded,
                                                              tmp_path: Path) -> None:
    """Rows removed after the snapshot began are still in it, with their blocks
    and acks; the writer is not held back by the export's read (WAL)."""
    home = Home(tmp_path / "a")
    shutil.copytree(traded.a.path, home.path)

    async def run() -> None:
        async with Node.load(home, None) as node:
            with node.ledger.snapshot(blocks=node.store.sqlite_path) as snapshot:
                first = next(snapshot.pages(3))
                with sqlite3.connect(home.ledger_path, timeout=1) as con:  # committed now
                    con.execute("DELETE FROM acks")
                    con.execute("DELETE FROM documents WHERE direction = 'in'")
                rows = first + [row for page in snapshot.pages(3) for row in page]
                assert snapshot.total == len(rows) == 10
                assert all(row[9] is not None and row[11] is not None for row in rows)
            with node.ledger.snapshot(blocks=node.store.sqlite_path) as after:
                assert after.total == 6  # three quotes and three messages sent
                assert all(row[9] is None for page in after.pages(100) for row in page)

    asyncio.run(run())
