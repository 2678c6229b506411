"""Full-text search against real nodes on 127.0.0.1 (usagi_p2p/node/fulltext.py)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from usagi_p2p.node import ledger as ledger_module
from usagi_p2p.node import operations
from usagi_p2p.node.errors import InvalidQueryError
from usagi_p2p.node.fulltext import Snippet, normalise, parse_query, snippet
from usagi_p2p.node.node import Node

from .conftest import make_home, paired, start

QUOTE = {"ref": "Q-2026-001", "currency": "JPY", "note": "納期: 2週間",
         "lines": [{"text": "M6 六角ナット SUS304 500個", "qty": "500", "unit_price": "12"}]}

FIXTURE_SQL = Path(__file__).parent / "fixtures" / "ledger_before_user_version.sql"


def _forget_ledger(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


async def _cids(node: Node, query: str, **filters: object) -> list[str]:
    page = await operations.search_documents(node, query, **filters)  # type: ignore[arg-type]
    return [str(hit.cid) for hit in page.hits]


async def _sent_and_received(pair) -> str:  # noqa: ANN001
    sent = await pair.seller.send("quote", "Osaka Precision", QUOTE)
    await pair.seller.deliver_once()
    assert await pair.buyer.ledger.document(sent.cid) is not None
    return str(sent.cid)


async def test_a_quote_is_found_on_both_sides_by_text_ref_and_partner(pair) -> None:  # noqa: ANN001
    cid = await _sent_and_received(pair)
    for node, partner_name in ((pair.seller, "Osaka"), (pair.buyer, "Kanto")):
        for query in ("六角ナット", "ナット", "Q-2026", "q-2026-001", "sus304", partner_name,
                      "ＳＵＳ３０４", "ﾅｯﾄ", "ナット 500個", "2週間"):
            assert await _cids(node, query) == [cid], (node.config.name, query)
        for query in ("ボルト", "Q-2027", "六角ナット ボルト", "Hokkaido"):
            assert await _cids(node, query) == [], (node.config.name, query)
    page = await operations.search_documents(pair.buyer, "ナット")
    hit = page.hits[0]
    assert (hit.kind, hit.ref, hit.direction, hit.partner) == ("quote", "Q-2026-001", "in",
                                                                pair.seller.did)
    assert hit.partner_name == "Kanto Machine Tools" and page.cursor is None
    text = "M6 六角ナット SUS304 500個"
    assert hit.snippet.text.startswith(text + "\n")  # then the note, in the window
    assert hit.snippet.matches == ((text.index("ナット"), text.index("ナット") + 3),)


async def test_a_search_right_after_a_send_finds_it(pair) -> None:  # noqa: ANN001
    """Recording a document only queues it for the index (node/indexing.py); a search
    indexes what waits before it looks, so nothing recorded is missed."""
    await pair.seller_service.close()  # no background indexer on the seller
    sent = await pair.seller.send("quote", "Osaka Precision", QUOTE)
    assert await pair.seller.ledger.index_backlog() == 1  # not indexed by the send
    assert await _cids(pair.seller, "六角ナット") == [str(sent.cid)]
    assert await pair.seller.ledger.index_backlog() == 0
    await pair.seller.deliver_once()
    assert await _cids(pair.buyer, "六角ナット") == [str(sent.cid)]
    # a second document, searched at once again: both found
    other = await pair.seller.send("quote", "Osaka Precision",
                                   {**QUOTE, "ref": "Q-2026-002"})
    assert set(await _cids(pair.seller, "六角ナット")) == {str(sent.cid), str(other.cid)}


async def test_a_serving_node_indexes_in_the_background_when_quiet(pair) -> None:  # noqa: ANN001
    """No search needed: the serving node's indexer empties the queue once the
    ledger has recorded nothing for a moment (node/indexing.py, QUIET)."""
    import asyncio

    sent = await pair.seller.send("quote", "Osaka Precision", QUOTE)
    await pair.seller.deliver_once()
    for node in (pair.seller, pair.buyer):
        for _ in range(600):  # polled, at most ~30 s: the loop works every 0.2 s when quiet
            if not await node.ledger.index_waiting():
                break
            await asyncio.sleep(0.05)
        assert await node.ledger.index_backlog() == 0
        rows = await node.ledger.search('"六角ナ" AND "ナット"', [("六角ナット", [])])
        assert [str(r.cid) for r in rows] == [str(sent.cid)]


async def test_one_and_two_character_terms_are_looked_for_as_substrings(pair) -> None:  # noqa: ANN001
    cid = await _sent_and_received(pair)
    for query in ("六角", "M6", "m6", "個", "六角 ナット", "Q-"):
        assert await _cids(pair.buyer, query) == [cid], query
    for query in ("丸角", "%", "_", "六角 ボルト", "\\"):
        assert await _cids(pair.buyer, query) == [], query


async def test_a_renamed_partner_is_found_by_its_new_name_and_its_old_one(pair) -> None:  # noqa: ANN001
    cid = await _sent_and_received(pair)
    await operations.rename_partner(pair.buyer, "Kanto Machine Tools", "東海精機")
    assert await _cids(pair.buyer, "東海精機") == [cid]  # the name it has now
    assert await _cids(pair.buyer, "東海") == [cid]  # two characters: the LIKE path
    assert await _cids(pair.buyer, "Kanto") == [cid]  # the name it was recorded under
    assert await _cids(pair.buyer, "東海精機 ナット") == [cid]
    assert await _cids(pair.buyer, "東海精機 ボルト") == []


async def test_a_term_naming_many_partners_still_finds_each_by_its_name_now(pair) -> None:  # noqa: ANN001
    """A term naming more than BROAD_TERM partners filters rows instead of becoming
    one index alternative per partner (docs/scale.md): the same documents match."""
    from kernel import Identity
    from usagi_p2p.node.operations.search import BROAD_TERM

    cid = await _sent_and_received(pair)
    await operations.rename_partner(pair.buyer, "Kanto Machine Tools", "Trading Kanto")
    for i in range(BROAD_TERM + 1):  # partners whose names also hold "Trading"
        await pair.buyer.ledger.add_partner(Identity.generate().did, f"Trading {i:02d}",
                                            "http://127.0.0.1:9", None)
    assert await _cids(pair.buyer, "Trading") == [cid]  # by the name it has now
    assert await _cids(pair.buyer, "trading ナット") == [cid]
    assert await _cids(pair.buyer, "Trading Kanto") == [cid]
    assert await _cids(pair.buyer, "Trading ボルト") == []
    assert await _cids(pair.buyer, "Trading 07") == []  # a partner with no documents


async def test_filters_keep_other_partners_documents_out(tmp_path: Path) -> None:
    """A buyer trading with two sellers: filtering by one never shows the other's."""
    kanto, osaka = make_home(tmp_path / "kanto", "Kanto Machine Tools"), \
        make_home(tmp_path / "osaka", "Osaka Precision")
    async with paired(kanto, osaka) as pair:
        third, third_service = await start(make_home(tmp_path / "kyushu", "Kyushu Steel"))
        try:
            await pair.buyer.add_partner((await third.invite()).text())
            mine = await _sent_and_received(pair)
            other = await third.send("quote", "Osaka Precision",
                                     {"ref": "K-1", "lines": [{"text": "M8 六角ナット SS400"}]})
            await third.deliver_once()
            both = await _cids(pair.buyer, "六角ナット")
            assert set(both) == {mine, str(other.cid)}
            assert await _cids(pair.buyer, "六角ナット", partner="Kanto") == [mine]
            assert await _cids(pair.buyer, "六角ナット", partner="Kyushu Steel") == [
                str(other.cid)]
            assert await _cids(pair.buyer, "Q-2026", partner="Kyushu") == []
            assert await _cids(pair.buyer, "六角", partner="Kyushu") == [str(other.cid)]
            assert await _cids(pair.buyer, "六角ナット", kind="order") == []
            assert await _cids(pair.buyer, "六角ナット", direction="out") == []
            first = await operations.search_documents(pair.buyer, "六角ナット", limit=1)
            assert len(first.hits) == 1 and first.cursor is not None
            second = await operations.search_documents(pair.buyer, "六角ナット", limit=1,
                                                       cursor=first.cursor)
            assert second.cursor is None
            assert {str(first.hits[0].cid), str(second.hits[0].cid)} == set(both)
        finally:
            await third_service.close()
            await third.close()


async def test_the_newest_matches_are_ranked_and_older_ones_follow_newest_first(
        pair, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Over ``RANKED`` matches, only the newest are ranked (a reference match
    first); the older ones follow newest first, and every match is on exactly
    one page."""
    sent = []
    for i, (ref, text) in enumerate([("FLANGE-1", "flange abc"), ("Q-2", "flange abc"),
                                     ("Q-3", "flange abc"), ("FLANGE-4", "flange abc"),
                                     ("Q-5", "flange abc")]):
        sent.append(str((await pair.seller.send(
            "quote", "Osaka Precision",
            {"ref": ref, "lines": [{"text": f"{text} {i}"}]})).cid))
    seller = pair.seller
    # Under the bound: the reference match ranks first, however old.
    top = await _cids(seller, "flange")
    assert top[:2] == [sent[3], sent[0]] and set(top) == set(sent)
    monkeypatch.setattr(ledger_module, "RANKED", 3)
    # Over it: the newest three are ranked (FLANGE-4 first), then the two older
    # ones newest first: FLANGE-1, a reference match, no longer outranks them.
    assert await _cids(seller, "flange") == [sent[3], sent[4], sent[2], sent[1], sent[0]]
    for limit in (1, 2, 3, 4):
        pages: list[str] = []
        cursor = None
        while True:
            page = await operations.search_documents(seller, "flange", limit=limit,
                                                     cursor=cursor)
            pages += [str(hit.cid) for hit in page.hits]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert pages == [sent[3], sent[4], sent[2], sent[1], sent[0]], limit
    # Filters and short terms keep the rule: the matches they leave.
    assert await _cids(seller, "flange", kind="quote") == [sent[3], sent[4], sent[2],
                                                           sent[1], sent[0]]
    assert await _cids(seller, "flange 1") == [sent[0], sent[1]]  # ref, then line "… 1"
    # The newest three ranked by where "fl" is (FLANGE-4's reference), the rest newest first.
    assert await _cids(seller, "fl") == [sent[3], sent[4], sent[2], sent[1], sent[0]]


HOSTILE = ['"', '""', '"六角', "ナット\"*", "*", "NEAR(六角 ナット)", "六角 NOT ナット",
           "-ナット", "ref:Q-2026", "{ref body}: x", "^ナット", "ナット OR ボルト", "AND OR NOT",
           "(((", ")", "ナット'; DROP TABLE documents; --", "\x00ナット", "party : did",
           "\\", "%%%", "a" * 500]


@pytest.mark.parametrize("query", HOSTILE)
async def test_fts_syntax_in_a_query_is_only_text(pair, query: str) -> None:  # noqa: ANN001
    cid = await _sent_and_received(pair)
    found = await _cids(pair.buyer, query)
    # Each hostile query is looked for literally: nothing in the quote holds these.
    expected = [cid] if query in ("\x00ナット",) else []
    assert found == expected
    assert await _cids(pair.buyer, "ナット") == [cid]  # and nothing was broken


@pytest.mark.parametrize("query", ["", "   ", "\u3000", "a" * 501,
                                   " ".join(str(i) * 3 for i in range(17))])
async def test_an_unusable_query_is_a_typed_error(pair, query: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidQueryError):
        await operations.search_documents(pair.buyer, query)


@pytest.mark.parametrize("cursor", ["x", "czE6MA", "czE6LTE", "!!!", "czI6MjA", "czE6OTk5OTk5"])
async def test_a_cursor_it_did_not_give_is_refused(pair, cursor: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidQueryError):
        await operations.search_documents(pair.buyer, "ナット", cursor=cursor)


async def test_it_is_still_found_after_a_restart(tmp_path: Path) -> None:
    kanto, osaka = make_home(tmp_path / "kanto", "Kanto Machine Tools"), \
        make_home(tmp_path / "osaka", "Osaka Precision")
    async with paired(kanto, osaka) as pair:
        cid = await _sent_and_received(pair)
    for home in (kanto, osaka):
        async with Node.load(home, None) as node:
            assert await _cids(node, "六角ナット") == [cid]
            assert await node.ledger.index_backlog() == 0


async def test_a_ledger_made_before_the_index_is_indexed_before_a_search(tmp_path: Path) -> None:
    """The buyer's documents copied into a ledger of the version before migrations
    (the fixture): opening it migrates it and queues what it holds; the first
    search indexes it."""
    kanto, osaka = make_home(tmp_path / "kanto", "Kanto Machine Tools"), \
        make_home(tmp_path / "osaka", "Osaka Precision")
    async with paired(kanto, osaka) as pair:
        cid = await _sent_and_received(pair)
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.executescript(FIXTURE_SQL.read_text())
    db.execute("ATTACH ? AS new", (str(osaka.ledger_path),))
    for table in ("partners", "documents", "acks", "nonces"):
        columns = ", ".join(r[1] for r in db.execute(f"PRAGMA main.table_info({table})"))
        db.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM new.{table}")
    db.commit()
    db.execute("DETACH new")
    assert db.execute("PRAGMA user_version").fetchone() == (0,)
    db.close()
    _forget_ledger(osaka.ledger_path)
    shutil.copy(old, osaka.ledger_path)
    async with Node.load(osaka, None) as node:
        assert await node.ledger.index_backlog() == 1  # queued by the migration
        assert await _cids(node, "六角ナット") == [cid]  # indexed before the search looks
        assert await node.ledger.index_backlog() == 0
        assert await _cids(node, "Kanto") == [cid]
        # and a reindex from scratch finds it the same way
        seen: list[tuple[int, int]] = []
        assert await operations.reindex_search(node, lambda d, t: seen.append((d, t))) == 1
        assert seen == [(1, 1)]
        assert await _cids(node, "ナット") == [cid]


async def test_an_imported_archive_is_searchable(tmp_path: Path) -> None:
    from usagi_p2p.archive.export import export_archive
    from usagi_p2p.archive.restore import import_archive

    kanto, osaka = make_home(tmp_path / "kanto", "Kanto Machine Tools"), \
        make_home(tmp_path / "osaka", "Osaka Precision")
    async with paired(kanto, osaka) as pair:
        cid = await _sent_and_received(pair)
        car = tmp_path / "osaka.car"
        await export_archive(pair.buyer, car)
    # The same company on a new machine: its key, an empty ledger, the archive.
    _forget_ledger(osaka.ledger_path)
    async with Node.load(osaka, None) as node:
        assert await _cids(node, "ナット") == []
        await import_archive(node, car)
        assert await _cids(node, "六角ナット") == [cid]
        assert await _cids(node, "Q-2026") == [cid]


def test_a_query_is_split_into_normalised_terms() -> None:
    assert parse_query(" ＳＵＳ３０４\u3000六角ナット  SUS304 ").terms == ("SUS304", "六角ナット")
    assert parse_query("M6 六角").short == ("M6", "六角")
    assert parse_query("M6 六角ナット").long == ("六角ナット",)


def test_a_snippet_locates_every_term_in_its_window() -> None:
    text = "x" * 100 + " M6 六角ナット SUS304 " + "y" * 100
    found = snippet([text], ["ナット", "sus", "六角ナ"])
    assert found.text.startswith("…") and found.text.endswith("…")
    assert [found.text[a:b] for a, b in found.matches] == ["六角ナット", "SUS"]
    assert snippet(["", "no match here"], ["zzz"]) == Snippet("no match here")
    # A partner's control characters are indexed (and shown) as spaces: a NUL
    # would otherwise end the text for the tokenizer.
    assert normalise("a\x00b\x1bc\x9bd\ne\tf") == "a b c d\ne\tf"
