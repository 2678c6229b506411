"""Partner lookup and rotation aliases: what one query each must still answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel import Identity
from usagi_p2p.node.ledger import Ledger

A, B, C, D = (Identity(bytes([i]) * 32).did for i in range(1, 5))


async def test_find_partner_by_did_name_and_prefix(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Osaka Precision", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "Osaka Steel", "http://127.0.0.1:2", None)
        await ledger.add_partner(C, "Kanto", "http://127.0.0.1:3", None)
        assert (await ledger.find_partner(B)).name == "Osaka Steel"  # type: ignore[union-attr]
        assert (await ledger.find_partner("osaka precision")).did == A  # type: ignore[union-attr]
        assert (await ledger.find_partner("Kan")).did == C  # type: ignore[union-attr]
        assert await ledger.find_partner("Osaka") is None  # two match: ambiguous
        assert await ledger.find_partner("Nagoya") is None
        # A name that is a prefix of another but matches exactly wins.
        await ledger.add_partner(D, "Kanto Machine", "http://127.0.0.1:4", None)
        assert (await ledger.find_partner("kanto")).did == C  # type: ignore[union-attr]
        # A rotated partner is found by its DID, not by its name.
        await ledger.partner_rotated(C, D, valid_until=0.0)
        assert (await ledger.find_partner(C)).status == "rotated"  # type: ignore[union-attr]
        assert (await ledger.find_partner("Kanto")).did == D  # type: ignore[union-attr]


async def test_aliases_follow_both_kinds_of_rotation(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        assert await ledger.aliases() == {}
        await ledger.record_rotation(A, B, 0.0, b"statement")  # ours
        await ledger.add_partner(C, "Kanto", "http://127.0.0.1:3", None)
        await ledger.partner_rotated(C, D, valid_until=0.0)  # a partner's
        assert await ledger.aliases() == {A: B, C: D}


async def test_a_name_prefix_is_text_not_a_pattern(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Sato_Kogyo", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "100% Organic", "http://127.0.0.1:2", None)
        await ledger.add_partner(C, "SatoXKogyo", "http://127.0.0.1:3", None)
        assert (await ledger.find_partner("Sato_")).did == A  # type: ignore[union-attr]
        assert (await ledger.find_partner("100%")).did == B  # type: ignore[union-attr]
        assert await ledger.find_partner("%") is None  # no name starts with "%"
        assert await ledger.find_partner("Sato\\") is None


async def test_names_match_caselessly_in_any_script(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Ärzte GmbH", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "Großhandel Süd", "http://127.0.0.1:2", None)
        await ledger.add_partner(C, "ＡＢＣ Foods", "http://127.0.0.1:3", None)  # full-width
        await ledger.add_partner(D, "大阪精密", "http://127.0.0.1:4", None)
        assert (await ledger.find_partner("ärzte")).did == A  # type: ignore[union-attr]
        assert (await ledger.find_partner("A\u0308RZTE")).did == A  # decomposed Ä  # type: ignore[union-attr]
        assert (await ledger.find_partner("GROSSHANDEL")).did == B  # type: ignore[union-attr]
        assert (await ledger.find_partner("großhandel süd")).did == B  # type: ignore[union-attr]
        assert (await ledger.find_partner("abc")).did == C  # type: ignore[union-attr]
        assert (await ledger.find_partner("大阪")).did == D  # type: ignore[union-attr]
        assert await ledger.find_partner("arzte") is None  # an accent is not a case
        e = Identity(bytes([5]) * 32).did
        await ledger.add_partner(e, "İstanbul Tekstil", "http://127.0.0.1:5", None)
        assert (await ledger.find_partner("istanbul")).did == e  # type: ignore[union-attr]
        assert (await ledger.find_partner("İSTANBUL TEK")).did == e  # type: ignore[union-attr]
        assert await ledger.find_partner("ıstanbul") is None  # dotless ı is another letter
        # Two names apart only by İ and I: each is still found by its own spelling.
        f, g = Identity(bytes([6]) * 32).did, Identity(bytes([7]) * 32).did
        await ledger.add_partner(f, "Inci Gıda", "http://127.0.0.1:6", None)
        await ledger.add_partner(g, "İnci Gıda", "http://127.0.0.1:7", None)
        assert (await ledger.find_partner("Inci Gıda")).did == f  # type: ignore[union-attr]
        assert (await ledger.find_partner("İnci gıda")).did == g  # type: ignore[union-attr]
        assert (await ledger.find_partner("inci gıda")).did == f  # type: ignore[union-attr]
        assert await ledger.find_partner("inci") is None  # a prefix of both: ambiguous
        assert await ledger.find_partner("Süd") is None  # a prefix, not a substring
        # Those two names differ, so both were stored as given (names are unique
        # by the same strict fold that tells them apart above).
        assert {(await ledger.partner(d)).name for d in (f, g)} == {"Inci Gıda", "İnci Gıda"}  # type: ignore[union-attr]


async def test_partner_names_are_unique(tmp_path: Path) -> None:
    from usagi_p2p.node.errors import NameTakenError

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        assert (await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)).name == "Osaka"
        # Another DID under a taken name (any case or width): the next free name.
        wide = await ledger.add_partner(B, "ＯＳＡＫＡ", "http://127.0.0.1:2", None)
        assert wide.name == "ＯＳＡＫＡ (2)"
        assert (await ledger.add_partner(C, "osaka", "http://127.0.0.1:3", None)).name == "osaka (3)"
        long = "x" * 200
        await ledger.add_partner(D, long, "http://127.0.0.1:4", None)
        e = Identity(bytes([5]) * 32).did
        assert (await ledger.add_partner(e, long, "http://127.0.0.1:5", None)).name == "x" * 196 + " (2)"
        # A known DID keeps its name and status; a pasted invitation moves its endpoint.
        await ledger.set_partner(A, status="suspended")
        again = await ledger.add_partner(A, "Kanto", "http://127.0.0.1:9", b"invitation")
        assert (again.name, again.status, again.endpoint) == ("Osaka", "suspended",
                                                              "http://127.0.0.1:9")
        kept = await ledger.add_partner(A, "Kanto", "http://127.0.0.1:8", None, update=False)
        assert kept == again
        # A rename into a taken name is refused; into its own name (another case) it works.
        with pytest.raises(NameTakenError):
            await ledger.set_partner(B, name="Osaka")
        assert (await ledger.partner(B)).name == "ＯＳＡＫＡ (2)"  # type: ignore[union-attr]
        await ledger.set_partner(A, name="OSAKA")
        assert (await ledger.partner(A)).name == "OSAKA"  # type: ignore[union-attr]
        # Status and name in one statement: a refused name changes the status neither.
        with pytest.raises(NameTakenError):
            await ledger.set_partner(B, status="suspended", name="osaka (3)")
        assert (await ledger.partner(B)).status == "active"  # type: ignore[union-attr]
        await ledger.set_partner(B, status="suspended", name="Osaka West")
        moved = await ledger.partner(B)
        assert moved is not None and (moved.status, moved.name) == ("suspended", "Osaka West")
        # A rotated key's row keeps its name beside its successor's.
        await ledger.partner_rotated(A, Identity(bytes([9]) * 32).did, valid_until=0.0)
        assert (await ledger.find_partner("osaka")).did == Identity(bytes([9]) * 32).did  # type: ignore[union-attr]


def _row(i: int, partner: str) -> tuple[object, bytes, bytes]:
    from kernel.cid import CID
    from usagi_p2p.node.ledger import DocumentRow

    cid = CID.for_block(b"block %d" % i)
    row = DocumentRow(cid, "out", partner, "order", cid, None, "2026-12-03T00:00:00Z", 1.0,
                      "queued", None, b"\x12\x20" + bytes([i % 256]) * 32, b"signed", None)
    return row, b"\x80", b"notice %d" % i


async def test_the_batch_reads_agree_with_the_single_reads(tmp_path: Path) -> None:
    """receiving() and delivering() are one round trip each; what they return
    must be what the separate queries return, past the 500-value chunks too."""
    from kernel.cid import CID

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "Kanto", "http://127.0.0.1:2", None)
        await ledger.partner_rotated(B, C, valid_until=0.0)
        rows = [_row(i, A) for i in range(1200)]
        await ledger.record_sent_many(rows)  # type: ignore[arg-type]
        for i in range(0, 1200, 3):
            await ledger.record_nonce(A if i % 2 else B, b"%016d" % i, rows[i][0].cid, b"ack %d" % i)  # type: ignore[attr-defined]
        cids = [r[0].cid for r in rows[::2]] + [CID.for_block(b"never stored")]  # type: ignore[attr-defined]
        # 600 nonces per sender (two chunks each); A holds the odd multiples of 3,
        # B the even ones, and B is asked for one of A's too.
        nonces = {A: [b"%016d" % i for i in range(1, 1200, 2)],
                  B: [b"%016d" % i for i in range(0, 1200, 2)] + [b"%016d" % 3]}

        seen, aliases, digests = await ledger.receiving(nonces, cids)
        expected_seen = {}
        for sender, values in nonces.items():
            expected_seen.update({(sender, nonce): ack for nonce, ack
                                  in (await ledger.seen_nonces(sender, values)).items()})
        assert seen == expected_seen and len(seen) == 400
        # Keyed by sender too: A's nonce 3 is not B's, though B asked for it.
        assert (A, b"%016d" % 3) in seen and (B, b"%016d" % 3) not in seen
        assert aliases == await ledger.aliases() == {B: C}
        assert digests == await ledger.digests(cids) and len(digests) == 600

        partner, sent, aliases2 = await ledger.delivering(A, cids)
        assert partner == await ledger.partner(A)
        assert sent == digests and aliases2 == {B: C}
        assert (await ledger.delivering(D, []))[0] is None


async def test_a_claim_leaves_the_connection_fully_synchronous(tmp_path: Path) -> None:
    """The claim commits without its own sync; every other write must still sync."""
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)
        await ledger.record_sent_many([_row(1, A)])  # type: ignore[list-item]
        claimed = await ledger.claim_due(now=10.0, limit=10)
        assert [r.cid for r in claimed] == [_row(1, A)[0].cid]  # type: ignore[attr-defined]
        assert await ledger._all("PRAGMA synchronous") == [(2,)]  # FULL
        assert await ledger.claim_due(now=10.0, limit=10) == []  # leased


async def test_ack_or_status_reads_both_in_one_query(tmp_path: Path) -> None:
    from kernel.cid import CID

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)
        row = _row(1, A)
        cid = row[0].cid  # type: ignore[attr-defined]
        assert await ledger.ack_or_status(CID.for_block(b"unknown")) == (None, None)
        await ledger.record_sent_many([row])  # type: ignore[list-item]
        assert await ledger.ack_or_status(cid) == (None, "queued")
        await ledger.mark_delivered([(cid, b"signed ack", "received", None, "2026-12-03T00:00:00Z")])
        assert await ledger.ack_or_status(cid) == ((b"signed ack", "received", None), "delivered")
        assert (await ledger.ack_or_status(cid))[0] == await ledger.ack(cid)


async def test_without_wal_the_claim_is_synced_like_every_commit(tmp_path: Path,
                                                                 monkeypatch) -> None:  # noqa: ANN001
    """The unsynced lease is safe only in WAL mode; a ledger that cannot use WAL
    (here: an in-memory database, which keeps its own journal mode) syncs it."""
    import usagi_p2p.node.ledger as ledger_module

    unsynced = []
    real = ledger_module._lease

    def spy(conn, sql, args):  # noqa: ANN001, ANN202
        unsynced.append(sql)
        return real(conn, sql, args)

    monkeypatch.setattr(ledger_module, "_lease", spy)
    for path, wal in ((":memory:", False), (str(tmp_path / "ledger.db"), True)):
        unsynced.clear()
        async with Ledger(path) as ledger:
            assert ledger._wal is wal
            await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)
            await ledger.record_sent_many([_row(1, A)])  # type: ignore[list-item]
            assert len(await ledger.claim_due(now=10.0, limit=10)) == 1
        assert len(unsynced) == (1 if wal and ledger_module.ONE_CALL else 0)


async def test_restored_partners_keep_names_unique_when_the_names_read_first_are_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore names its partners from the names it read first; if another process
    took a name meanwhile, the insert's own check (inside the write) refuses it and
    the next free name is used. The check is made stale on purpose here: the first
    read of taken names answers nothing, as if read before the other's insert."""
    from usagi_p2p.node.ledger import Restore

    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)
        real_all = ledger._all
        stale = [True]

        async def first_read_sees_nothing(sql: str, *args: object) -> list[tuple[object, ...]]:
            if stale and "usagi_strict_fold(name)" in sql:
                stale.clear()
                return []
            return await real_all(sql, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(ledger, "_all", first_read_sees_nothing)
        await ledger.restore(Restore(partners=[
            (B, "ＯＳＡＫＡ", "http://127.0.0.1:2", "active"),  # taken, in another width
            (C, "Kobe", "http://127.0.0.1:3", "active"),
            (D, "kobe", "http://127.0.0.1:4", "active")]))  # taken by the row before it
        assert stale == []  # the stale read happened
        names = {d: (await ledger.partner(d)).name for d in (A, B, C, D)}  # type: ignore[union-attr]
        assert names == {A: "Osaka", B: "ＯＳＡＫＡ (2)", C: "Kobe", D: "kobe (2)"}
