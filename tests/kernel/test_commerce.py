"""kernel._commerce: one document's figures as findings (docs/commerce.md section 1)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Discrepancy, document_findings
from kernel._commerce import (
    CODES,
    CURRENCY_DIGITS,
    EXACT,
    jp_check_digit,
    minor_unit,
    round_money,
    tax_id_problem,
)
from kernel._document import document_problems

from ._support import order
from .test_document_commerce import invoice


def codes(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d.code, d.path) for d in document_findings(doc)]


def test_a_consistent_qualified_invoice_has_no_findings() -> None:
    assert document_findings(invoice()) == []


def test_documents_without_figures_have_nothing_to_check() -> None:
    assert document_findings(order()) == []
    assert document_findings(order(lines=[{"text": "same washers as last time"}], net="5")) == []
    assert document_findings({}) == []
    assert document_findings("not a map") == []  # type: ignore[arg-type]


def test_each_finding_names_the_figure() -> None:
    doc = invoice()
    doc["lines"][0]["amount"] = "12600"
    [found] = [d for d in document_findings(doc) if d.code == "line_amount"]
    assert found == Discrepancy("line_amount", "lines[0].amount", "500 × 25 is 12500, not 12600",
                                "12500", "12600")
    assert found.to_json()["expected"] == "12500"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"net": "18000"}, [("net", "net"), ("tax_taxable_net", "tax"), ("total", "total")]),
    ({"tax_total": "1731"}, [("tax_total", "tax_total"), ("total", "total")]),
    ({"total": "20231"}, [("total", "total")]),
    ({"total": "20230.5"}, [("minor_unit", "total"), ("total", "total")]),
    ({"tax": [{"category": "S", "rate": "10", "taxable": "12500", "amount": "1250"},
              {"category": "AA", "rate": "8", "taxable": "6000", "amount": "481"}],
      "tax_total": "1731", "total": "20231"}, [("tax_amount", "tax[1].amount")]),
    ({"tax": [{"category": "S", "rate": "10", "taxable": "12500", "amount": "1250"}],
      "tax_total": "1250", "total": "19750"},
     [("tax_missing_rate", "lines[1].tax_rate"), ("tax_taxable_net", "tax")]),
    ({"tax": [{"category": "S", "rate": "10", "taxable": "12500", "amount": "1250"},
              {"category": "AA", "rate": "8", "taxable": "6000", "amount": "480"},
              {"category": "AA", "rate": "8", "taxable": "0", "amount": "0"}]},
     [("tax_duplicate_rate", "tax[2]"), ("tax_taxable", "tax[2].taxable")]),
    ({"parties": {"from": {"tax_id": "T1040001082442"}}}, [("tax_id", "parties.from.tax_id")]),
])
def test_one_wrong_figure_gives_exactly_its_findings(changes: dict[str, Any],
                                                     expected: list[tuple[str, str]]) -> None:
    assert codes(invoice(**changes)) == expected


def test_tax_is_rounded_once_per_rate_not_per_line() -> None:
    # Three 10 % lines of 105 yen: per line 10.5 each, rounded down 10 each = 30;
    # once on the sum: 31.5 rounded down = 31. Only 31 is right.
    lines = [{"text": f"part {i}", "amount": "105", "tax_category": "S", "tax_rate": "10"}
             for i in range(3)]
    doc = order(kind="invoice", currency="JPY", lines=lines, net="315", rounding="down",
                tax=[{"category": "S", "rate": "10", "taxable": "315", "amount": "31"}],
                tax_total="31", total="346")
    assert document_findings(doc) == []
    doc["tax"][0]["amount"] = "30"  # what rounding each line would give
    assert [d.code for d in document_findings(doc)] == ["tax_amount", "tax_total"]


@pytest.mark.parametrize(("rounding", "amount"), [
    ("down", "480"), ("up", "481"), ("half_up", "480"), ("half_even", "480")])
def test_the_stated_rounding_decides(rounding: str, amount: str) -> None:
    doc = order(currency="JPY", rounding=rounding,
                tax=[{"category": "AA", "rate": "8", "taxable": "6002", "amount": amount}])
    assert document_findings(doc) == []
    other = "481" if amount == "480" else "480"
    doc["tax"][0]["amount"] = other
    assert [d.code for d in document_findings(doc)] == ["tax_amount"]


def test_without_a_rounding_down_or_up_is_accepted() -> None:
    for amount, ok in (("480", True), ("481", True), ("482", False), ("479", False)):
        doc = order(currency="JPY", tax=[{"category": "AA", "rate": "8", "taxable": "6002",
                                          "amount": amount}])
        assert (document_findings(doc) == []) is ok, amount


def test_negative_amounts_round_toward_and_away_from_zero() -> None:
    # A credit note: -6002 at 8 % is -480.16; down (toward zero) is -480.
    doc = order(currency="JPY", rounding="down",
                tax=[{"category": "AA", "rate": "8", "taxable": "-6002", "amount": "-480"}])
    assert document_findings(doc) == []
    assert round_money(Decimal("-480.16"), 0, "up") == Decimal("-481")


def test_minor_units() -> None:
    assert (minor_unit("JPY"), minor_unit("EUR"), minor_unit("BHD"), minor_unit("QQQ"),
            minor_unit(None)) == (0, 2, 3, 2, 2)
    assert all(d in (0, 3, 4) for d in CURRENCY_DIGITS.values())
    # EUR 2 digits: 19 % of 10.05 = 1.9095 -> 1.91 half up, 1.90 down.
    doc = order(currency="EUR", rounding="half_up",
                tax=[{"category": "S", "rate": "19", "taxable": "10.05", "amount": "1.91"}])
    assert document_findings(doc) == []


def test_a_line_amount_within_one_minor_unit_of_the_product_is_right() -> None:
    # 3 × 0.333 EUR = 0.999: 1.00 (rounded half up) and 0.99 (down) both say the product.
    for amount in ("1.00", "0.99", "0.999"):
        doc = order(currency="EUR", lines=[{"text": "x", "qty": "3", "unit_price": "0.333",
                                            "amount": amount}])
        assert [d.code for d in document_findings(doc)] == \
            (["minor_unit"] if amount == "0.999" else []), amount
    doc = order(currency="EUR", lines=[{"text": "x", "qty": "3", "unit_price": "0.333",
                                        "amount": "1.01"}])
    assert [d.code for d in document_findings(doc)] == ["line_amount"]


def test_net_counts_qty_times_price_where_a_line_has_no_amount() -> None:
    doc = order(lines=[{"text": "a", "qty": "2", "unit_price": "3"}, {"text": "b", "amount": "4"}],
                net="10")
    assert document_findings(doc) == []
    assert codes(order(lines=[{"text": "a", "qty": "2", "unit_price": "3"}], net="7")) == \
        [("net", "net")]


def test_huge_figures_are_exact() -> None:
    big = "9" * 27 + "." + "9" * 12
    doc = order(lines=[{"text": "x", "qty": big, "unit_price": big, "amount": "1"}])
    exact = Decimal(big).fma(Decimal(big), 0, EXACT)  # 78 digits: the default context rounds
    [found] = document_findings(doc)
    assert found.expected is not None and Decimal(found.expected) == exact


# -- tax ids --------------------------------------------------------------------


def test_the_japanese_check_digit() -> None:
    assert jp_check_digit("000012050002") == 7  # the National Tax Agency's corporate number
    assert tax_id_problem("T7000012050002") is None
    assert tax_id_problem("T5040001082442") is None
    message, expected = tax_id_problem("T1000012050002")  # type: ignore[misc]
    assert expected == "T7000012050002" and "check digit" in message
    with pytest.raises(ValueError):
        jp_check_digit("12345")


@pytest.mark.parametrize("text", ["T123", "T12345678901234", "1234567890123"])
def test_japanese_shapes(text: str) -> None:
    country = "JP" if not text.startswith("T") else None
    assert tax_id_problem(text, country) is not None


@pytest.mark.parametrize(("text", "ok"), [
    ("DE123456789", True), ("DE12345678", False), ("DE 123456789", False),
    ("FR40303265045", True), ("NL123456789B01", True), ("NL123456789", False),
    ("ATU12345678", True), ("AT12345678", False), ("EL123456789", True), ("GR123456789", False),
    ("IE6388047V", True), ("ESX1234567X", True), ("GB123456789", True), ("ABN 51824753556", True),
])
def test_eu_vat_shapes(text: str, ok: bool) -> None:
    assert (tax_id_problem(text) is None) is ok


@settings(max_examples=300)
@given(st.from_regex(r"[0-9]{12}", fullmatch=True), st.integers(0, 11), st.integers(0, 9))
def test_the_check_digit_catches_every_substitution_but_0_for_9(base: str, at: int,
                                                                digit: int) -> None:
    number = f"T{jp_check_digit(base)}{base}"
    assert tax_id_problem(number) is None
    changed = base[:at] + str(digit) + base[at + 1:]
    wrong = f"T{jp_check_digit(base)}{changed}"
    undetectable = changed == base or {base[at], str(digit)} == {"0", "9"}
    assert (tax_id_problem(wrong) is None) is undetectable


# -- properties: a consistent invoice, then one figure changed --------------------

CURRENCIES = st.sampled_from(["JPY", "EUR", "BHD"])
RATES = st.sampled_from([("S", "10"), ("AA", "8"), ("S", "19"), ("AA", "7"), ("Z", "0"),
                         ("S", "19.6")])


@st.composite
def consistent_invoices(draw: st.DrawFn) -> dict[str, Any]:
    currency = draw(CURRENCIES)
    digits = minor_unit(currency)
    rounding = draw(st.sampled_from(["half_up", "half_even", "down", "up"]))
    lines = []
    for i in range(draw(st.integers(1, 8))):
        qty = Decimal(draw(st.integers(1, 10_000))) / (10 ** draw(st.integers(0, 2)))
        price = Decimal(draw(st.integers(0, 10**7))) / (10 ** draw(st.integers(0, 4)))
        category, rate = draw(RATES)
        amount = round_money(qty * price, digits, rounding)
        lines.append({"text": f"item {i}", "qty": str(qty), "unit_price": str(price),
                      "amount": str(amount), "tax_category": category, "tax_rate": rate})
    return figures(order(kind="invoice", currency=currency, rounding=rounding, lines=lines))


def figures(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with net, tax per rate and totals computed from its line amounts."""
    digits, rounding = minor_unit(doc["currency"]), doc["rounding"]
    groups: dict[tuple[str, str], Decimal] = {}
    for line in doc["lines"]:
        key = (line["tax_category"], line["tax_rate"])
        groups[key] = groups.get(key, Decimal(0)) + Decimal(line["amount"])
    tax = [{"category": c, "rate": r, "taxable": str(t),
            "amount": str(round_money(t * Decimal(r) / 100, digits, rounding))}
           for (c, r), t in groups.items()]
    net = sum((Decimal(line["amount"]) for line in doc["lines"]), Decimal(0))
    tax_total = sum((Decimal(t["amount"]) for t in tax), Decimal(0))
    return {**doc, "tax": tax, "net": str(net), "tax_total": str(tax_total),
            "total": str(net + tax_total)}


@settings(max_examples=150)
@given(consistent_invoices())
def test_a_consistent_invoice_has_no_findings(doc: dict[str, Any]) -> None:
    assert document_problems(doc) == []
    assert document_findings(doc) == []


@settings(max_examples=150)
@given(consistent_invoices(), st.data())
def test_one_perturbed_figure_gives_exactly_the_expected_finding(doc: dict[str, Any],
                                                                 data: st.DataObject) -> None:
    unit = Decimal(1).scaleb(-minor_unit(doc["currency"]))
    what = data.draw(st.sampled_from(["line", "tax", "total", "tax_total"]))
    if what == "line":
        # One line's amount off by two units (one may be rounding), every figure after it computed from it:
        # only the line itself disagrees (with its qty × unit_price).
        i = data.draw(st.integers(0, len(doc["lines"]) - 1))
        doc["lines"][i]["amount"] = str(Decimal(doc["lines"][i]["amount"]) + 2 * unit)
        assert codes(figures(doc)) == [("line_amount", f"lines[{i}].amount")]
    elif what == "tax":
        i = data.draw(st.integers(0, len(doc["tax"]) - 1))
        doc["tax"][i]["amount"] = str(Decimal(doc["tax"][i]["amount"]) + unit)
        doc["tax_total"] = str(Decimal(doc["tax_total"]) + unit)
        doc["total"] = str(Decimal(doc["total"]) + unit)
        assert codes(doc) == [("tax_amount", f"tax[{i}].amount")]
    elif what == "total":
        doc["total"] = str(Decimal(doc["total"]) - unit)
        assert codes(doc) == [("total", "total")]
    else:
        doc["tax_total"] = str(Decimal(doc["tax_total"]) + unit)
        doc["total"] = str(Decimal(doc["total"]) + unit)
        assert codes(doc) == [("tax_total", "tax_total")]


def test_every_code_is_documented() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "commerce.md").read_text(encoding="utf-8")
    assert all(f"`{code}`" in text for code in CODES)
