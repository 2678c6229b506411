"""Whether a document's figures add up: arithmetic findings (docs/commerce.md, spec §5.1).

The kernel refuses a document for its shapes only (kernel._document); whether
``qty × unit_price`` is the line's ``amount``, the lines add up to ``net``, the
tax of each rate is that rate of its taxable amount rounded once, ``net +
tax_total`` is ``total``, and a tax registration number is well formed, is a
*finding*: a value, never an exception and never a refusal. Everything here is
pure and exact: ``decimal.Decimal`` under a context wide enough for any product
of two spec decimals (27 + 12 digits each), never a float.

A field that is absent or not a decimal is not a finding here (the shape rules
speak of it); a check that lacks a figure is skipped, not guessed.

    minor_unit(currency)         digits after the point: JPY 0, most 2, BHD 3
    round_money(value, d, rule)  one rounding to d digits under a spec rounding
    tax_id_problem(text, country)  what is wrong with a tax registration id, or None
    jp_check_digit(base12)       the check digit of a Japanese corporate number
    document_findings(doc)       every Discrepancy of one document
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Context,
    Decimal,
    localcontext,
)
from typing import Any, Final

from ._document import is_decimal

__all__ = ["Discrepancy", "CURRENCY_DIGITS", "minor_unit", "round_money", "to_decimal",
           "tax_id_problem", "jp_check_digit", "document_findings", "line_value", "EXACT", "CODES"]

#: Wide enough that no sum or product of spec decimals is ever rounded:
#: 39 significant digits each, products of two, sums of 10,000 lines.
EXACT: Final = Context(prec=120, rounding=ROUND_HALF_EVEN)

_ROUNDINGS: Final = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN,
                     "down": ROUND_DOWN, "up": ROUND_UP}

#: ISO 4217 minor units of the currencies that do not have 2 (list 1 of the
#: standard, 2024 edition); every other code, listed or not, is taken as 2.
CURRENCY_DIGITS: Final[Mapping[str, int]] = {
    # no minor unit
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "PYG": 0, "UGX": 0, "VUV": 0,
    "XAF": 0, "XOF": 0, "XPF": 0, "RWF": 0, "KMF": 0, "GNF": 0, "DJF": 0, "BIF": 0,
    "UYI": 0,
    # three digits
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    # four digits
    "CLF": 4, "UYW": 4,
}


def minor_unit(currency: Any) -> int:
    """Digits after the decimal point of ``currency`` (2 when unknown or absent)."""
    return CURRENCY_DIGITS.get(currency, 2) if type(currency) is str else 2


def to_decimal(text: Any) -> Decimal | None:
    """The Decimal of a spec decimal string; None for anything else (absent, malformed)."""
    return Decimal(text) if is_decimal(text) else None


def round_money(value: Decimal, digits: int, rounding: str) -> Decimal:
    """``value`` rounded once to ``digits`` places: half_up, half_even, down
    (toward zero, 切り捨て) or up (away from zero, 切り上げ)."""
    with localcontext(EXACT):
        return _round(value, digits, rounding)


def _round(value: Decimal, digits: int, rounding: str) -> Decimal:
    """round_money under the context already set."""
    return value.quantize(_UNITS[digits] if digits in _UNITS else Decimal(1).scaleb(-digits),
                          rounding=_ROUNDINGS[rounding])


_UNITS: Final = {d: Decimal(1).scaleb(-d) for d in range(5)}


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One figure that does not agree with the others: a warning, never a refusal.

    ``code`` is stable (docs/commerce.md lists every one); ``path`` is dotted
    like the kernel's problems (``tax[1].amount``); ``expected`` and ``found``
    are decimal strings (or the check digit, the shape) when there are figures
    to show, else None; ``message`` is for people.
    """

    code: str
    path: str
    message: str
    expected: str | None = None
    found: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code, "path": self.path, "message": self.message,
                "expected": self.expected, "found": self.found}

    def __str__(self) -> str:
        return f"[{self.code}] {self.path}: {self.message}"


def _text(value: Decimal) -> str:
    """A Decimal as a spec decimal string: no exponent, trailing zeros kept as computed."""
    return format(value, "f")


# -- tax registration ids -------------------------------------------------------

_JP_RE: Final = re.compile(r"T[0-9]{13}")
#: The shapes VIES gives for each EU VAT number (prefix, then the rest);
#: Greece is EL (not GR), Northern Ireland XI.
_EU_VAT: Final[Mapping[str, re.Pattern[str]]] = {k: re.compile(v) for k, v in {
    "AT": r"U[0-9]{8}", "BE": r"[01][0-9]{9}", "BG": r"[0-9]{9,10}", "CY": r"[0-9]{8}[A-Z]",
    "CZ": r"[0-9]{8,10}", "DE": r"[0-9]{9}", "DK": r"[0-9]{8}", "EE": r"[0-9]{9}",
    "EL": r"[0-9]{9}", "ES": r"[A-Z0-9][0-9]{7}[A-Z0-9]", "FI": r"[0-9]{8}",
    "FR": r"[A-HJ-NP-Z0-9]{2}[0-9]{9}", "HR": r"[0-9]{11}", "HU": r"[0-9]{8}",
    "IE": r"[0-9][A-Z0-9+*][0-9]{5}[A-Z]{1,2}", "IT": r"[0-9]{11}", "LT": r"[0-9]{9}|[0-9]{12}",
    "LU": r"[0-9]{8}", "LV": r"[0-9]{11}", "MT": r"[0-9]{8}", "NL": r"[0-9]{9}B[0-9]{2}",
    "PL": r"[0-9]{10}", "PT": r"[0-9]{9}", "RO": r"[1-9][0-9]{1,9}", "SE": r"[0-9]{10}01",
    "SI": r"[0-9]{8}", "SK": r"[0-9]{10}", "XI": r"[0-9]{9}|[0-9]{12}|GD[0-9]{3}|HA[0-9]{3}",
}.items()}


def jp_check_digit(base: str) -> int:
    """The check digit of a Japanese corporate number (法人番号) from its 12-digit base.

    Ministry of Finance ordinance No. 70 of 2014 (法人番号の指定等に関する省令),
    article 2: 9 − (Σ Pn × Qn mod 9), Pn the n-th digit counted from the
    right, Qn 1 for odd n and 2 for even n. A qualified-invoice registration
    number (適格請求書発行事業者登録番号) is ``T`` and such a 13-digit number.
    """
    if len(base) != 12 or not base.isascii() or not base.isdigit():
        raise ValueError("a corporate number's base is 12 ASCII digits")
    total = sum(int(d) * (1 if n % 2 == 0 else 2) for n, d in enumerate(reversed(base)))
    return 9 - total % 9


def tax_id_problem(text: str, country: str | None = None) -> tuple[str, str | None] | None:
    """What is wrong with a tax registration id, as (message, expected), or None.

    Japan: ``T`` + 13 digits whose first digit is the check digit of the other
    twelve. The EU: a member state's VAT prefix and the shape VIES gives it.
    An id of any other scheme is not judged (None): whether it exists is for
    the tax office to say, not for a shape.
    """
    if _JP_RE.fullmatch(text):
        digit = jp_check_digit(text[2:])
        if int(text[1]) != digit:
            return (f"the check digit of {text} is {digit}, not {text[1]}: "
                    "a mistyped registration number", f"T{digit}{text[2:]}")
        return None
    if (text[:1] == "T" and text[1:].isascii() and text[1:].isdigit()) or country == "JP":
        return ("a Japanese registration number is T and 13 digits (T1234567890123)", None)
    prefix = text[:2]
    if prefix == "GR":
        return ("Greek VAT numbers start with EL, not GR", "EL" + text[2:])
    if prefix in _EU_VAT and not _EU_VAT[prefix].fullmatch(text[2:]):
        return (f"not the shape of a {prefix} VAT number (no spaces or dots; "
                f"{prefix} then {_EU_VAT[prefix].pattern})", None)
    return None


# -- documents ------------------------------------------------------------------


def line_value(line: Mapping[str, Any]) -> Decimal | None:
    """A line's amount as written, else qty × unit_price, else None (free text)."""
    amount = to_decimal(line.get("amount"))
    if amount is not None:
        return amount
    qty, price = to_decimal(line.get("qty")), to_decimal(line.get("unit_price"))
    if qty is None or price is None:
        return None
    with localcontext(EXACT):
        return qty * price


def _line_value(line: Mapping[str, Any]) -> Decimal | None:
    """line_value under the context already set (document_findings sets EXACT once)."""
    amount = to_decimal(line.get("amount"))
    if amount is not None:
        return amount
    qty, price = to_decimal(line.get("qty")), to_decimal(line.get("unit_price"))
    return None if qty is None or price is None else qty * price


def _rate_key(rate: Decimal) -> Decimal:
    return rate.normalize(EXACT) if rate else Decimal(0)


def _money_precision(doc: Mapping[str, Any], digits: int, out: list[Discrepancy]) -> None:
    places = [(key, doc.get(key)) for key in ("net", "tax_total", "total")]
    tax = doc.get("tax")
    if type(tax) is list:
        places += [(f"tax[{i}].{k}", t.get(k)) for i, t in enumerate(tax) if type(t) is dict
                   for k in ("taxable", "amount")]
    lines = doc.get("lines")
    if type(lines) is list:
        places += [(f"lines[{i}].amount", ln.get("amount")) for i, ln in enumerate(lines)
                   if type(ln) is dict]
    for path, text in places:
        value = to_decimal(text)
        if value is not None and value != _round(value, digits, "half_even"):
            out.append(Discrepancy(
                "minor_unit", path, f"{text} has more decimals than {doc.get('currency')} has "
                f"({digits})", None, text))


def _lines(doc: Mapping[str, Any], digits: int, out: list[Discrepancy]) -> list[Decimal] | None:
    """Check each line's amount; give every line's value, or None when one has none.

    Runs under the EXACT context (document_findings sets it once: a context
    switch per line would cost more than the line's arithmetic).
    """
    lines = doc.get("lines")
    if type(lines) is not list:
        return None
    values: list[Decimal] = []
    complete = True
    unit = Decimal(1).scaleb(-digits)
    for i, line in enumerate(lines):
        if type(line) is not dict:
            complete = False
            continue
        qty, price = to_decimal(line.get("qty")), to_decimal(line.get("unit_price"))
        amount = to_decimal(line.get("amount"))
        product = qty * price if qty is not None and price is not None else None
        # Any rounding of the product to the minor unit is the product.
        if product is not None and amount is not None and abs(amount - product) >= unit:
            out.append(Discrepancy(
                "line_amount", f"lines[{i}].amount",
                f"{line['qty']} × {line['unit_price']} is {_text(product)}, "
                f"not {line['amount']}", _text(product), line["amount"]))
        value = amount if amount is not None else product
        if value is None:
            complete = False
        elif complete:
            values.append(value)
    return values if complete else None


def _tax(doc: Mapping[str, Any], digits: int, rounding: str | None,
         out: list[Discrepancy]) -> Decimal | None:
    """Check each tax subtotal; give the sum of their amounts (None: one is unreadable)."""
    tax = doc.get("tax")
    if type(tax) is not list:
        return None
    total: Decimal | None = Decimal(0)
    seen: dict[tuple[str, Decimal], int] = {}
    rates: dict[Decimal, list[int]] = {}
    for i, sub in enumerate(tax):
        rate = to_decimal(sub.get("rate")) if type(sub) is dict else None
        taxable = to_decimal(sub.get("taxable")) if type(sub) is dict else None
        amount = to_decimal(sub.get("amount")) if type(sub) is dict else None
        if rate is None or taxable is None or amount is None:
            total = None
            continue
        assert type(sub) is dict
        category = sub.get("category")
        key = (str(category), _rate_key(rate))
        if key in seen:
            out.append(Discrepancy(
                "tax_duplicate_rate", f"tax[{i}]", f"a second subtotal for {category} at "
                f"{sub['rate']} % (tax[{seen[key]}]): tax is computed once per rate per document"))
        seen.setdefault(key, i)
        rates.setdefault(_rate_key(rate), []).append(i)
        exact = taxable * rate / 100
        if total is not None:
            total += amount
        if rounding is not None:
            expected = _round(exact, digits, rounding)
            ok = amount == expected
            how = f"rounded {rounding.replace('_', ' ')} to {digits} decimals"
        else:
            # Down is toward zero and up away from it: either is accepted.
            toward, away = _round(exact, digits, "down"), _round(exact, digits, "up")
            ok, expected = amount in (toward, away), toward
            how = f"rounded to {digits} decimals (no rounding stated: down or up accepted)"
        if not ok:
            out.append(Discrepancy(
                "tax_amount", f"tax[{i}].amount", f"{sub['rate']} % of {sub['taxable']} is "
                f"{_text(expected)} {how}, not {sub['amount']}", _text(expected), sub["amount"]))
    _taxable_per_rate(doc, tax, rates, out)
    return total


def _taxable_per_rate(doc: Mapping[str, Any], tax: list[Any], rates: dict[Decimal, list[int]],
                      out: list[Discrepancy]) -> None:
    """Each subtotal's taxable amount against its lines (lines that state a rate)."""
    lines = doc.get("lines")
    if type(lines) is not list:
        return
    groups: dict[tuple[str | None, Decimal], Decimal | None] = {}
    where: dict[tuple[str | None, Decimal], int] = {}
    for i, line in enumerate(lines):
        if type(line) is not dict or (rate := to_decimal(line.get("tax_rate"))) is None:
            continue
        category = line.get("tax_category") if type(line.get("tax_category")) is str else None
        key = (category, _rate_key(rate))
        value, before = _line_value(line), groups.get(key, Decimal(0))
        groups[key] = None if value is None or before is None else before + value
        where.setdefault(key, i)
    if not groups:
        return
    for category, rate in sorted(groups, key=lambda key: (key[1], str(key[0]))):
        subs = [i for i in rates.get(rate, [])
                if category is None or tax[i].get("category") == category]
        if not subs:
            i = where[(category, rate)]
            out.append(Discrepancy(
                "tax_missing_rate", f"lines[{i}].tax_rate",
                f"lines at {_text(rate)} %{' (' + category + ')' if category else ''} "
                "have no tax subtotal", None, _text(rate)))
    for rate, indexes in rates.items():
        for i in indexes:
            category = tax[i].get("category")
            lines_sum: Decimal | None = Decimal(0)
            found = False
            for (cat, r), value in groups.items():
                if r == rate and (cat is None or cat == category):
                    found = True
                    lines_sum = None if value is None or lines_sum is None else lines_sum + value
            taxable = to_decimal(tax[i].get("taxable"))
            if found and lines_sum is not None and taxable is not None and lines_sum != taxable:
                out.append(Discrepancy(
                    "tax_taxable", f"tax[{i}].taxable",
                    f"the lines at {tax[i]['rate']} % add up to {_text(lines_sum)}, "
                    f"not {tax[i]['taxable']}", _text(lines_sum), tax[i]["taxable"]))


def _parties(doc: Mapping[str, Any], out: list[Discrepancy]) -> None:
    parties = doc.get("parties")
    if type(parties) is not dict:
        return
    for side in ("from", "to"):
        party = parties.get(side)
        if type(party) is not dict or type(party.get("tax_id")) is not str:
            continue
        country = party.get("country") if type(party.get("country")) is str else None
        problem = tax_id_problem(party["tax_id"], country)
        if problem is not None:
            out.append(Discrepancy("tax_id", f"parties.{side}.tax_id", problem[0], problem[1],
                                   party["tax_id"]))


def _equal(out: list[Discrepancy], code: str, path: str, stated: Any, computed: Decimal,
           how: str) -> None:
    value = to_decimal(stated)
    if value is not None and value != computed:
        out.append(Discrepancy(code, path, f"{how} is {_text(computed)}, not {stated}",
                               _text(computed), stated))


def document_findings(doc: Mapping[str, Any]) -> list[Discrepancy]:
    """Every figure of ``doc`` that does not add up, in the order of docs/commerce.md.

    Pure and total: any mapping in, a list out (empty: nothing to report, or
    nothing to check). Tax is checked once per rate per document, under the
    document's ``rounding``, to the minor unit of its ``currency``.
    """
    out: list[Discrepancy] = []
    if not isinstance(doc, Mapping):
        return out
    with localcontext(EXACT):
        _findings(doc, out)
    return out


def _findings(doc: Mapping[str, Any], out: list[Discrepancy]) -> None:
    digits = minor_unit(doc.get("currency"))
    rounding = doc.get("rounding") if doc.get("rounding") in _ROUNDINGS else None
    _money_precision(doc, digits, out)
    values = _lines(doc, digits, out)
    lines_sum = sum(values, Decimal(0)) if values else None
    net = to_decimal(doc.get("net"))
    if lines_sum is not None:
        _equal(out, "net", "net", doc.get("net"), lines_sum, "the sum of the lines")
    tax_sum = _tax(doc, digits, rounding, out)
    if tax_sum is not None:
        _equal(out, "tax_total", "tax_total", doc.get("tax_total"), tax_sum,
               "the sum of the tax subtotals")
        taxables = [to_decimal(t.get("taxable")) for t in doc["tax"]]
        if net is not None and None not in taxables:
            _equal(out, "tax_taxable_net", "tax", doc.get("net"),
                   sum((t for t in taxables if t is not None), Decimal(0)),
                   "the sum of the taxable amounts")
    tax_total = to_decimal(doc.get("tax_total"))
    tax_total = tax_total if tax_total is not None else tax_sum
    if net is not None and tax_total is not None:
        _equal(out, "total", "total", doc.get("total"), net + tax_total, "net + tax")
    _parties(doc, out)


#: Every code document_findings may give (docs/commerce.md lists each).
CODES: Final = ("minor_unit", "line_amount", "net", "tax_amount", "tax_duplicate_rate",
                "tax_taxable", "tax_missing_rate", "tax_total", "tax_taxable_net", "total", "tax_id")
