"""The ledger converts what earlier versions wrote, keeping every row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kernel.cid import CID
from usagi_p2p.node.ledger import Ledger


async def test_without_rowid_nonces_are_converted_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    sender = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    rows = [(sender, bytes([i]) * 16, CID.for_block(bytes([i])).raw, b"ack%d" % i, 1.5 + i)
            for i in range(30)]
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE nonces (sender TEXT NOT NULL, nonce BLOB NOT NULL, cid BLOB NOT NULL, "
               "ack BLOB NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (sender, nonce)) WITHOUT ROWID")
    db.executemany("INSERT INTO nonces VALUES (?,?,?,?,?)", rows)
    db.commit()
    db.close()
    async with Ledger(str(path)) as ledger:
        assert await ledger.seen_nonce(sender, bytes([7]) * 16) == (CID.for_block(b"\x07"), b"ack7")
        seen = await ledger.seen_nonces(sender, [bytes([i]) * 16 for i in range(40)])
        assert seen == {bytes([i]) * 16: b"ack%d" % i for i in range(30)}
        # still one answer per (sender, nonce)
        await ledger.record_nonce(sender, bytes([7]) * 16, CID.for_block(b"other"), b"other")
        assert await ledger.seen_nonce(sender, bytes([7]) * 16) == (CID.for_block(b"\x07"), b"ack7")
    db = sqlite3.connect(path)
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'nonces'").fetchone()
    assert db.execute("SELECT count(*) FROM nonces").fetchone()[0] == 30
    leftovers = db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE '%without_rowid%'").fetchone()
    db.close()
    assert "WITHOUT ROWID" not in sql.upper() and leftovers == (0,)


async def test_a_new_ledger_is_converted_only_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    for _ in range(2):
        async with Ledger(str(path)) as ledger:
            await ledger.record_nonce("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                                      b"n" * 16, CID.for_block(b"x"), b"a")
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM nonces").fetchone()[0] == 1
    db.close()


def _page_size(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


async def test_a_new_ledger_has_8k_pages_and_an_old_one_keeps_4k(tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    async with Ledger(str(new)):
        pass
    assert _page_size(new) == 8192

    old = tmp_path / "old.db"
    sender = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    async with Ledger(str(old)) as ledger:  # the schema is created in the 4 KiB file
        await ledger.record_nonce(sender, b"n" * 16, CID.for_block(b"x"), b"ack")
    async with Ledger(str(old)) as ledger:
        assert await ledger.seen_nonce(sender, b"n" * 16) == (CID.for_block(b"x"), b"ack")
    assert _page_size(old) == 4096


async def test_a_ledger_with_two_partners_under_one_name_opens_with_unique_names(
        tmp_path: Path) -> None:
    """Before names were unique, a partner could introduce itself again under another
    partner's name. The first one added keeps the name; the later ones are renamed."""
    from kernel.identity import Identity

    path = tmp_path / "ledger.db"
    a, b, c, d = (Identity(bytes([i]) * 32).did for i in range(1, 5))
    async with Ledger(str(path)):
        pass
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO partners (did, name, endpoint, status, added_at) VALUES "
                   "(?, ?, 'http://127.0.0.1:9', ?, ?)",
                   [(b, "Alice Co", "active", 2.0), (a, "Alice Co", "active", 1.0),
                    (c, "ALICE CO", "suspended", 3.0), (d, "Alice Co (2)", "active", 4.0)])
    db.commit()
    db.close()
    async with Ledger(str(path)) as ledger:
        names = {p.did: p.name for p in await ledger.partners()}
        assert names == {a: "Alice Co", b: "Alice Co (3)", c: "ALICE CO (4)", d: "Alice Co (2)"}
        assert (await ledger.find_partner("Alice Co")).did == a  # type: ignore[union-attr]
    async with Ledger(str(path)) as ledger:  # and once only
        assert {p.did: p.name for p in await ledger.partners()} == names
