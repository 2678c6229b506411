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
    from kernel._identity import Identity

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


# -- migrations by PRAGMA user_version (usagi_p2p/node/schema.py) ---------------

FIXTURES = Path(__file__).parent / "fixtures"
SENDER = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def _shape(path: Path) -> dict[str, object]:
    """Every table's columns and every index, as SQLite describes them."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "ORDER BY name")]
        return {
            "columns": {t: db.execute(f"PRAGMA table_info({t})").fetchall() for t in tables},
            "indexes": db.execute("SELECT name, tbl_name, sql FROM sqlite_master "
                                  "WHERE type = 'index' ORDER BY name").fetchall(),
            "version": db.execute("PRAGMA user_version").fetchone()[0],
        }
    finally:
        db.close()


async def test_a_ledger_of_the_version_before_user_version_migrates(tmp_path: Path) -> None:
    from usagi_p2p.node.schema import VERSION

    fresh = tmp_path / "fresh.db"
    async with Ledger(str(fresh)):
        pass
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.executescript((FIXTURES / "ledger_before_user_version.sql").read_text())
    cid = CID.for_block(b"kept")
    db.execute("INSERT INTO partners (did, name, endpoint, status, added_at) VALUES "
               "(?, 'Osaka', 'http://127.0.0.1:9', 'active', 1.0)", (SENDER,))
    db.execute("INSERT INTO nonces VALUES (?, ?, ?, ?, 1.0)", (SENDER, b"n" * 16, cid.raw, b"ack"))
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone() == (0,)
    db.close()
    async with Ledger(str(old)) as ledger:
        assert (await ledger.partner(SENDER)).name == "Osaka"  # type: ignore[union-attr]
        assert await ledger.seen_nonce(SENDER, b"n" * 16) == (cid, b"ack")
    assert _shape(old) == _shape(fresh)
    assert _shape(old)["version"] == VERSION == 10


async def test_a_ledger_older_still_gets_the_columns_it_lacked(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    script = (FIXTURES / "ledger_before_user_version.sql").read_text()
    for column in ("findings TEXT", "rotated_to TEXT,", "valid_until REAL"):
        assert column in script
    db.executescript(script.replace("    findings TEXT", "    findings_gone TEXT")
                     .replace("    rotated_to TEXT,", "").replace("    valid_until REAL", "    x REAL"))
    db.close()
    async with Ledger(str(path)) as ledger:
        await ledger.add_partner(SENDER, "Osaka", "http://127.0.0.1:9", None)
        await ledger.partner_rotated(SENDER, "did:key:z6Mknew", valid_until=5.0)
        assert (await ledger.partner(SENDER)).valid_until == 5.0  # type: ignore[union-attr]
    columns = _shape(path)["columns"]
    assert {"findings", "rotated_to", "valid_until"} <= {
        c[1] for t in ("documents", "partners") for c in columns[t]}  # type: ignore[index]


async def test_a_migration_step_is_applied_whole_or_not_at_all(tmp_path: Path,
                                                               monkeypatch) -> None:  # noqa: ANN001
    import aiosqlite
    import pytest

    import usagi_p2p.node.ledger as ledger_module
    from usagi_p2p.node.schema import MIGRATIONS, VERSION

    path = tmp_path / "ledger.db"
    async with Ledger(str(path)):
        pass

    async def half_done(db: aiosqlite.Connection) -> None:
        await db.execute("CREATE TABLE half (x)")
        await db.execute("INSERT INTO nonexistent VALUES (1)")

    monkeypatch.setattr(ledger_module, "MIGRATIONS", (*MIGRATIONS, half_done))
    with pytest.raises(sqlite3.OperationalError, match="nonexistent"):
        async with Ledger(str(path)):
            pass
    shape = _shape(path)
    assert shape["version"] == VERSION and "half" not in shape["columns"]  # type: ignore[operator]
    monkeypatch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS)
    async with Ledger(str(path)) as ledger:  # and the ledger still opens
        assert await ledger.partners() == []


async def test_a_ledger_of_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    import pytest

    from ipfs.sqlite import SchemaTooNewError
    from usagi_p2p.node.errors import exit_code

    path = tmp_path / "ledger.db"
    async with Ledger(str(path)):
        pass
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = _shape(path)
    with pytest.raises(SchemaTooNewError, match="version 99.*upgrade") as refused:
        async with Ledger(str(path)):
            pass
    assert _shape(path) == before
    # Not a store that is busy for a while: the files are newer than the code (exit 78).
    assert refused.value.code == "config_error" and exit_code(refused.value.code) == 78


async def test_a_current_ledger_opens_while_another_process_writes(tmp_path: Path) -> None:
    """Opening a current ledger takes no write lock (migrate reads user_version
    first): a CLI command opens the home while serve holds a write transaction."""
    path = tmp_path / "ledger.db"
    async with Ledger(str(path)) as ledger:
        await ledger.add_partner(SENDER, "Osaka", "http://127.0.0.1:9", None)
    serve = sqlite3.connect(path, isolation_level=None)
    try:
        serve.execute("BEGIN IMMEDIATE")
        serve.execute("UPDATE partners SET endpoint = 'http://127.0.0.1:10'")
        async with Ledger(str(path)) as cli:
            assert (await cli.partner(SENDER)).endpoint == "http://127.0.0.1:9"  # type: ignore[union-attr]
        serve.execute("COMMIT")
    finally:
        serve.close()


async def test_documents_waiting_for_the_index_in_a_version_5_ledger_are_queued(
        tmp_path: Path) -> None:
    """Step 6 moves ``search_pending`` (step 4) into ``search_queue``, every row kept,
    and from then on a trigger queues each document recorded."""
    from usagi_p2p.node.schema import MIGRATIONS

    path = tmp_path / "v5.db"
    async with Ledger(str(path)):
        pass
    db = sqlite3.connect(path)  # back to version 5: the queue as step 4 made it
    db.executescript("DROP TRIGGER search_queue_document; DROP TABLE search_queue; "
                     "CREATE TABLE search_pending (cid BLOB PRIMARY KEY); PRAGMA user_version = 5;")
    waiting = [CID.for_block(bytes([i])).raw for i in range(3)]
    db.executemany("INSERT INTO search_pending (cid) VALUES (?)", [(c,) for c in waiting])
    db.commit()
    db.close()
    async with Ledger(str(path)) as ledger:
        assert await ledger.index_backlog() == 3
        # the ledger holds none of them: indexing takes them off the queue, indexes nothing
        assert await ledger.index_pending() == 0
        assert await ledger.index_backlog() == 0
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'search_pending'"
                          ).fetchone() == (0,)
    finally:
        db.close()


def _signed_rows(n: int) -> list[tuple[object, bytes]]:
    """``n`` quotes from a partner, sealed for real: (DocumentRow, prev)."""
    from kernel import dagcbor
    from kernel._envelope import seal
    from kernel._identity import Identity
    from usagi_p2p.node.ledger import DocumentRow

    me, partner = Identity(b"m" * 32), Identity(b"p" * 32)
    rows = []
    for i in range(n):
        doc = {"v": 1, "kind": "quote", "from": partner.did, "to": me.did,
               "issued_at": "2026-12-07T00:00:00Z", "ref": f"Q-{i}", "currency": "JPY",
               "lines": [{"text": f"M6 六角ナット lot {i}", "qty": "5", "unit": "pcs"}]}
        sealed = seal(doc, partner)
        rows.append((DocumentRow(sealed.cid, "in", partner.did, "quote", sealed.cid, doc["ref"],
                                 doc["issued_at"], 1.0 + i, "received", None, sealed.digest,
                                 sealed.signed, None), dagcbor.encode([])))
    return rows


async def test_documents_stored_before_step_8_read_back_with_those_deflated_after(
        tmp_path: Path) -> None:
    """Step 8: a version-7 ledger's documents stay as they were stored and read
    back unchanged; documents recorded after it are stored deflated (smaller),
    read back byte for byte, and both are indexed for search."""
    from usagi_p2p.node.ledger import Restore

    path = tmp_path / "v7.db"
    rows = _signed_rows(4)
    async with Ledger(str(path)) as ledger:
        await ledger.restore(Restore(documents=rows[:2]))
    db = sqlite3.connect(path)  # as step 7 left them: the signed bytes as they are
    for row, _ in rows[:2]:
        db.execute("UPDATE documents SET signed = ? WHERE cid = ?",
                   (row.signed, row.cid.raw))  # type: ignore[attr-defined]
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    async with Ledger(str(path)) as ledger:
        await ledger.restore(Restore(documents=rows[2:]))
        for row, _ in rows:
            assert (await ledger.document(row.cid)) == row  # type: ignore[attr-defined]
        assert await ledger.index_pending() == 0
        found = await ledger.search('"ナット"', [("ナット", [])], limit=10)
        assert {r.cid for r in found} == {row.cid for row, _ in rows}  # type: ignore[attr-defined]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (10,)
        stored = dict(db.execute("SELECT cid, signed FROM documents").fetchall())
    finally:
        db.close()
    for row, _ in rows[:2]:
        assert stored[row.cid.raw] == row.signed  # type: ignore[attr-defined]
    for row, _ in rows[2:]:
        assert stored[row.cid.raw][0] == 0
        assert len(stored[row.cid.raw]) < len(row.signed) * 0.8  # type: ignore[attr-defined]


def test_a_damaged_deflated_document_is_an_error_not_other_bytes() -> None:
    import pytest

    from usagi_p2p.node.stored import pack, unpack

    row, _ = _signed_rows(1)[0]
    packed = pack(row.signed, row.partner)  # type: ignore[attr-defined]
    assert unpack(packed, row.partner) == row.signed  # type: ignore[attr-defined]
    assert unpack(row.signed, row.partner) == row.signed  # type: ignore[attr-defined]
    for damaged in (packed[:-3], packed[:40] + bytes([packed[40] ^ 1]) + packed[41:],
                    packed + b"x"):
        with pytest.raises(ValueError, match="damaged"):
            unpack(damaged, row.partner)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="damaged"):  # another row's partner: another dictionary
        unpack(packed, row.partner.replace("z6Mk", "z6Mj"))  # type: ignore[attr-defined]


async def test_step_9_makes_the_index_again_without_positions_and_finds_the_same(
        tmp_path: Path) -> None:
    """A version-8 ledger's index (positions kept) is made again with ``detail=none``:
    every document is queued once, and a search finds what it found before, a
    term in any case of any script."""
    from usagi_p2p.node.fulltext import expression, parse_query
    from usagi_p2p.node.ledger import Restore

    path = tmp_path / "v8.db"
    rows = _signed_rows(3)
    async with Ledger(str(path)) as ledger:
        await ledger.restore(Restore(documents=rows))
    db = sqlite3.connect(path)  # the index as step 4 made it, every document indexed
    db.executescript("DROP TABLE search; CREATE VIRTUAL TABLE search USING fts5(ref, body, "
                     "partner, party, tokenize = 'trigram'); DELETE FROM search_rows; "
                     "DELETE FROM search_queue; PRAGMA user_version = 8;")
    db.commit()
    db.close()

    async def found(query: str) -> set[CID]:
        terms = parse_query(query)
        hits = await ledger.search(expression(terms, {}), [(t, []) for t in terms.terms])
        return {hit.cid for hit in hits}

    async with Ledger(str(path)) as ledger:
        assert await ledger.index_backlog() == 3
        assert await ledger.index_pending() == 0
        every = {row.cid for row, _ in rows}  # type: ignore[attr-defined]
        assert await found("六角ナット") == every
        assert await found("ナット lot 1") == {rows[1][0].cid}  # type: ignore[attr-defined]
        assert await found("q-2") == {rows[2][0].cid}  # type: ignore[attr-defined]
        assert await found("ﾅｯﾄ LOT") == every  # half-width kana, upper case
        assert await found("ナットlot") == set()  # each trigram is there, the term is not
    db = sqlite3.connect(path)
    try:
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'search'").fetchone()[0]
        assert "detail = none" in sql
        assert db.execute("SELECT count(*) FROM search").fetchone() == (3,)
    finally:
        db.close()


def test_letters_beyond_ascii_match_in_any_case() -> None:
    """``LIKE`` folds ASCII letters only: a term with others is checked by
    ``usagi_has`` (fulltext.contains), each letter lower-cased as the index does,
    so "ÄPFEL" finds "Äpfel" (and "straße" does not find "STRASSE": ß is not ss)."""
    from usagi_p2p.node import fulltext

    assert fulltext.contains("Äpfel-Saft", fulltext.caseless("ÄPFEL"))
    assert fulltext.contains("МОСКВА", fulltext.caseless("москва"))
    assert not fulltext.contains("STRASSE", fulltext.caseless("straße"))
    assert not fulltext.ascii_caseless("Äpfel") and fulltext.ascii_caseless("六角ナット M6")
    assert fulltext.trigrams("六角ナット") == ["六角ナ", "ナット"]
    assert fulltext.trigrams("abcdefg") == ["abc", "def", "efg"]


async def test_a_tokens_idempotency_keys_are_counted_by_the_ledger(tmp_path: Path) -> None:
    """The per-token quota (step 10): new keys count, a key claimed again does not,
    expired keys leave the count, and one token's keys do not count for another."""
    from usagi_p2p.node.ledger import KeyClaim

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        async def claim(token: str, key: str, *, at: float = 1000.0,
                        expire_before: float = 0.0) -> bool:
            claimed = KeyClaim(token, key, key.encode() + token.encode())
            row = await ledger.claim_key(claimed, token, b"r", lease_until=at + 30,
                                         expire_before=expire_before, per_token=3)
            return row is not None

        assert [await claim("a", k) for k in ("1", "2", "3")] == [True] * 3
        assert not await claim("a", "4")  # the token holds 3: a new key is refused
        assert await claim("a", "2")  # a key it holds is still answered
        assert await claim("b", "1")  # another token's quota is its own
        raw = sqlite3.connect(tmp_path / "ledger.db")
        assert dict(raw.execute("SELECT token, held FROM idempotency_counts")) == {"a": 3, "b": 1}
        raw.execute("UPDATE idempotency_keys SET created_at = 1 WHERE key = '1'")
        raw.commit()
        raw.close()
        assert await claim("a", "4", expire_before=2.0)  # key 1 of each expired: room again


async def test_step_10_counts_the_keys_a_ledger_held_before_it(tmp_path: Path) -> None:
    """A version-9 ledger's keys are counted when step 10 runs, so its quota holds."""
    import aiosqlite

    import usagi_p2p.node.ledger as ledger_module
    from usagi_p2p.node.ledger import KeyClaim
    from usagi_p2p.node.schema import MIGRATIONS

    path = tmp_path / "ledger.db"
    ledger_module_migrations = ledger_module.MIGRATIONS
    ledger_module.MIGRATIONS = MIGRATIONS[:9]
    try:
        async with Ledger(str(path)):
            pass
    finally:
        ledger_module.MIGRATIONS = ledger_module_migrations
    async with aiosqlite.connect(path) as db:
        assert (await (await db.execute("PRAGMA user_version")).fetchone()) == (9,)
        for i in range(3):
            await db.execute("INSERT INTO idempotency_keys (token, key, token_name, request, "
                             "claim, state, lease_until, created_at) VALUES "
                             "('a', ?, 'a', x'00', x'00', 'done', 0, 1000)", (str(i),))
        await db.commit()
    async with Ledger(str(path)) as ledger:
        row = await ledger.claim_key(KeyClaim("a", "new", b"c"), "a", b"r", lease_until=2000,
                                     expire_before=0, per_token=3)
        assert row is None  # the three keys from before count
        assert await ledger.claim_key(KeyClaim("a", "new", b"c"), "a", b"r", lease_until=2000,
                                      expire_before=0, per_token=4) is not None
