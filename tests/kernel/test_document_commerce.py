"""kernel._document: the shapes of the optional commercial fields (issue 19, spec section 5).

Types and shapes only: a wrong type or an unknown sub-field is invalid_document
with every broken rule listed; figures that do not add up are findings of
kernel._commerce (tests/kernel/test_commerce.py), never refusals here.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import DOCUMENT_LIMITS, dagcbor
from kernel._document import MAX_SHORT, MAX_TAX, ROUNDINGS, document_problems, validate_document
from kernel.errors import InvalidDocumentError

from ._support import order


def paths(doc: Any) -> set[str]:
    return {p.path for p in document_problems(doc)}


def invoice(**changes: Any) -> dict[str, Any]:
    """A qualified invoice (Japan) with every new field, valid and consistent."""
    doc = order(
        kind="invoice",
        currency="JPY",
        lines=[
            {"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "25",
             "amount": "12500", "tax_category": "S", "tax_rate": "10"},
            {"text": "green tea, 1 kg", "qty": "2", "unit_price": "3000", "amount": "6000",
             "tax_category": "AA", "tax_rate": "8"},
        ],
        tax=[{"category": "S", "rate": "10", "taxable": "12500", "amount": "1250"},
             {"category": "AA", "rate": "8", "taxable": "6000", "amount": "480"}],
        net="18500",
        tax_total="1730",
        total="20230",
        rounding="down",
        payment_terms="30 days end of month, bank transfer",
        parties={"from": {"name": "Kanto Bolt K.K.", "tax_id": "T5040001082442",
                          "address": "1-2-3 Shiba\nMinato-ku", "city": "Tokyo", "postal_code": "105-0014",
                          "country": "JP", "endpoint": "0188:5040001082442", "contact": "Tanaka"},
                 "to": {"name": "Osaka Works", "country": "JP"}},
    )
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_a_document_with_every_new_field_is_valid() -> None:
    assert document_problems(invoice()) == []


def test_documents_of_today_stay_valid() -> None:
    # Nothing new is required: the minimal order (no tax, no parties) is valid.
    assert document_problems(order()) == []
    assert document_problems(order(lines=[{"text": "x", "qty": "1", "amount": "2"}], total="2")) == []


def test_every_field_is_optional_on_its_own() -> None:
    for key in ("tax", "net", "tax_total", "rounding", "payment_terms", "parties"):
        doc = invoice()
        del doc[key]
        assert document_problems(doc) == [], key


def test_arithmetic_is_never_a_refusal() -> None:
    # Totals that do not add up, a tax_id with a wrong check digit, a category
    # outside UNCL5305: all shapes are fine, so the document is valid.
    doc = invoice(net="1", tax_total="2", total="999", parties={"from": {"tax_id": "T1234567890123"}})
    doc["lines"][0]["tax_category"] = "whatever"
    assert document_problems(doc) == []


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"net": 18500}, "net"),
        ({"net": "18,500"}, "net"),
        ({"tax_total": "1e3"}, "tax_total"),
        ({"rounding": "banker"}, "rounding"),
        ({"rounding": ["half_up"]}, "rounding"),
        ({"payment_terms": ""}, "payment_terms"),
        ({"payment_terms": "x" * 16_001}, "payment_terms"),
        ({"tax": []}, "tax"),
        ({"tax": {"S": "10"}}, "tax"),
        ({"tax": ["S"]}, "tax[0]"),
        ({"tax": [{"category": "S", "rate": "10", "taxable": "1"}]}, "tax[0].amount"),
        ({"tax": [{"category": "S", "rate": 10, "taxable": "1", "amount": "0"}]}, "tax[0].rate"),
        ({"tax": [{"category": "", "rate": "10", "taxable": "1", "amount": "0"}]}, "tax[0].category"),
        ({"tax": [{"category": "S", "rate": "10", "taxable": "1", "amount": "0", "x": "1"}]}, "tax[0].x"),
        ({"parties": []}, "parties"),
        ({"parties": {"buyer": {}}}, "parties.buyer"),
        ({"parties": {"from": "Kanto Bolt"}}, "parties.from"),
        ({"parties": {"from": {"vat": "DE1"}}}, "parties.from.vat"),
        ({"parties": {"to": {"country": "jp"}}}, "parties.to.country"),
        ({"parties": {"to": {"country": "JPN"}}}, "parties.to.country"),
        ({"parties": {"to": {"name": ""}}}, "parties.to.name"),
        ({"parties": {"to": {"tax_id": "T" * (MAX_SHORT + 1)}}}, "parties.to.tax_id"),
        ({"parties": {"to": {"address": 5}}}, "parties.to.address"),
        ({"lines": [{"text": "x", "tax_rate": 10}]}, "lines[0].tax_rate"),
        ({"lines": [{"text": "x", "tax_rate": "10%"}]}, "lines[0].tax_rate"),
        ({"lines": [{"text": "x", "tax_category": ""}]}, "lines[0].tax_category"),
    ],
)
def test_shapes_refused(changes: dict[str, Any], path: str) -> None:
    assert path in paths(invoice(**changes))


def test_every_broken_rule_is_listed() -> None:
    doc = invoice(net=1, rounding="x", parties={"from": {"country": "jp", "fax": "1"}, "x": {}},
                  tax=[{"category": "S"}])
    assert paths(doc) == {"net", "rounding", "parties.from.country", "parties.from.fax", "parties.x",
                          "tax[0].rate", "tax[0].taxable", "tax[0].amount"}
    with pytest.raises(InvalidDocumentError) as info:
        validate_document(doc)
    assert "parties.from.fax" in str(info.value)


def test_at_most_max_tax_subtotals() -> None:
    one = {"category": "S", "rate": "10", "taxable": "0", "amount": "0"}
    assert document_problems(invoice(tax=[one] * MAX_TAX)) == []
    assert "tax" in paths(invoice(tax=[one] * (MAX_TAX + 1)))


def test_the_new_structures_fit_the_document_body_limits() -> None:
    # parties.from.name is three levels deep, tax[i].rate three: far within
    # the document body's depth limit of 16 (spec section 13.1).
    raw = dagcbor.encode(invoice())
    assert dagcbor.decode(raw, dagcbor.Limits(max_size=1 << 20, max_depth=3, max_length=32)) == invoice()
    assert dagcbor.decode(raw, DOCUMENT_LIMITS) == invoice()


decimals = st.from_regex(r"-?(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?", fullmatch=True)
shorts = st.text(min_size=1, max_size=20)
subtotals = st.fixed_dictionaries(
    {"category": st.sampled_from(["S", "AA", "Z", "E", "税"]), "rate": decimals, "taxable": decimals,
     "amount": decimals})
party_maps = st.fixed_dictionaries({}, optional={
    "name": shorts, "tax_id": shorts, "address": shorts, "city": shorts, "postal_code": shorts,
    "country": st.from_regex(r"[A-Z]{2}", fullmatch=True), "endpoint": shorts, "contact": shorts})
commerce = st.fixed_dictionaries({}, optional={
    "tax": st.lists(subtotals, min_size=1, max_size=MAX_TAX),
    "net": decimals, "tax_total": decimals, "total": decimals,
    "rounding": st.sampled_from(sorted(ROUNDINGS)),
    "payment_terms": st.text(min_size=1, max_size=40),
    "parties": st.fixed_dictionaries({}, optional={"from": party_maps, "to": party_maps}),
})
line_extras = st.fixed_dictionaries({}, optional={
    "tax_category": st.sampled_from(["S", "AA", "Z"]), "tax_rate": decimals})


@settings(max_examples=200)
@given(commerce, st.lists(line_extras, min_size=1, max_size=4))
def test_well_shaped_commercial_fields_are_valid_and_round_trip(fields: dict[str, Any],
                                                                  extras: list[dict[str, Any]]) -> None:
    doc = order(**fields, lines=[{"text": f"line {i}", **e} for i, e in enumerate(extras)])
    assert document_problems(doc) == []
    assert dagcbor.decode(dagcbor.encode(doc), DOCUMENT_LIMITS) == doc


wrong = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=1),
                  st.just(1.5), st.just(""))


@settings(max_examples=200)
@given(commerce, st.sampled_from(["net", "tax_total", "rounding", "tax", "parties", "payment_terms"]),
       wrong)
def test_one_wrong_type_is_exactly_one_problem_at_its_path(fields: dict[str, Any], key: str,
                                                           value: Any) -> None:
    doc = order(**fields)
    doc[key] = value
    # Exactly one problem, at the field or (a list of the wrong items) at its first item.
    assert [p.path for p in document_problems(doc)] in ([key], [f"{key}[0]"])
