"""A document of ours -> UBL 2.1 as Peppol BIS 3 shapes it (docs/formats.md, "UBL out").

An invoice becomes a Peppol BIS Billing 3.0 Invoice (or a CreditNote, when
it was imported from one) that the EN 16931 and Peppol Schematron rules pass
with no fatal assertion when its figures add up; an order an Order, an order
response an OrderResponse, a delivery note a DespatchAdvice, a cancel an
OrderCancellation, shaped as the Peppol BIS ordering examples. A document
whose own figures do not add up is written as it is (it is what was signed):
the rules that say so fire, as the arithmetic findings do.

Pure: a document, its parties as the node knows them, bytes out. About 620
lines: five UBL types written by one writer from one set of party, line and
tax helpers; split by type, each part would repeat or import the others' privates.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import Any, Final

from lxml import etree

from ..node.errors import ExportIncompleteError, UnsupportedFormatError
from ..node.terminal import UNSAFE
from .ubl import (
    CAC,
    CBC,
    DEFAULT_KIND,
    EXT,
    ROOTS,
    DocType,
    Parties,
    Party,
    amount_text,
    decimal_text,
    is_unit_code,
    unit_code,
)

__all__ = ["export_ubl", "MINOR_UNITS"]

#: Currencies without minor units (ISO 4217 exponent 0); every other has two.
MINOR_UNITS: Final[Mapping[str, int]] = {c: 0 for c in (
    "JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "XPF", "PYG", "RWF", "KMF", "GNF",
    "DJF", "BIF", "VUV")}
_ROUNDING: Final = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN, "down": ROUND_DOWN,
                    "up": ROUND_UP}
_RESPONSE_CODES: Final = {"accept": "AP", "reject": "RE", "counter": "CA"}
#: What EN 16931 wants said when a category charges no tax (BR-E-10, BR-AE-10, ...).
_EXEMPTION: Final = {"E": "Exempt from tax", "AE": "Reverse charge", "K": "Intra-community supply",
                     "G": "Export outside the EU", "O": "Not subject to VAT"}
_VAT_ID: Final = re.compile(r"[A-Z]{2}[0-9A-Za-z+*.]{2,13}")
_JP_TAX_ID: Final = re.compile(r"T[0-9]{13}")
#: Characters XML 1.0 cannot hold (C0 controls but tab, LF, CR; surrogates; U+FFFE/F).
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: Placeholders for a character written as a reference (private use; any of
#: the two in a text is itself written as a reference).
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKED: Final = re.compile(f"{_OPEN}([0-9a-f]+){_CLOSE}")


_ALL: Final = frozenset({"name", "address", "tax", "legal", "contact"})
#: Which parts of a party each type writes, for its sender and its receiver: what
#: the Peppol BIS examples of that type show (an Order Response has no PartyName,
#: a Despatch Advice no tax scheme); the billing types and the Order write all.
_PARTS: Final[Mapping[str, tuple[frozenset[str], frozenset[str]]]] = {
    "Invoice": (_ALL, _ALL), "CreditNote": (_ALL, _ALL), "Order": (_ALL, _ALL),
    "OrderChange": (frozenset({"name", "legal", "contact"}), frozenset({"address", "legal"})),
    "OrderResponse": (frozenset({"address", "legal", "contact"}), frozenset({"address", "legal"})),
    "DespatchAdvice": (frozenset({"address", "legal", "contact"}), frozenset({"address", "legal"})),
    "OrderCancellation": (frozenset({"legal"}), frozenset({"name", "address", "legal"})),
}


class _Writer:
    """Elements in document order under one root, text escaped by lxml."""

    def __init__(self, doc: DocType) -> None:
        self.root = etree.Element(f"{{{doc.namespace}}}{doc.root}",
                                  nsmap={None: doc.namespace, "cac": CAC, "cbc": CBC})

    @staticmethod
    def add(parent: etree._Element, name: str, text: str | None = None,
            **attributes: str) -> etree._Element:
        prefix, _, local = name.partition(":")
        element = etree.SubElement(parent, f"{{{CAC if prefix == 'cac' else CBC}}}{local}",
                                   attrib={k: _inert(v) for k, v in attributes.items()} or None)
        if text is not None:
            element.text = _inert(text)
        return element


def _inert(text: str) -> str:
    """``text`` to write: what XML cannot hold as U+FFFD; tabs, line breaks and every
    control, format or separator character marked, to be written as a character
    reference (``&#xa;``): a parser reads the same text, a terminal that shows
    the file (``usagi export`` to standard output, ``cat``) acts on none of it."""
    text = _NOT_XML.sub("\ufffd", text)
    if text.isprintable():
        return text
    return "".join(f"{_OPEN}{ord(c):x}{_CLOSE}" if c in (_OPEN, _CLOSE) or (
        unicodedata.category(c) in UNSAFE) else c for c in text)


def _date(time: str | None) -> str | None:
    return time[:10] if time else None


def _dec(text: Any) -> Decimal | None:
    if not isinstance(text, str):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _ubl(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    ext = (mapping or {}).get("ext")
    found = ext.get(EXT) if isinstance(ext, Mapping) else None
    return dict(found) if isinstance(found, Mapping) else {}


def _merged(paper: Any, known: Party) -> Party:
    """The node's record of a party, overridden field by field by what the document says."""
    party = {k: v for k, v in known.items() if isinstance(v, str) and v}
    if isinstance(paper, Mapping):
        party.update({k: v for k, v in paper.items() if isinstance(v, str) and v})
    return party


def _party(w: _Writer, parent: etree._Element, party: Party, *, parts: frozenset[str],
           seller: bool = False) -> None:
    element = w.add(parent, "cac:Party")
    endpoint = party.get("endpoint")
    if endpoint:
        scheme, colon, ident = endpoint.partition(":")
        if colon:
            w.add(element, "cbc:EndpointID", ident, schemeID=scheme)
        else:
            w.add(element, "cbc:EndpointID", endpoint)
    if endpoint and seller:
        # The seller's identifier (EN 16931 BT-29): BR-CO-26 wants it, its legal
        # registration id or its VAT id; its electronic address is one it has.
        scheme, colon, ident = endpoint.partition(":")
        identification = w.add(element, "cac:PartyIdentification")
        if colon:
            w.add(identification, "cbc:ID", ident, schemeID=scheme)
        else:
            w.add(identification, "cbc:ID", endpoint)
    if party.get("name") and "name" in parts:
        w.add(w.add(element, "cac:PartyName"), "cbc:Name", party["name"])
    lines = [line.strip() for line in party.get("address", "").split("\n") if line.strip()]
    if "address" in parts and (lines or party.get("city") or party.get("postal_code")
                               or party.get("country")):
        address = w.add(element, "cac:PostalAddress")
        if lines:
            w.add(address, "cbc:StreetName", lines[0])
        if len(lines) > 1:
            w.add(address, "cbc:AdditionalStreetName", lines[1])
        if party.get("city"):
            w.add(address, "cbc:CityName", party["city"])
        if party.get("postal_code"):
            w.add(address, "cbc:PostalZone", party["postal_code"])
        for line in lines[2:]:
            w.add(w.add(address, "cac:AddressLine"), "cbc:Line", line)
        if party.get("country"):
            w.add(w.add(address, "cac:Country"), "cbc:IdentificationCode", party["country"])
    tax_id = party.get("tax_id")
    if tax_id and "tax" in parts:
        scheme = w.add(element, "cac:PartyTaxScheme")
        w.add(scheme, "cbc:CompanyID", tax_id)
        # A VAT number starts with its country (BR-CO-09); Japan's registration
        # number ("T" + 13 digits) is a tax registration id (EN 16931 BT-32).
        vat = _VAT_ID.fullmatch(tax_id) is not None and _JP_TAX_ID.fullmatch(tax_id) is None
        w.add(w.add(scheme, "cac:TaxScheme"), "cbc:ID", "VAT" if vat else "TAX")
    if "legal" in parts and party.get("name"):
        w.add(w.add(element, "cac:PartyLegalEntity"), "cbc:RegistrationName", party["name"])
    if party.get("contact") and "contact" in parts:
        w.add(w.add(element, "cac:Contact"), "cbc:Name", party["contact"])


def _missing(doc: DocType, sender: Party, receiver: Party) -> list[tuple[str, str]]:
    """(what a person reads, the field's path) of each party field Peppol needs and lacks."""
    seller, buyer = (sender, receiver) if doc.seller_sends else (receiver, sender)
    seller_side, buyer_side = ("from", "to") if doc.seller_sends else ("to", "from")
    need = []
    for role, side, party in (("seller", seller_side, seller), ("buyer", buyer_side, buyer)):
        for key in ("name", "country", "endpoint"):
            if not party.get(key):
                need.append((f"the {role}'s {key} (parties.{side}.{key})",
                             f"parties.{side}.{key}"))
    return need


class _Money:
    """Amounts of one document: its currency, minor unit and rounding."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.currency = str(document.get("currency") or "")
        self.places = MINOR_UNITS.get(self.currency, 2)
        self.rounding = _ROUNDING.get(str(document.get("rounding")), ROUND_HALF_UP)

    def round(self, value: Decimal) -> Decimal:
        return value.quantize(Decimal(1).scaleb(-self.places), rounding=self.rounding)

    def add(self, w: _Writer, parent: etree._Element, name: str, value: Decimal | str) -> None:
        text = value if isinstance(value, str) else decimal_text(value)
        w.add(parent, name, amount_text(text), currencyID=self.currency)


def _category(line: Mapping[str, Any], tax: list[Mapping[str, Any]]) -> tuple[str, str | None]:
    """A line's EN 16931 tax category and rate (None: the category takes no rate)."""
    category = line.get("tax_category")
    rate = line.get("tax_rate")
    if category is None and rate is None and len(tax) == 1:
        category, rate = tax[0].get("category"), tax[0].get("rate")
    if category is None and isinstance(rate, str):
        category = "S" if (_dec(rate) or 0) > 0 else "Z"
    if category is None:
        return "O", None
    if category == "AA":  # JP PINT's reduced rate: standard rate at 8 % in EN 16931
        category = "S"
    if category == "O":
        return "O", None
    return str(category), rate if isinstance(rate, str) else "0"


def _tax_category(w: _Writer, parent: etree._Element, name: str, category: str,
                  rate: str | None, reason: bool = False) -> None:
    element = w.add(parent, name)
    w.add(element, "cbc:ID", category)
    if rate is not None:
        w.add(element, "cbc:Percent", rate)
    if reason and category in _EXEMPTION:
        w.add(element, "cbc:TaxExemptionReason", _EXEMPTION[category])
    w.add(w.add(element, "cac:TaxScheme"), "cbc:ID", "VAT")


def _item(w: _Writer, parent: etree._Element, line: Mapping[str, Any],
          tax: tuple[str, str | None] | None, unit_said: bool = True,
          described: bool = True) -> None:
    item = w.add(parent, "cac:Item")
    text = str(line.get("text") or "-")
    name = next((part.strip() for part in text.splitlines() if part.strip()), text.strip() or "-")
    if not described:  # a type whose items have no description: the whole text is the name
        name = text
    elif text != name:
        w.add(item, "cbc:Description", text)
    w.add(item, "cbc:Name", name)
    ubl = _ubl(line)
    if isinstance(ubl.get("buyer_id"), str):
        w.add(w.add(item, "cac:BuyersItemIdentification"), "cbc:ID", ubl["buyer_id"])
    if isinstance(line.get("ref"), str):
        w.add(w.add(item, "cac:SellersItemIdentification"), "cbc:ID", line["ref"])
    standard = ubl.get("standard_id")
    if isinstance(standard, str):
        scheme, colon, ident = standard.partition(":")
        identification = w.add(item, "cac:StandardItemIdentification")
        if colon:
            w.add(identification, "cbc:ID", ident, schemeID=scheme)
        else:
            w.add(identification, "cbc:ID", standard)
    if tax is not None:
        _tax_category(w, item, "cac:ClassifiedTaxCategory", *tax)
    properties = ubl.get("properties")
    for key, value in (properties.items() if isinstance(properties, Mapping) else ()):
        prop = w.add(item, "cac:AdditionalItemProperty")
        w.add(prop, "cbc:Name", str(key))
        w.add(prop, "cbc:Value", str(value))
    unit = line.get("unit")
    if isinstance(unit, str) and (not is_unit_code(unit) or not unit_said):
        # A unit that is no Rec 20 code, or that no quantity carried, said as it is.
        prop = w.add(item, "cac:AdditionalItemProperty")
        w.add(prop, "cbc:Name", "usagi:unit")
        w.add(prop, "cbc:Value", unit)
    others = {k: v for k, v in (line.get("ext") or {}).items() if k != EXT}
    if others:
        prop = w.add(item, "cac:AdditionalItemProperty")
        w.add(prop, "cbc:Name", "usagi:ext")
        w.add(prop, "cbc:Value", json.dumps(others, ensure_ascii=False, sort_keys=True,
                                            separators=(",", ":"), default=str))
    if isinstance(ubl.get("lot"), str):
        w.add(w.add(w.add(item, "cac:ItemInstance"), "cac:LotIdentification"), "cbc:LotNumberID",
              ubl["lot"])


def _line_charges(w: _Writer, parent: etree._Element, line: Mapping[str, Any],
                  money: _Money) -> None:
    """A line's own allowances and charges, as an import kept them (``ext.ubl.charges``)."""
    charges = _ubl(line).get("charges")
    for charge in charges if isinstance(charges, list) else []:
        if not isinstance(charge, Mapping):
            continue
        element = w.add(parent, "cac:AllowanceCharge")
        w.add(element, "cbc:ChargeIndicator", "true" if charge.get("charge") == "true" else "false")
        if isinstance(charge.get("reason_code"), str):
            w.add(element, "cbc:AllowanceChargeReasonCode", charge["reason_code"])
        if isinstance(charge.get("reason"), str):
            w.add(element, "cbc:AllowanceChargeReason", charge["reason"])
        if isinstance(charge.get("percent"), str):
            w.add(element, "cbc:MultiplierFactorNumeric", charge["percent"])
        money.add(w, element, "cbc:Amount", str(charge.get("amount") or "0"))
        if isinstance(charge.get("base_amount"), str):
            money.add(w, element, "cbc:BaseAmount", charge["base_amount"])


def _is_charge(line: Mapping[str, Any]) -> bool:
    return _ubl(line).get("charge") in ("true", "false")


def _line_figures(line: Mapping[str, Any], money: _Money) -> tuple[str, str, str]:
    """A line's quantity, amount and price, each derived from the others when absent."""
    qty, price, amount = _dec(line.get("qty")), _dec(line.get("unit_price")), _dec(line.get("amount"))
    if qty is None:
        qty = Decimal(1)
    if amount is None:
        amount = money.round(qty * price) if price is not None else Decimal(0)
    if price is None:
        price = abs(amount / qty) if qty else abs(amount)
        price = price.quantize(Decimal("1e-4")).normalize() if price % 1 else price.quantize(Decimal(1))
    qty_text = line["qty"] if isinstance(line.get("qty"), str) else decimal_text(qty)
    amount_s = line["amount"] if isinstance(line.get("amount"), str) else decimal_text(amount)
    price_s = line["unit_price"] if isinstance(line.get("unit_price"), str) else decimal_text(price)
    return qty_text, amount_text(amount_s), price_s


def _sum(values: list[str]) -> Decimal:
    return sum((Decimal(v) for v in values), Decimal(0))


def _billing(w: _Writer, doc: DocType, document: Mapping[str, Any], money: _Money) -> None:
    """Charges, the tax breakdown, the totals and the lines of an Invoice or CreditNote."""
    root = w.root
    lines = [ln for ln in document.get("lines") or [] if isinstance(ln, Mapping)]
    tax_entries = [t for t in document.get("tax") or [] if isinstance(t, Mapping)]
    items = [ln for ln in lines if not _is_charge(ln)]
    charges = [ln for ln in lines if _is_charge(ln)]
    charge_total, allowance_total = Decimal(0), Decimal(0)
    groups: dict[tuple[str, str | None], Decimal] = {}
    for line in charges:
        ubl = _ubl(line)
        _, amount, _ = _line_figures(line, money)
        is_charge = ubl.get("charge") == "true"
        value = abs(Decimal(amount))
        element = w.add(root, "cac:AllowanceCharge")
        w.add(element, "cbc:ChargeIndicator", "true" if is_charge else "false")
        if isinstance(ubl.get("reason_code"), str):
            w.add(element, "cbc:AllowanceChargeReasonCode", ubl["reason_code"])
        w.add(element, "cbc:AllowanceChargeReason", str(line.get("text")))
        if isinstance(ubl.get("percent"), str):
            w.add(element, "cbc:MultiplierFactorNumeric", ubl["percent"])
        money.add(w, element, "cbc:Amount", decimal_text(value) if not amount.startswith("-")
                  else amount[1:])
        if isinstance(ubl.get("base_amount"), str):
            money.add(w, element, "cbc:BaseAmount", ubl["base_amount"])
        category = _category(line, tax_entries)
        _tax_category(w, element, "cac:TaxCategory", *category)
        signed = value if is_charge else -value
        groups[category] = groups.get(category, Decimal(0)) + signed
        if is_charge:
            charge_total += value
        else:
            allowance_total += value
    figures = [_line_figures(line, money) for line in items]
    categories = [_category(line, tax_entries) for line in items]
    for (_, amount, _), category in zip(figures, categories, strict=True):
        groups[category] = groups.get(category, Decimal(0)) + Decimal(amount)
    # The tax breakdown: as the document states it, else one per category and rate.
    breakdown: list[tuple[str, str | None, str, str]] = []
    if tax_entries:
        for entry in tax_entries:
            code = "S" if entry.get("category") == "AA" else str(entry.get("category") or "S")
            breakdown.append((code, None if code == "O" else str(entry.get("rate") or "0"),
                              str(entry.get("taxable") or "0"), str(entry.get("amount") or "0")))
    else:
        for (code, percent), base in groups.items():
            tax = money.round(base * (_dec(percent) or 0) / 100)
            breakdown.append((code, percent, decimal_text(base), decimal_text(tax)))
    stated_tax = document.get("tax_total")
    tax_total = (Decimal(amount_text(stated_tax)) if isinstance(stated_tax, str)
                 else _sum([amount_text(b[3]) for b in breakdown]))
    total_element = w.add(root, "cac:TaxTotal")
    money.add(w, total_element, "cbc:TaxAmount", tax_total)
    for code, percent, taxable, tax_amount in breakdown:
        subtotal = w.add(total_element, "cac:TaxSubtotal")
        money.add(w, subtotal, "cbc:TaxableAmount", taxable)
        money.add(w, subtotal, "cbc:TaxAmount", tax_amount)
        _tax_category(w, subtotal, "cac:TaxCategory", code, percent, reason=True)
    line_total = _sum([f[1] for f in figures])
    net = document.get("net")
    exclusive = (Decimal(amount_text(net)) if isinstance(net, str)
                 else line_total - allowance_total + charge_total)
    ubl = _ubl(document)
    prepaid, rounding = _dec(ubl.get("prepaid")), _dec(ubl.get("rounding"))
    inclusive = exclusive + tax_total
    totals = w.add(root, "cac:LegalMonetaryTotal")
    money.add(w, totals, "cbc:LineExtensionAmount", line_total)
    money.add(w, totals, "cbc:TaxExclusiveAmount", net if isinstance(net, str) else exclusive)
    money.add(w, totals, "cbc:TaxInclusiveAmount", inclusive)
    if allowance_total:
        money.add(w, totals, "cbc:AllowanceTotalAmount", allowance_total)
    if charge_total:
        money.add(w, totals, "cbc:ChargeTotalAmount", charge_total)
    if prepaid is not None:
        money.add(w, totals, "cbc:PrepaidAmount", ubl["prepaid"])
    if rounding is not None:
        money.add(w, totals, "cbc:PayableRoundingAmount", ubl["rounding"])
    total = document.get("total")
    money.add(w, totals, "cbc:PayableAmount", total if isinstance(total, str) else
              inclusive - (prepaid or 0) + (rounding or 0))
    quantity = "cbc:CreditedQuantity" if doc.root == "CreditNote" else "cbc:InvoicedQuantity"
    for i, (line, (qty, amount, price), category) in enumerate(
            zip(items, figures, categories, strict=True)):
        element = w.add(root, f"cac:{doc.line}")
        w.add(element, "cbc:ID", str(i + 1))
        w.add(element, quantity, qty, unitCode=unit_code(line.get("unit")))
        money.add(w, element, "cbc:LineExtensionAmount", amount)
        order_line = _ubl(line).get("order_line")
        if isinstance(order_line, str):
            w.add(w.add(element, "cac:OrderLineReference"), "cbc:LineID", order_line)
        _line_charges(w, element, line, money)
        _item(w, element, line, category)
        w.add(w.add(element, "cac:Price"), "cbc:PriceAmount", price, currencyID=money.currency)


def _order_lines(w: _Writer, doc: DocType, document: Mapping[str, Any], money: _Money) -> None:
    """The lines of an Order, OrderChange or OrderResponse (OrderLine/LineItem)."""
    tax_entries = [t for t in document.get("tax") or [] if isinstance(t, Mapping)]
    for i, line in enumerate(ln for ln in document.get("lines") or [] if isinstance(ln, Mapping)):
        if _is_charge(line):
            continue
        element = w.add(w.root, "cac:OrderLine")
        item = w.add(element, "cac:LineItem")
        w.add(item, "cbc:ID", str(i + 1))
        ubl = _ubl(line)
        if isinstance(ubl.get("status"), str):
            w.add(item, "cbc:LineStatusCode", ubl["status"])
        if isinstance(line.get("qty"), str):
            w.add(item, "cbc:Quantity", line["qty"], unitCode=unit_code(line.get("unit")))
        if isinstance(line.get("amount"), str) and money.currency:
            money.add(w, item, "cbc:LineExtensionAmount", line["amount"])
        if money.currency:
            _line_charges(w, item, line, money)
        if isinstance(line.get("unit_price"), str) and money.currency:
            w.add(w.add(item, "cac:Price"), "cbc:PriceAmount", line["unit_price"],
                  currencyID=money.currency)
        has_tax = "tax_category" in line or "tax_rate" in line
        _item(w, item, line, _category(line, tax_entries) if has_tax else None,
              unit_said=isinstance(line.get("qty"), str))
        if isinstance(ubl.get("order_line"), str):
            w.add(w.add(element, "cac:OrderLineReference"), "cbc:LineID", ubl["order_line"])


def _despatch_lines(w: _Writer, document: Mapping[str, Any]) -> None:
    for i, line in enumerate(ln for ln in document.get("lines") or [] if isinstance(ln, Mapping)):
        element = w.add(w.root, "cac:DespatchLine")
        w.add(element, "cbc:ID", str(i + 1))
        w.add(element, "cbc:DeliveredQuantity", line["qty"] if isinstance(line.get("qty"), str)
              else "1", unitCode=unit_code(line.get("unit")))
        order_line = _ubl(line).get("order_line")
        w.add(w.add(element, "cac:OrderLineReference"), "cbc:LineID",
              order_line if isinstance(order_line, str) else str(i + 1))
        _item(w, element, line, None, described=False)


def export_ubl(document: Mapping[str, Any], parties: Parties | None = None, *,
               reference: str | None = None, order_reference: str | None = None) -> bytes:
    """``document`` as UBL 2.1 XML (UTF-8), shaped by Peppol BIS 3.

    ``parties``: the two parties as the node knows them (its profile, the
    partner's record); the document's own ``parties`` win field by field.
    ``reference``: the ID when the document has no ``ref`` (the CID).
    ``order_reference``: the ``ref`` of the order the document answers, when
    the node knows it. ``format_unsupported`` for a kind with no UBL type,
    ``export_incomplete`` for an invoice without the party data Peppol needs.
    """
    kind = document.get("kind")
    ubl = _ubl(document)
    root_name = ubl.get("document") if isinstance(ubl.get("document"), str) else None
    if root_name is None or ROOTS.get(root_name, None) is None or ROOTS[root_name].kind != kind:
        root_name = DEFAULT_KIND.get(str(kind))
    if root_name is None:
        raise UnsupportedFormatError(f"{_a(str(kind))} {kind} has no UBL document type here; "
                                     f"exported are: {', '.join(sorted(DEFAULT_KIND))}")
    doc = ROOTS[root_name]
    known = parties or Parties()
    stated = document.get("parties")
    paper: Mapping[str, Any] = stated if isinstance(stated, Mapping) else {}
    sender = _merged(paper.get("from"), known.sender)
    receiver = _merged(paper.get("to"), known.receiver)
    billing = doc.root in ("Invoice", "CreditNote")
    money = _Money(document)
    if billing:
        need = _missing(doc, sender, receiver)
        seller = sender if doc.seller_sends else receiver
        taxed = [ln for ln in document.get("lines") or [] if isinstance(ln, Mapping)
                 and _category(ln, [t for t in document.get("tax") or []
                                    if isinstance(t, Mapping)])[0] != "O"]
        if taxed and not seller.get("tax_id"):
            # BR-S-02, BR-Z-02, BR-E-02, ...: a taxed line needs the seller's tax id.
            need.append(("the seller's tax_id (parties.from.tax_id), as its lines are taxed",
                         f"parties.{'from' if doc.seller_sends else 'to'}.tax_id"))
        total = _dec(document.get("total"))
        if not document.get("due") and not document.get("payment_terms") and (
                total is None or total > 0):
            # BR-CO-25: an amount due needs a due date or payment terms.
            need.append(("a due date (due) or payment terms (payment_terms)", "due|payment_terms"))
        if not money.currency:
            need.insert(0, ("the currency", "currency"))
        if need:
            raise ExportIncompleteError("a Peppol invoice needs " + ", ".join(t for t, _ in need)
                                        + "; set them in the document's parties, or in this "
                                        "node's profile and the partner's ('usagi profile')",
                                        tuple(p for _, p in need))
    w = _Writer(doc)
    root = w.root
    w.add(root, "cbc:CustomizationID", str(ubl.get("customization") or doc.customization))
    w.add(root, "cbc:ProfileID", str(ubl.get("profile") or doc.profile))
    w.add(root, "cbc:ID", str(document.get("ref") or reference or "1"))
    issued = str(document.get("issued_at") or "")
    if issued:
        w.add(root, "cbc:IssueDate", issued[:10])
        if not billing and doc.root != "OrderCancellation":
            w.add(root, "cbc:IssueTime", issued[11:19])
    due = _date(document.get("due"))
    order_ref = ubl.get("order_reference") or order_reference
    note = document.get("note")
    if doc.root == "Invoice":
        if due:
            w.add(root, "cbc:DueDate", due)
        w.add(root, "cbc:InvoiceTypeCode", "380")
    elif doc.root == "CreditNote":
        w.add(root, "cbc:CreditNoteTypeCode", "381")
    elif doc.root == "Order":
        w.add(root, "cbc:OrderTypeCode", "220")
    elif doc.root == "OrderResponse":
        code = ubl.get("response_code") or _RESPONSE_CODES.get(str(document.get("response")))
        if code and ubl.get("customization") != "urn:fdc:peppol.eu:poacc:trns:order_agreement:3":
            w.add(root, "cbc:OrderResponseCode", str(code))
    if doc.root == "OrderCancellation":
        w.add(root, "cbc:CancellationNote", str(note or "Cancelled"))
    elif isinstance(note, str):
        w.add(root, "cbc:Note", note)
    if money.currency and doc.root not in ("DespatchAdvice", "OrderCancellation"):
        w.add(root, "cbc:DocumentCurrencyCode", money.currency)
    if billing:
        buyer_ref = ubl.get("buyer_reference") or (None if order_ref else
                                                   str(document.get("ref") or reference or "1"))
        if buyer_ref:
            w.add(root, "cbc:BuyerReference", str(buyer_ref))
    if doc.root in ("Order", "OrderChange") and document.get("valid_until"):
        w.add(w.add(root, "cac:ValidityPeriod"), "cbc:EndDate", str(_date(document["valid_until"])))
    if doc.root != "Order" and order_ref:
        w.add(w.add(root, "cac:OrderReference"), "cbc:ID", str(order_ref))
    elif doc.root in ("OrderResponse", "OrderCancellation", "OrderChange"):
        w.add(w.add(root, "cac:OrderReference"), "cbc:ID", "NA")
    if billing and isinstance(ubl.get("billing_reference"), str):
        reference_element = w.add(root, "cac:BillingReference")
        w.add(w.add(reference_element, "cac:InvoiceDocumentReference"), "cbc:ID",
              ubl["billing_reference"])
    parts = _PARTS[doc.root]
    for element_name, party, sells, these in ((doc.sender, sender, doc.seller_sends, parts[0]),
                                              (doc.receiver, receiver, not doc.seller_sends,
                                               parts[1])):
        _party(w, w.add(root, f"cac:{element_name}"), party, parts=these,
               seller=billing and sells)
    if doc.root in ("Order", "OrderChange") and due:
        w.add(w.add(w.add(root, "cac:Delivery"), "cac:RequestedDeliveryPeriod"), "cbc:EndDate", due)
    if doc.root == "CreditNote" and due:
        means = w.add(root, "cac:PaymentMeans")
        w.add(means, "cbc:PaymentMeansCode", "1")
        w.add(means, "cbc:PaymentDueDate", due)
    if isinstance(document.get("payment_terms"), str) and doc.root in ("Invoice", "CreditNote",
                                                                        "Order", "OrderChange"):
        w.add(w.add(root, "cac:PaymentTerms"), "cbc:Note", document["payment_terms"])
    if doc.root == "DespatchAdvice":
        w.add(w.add(root, "cac:Shipment"), "cbc:ID", "NA")
    if billing:
        _billing(w, doc, document, money)
    elif doc.line == "OrderLine":
        _order_totals(w, document, money)
        _order_lines(w, doc, document, money)
    elif doc.line == "DespatchLine":
        _despatch_lines(w, document)
    text = etree.tostring(root, encoding="unicode", pretty_print=True)
    text = _MARKED.sub(lambda m: f"&#x{m.group(1)};", text)
    return ("<?xml version='1.0' encoding='UTF-8'?>\n" + text).encode("utf-8")


def _order_totals(w: _Writer, document: Mapping[str, Any], money: _Money) -> None:
    """An order's charges, tax amount and anticipated totals, as far as it states them."""
    if not money.currency:
        return
    for line in (ln for ln in document.get("lines") or [] if isinstance(ln, Mapping)):
        if not _is_charge(line):
            continue
        ubl = _ubl(line)
        element = w.add(w.root, "cac:AllowanceCharge")
        w.add(element, "cbc:ChargeIndicator", str(ubl["charge"]))
        if isinstance(ubl.get("reason_code"), str):
            w.add(element, "cbc:AllowanceChargeReasonCode", ubl["reason_code"])
        w.add(element, "cbc:AllowanceChargeReason", str(line.get("text")))
        if isinstance(ubl.get("percent"), str):
            w.add(element, "cbc:MultiplierFactorNumeric", ubl["percent"])
        amount = str(line.get("amount") or "0")
        money.add(w, element, "cbc:Amount", amount[1:] if amount.startswith("-") else amount)
        if isinstance(ubl.get("base_amount"), str):
            money.add(w, element, "cbc:BaseAmount", ubl["base_amount"])
        if "tax_category" in line or "tax_rate" in line:
            _tax_category(w, element, "cac:TaxCategory", *_category(line, []))
    if isinstance(document.get("tax_total"), str):
        tax_total = w.add(w.root, "cac:TaxTotal")
        money.add(w, tax_total, "cbc:TaxAmount", document["tax_total"])
        # A Peppol Order states only the tax amount; an order agreement its breakdown.
        entries = document.get("tax") if etree.QName(w.root).localname == "OrderResponse" else []
        for entry in (t for t in entries or [] if isinstance(t, Mapping)):
            subtotal = w.add(tax_total, "cac:TaxSubtotal")
            money.add(w, subtotal, "cbc:TaxableAmount", str(entry.get("taxable") or "0"))
            money.add(w, subtotal, "cbc:TaxAmount", str(entry.get("amount") or "0"))
            category = str(entry.get("category") or "S")
            _tax_category(w, subtotal, "cac:TaxCategory", category,
                          None if category == "O" else str(entry.get("rate") or "0"))
    net, total = document.get("net"), document.get("total")
    if not isinstance(net, str) and not isinstance(total, str):
        return
    root_name = etree.QName(w.root).localname
    totals = w.add(w.root, "cac:LegalMonetaryTotal" if root_name == "OrderResponse"
                   else "cac:AnticipatedMonetaryTotal")
    items = [ln for ln in document.get("lines") or [] if isinstance(ln, Mapping)
             and not _is_charge(ln)]
    money.add(w, totals, "cbc:LineExtensionAmount",
              _sum([amount_text(str(ln["amount"])) for ln in items if isinstance(ln.get("amount"), str)]))
    if isinstance(net, str):
        money.add(w, totals, "cbc:TaxExclusiveAmount", net)
    ubl = _ubl(document)
    if isinstance(ubl.get("prepaid"), str):
        money.add(w, totals, "cbc:PrepaidAmount", ubl["prepaid"])
    if isinstance(ubl.get("rounding"), str):
        money.add(w, totals, "cbc:PayableRoundingAmount", ubl["rounding"])
    if isinstance(total, str):
        money.add(w, totals, "cbc:PayableAmount", total)


def _a(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"
