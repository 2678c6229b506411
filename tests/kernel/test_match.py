"""kernel._match: the three-way match of a thread (docs/commerce.md section 2)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Match, match_thread
from kernel._match import MATCH_CODES, MAX_COMPARISONS, SIMILARITY, normalise, similarity

BOLT = {"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "12.50"}
NUT = {"text": "ステンレス六角ナット M6", "qty": "500", "unit": "pcs", "unit_price": "3.20"}


def doc(kind: str, lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "currency": "JPY", "lines": lines, **fields}


def thread(*docs: dict[str, Any]) -> Match:
    return match_thread([(f"d{i}", d) for i, d in enumerate(docs)])


def warnings(m: Match) -> list[str]:
    return [f.code for f in m.findings if f.level == "warning"]


def test_a_clean_thread_with_two_partial_deliveries() -> None:
    m = thread(doc("quote", [BOLT, NUT]), doc("order", [BOLT, NUT], ref="PO-1"),
               doc("delivery_note", [{**BOLT, "qty": "300"}, NUT]),
               doc("delivery_note", [{**BOLT, "qty": "200"}]),
               doc("invoice", [{**BOLT, "amount": "6250"}, {**NUT, "amount": "1600"}],
                   net="7850"))
    assert m.ok and m.findings == ()
    assert m.summary == "clean: 2 items agree across 1 quote, 1 order, 2 delivery notes, 1 invoice"
    bolt = m.items[0]
    assert (bolt.quoted, bolt.ordered, bolt.delivered, bolt.invoiced) == \
        (Decimal(500), Decimal(500), Decimal(500), Decimal(500))
    assert bolt.summary == "M6x20 SUS304 hex bolt: quoted 500, ordered 500, delivered 500, invoiced 500"
    assert [(cid, n) for cid, n, _ in bolt.lines] == [("d1", 0), ("d0", 0), ("d2", 0), ("d3", 0),
                                                    ("d4", 0)]


def test_over_billing_reads_at_a_glance() -> None:
    m = thread(doc("order", [BOLT]), doc("delivery_note", [{**BOLT, "qty": "480"}]),
               doc("invoice", [BOLT]))
    assert not m.ok and warnings(m) == ["billed_not_delivered"]
    assert m.items[0].summary == ("M6x20 SUS304 hex bolt: ordered 500, delivered 480, invoiced 500: "
                                  "20 pcs still to deliver; 20 pcs billed but not delivered")
    assert m.summary == ("1 to check: M6x20 SUS304 hex bolt: ordered 500, delivered 480, "
                         "invoiced 500: 20 pcs billed but not delivered")
    [over] = [f for f in m.findings if f.code == "billed_not_delivered"]
    assert over.item == 0


def test_open_quantities_are_info_not_warnings() -> None:
    m = thread(doc("order", [BOLT]), doc("delivery_note", [{**BOLT, "qty": "480"}]),
               doc("invoice", [{**BOLT, "qty": "400"}]))
    assert m.ok
    assert [f.code for f in m.findings] == ["not_delivered", "not_billed"]
    assert m.summary.startswith("clean: 1 item agree")


def test_order_against_quote() -> None:
    m = thread(doc("quote", [BOLT, NUT]),
               doc("order", [{**BOLT, "qty": "600", "unit_price": "12"},
                             {"text": "spring washer M6", "qty": "500"}]))
    assert warnings(m) == ["qty_not_as_quoted", "price_not_as_quoted", "not_quoted"]
    assert [f.code for f in m.findings if f.level == "info"] == ["quoted_not_ordered"]


def test_prices_currency_units_and_unexplained_lines() -> None:
    m = thread(doc("order", [BOLT]),
               doc("delivery_note", [{**BOLT, "unit": "box"}, {"text": "free sample", "qty": "1"}]),
               doc("invoice", [{**BOLT, "unit_price": "13"}, {"text": "freight", "amount": "800"}],
                   currency="USD"))
    assert set(warnings(m)) == {"unit", "delivered_not_ordered", "currency", "billed_not_ordered",
                                "price_not_as_ordered"}


def test_the_invoice_net_against_the_ordered_prices() -> None:
    m = thread(doc("order", [BOLT]), doc("delivery_note", [BOLT]),
               doc("invoice", [{"text": BOLT["text"], "qty": "500"}], net="6300"))
    assert warnings(m) == ["billed_total"]


def test_arithmetic_of_each_document_is_part_of_the_match() -> None:
    m = thread(doc("order", [BOLT]), doc("delivery_note", [BOLT]),
               doc("invoice", [{**BOLT, "amount": "6000"}]))
    assert warnings(m) == ["arithmetic.line_amount"]
    assert m.findings[0].document == "d2" and m.findings[0].path == "lines[0].amount"


def test_without_an_order() -> None:
    assert warnings(thread(doc("invoice", [BOLT]))) == ["no_order"]
    assert warnings(thread(doc("quote", [BOLT]), doc("invoice", [BOLT]))) == ["no_order"]
    assert thread(doc("quote", [BOLT])).ok
    assert thread().items == ()


def test_responses_and_cancels() -> None:
    m = thread(doc("order", [BOLT]), {"kind": "order_response", "response": "reject"},
               {"kind": "cancel"})
    assert [f.code for f in m.findings] == ["cancelled", "order_rejected"]


# -- pairing --------------------------------------------------------------------


def test_pairing_by_ref_beats_text() -> None:
    order = doc("order", [{"text": "bolt", "ref": "A-1", "qty": "10"},
                          {"text": "bolt", "ref": "A-2", "qty": "20"}])
    m = thread(order, doc("delivery_note", [{"text": "bolt", "ref": "a-2 ", "qty": "20"},
                                            {"text": "bolt", "ref": "A-1", "qty": "10"}]))
    assert m.ok and [(i.ordered, i.delivered) for i in m.items] == \
        [(Decimal(10), Decimal(10)), (Decimal(20), Decimal(20))]
    assert m.items[1].lines[1][2] == "ref"
    # Two order lines with the same text and no ref: the text decides nothing.
    m = thread(doc("order", [{"text": "bolt", "qty": "10"}, {"text": "bolt", "qty": "20"}]),
               doc("delivery_note", [{"text": "bolt", "qty": "10"}]))
    assert warnings(m) == ["ambiguous_line"]


def test_pairing_by_plugin_fields() -> None:
    order = doc("order", [
        {"text": "ベアリング", "qty": "4", "ext": {"machinery": {"part_number": "6204ZZ"}}},
        {"text": "ベアリング", "qty": "2", "ext": {"machinery": {"part_number": "6205ZZ"}}},
        {"text": "catheter", "qty": "10", "ext": {"medical": {"gtin": "04912345678904"}}}])
    note = doc("delivery_note", [
        {"text": "bearing (see part no.)", "qty": "2", "ext": {"machinery": {"part_number": "6205zz"}}},
        {"text": "cath. 12Fr", "qty": "6", "ext": {"medical": {"gtin": "04912345678904", "lot": "L1"}}},
        {"text": "cath. 12Fr", "qty": "4", "ext": {"medical": {"gtin": "04912345678904", "lot": "L2"}}},
        {"text": "bearing 6204", "qty": "4", "ext": {"machinery": {"part_number": "6204ZZ"}}}])
    m = thread(order, note)
    assert m.ok, m.findings
    assert [i.delivered for i in m.items] == [Decimal(4), Decimal(2), Decimal(10)]
    assert {how for i in m.items for _, _, how in i.lines} == \
        {"base", "machinery.part_number", "medical.gtin"}


def test_pairing_by_normalised_and_similar_text() -> None:
    assert normalise("  Ｍ６  ＨＥＸ\tBolt ") == "m6 hex bolt"
    order = doc("order", [BOLT, NUT])
    note = doc("delivery_note", [{"text": "m6x20  sus304 HEX BOLTS", "qty": "500"},
                                 {"text": "ｽﾃﾝﾚｽ六角ナット Ｍ６", "qty": "500"}])
    m = thread(order, note)
    assert m.ok, m.findings
    assert [i.lines[1][2] for i in m.items] == ["similar", "text"]
    assert similarity("washer", "M6x20 SUS304 hex bolt") < SIMILARITY


def test_similarity_is_bounded() -> None:
    # More comparisons than the budget: the lines past it stay unpaired, in bounded time.
    n = int(MAX_COMPARISONS ** 0.5) + 50
    order = doc("order", [{"text": f"article number {i:05d}", "qty": "1"} for i in range(n)])
    note = doc("delivery_note", [{"text": f"article nr {i:05d}", "qty": "1"} for i in range(n)])
    m = thread(order, note)
    unpaired = [f for f in m.findings if f.code == "delivered_not_ordered"]
    assert 0 < len(unpaired) < n


def test_every_code_is_documented() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "commerce.md").read_text(encoding="utf-8")
    assert all(f"`{code}`" in text for code in MATCH_CODES)


def test_odd_documents_do_not_break_it() -> None:
    m = match_thread([("a", {"kind": "order", "lines": ["x", {"qty": 5}, {"text": 7}]}),
                      ("b", {"kind": "invoice", "lines": "nope"}),
                      ("c", {"kind": "delivery_note", "lines": [{"text": "x", "qty": "1e3"}]})])
    assert isinstance(m, Match)


# -- properties -----------------------------------------------------------------

items = st.lists(st.tuples(st.integers(1, 50), st.integers(1, 10_000)), min_size=1, max_size=8,
                 unique_by=lambda t: t[0])


def split(total: int, parts: list[int]) -> list[int]:
    """``total`` cut at the given points into at most len(parts)+1 positive pieces."""
    cuts = sorted({p % total for p in parts if p % total})
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


@settings(max_examples=100)
@given(items, st.lists(st.integers(0, 10_000), max_size=3), st.randoms(use_true_random=False))
def test_deliveries_in_any_pieces_add_up_and_match(lines: list[tuple[int, int]], cuts: list[int],
                                                   rnd: Any) -> None:
    ordered = [{"text": f"part {code:03d} stainless", "qty": str(qty), "unit": "pcs",
                "unit_price": "5"} for code, qty in lines]
    notes: list[list[dict[str, Any]]] = [[] for _ in range(len(cuts) + 1)]
    for line in ordered:
        for note, piece in zip(notes, split(int(line["qty"]), cuts), strict=False):
            note.append({"text": line["text"].upper(), "qty": str(piece), "unit": "pcs"})
    for note in notes:
        rnd.shuffle(note)
    invoice = [{**line, "amount": str(int(line["qty"]) * 5)} for line in ordered]
    rnd.shuffle(invoice)
    docs = [doc("order", ordered)] + [doc("delivery_note", n) for n in notes if n] + \
        [doc("invoice", invoice)]
    m = thread(*docs)
    assert m.findings == () and m.ok
    assert all(i.ordered == i.delivered == i.invoiced for i in m.items)


@settings(max_examples=100)
@given(items, st.data())
def test_short_delivery_gives_exactly_the_over_billing(lines: list[tuple[int, int]],
                                                       data: st.DataObject) -> None:
    ordered = [{"text": f"part {code:03d} stainless", "qty": str(qty), "unit": "pcs"}
               for code, qty in lines]
    short = data.draw(st.integers(0, len(ordered) - 1))
    missing = data.draw(st.integers(1, int(ordered[short]["qty"])))
    delivered = [{**line, "qty": str(int(line["qty"]) - (missing if i == short else 0))}
                 for i, line in enumerate(ordered)]
    m = thread(doc("order", ordered), doc("delivery_note", delivered), doc("invoice", ordered))
    [finding] = [f for f in m.findings if f.level == "warning"]
    assert (finding.code, finding.item) == ("billed_not_delivered", short)
    assert finding.message.endswith(f": {missing} pcs billed but not delivered")
