"""UBL out and in (docs/formats.md): every official example imports, an export of the
import says the same again, and our invoices pass the official Peppol rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel._document import document_problems
from tests.kernel._support import BUYER, SELLER, require_fixtures
from usagi_p2p.formats import Parties, export_ubl, import_ubl
from usagi_p2p.node.errors import ExportIncompleteError, UnsupportedFormatError

from .conftest import BILLING_EXAMPLES, ORDERING_EXAMPLES, PEPPOL, Validate, official_examples

EXAMPLES = official_examples()
FATAL = ("fatal", "error")


def _doc(imported: Any) -> dict[str, Any]:
    return {"v": 1, "kind": imported.kind, "from": SELLER.did, "to": BUYER.did,
            "issued_at": imported.issued or "2026-12-06T09:00:00Z", **imported.body}


def test_the_fixtures_are_there() -> None:
    require_fixtures(PEPPOL)
    assert len(list(BILLING_EXAMPLES.glob("*.xml"))) >= 7
    assert len(list(ORDERING_EXAMPLES.rglob("*.xml"))) >= 12


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_official_example_imports_as_a_valid_body_and_round_trips(path: Path) -> None:
    imported = import_ubl(path.read_bytes())
    assert imported.body.get("lines") or imported.kind == "cancel"
    assert document_problems(_doc(imported)) == []
    # An export of the import keeps every field our model has.
    again = import_ubl(export_ubl(_doc(imported)))
    assert (again.kind, again.body) == (imported.kind, imported.body)
    assert again.ubl_type == imported.ubl_type


def test_what_the_examples_say_lands_in_our_fields() -> None:
    require_fixtures(PEPPOL)
    base = import_ubl((BILLING_EXAMPLES / "base-example.xml").read_bytes())
    body = base.body
    assert base.kind == "invoice" and body["ref"] == "Snippet1" and body["currency"] == "EUR"
    assert body["net"] == "1325" and body["tax_total"] == "331.25" and body["total"] == "1656.25"
    assert body["tax"] == [{"category": "S", "rate": "25.0", "taxable": "1325",
                            "amount": "331.25"}]
    assert body["due"] == "2017-12-01T00:00:00Z"
    assert body["payment_terms"] == "Payment within 10 days, 2% discount"
    seller, buyer = body["parties"]["from"], body["parties"]["to"]
    assert seller["name"] == "SupplierTradingName Ltd." and seller["country"] == "GB"
    assert seller["endpoint"] == "0088:9482348239847239874" and seller["tax_id"] == "GB1232434"
    assert seller["address"] == "Main street 1\nPostbox 123" and seller["city"] == "London"
    assert buyer["contact"] == "Lisa Johnson"
    first, second, charge = body["lines"]
    assert first["text"] == "item name\nDescription of item"
    assert (first["qty"], first["unit"], first["unit_price"], first["amount"]) == \
        ("7", "DAY", "400", "2800")
    assert second["qty"] == "-3" and second["amount"] == "-1500"
    # A document-level charge is a line of its own, marked to be written back as one.
    assert charge["text"] == "Insurance" and charge["amount"] == "25"
    assert charge["ext"]["ubl"]["charge"] == "true"
    order = import_ubl((ORDERING_EXAMPLES / "Order_Example.xml").read_bytes()).body
    assert order["parties"]["from"]["name"] == "Helseforetak"  # the buyer sends an order
    assert order["lines"][0]["ref"] == "121212" and order["lines"][0]["qty"] == "120"
    assert order["valid_until"] == "2013-01-31T00:00:00Z"
    response = import_ubl((ORDERING_EXAMPLES / "OrderResponse_Example.xml").read_bytes())
    assert response.kind == "order_response" and response.body["response"] == "counter"
    despatch = import_ubl((ORDERING_EXAMPLES / "DespatchAdvice_Example.xml").read_bytes())
    assert despatch.kind == "delivery_note"
    assert despatch.body["lines"][0]["ext"]["ubl"]["lot"] == "546378239"
    assert despatch.body["ext"]["ubl"]["order_reference"] == "AEG012345"


@pytest.mark.parametrize("path", sorted(BILLING_EXAMPLES.glob("*.xml")) if PEPPOL.exists() else [],
                         ids=lambda p: p.name)
def test_the_export_of_each_imported_invoice_passes_the_official_rules(
        path: Path, peppol_rules: Validate) -> None:
    exported = export_ubl(_doc(import_ubl(path.read_bytes())))
    assert peppol_rules(exported) == []


#: A Japanese qualified invoice: 10 % and the reduced 8 %, tax once per rate, the
#: seller's registration number (T + 13 digits), Peppol electronic addresses.
JP_INVOICE: dict[str, Any] = {
    "v": 1, "kind": "invoice", "from": SELLER.did, "to": BUYER.did,
    "issued_at": "2026-12-06T09:00:00Z", "ref": "INV-2026-001", "currency": "JPY",
    "due": "2026-12-31T00:00:00Z", "note": "毎度ありがとうございます",
    "lines": [
        {"text": "M6x20 SUS304 六角ボルト", "qty": "500", "unit": "個", "unit_price": "12",
         "amount": "6000", "tax_category": "S", "tax_rate": "10", "ref": "HB-M6-20"},
        {"text": "お茶 (軽減税率)\n静岡産", "qty": "3", "unit": "箱", "unit_price": "1234",
         "amount": "3702", "tax_category": "AA", "tax_rate": "8",
         "ext": {"food": {"expiry": "2027-01-01"}}},
    ],
    "tax": [{"category": "S", "rate": "10", "taxable": "6000", "amount": "600"},
            {"category": "AA", "rate": "8", "taxable": "3702", "amount": "296"}],
    "net": "9702", "tax_total": "896", "total": "10598", "rounding": "down",
    "payment_terms": "月末締め翌月末払い",
    "parties": {"from": {"name": "関東工機株式会社", "tax_id": "T1234567890123", "country": "JP",
                         "endpoint": "0188:1234567890123", "address": "東京都大田区1-2-3",
                         "city": "大田区", "postal_code": "144-0001"},
                "to": {"name": "大阪精密", "country": "JP", "endpoint": "0188:9876543210987"}},
}


def test_a_japanese_qualified_invoice_passes_the_official_rules(peppol_rules: Validate) -> None:
    assert document_problems(JP_INVOICE) == []
    exported = export_ubl(JP_INVOICE)
    assert peppol_rules(exported) == []
    back = import_ubl(exported).body
    for key in ("ref", "currency", "note", "due", "net", "tax_total", "total", "payment_terms",
                "parties"):
        assert back[key] == JP_INVOICE[key], key
    # EN 16931 has no "AA": the reduced rate is "S" at 8 % (docs/formats.md).
    assert [t["category"] for t in back["tax"]] == ["S", "S"]
    for ours, theirs in zip(JP_INVOICE["lines"], back["lines"], strict=True):
        assert theirs["text"] == ours["text"] and theirs["unit"] == ours["unit"]
        assert theirs.get("ext", {}).get("food") == ours.get("ext", {}).get("food")
        assert {k: theirs[k] for k in ("qty", "unit_price", "amount", "ref", "tax_rate")
                if k in ours} == {k: ours[k] for k in ("qty", "unit_price", "amount", "ref",
                                                       "tax_rate") if k in ours}


def test_the_demos_invoice_passes_the_official_rules(peppol_rules: Validate) -> None:
    """What `make demo` sends as its qualified invoice is a Peppol invoice as it stands."""
    from usagi_p2p.company import demo

    invoice = {"v": 1, "kind": "invoice", "from": SELLER.did, "to": BUYER.did,
               "issued_at": "2026-12-07T00:00:00Z", **demo._invoice("INV-2026-3301", demo.LINES)}
    assert document_problems(invoice) == []
    assert peppol_rules(export_ubl(invoice)) == []


def test_the_parties_come_from_the_node_where_the_document_is_silent(
        peppol_rules: Validate) -> None:
    bare = {k: v for k, v in JP_INVOICE.items()
            if k not in ("parties", "tax", "net", "tax_total", "total")}
    with pytest.raises(ExportIncompleteError, match="seller's country") as raised:
        export_ubl(bare, Parties({"name": "Kanto"}, {"name": "Osaka"}))
    # The same, as the fields a face words itself (the web UI's page).
    assert raised.value.missing == ("parties.from.country", "parties.from.endpoint",
                                    "parties.to.country", "parties.to.endpoint",
                                    "parties.from.tax_id")
    with pytest.raises(ExportIncompleteError, match="due date"):
        export_ubl({k: v for k, v in JP_INVOICE.items() if k not in ("due", "payment_terms")})
    profile = Parties({"name": "Kanto", "country": "JP", "endpoint": "0188:1",
                       "tax_id": "T1234567890123"},
                      {"name": "Osaka", "country": "JP", "endpoint": "0188:2"})
    exported = export_ubl(bare, profile)
    assert b"Kanto" in exported and [f for f in peppol_rules(exported) if f[0] in FATAL] == []
    # What the document says wins, field by field.
    said = {**bare, "parties": {"from": {"name": "関東工機"}}}
    assert "関東工機" in import_ubl(export_ubl(said, profile)).body["parties"]["from"]["name"]


@pytest.mark.parametrize("path", sorted(BILLING_EXAMPLES.glob("*.xml")) if PEPPOL.exists() else [],
                         ids=lambda p: p.name)
def test_the_official_examples_pass_the_repaired_rules(path: Path, peppol_rules: Validate) -> None:
    assert peppol_rules(path.read_bytes()) == []


def test_an_invoice_that_does_not_add_up_is_exported_as_signed_and_the_rules_say_so(
        peppol_rules: Validate) -> None:
    """A document is exported as it was signed; if its figures are wrong, the
    official rules say so, as the arithmetic findings do."""
    wrong = copy.deepcopy(JP_INVOICE)
    wrong["tax"][0]["amount"] = "700"  # 10 % of 6000 is 600
    failed = {rule for flag, rule in peppol_rules(export_ubl(wrong)) if flag in FATAL}
    assert {"BR-S-09", "BR-CO-14"} <= failed
    wrong = copy.deepcopy(JP_INVOICE)
    wrong["lines"][0]["amount"] = "7000"  # 500 x 12 is 6000
    failed = {rule for flag, rule in peppol_rules(export_ubl(wrong)) if flag in FATAL}
    assert {"PEPPOL-EN16931-R120", "BR-S-08"} <= failed


def test_the_rules_are_live_and_what_they_refuse_is_never_written(peppol_rules: Validate) -> None:
    """The harness reports what the rules find: a unit code outside UN/ECE Rec 20, as a
    document may carry it, fails BR-CL-23; "AA" written as it is would fail BR-CL-17/18,
    which is why it is exported as "S" with its rate."""
    odd = copy.deepcopy(JP_INVOICE)
    odd["lines"][0]["unit"] = "QQQ"
    failed = {rule for flag, rule in peppol_rules(export_ubl(odd)) if flag in FATAL}
    assert failed == {"BR-CL-23"}
    raw = export_ubl(JP_INVOICE).replace(b"<cbc:ID>S</cbc:ID>", b"<cbc:ID>AA</cbc:ID>")
    assert {"BR-CL-17", "BR-CL-18"} <= {rule for _, rule in peppol_rules(raw)}


@pytest.mark.parametrize("kind", ["quote", "message", "medical.approval"])
def test_kinds_without_a_ubl_type_are_refused(kind: str) -> None:
    with pytest.raises(UnsupportedFormatError):
        export_ubl({**JP_INVOICE, "kind": kind})


def test_each_kind_becomes_its_ubl_type() -> None:
    for kind, root in (("order", b"<Order "), ("order_response", b"<OrderResponse "),
                       ("delivery_note", b"<DespatchAdvice "), ("cancel", b"<OrderCancellation "),
                       ("invoice", b"<Invoice ")):
        doc = {**JP_INVOICE, "kind": kind, **({"response": "accept"} if kind == "order_response"
                                              else {})}
        data = export_ubl(doc)
        assert root in data
        assert import_ubl(data).kind == kind


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=40).filter(lambda s: s.strip() == s and s.strip())
_decimal = st.decimals(min_value=-10**6, max_value=10**6, places=2).map(lambda d: format(d, "f"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(kind=st.sampled_from(["invoice", "order", "order_response", "delivery_note"]),
       lines=st.lists(st.fixed_dictionaries(
           {"text": _text},
           optional={"qty": _decimal.filter(lambda d: d != "0.00"), "unit_price": _decimal,
                     "amount": _decimal, "ref": _text, "tax_rate": st.sampled_from(["10", "8"]),
                     "unit": st.sampled_from(["pcs", "個", "KGM", "H87"])}),
           min_size=1, max_size=5),
       note=st.none() | _text, ref=_text)
def test_our_fields_survive_an_export_and_an_import(kind: str, lines: list[dict[str, str]],
                                                     note: str | None, ref: str) -> None:
    doc: dict[str, Any] = {"v": 1, "kind": kind, "from": SELLER.did, "to": BUYER.did,
                           "issued_at": "2026-12-06T09:00:00Z", "ref": ref, "currency": "EUR",
                           "lines": lines, "parties": JP_INVOICE["parties"],
                           "due": "2027-01-31T00:00:00Z"}
    if kind == "order_response":
        doc["response"] = "counter"
    if note is not None:
        doc["note"] = note
    back = import_ubl(export_ubl(doc))
    assert back.kind == kind and back.body["ref"] == ref and back.body.get("note") == note
    if kind in ("invoice", "order"):
        assert back.body["parties"] == doc["parties"]
    else:  # the ordering types carry the parts of a party their BIS examples show
        for side in ("from", "to"):
            for key in ("name", "endpoint", "country"):
                assert back.body["parties"][side][key] == doc["parties"][side][key]
    kept = ("text", "qty", "unit", "ref") if kind == "delivery_note" else (
        ("text", "qty", "unit", "ref", "unit_price", "amount", "tax_rate") if kind != "invoice"
        else ("text", "unit", "ref", "tax_rate"))
    for ours, theirs in zip(lines, back.body["lines"], strict=True):
        assert {k: theirs.get(k) for k in kept if k in ours} == {k: ours[k] for k in kept
                                                                 if k in ours}


def _paths(data: bytes) -> set[str]:
    """Every element path of a UBL document, namespaces as prefixes, the root as "/"."""
    from xml.etree.ElementTree import fromstring

    short = {"urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2": "cac",
             "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2": "cbc"}
    found: set[str] = set()

    def walk(element: Any, path: str) -> None:
        for child in element:
            namespace, _, name = child.tag[1:].partition("}")
            here = f"{path}/{short.get(namespace, '?')}:{name}"
            found.add(here)
            walk(child, here)

    walk(fromstring(data), "")
    return found


@pytest.mark.parametrize(("kind", "root"), [("order", "Order"), ("order_response", "OrderResponse"),
                                            ("delivery_note", "DespatchAdvice"),
                                            ("cancel", "OrderCancellation")])
def test_ordering_documents_are_shaped_as_the_official_examples(kind: str, root: str) -> None:
    """No Schematron for Peppol ordering is in the fixtures: every element our export
    writes must sit where an official example of that type has it."""
    require_fixtures(ORDERING_EXAMPLES)
    official: set[str] = set()
    for path in ORDERING_EXAMPLES.rglob("*.xml"):
        data = path.read_bytes()
        if f"<{root} ".encode() in data or f"<{root}\n".encode() in data:
            official |= _paths(data)
    assert official
    doc = {**JP_INVOICE, "kind": kind, "response": "counter"} if kind == "order_response" else \
        {**JP_INVOICE, "kind": kind}
    doc["valid_until"] = "2027-01-31T00:00:00Z"
    ours = _paths(export_ubl(doc))
    # The usagi:* item properties are AdditionalItemProperty, which the examples have.
    assert ours - official == set()


def test_a_partners_text_is_written_inert_and_read_back_exact() -> None:
    """Line breaks, tabs, controls, direction overrides and separators in a partner's
    text are written as character references: the XML shown on a terminal drives
    nothing, and an import reads the same text (what XML 1.0 cannot hold at all, the
    C0 controls, becomes U+FFFD)."""
    import unicodedata

    hostile = ("\r\x1b[32mack\x1b[0m \u202eevil\u202c \u2066iso\u2069 \x9b2J\x7f\u200b\ufeff"
               "\u2028\u00ad\U000e0041\t\ue000\nFORGED-LINE")
    doc = copy.deepcopy(JP_INVOICE)
    doc["note"] = hostile
    doc["lines"][0]["text"] = hostile
    doc["parties"]["to"]["name"] = hostile
    data = export_ubl(doc)
    text = data.decode("utf-8")
    assert not [c for c in text if c != "\n" and unicodedata.category(c) in
                ("Cc", "Cf", "Zl", "Zp", "Cs")]
    assert "\nFORGED-LINE" not in text and "&#xa;FORGED-LINE" in text
    back = import_ubl(data).body
    expected = hostile.replace("\x1b", "\ufffd")
    assert back["note"] == expected and back["parties"]["to"]["name"] == expected
    assert back["lines"][0]["text"] == expected
