"""A UBL 2.1 document -> a document body of ours (docs/formats.md, "UBL in").

Reads an Invoice, CreditNote, Order, OrderChange, OrderResponse (an order
agreement too), DespatchAdvice or OrderCancellation, as Peppol BIS 3 shapes
them, into the body ``usagi send`` takes: the kind, the fields of our model
(spec §5) and, under ``ext.ubl``, the few things UBL says that our model has
no field for but an export must say again (the UBL type, a customization,
the order's reference, document-level charges). What neither holds is
dropped; docs/formats.md lists it. The file is read by safexml.py first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from xml.etree.ElementTree import Element  # noqa: S405 (a type; parsing is safexml's)

from ..node.errors import InputTooLargeError, MalformedInputError, UnsupportedFormatError
from .safexml import MAX_XML, parse_xml
from .ubl import CAC, CBC, EXT, ROOTS, DocType, Party, decimal_text, model_decimal

__all__ = ["Imported", "import_ubl", "MAX_XML", "MAX_LINES"]

#: The most lines a document holds (kernel MAX_LINES).
MAX_LINES: Final = 10_000

_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME_RE: Final = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]")
_RESPONSES: Final = {"AP": "accept", "RE": "reject", "CA": "counter"}


@dataclass(frozen=True, slots=True)
class Imported:
    """What a UBL file said: the kind and body to send, its UBL type, and when it
    was issued (the node stamps its own ``issued_at`` when it sends)."""

    kind: str
    body: dict[str, Any]
    ubl_type: str
    issued: str | None


def _q(prefix: str, name: str) -> str:
    return f"{{{CAC if prefix == 'cac' else CBC}}}{name}"


def _path(element: Element | None, path: str) -> Element | None:
    """The first element under ``element`` along ``path`` ("cac:Item/cbc:Name")."""
    for step in path.split("/"):
        if element is None:
            return None
        prefix, _, name = step.partition(":")
        element = element.find(_q(prefix, name))
    return element


def _all(element: Element | None, path: str) -> Iterator[Element]:
    if element is None:
        return
    head, _, last = path.rpartition("/")
    parent = _path(element, head) if head else element
    if parent is not None:
        prefix, _, name = last.partition(":")
        yield from parent.findall(_q(prefix, name))


def _text(element: Element | None, path: str) -> str | None:
    found = _path(element, path)
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return text or None


def _free(element: Element | None, path: str) -> str | None:
    """Free text (a note, a name) as written, white space and all, when it says anything."""
    found = _path(element, path)
    if found is None or found.text is None or not found.text.strip():
        return None
    return found.text


def _decimal(text: str | None, where: str) -> str | None:
    """``text`` as a decimal of the model ("12.50"), kept as written when it is one."""
    return None if text is None else model_decimal(text, where)


def _time(date: str | None, time: str | None = None) -> str | None:
    """A UBL date (and time) as the model's RFC 3339 UTC time."""
    if date is None or not _DATE_RE.fullmatch(date):
        return None
    clock = time[:8] if time and _TIME_RE.fullmatch(time[:8]) else "00:00:00"
    return f"{date}T{clock}Z"


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", [], {}):
        target[key] = value


def _party(element: Element | None) -> Party:
    """A UBL cac:Party as a party on paper (docs/formats.md, "Parties")."""
    party: Party = {}
    if element is None:
        return party
    _put(party, "name", _free(element, "cac:PartyName/cbc:Name")
         or _free(element, "cac:PartyLegalEntity/cbc:RegistrationName"))
    schemes = list(_all(element, "cac:PartyTaxScheme"))
    vat = [s for s in schemes if _text(s, "cac:TaxScheme/cbc:ID") == "VAT"]
    for scheme in vat + schemes:
        if (tax_id := _text(scheme, "cbc:CompanyID")) is not None:
            party["tax_id"] = tax_id
            break
    address = _path(element, "cac:PostalAddress")
    lines = [_text(address, "cbc:StreetName"), _text(address, "cbc:AdditionalStreetName")]
    lines += [(line.text or "").strip() for line in _all(address, "cac:AddressLine/cbc:Line")]
    _put(party, "address", "\n".join(line for line in lines if line))
    _put(party, "city", _text(address, "cbc:CityName"))
    _put(party, "postal_code", _text(address, "cbc:PostalZone"))
    country = _text(address, "cac:Country/cbc:IdentificationCode")
    _put(party, "country", country.upper() if country and len(country) == 2 else country)
    endpoint = _path(element, "cbc:EndpointID")
    if endpoint is not None and endpoint.text and endpoint.text.strip():
        scheme_id = endpoint.get("schemeID")
        party["endpoint"] = (f"{scheme_id}:" if scheme_id else "") + endpoint.text.strip()
    _put(party, "contact", _free(element, "cac:Contact/cbc:Name"))
    return party


def _item_text(item: Element | None) -> str | None:
    """The line's free text: the item's name, and its description when that says more."""
    name = _text(item, "cbc:Name")
    found = _path(item, "cbc:Description")
    description = found.text if found is not None and found.text and found.text.strip() else None
    if description is None:
        return name
    if name is None or name in description:
        return description
    return f"{name}\n{description}"


def _line(element: Element, doc: DocType, where: str) -> dict[str, Any]:
    """One UBL line as a line of ours."""
    ubl: dict[str, Any] = {}
    item_line = element
    if doc.line == "OrderLine":
        item_line = _path(element, "cac:LineItem") or element
        _put(ubl, "order_line", _text(element, "cac:OrderLineReference/cbc:LineID"))
    else:
        _put(ubl, "order_line", _text(item_line, "cac:OrderLineReference/cbc:LineID"))
    _put(ubl, "status", _text(item_line, "cbc:LineStatusCode"))
    item = _path(item_line, "cac:Item")
    line: dict[str, Any] = {}
    _put(line, "text", _item_text(item) or _text(item_line, "cbc:Note"))
    quantity_name = {"InvoiceLine": "cbc:InvoicedQuantity", "CreditNoteLine": "cbc:CreditedQuantity",
                     "DespatchLine": "cbc:DeliveredQuantity"}.get(doc.line or "", "cbc:Quantity")
    quantity = _path(item_line, quantity_name)
    if quantity is not None:
        _put(line, "qty", _decimal((quantity.text or "").strip() or None, f"{where} quantity"))
        _put(line, "unit", (quantity.get("unitCode") or "").strip())
    price = _decimal(_text(item_line, "cac:Price/cbc:PriceAmount"), f"{where} price")
    base = _decimal(_text(item_line, "cac:Price/cbc:BaseQuantity"), f"{where} base quantity")
    if price is not None and base is not None and Decimal(base) not in (0, 1):
        # The price of BaseQuantity units: ours is per unit.
        price = decimal_text((Decimal(price) / Decimal(base)).quantize(Decimal("1e-12")).normalize())
    _put(line, "unit_price", price)
    _put(line, "amount", _decimal(_text(item_line, "cbc:LineExtensionAmount"), f"{where} amount"))
    # The line's own allowances and charges: its amount includes them (EN 16931 BG-27/28).
    _put(ubl, "charges", [_line_charge(c, f"{where} allowance/charge {i + 1}")
                          for i, c in enumerate(_all(item_line, "cac:AllowanceCharge"))])
    _put(line, "ref", _text(item, "cac:SellersItemIdentification/cbc:ID"))
    _put(ubl, "buyer_id", _text(item, "cac:BuyersItemIdentification/cbc:ID"))
    standard = _path(item, "cac:StandardItemIdentification/cbc:ID")
    if standard is not None and standard.text and standard.text.strip():
        scheme = standard.get("schemeID")
        ubl["standard_id"] = (f"{scheme}:" if scheme else "") + standard.text.strip()
    _put(ubl, "lot", _text(item, "cac:ItemInstance/cac:LotIdentification/cbc:LotNumberID"))
    _put(line, "tax_category", _text(item, "cac:ClassifiedTaxCategory/cbc:ID"))
    _put(line, "tax_rate", _decimal(_text(item, "cac:ClassifiedTaxCategory/cbc:Percent"),
                                    f"{where} tax rate"))
    ext: dict[str, Any] = {}
    properties: dict[str, str] = {}
    for prop in _all(item, "cac:AdditionalItemProperty"):
        name, value = _text(prop, "cbc:Name"), _text(prop, "cbc:Value")
        if name is None or value is None:
            continue
        if name == "usagi:unit":
            line["unit"] = value
        elif name == "usagi:ext":
            ext.update(_ext_json(value, where))
        else:
            properties[name] = value
    _put(ubl, "properties", properties)
    if ubl:
        ext[EXT] = ubl
    _put(line, "ext", ext)
    if "text" not in line:
        raise MalformedInputError(f"{where} has no item name, description or note")
    return line


def _line_charge(element: Element, where: str) -> dict[str, str]:
    """A line's AllowanceCharge as a map of text (kept under ``ext.ubl.charges``)."""
    charge: dict[str, str] = {"charge": "true" if _text(element, "cbc:ChargeIndicator") == "true"
                              else "false",
                              "amount": _decimal(_text(element, "cbc:Amount"), where) or "0"}
    _put(charge, "reason", _text(element, "cbc:AllowanceChargeReason"))
    _put(charge, "reason_code", _text(element, "cbc:AllowanceChargeReasonCode"))
    _put(charge, "percent", _decimal(_text(element, "cbc:MultiplierFactorNumeric"), where))
    _put(charge, "base_amount", _decimal(_text(element, "cbc:BaseAmount"), where))
    return charge


def _ext_json(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise MalformedInputError(f"{where}: the usagi:ext property is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedInputError(f"{where}: the usagi:ext property is not a JSON object")
    cleaned: dict[str, Any] = _no_floats(value)
    return cleaned


def _no_floats(value: Any) -> Any:
    if isinstance(value, float):
        return decimal_text(Decimal(repr(value)))
    if isinstance(value, dict):
        return {str(k): _no_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_floats(v) for v in value]
    return value


def _charge(element: Element, where: str) -> dict[str, Any]:
    """A document-level AllowanceCharge as a line (an allowance's amount negative)."""
    charge = _text(element, "cbc:ChargeIndicator") == "true"
    amount = _decimal(_text(element, "cbc:Amount"), f"{where} amount") or "0"
    if not charge and not amount.startswith("-"):
        amount = "-" + amount if Decimal(amount) != 0 else amount
    elif not charge:
        amount = amount[1:]
    ubl: dict[str, Any] = {"charge": "true" if charge else "false"}
    _put(ubl, "reason_code", _text(element, "cbc:AllowanceChargeReasonCode"))
    _put(ubl, "percent", _decimal(_text(element, "cbc:MultiplierFactorNumeric"), f"{where} percent"))
    _put(ubl, "base_amount", _decimal(_text(element, "cbc:BaseAmount"), f"{where} base"))
    line: dict[str, Any] = {"text": _text(element, "cbc:AllowanceChargeReason")
                            or ("Charge" if charge else "Allowance"), "amount": amount}
    _put(line, "tax_category", _text(element, "cac:TaxCategory/cbc:ID"))
    _put(line, "tax_rate", _decimal(_text(element, "cac:TaxCategory/cbc:Percent"),
                                    f"{where} tax rate"))
    line["ext"] = {EXT: ubl}
    return line


def _tax_total(root: Element, currency: str | None) -> Element | None:
    totals = list(_all(root, "cac:TaxTotal"))
    for total in totals:
        amount = _path(total, "cbc:TaxAmount")
        if amount is not None and (currency is None or amount.get("currencyID") in (None, currency)):
            return total
    return totals[0] if totals else None


def import_ubl(data: bytes, limit: int = MAX_XML) -> Imported:
    """The body of our model a UBL file says (docs/formats.md, "UBL in").

    ``input_too_large``, ``input_unsafe``, ``input_malformed`` (safexml.py and
    anything not shaped as UBL), ``format_unsupported`` for a UBL type we do
    not map (a Catalogue, a Quotation, ...). Nothing is sent here.
    """
    root = parse_xml(data, limit)
    namespace, _, name = root.tag[1:].partition("}") if root.tag.startswith("{") else ("", "", root.tag)
    doc = ROOTS.get(name)
    if doc is None or namespace != f"urn:oasis:names:specification:ubl:schema:xsd:{name}-2":
        if namespace.startswith("urn:oasis:names:specification:ubl:schema:xsd:"):
            raise UnsupportedFormatError(f"a UBL {name} has no kind here; invoices, credit notes, "
                                         "orders, order changes, responses, despatch advices and "
                                         "cancellations do")
        raise MalformedInputError(f"not a UBL 2.1 document: the root is {name[:60]!r}")
    body: dict[str, Any] = {}
    ubl: dict[str, Any] = {}
    customization = _text(root, "cbc:CustomizationID")
    profile = _text(root, "cbc:ProfileID")
    if name != next(r for r, t in ROOTS.items() if t.kind == doc.kind):
        ubl["document"] = name
    if customization not in (None, doc.customization):
        ubl["customization"] = customization
    if profile not in (None, doc.profile):
        ubl["profile"] = profile
    _put(body, "ref", _text(root, "cbc:ID"))
    currency = _text(root, "cbc:DocumentCurrencyCode")
    _put(body, "currency", currency)
    notes = [n.text or "" for n in _all(root, "cbc:Note")]
    notes += [n.text or "" for n in _all(root, "cbc:CancellationNote")]
    _put(body, "note", "\n".join(n for n in notes if n.strip()))
    _put(body, "due", _time(_text(root, "cbc:DueDate")
                            or _text(root, "cac:PaymentMeans/cbc:PaymentDueDate")))
    if doc.kind == "order":
        _put(body, "valid_until", _time(_text(root, "cac:ValidityPeriod/cbc:EndDate")))
        _put(body, "due", _time(_text(root, "cac:Delivery/cac:RequestedDeliveryPeriod/cbc:EndDate")))
    if doc.kind == "order_response":
        code = _text(root, "cbc:OrderResponseCode")
        body["response"] = _RESPONSES.get(code or "AP", "counter")
        if code is not None and code not in _RESPONSES:
            ubl["response_code"] = code
    _put(body, "payment_terms", _free(root, "cac:PaymentTerms/cbc:Note"))
    _put(ubl, "order_reference", _text(root, "cac:OrderReference/cbc:ID"))
    _put(ubl, "buyer_reference", _text(root, "cbc:BuyerReference"))
    _put(ubl, "billing_reference",
         _text(root, "cac:BillingReference/cac:InvoiceDocumentReference/cbc:ID"))
    parties: dict[str, Party] = {}
    _put(parties, "from", _party(_path(root, f"cac:{doc.sender}/cac:Party")))
    _put(parties, "to", _party(_path(root, f"cac:{doc.receiver}/cac:Party")))
    _put(body, "parties", parties)
    lines: list[dict[str, Any]] = []
    if doc.line is not None:
        found = list(_all(root, f"cac:{doc.line}"))
        charges = list(_all(root, "cac:AllowanceCharge"))
        if len(found) + len(charges) > MAX_LINES:
            raise InputTooLargeError(f"{len(found) + len(charges):,} lines; a document holds at "
                                     f"most {MAX_LINES:,}")
        lines = [_line(line, doc, f"line {i + 1}") for i, line in enumerate(found)]
        lines += [_charge(c, f"allowance/charge {i + 1}") for i, c in enumerate(charges)]
    _put(body, "lines", lines)
    totals = _path(root, "cac:LegalMonetaryTotal") or _path(root, "cac:AnticipatedMonetaryTotal")
    _put(body, "net", _decimal(_text(totals, "cbc:TaxExclusiveAmount")
                               or _text(totals, "cbc:LineExtensionAmount"), "net"))
    tax_total = _tax_total(root, currency)
    _put(body, "tax_total", _decimal(_text(tax_total, "cbc:TaxAmount"), "tax total"))
    tax = []
    for i, subtotal in enumerate(_all(tax_total, "cac:TaxSubtotal")):
        entry = {"category": _text(subtotal, "cac:TaxCategory/cbc:ID") or "S",
                 "rate": _decimal(_text(subtotal, "cac:TaxCategory/cbc:Percent"),
                                  f"tax {i + 1} rate") or "0",
                 "taxable": _decimal(_text(subtotal, "cbc:TaxableAmount"), f"tax {i + 1}") or "0",
                 "amount": _decimal(_text(subtotal, "cbc:TaxAmount"), f"tax {i + 1}") or "0"}
        tax.append(entry)
    _put(body, "tax", tax)
    _put(body, "total", _decimal(_text(totals, "cbc:PayableAmount"), "total"))
    _put(ubl, "prepaid", _decimal(_text(totals, "cbc:PrepaidAmount"), "prepaid"))
    _put(ubl, "rounding", _decimal(_text(totals, "cbc:PayableRoundingAmount"), "rounding"))
    if ubl:
        body["ext"] = {EXT: ubl}
    issued = _time(_text(root, "cbc:IssueDate"), _text(root, "cbc:IssueTime"))
    return Imported(doc.kind, body, name, issued)
