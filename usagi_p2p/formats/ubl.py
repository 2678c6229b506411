"""The UBL 2.1 vocabulary both directions share (docs/formats.md).

Which UBL document type each kind of ours becomes, which party elements hold
the seller and the buyer, the Peppol customization and profile identifiers,
units as UN/ECE Recommendation 20 codes, and decimals as UBL writes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Final

from ..node.errors import MalformedInputError

__all__ = ["NS", "CAC", "CBC", "KINDS", "ROOTS", "Party", "Parties", "DocType", "unit_code",
           "is_unit_code", "amount_text", "PARTY_FIELDS", "TAX_CATEGORIES", "EXT", "DEFAULT_KIND",
           "decimal_text"]

CAC: Final = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
CBC: Final = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"

#: The fields of a party on paper (the document's ``parties``, MODEL19 / spec §5).
PARTY_FIELDS: Final = ("name", "tax_id", "address", "city", "postal_code", "country",
                       "endpoint", "contact")

#: A party on paper: the fields of :data:`PARTY_FIELDS`, all text.
Party = dict[str, str]

#: The plugin namespace (``ext``) under which an import keeps what UBL says and
#: our model has no field for, so that an export of the import says it again.
EXT: Final = "ubl"

#: The tax categories EN 16931 allows (UNCL5305 subset, BR-CL-17/18); the
#: model's "AA" (JP PINT's reduced rate) is written as "S" with its rate.
TAX_CATEGORIES: Final = frozenset({"S", "Z", "E", "AE", "K", "G", "O", "L", "M", "B"})


@dataclass(frozen=True, slots=True)
class Parties:
    """The document's two parties as the node knows them: ``sender`` is the
    document's ``from`` (this node for a sent one), ``receiver`` its ``to``.
    What the document's own ``parties`` say wins, field by field."""

    sender: Party = field(default_factory=dict)
    receiver: Party = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DocType:
    """One UBL document type: its root, its namespace, its kind of ours."""

    root: str
    kind: str
    customization: str
    profile: str
    #: The party element of the document's sender, then of its receiver.
    sender: str
    receiver: str
    #: The element of one line (None: the type has no lines).
    line: str | None
    #: Whether the sender is the seller (invoice, response, despatch) or the buyer.
    seller_sends: bool

    @property
    def namespace(self) -> str:
        return f"urn:oasis:names:specification:ubl:schema:xsd:{self.root}-2"


_BILLING = ("urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0",
            "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0")
_ORDERING = "urn:fdc:peppol.eu:poacc:bis:ordering:3"
_ADVANCED = "urn:fdc:peppol.eu:poacc:bis:advanced_ordering:3"

#: Every UBL document type read, by root element; the first of each kind is
#: the one an export writes unless the document says otherwise (``ext.ubl.document``).
ROOTS: Final[Mapping[str, DocType]] = {
    "Invoice": DocType("Invoice", "invoice", *_BILLING, "AccountingSupplierParty",
                       "AccountingCustomerParty", "InvoiceLine", True),
    "CreditNote": DocType("CreditNote", "invoice", *_BILLING, "AccountingSupplierParty",
                          "AccountingCustomerParty", "CreditNoteLine", True),
    "Order": DocType("Order", "order", "urn:fdc:peppol.eu:poacc:trns:order:3", _ORDERING,
                     "BuyerCustomerParty", "SellerSupplierParty", "OrderLine", False),
    "OrderChange": DocType("OrderChange", "order", "urn:fdc:peppol.eu:poacc:trns:order_change:3",
                           _ADVANCED, "BuyerCustomerParty", "SellerSupplierParty", "OrderLine",
                           False),
    "OrderResponse": DocType("OrderResponse", "order_response",
                             "urn:fdc:peppol.eu:poacc:trns:order_response:3", _ORDERING,
                             "SellerSupplierParty", "BuyerCustomerParty", "OrderLine", True),
    "DespatchAdvice": DocType("DespatchAdvice", "delivery_note",
                              "urn:fdc:peppol.eu:poacc:trns:despatch_advice:3",
                              "urn:fdc:peppol.eu:poacc:bis:despatch_advice:3",
                              "DespatchSupplierParty", "DeliveryCustomerParty", "DespatchLine",
                              True),
    "OrderCancellation": DocType("OrderCancellation", "cancel",
                                 "urn:fdc:peppol.eu:poacc:trns:order_cancellation:3", _ADVANCED,
                                 "BuyerCustomerParty", "SellerSupplierParty", None, False),
}

#: The UBL type each kind of ours is exported as (by default).
DEFAULT_KIND: Final[Mapping[str, str]] = {
    "invoice": "Invoice", "order": "Order", "order_response": "OrderResponse",
    "delivery_note": "DespatchAdvice", "cancel": "OrderCancellation",
}
KINDS: Final = frozenset(DEFAULT_KIND)

NS: Final = {"cac": CAC, "cbc": CBC}

_CODE_RE: Final = re.compile(r"[A-Z0-9]{2,3}")

#: Units people write, as UN/ECE Recommendation 20 codes (EN 16931 BR-CL-23).
_UNITS: Final[Mapping[str, str]] = {
    "pc": "H87", "pcs": "H87", "piece": "H87", "pieces": "H87", "ea": "EA", "each": "EA",
    "個": "H87", "本": "H87", "枚": "H87", "台": "H87", "点": "H87", "コ": "H87", "ヶ": "H87",
    "unit": "C62", "units": "C62", "set": "SET", "sets": "SET", "式": "SET", "組": "SET",
    "セット": "SET", "box": "XBX", "boxes": "XBX", "箱": "XBX", "ケース": "XCS", "case": "XCS",
    "kg": "KGM", "g": "GRM", "t": "TNE", "mg": "MGM", "m": "MTR", "mm": "MMT", "cm": "CMT",
    "km": "KMT", "m2": "MTK", "㎡": "MTK", "m3": "MTQ", "㎥": "MTQ", "l": "LTR", "ml": "MLT",
    "h": "HUR", "hr": "HUR", "hour": "HUR", "hours": "HUR", "時間": "HUR", "day": "DAY",
    "days": "DAY", "日": "DAY", "人日": "DAY", "month": "MON", "months": "MON", "ヶ月": "MON",
    "月": "MON", "kwh": "KWH", "pair": "PR", "pairs": "PR", "足": "PR", "roll": "XRO",
    "rolls": "XRO", "巻": "XRO", "sheet": "XST", "sheets": "XST",
}


def is_unit_code(text: str) -> bool:
    """Whether ``text`` is shaped as a UN/ECE Rec 20/21 code ("H87", "KGM", "C62")."""
    return _CODE_RE.fullmatch(text) is not None


def unit_code(unit: str | None) -> str:
    """The Rec 20 code of a unit as people write it; "C62" (one) when unknown."""
    if not unit:
        return "C62"
    if is_unit_code(unit):
        return unit
    return _UNITS.get(unit.strip().lower(), "C62")


def decimal_text(value: Decimal) -> str:
    """A Decimal as the model writes decimals: no exponent, no "-0"."""
    text = format(value, "f")
    if text.startswith("-") and Decimal(text) == 0:
        text = text[1:]
    return text


#: A decimal as the document model writes it (docs/spec.md section 5).
MODEL_DECIMAL: Final = re.compile(r"-?(0|[1-9][0-9]{0,26})(\.[0-9]{1,12})?")


def model_decimal(text: str, where: str, shown: str | None = None) -> str:
    """``text`` as a decimal of the model ("12.50"): kept as written when it is
    one, else read as a number (an exponent normalised away); MalformedInputError,
    naming ``where`` and ``shown`` (what the user wrote; ``text`` by default), when
    it is no number or has too many digits."""
    if MODEL_DECIMAL.fullmatch(text):
        return text
    try:
        value = Decimal(text)
        if not value.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise MalformedInputError(f"{where}: {(shown or text)[:40]!r} is not a number") from None
    out = decimal_text(value.normalize() if "E" in text.upper() else value)
    if not MODEL_DECIMAL.fullmatch(out):
        raise MalformedInputError(f"{where}: {(shown or text)[:40]!r} has too many digits")
    return out


def amount_text(text: str, places: int = 2) -> str:
    """An amount with at most ``places`` decimals (EN 16931 BR-DEC): trailing zeros
    beyond them dropped, anything more rounded half up; otherwise as written."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    _, _, fraction = text.partition(".")
    if len(fraction) <= places:
        return text
    return decimal_text(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
