"""Trade documents: the kernel's kinds, fields and rules (docs/spec.md, "Documents").

A document is a plain DAG-CBOR map. The kernel checks only what every
industry shares; lines are free text first (masterless): a line with nothing
but ``text`` is always valid, and plugins add structure under ``ext``.

Money and quantities are decimal strings; floats are refused anywhere in a
document. The commercial fields of issue 19 (tax per line and per rate,
net/tax totals, rounding, payment terms, the parties on paper) are optional
and checked here for their shapes only: whether the figures add up, or a
registration number's check digit holds, is a finding of kernel._commerce,
never a refusal. Times are RFC 3339 in UTC with a ``Z``. Time is always a parameter:
nothing here reads the clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

from ._identity import party
from .cid import CID
from .dagcbor import _speedups
from .errors import InvalidDocumentError, MalformedError

__all__ = [
    "KERNEL_KINDS",
    "RESPONSES",
    "VERSION",
    "Problem",
    "document_problems",
    "validate_document",
    "format_time",
    "parse_time",
    "is_decimal",
]

VERSION: Final = 1
KERNEL_KINDS: Final = frozenset(
    {"quote", "order", "order_response", "delivery_note", "invoice", "cancel", "message"}
)
RESPONSES: Final = frozenset({"accept", "reject", "counter"})

MAX_LINES: Final = 10_000
# Sizes of text are in UTF-8 bytes, as CDDL's ``.size`` on a text string means.
# Four bytes per character of the character limits they replaced (4,000 and
# 200): every text that was valid when they counted characters stays valid,
# whatever its script, so no stored document stops verifying.
MAX_TEXT: Final = 16_000
MAX_SHORT: Final = 800
MAX_PREV: Final = 64
#: Tax subtotals per document: one per (category, rate); 32 is far more than
#: any tax system has rates (Japan two, the EU states at most five).
MAX_TAX: Final = 32
ROUNDINGS: Final = frozenset({"half_up", "half_even", "down", "up"})

# All patterns are used with fullmatch: "$" would also match before a final newline.
_DECIMAL_RE: Final = re.compile(r"-?(0|[1-9][0-9]{0,26})(\.[0-9]{1,12})?")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_KIND_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,39}(\.[a-z][a-z0-9_]{0,39})?")
_NAMESPACE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
# One spelling per instant: no trailing zeros in the fraction (format_time's form).
# ASCII digits only ("\d" would take any script's), hours 00-23 and seconds 00-59:
# no 24:00 and no leap second 60; fromisoformat then refuses days a month lacks.
_TIME_RE: Final = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{0,5}[1-9])?Z"
)

_TOP_FIELDS: Final = frozenset(
    {"v", "kind", "from", "to", "issued_at", "thread", "prev", "ref", "currency", "lines",
     "note", "response", "user", "ext", "valid_until", "due", "total",
     # issue 19, all optional (spec section 5, "Commercial fields")
     "tax", "net", "tax_total", "rounding", "payment_terms", "parties"}
)
_LINE_FIELDS: Final = frozenset(
    {"text", "qty", "unit", "unit_price", "amount", "ref", "ext", "tax_category", "tax_rate"}
)
_TAX_FIELDS: Final = ("category", "rate", "taxable", "amount")
_PARTY_SIDES: Final = frozenset({"from", "to"})
#: Party fields and their size: short text, text, or the country's shape.
_PARTY_FIELDS: Final = {"name": MAX_SHORT, "tax_id": MAX_SHORT, "address": MAX_TEXT,
                        "city": MAX_SHORT, "postal_code": MAX_SHORT, "country": 0,
                        "endpoint": MAX_SHORT, "contact": MAX_SHORT}


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a ``Z``; microseconds only when there are any."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone; pass an aware one")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat: a quarter of strftime's cost, and always four year digits;
    # "+00:00" (6 characters) becomes "Z".
    text = moment.isoformat(timespec="seconds")[:-6]
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_time(text: Any) -> datetime:
    """Parse the RFC 3339 UTC form :func:`format_time` writes."""
    if type(text) is not str or not _TIME_RE.fullmatch(text):
        raise MalformedError(f"not an RFC 3339 UTC time ending in Z: {str(text)[:40]!r}")
    try:
        return datetime.fromisoformat(text)  # 3.11+ reads the Z as UTC
    except ValueError:
        raise MalformedError(f"not a valid time: {text!r}") from None


def is_decimal(text: Any) -> bool:
    return type(text) is str and _DECIMAL_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken kernel rule: where (a dotted path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _no_floats(value: Any, path: str, out: list[Problem]) -> None:
    kind = type(value)
    if kind is float:
        out.append(Problem(path, "floats are not allowed in documents; use a decimal string"))
    elif kind is dict:
        for key, item in value.items():
            _no_floats(item, f"{path}.{key}", out)
    elif kind is list:
        for i, item in enumerate(value):
            _no_floats(item, f"{path}[{i}]", out)


def _check_ext(ext: Any, path: str, out: list[Problem]) -> None:
    if type(ext) is not dict:
        out.append(Problem(path, "must be a map of plugin namespaces"))
        return
    for namespace, fields in ext.items():
        if type(namespace) is not str or not _NAMESPACE_RE.fullmatch(namespace):
            out.append(Problem(f"{path}.{namespace}", "not a valid plugin namespace"))
        elif type(fields) is not dict:
            out.append(Problem(f"{path}.{namespace}", "must be a map"))
        else:
            _no_floats(fields, f"{path}.{namespace}", out)


def text_size_ok(value: Any, limit: int) -> TypeGuard[str]:
    """True when ``value`` is a str of 1..``limit`` UTF-8 bytes (CDDL ``tstr .size (1..limit)``)."""
    if type(value) is not str:
        return False
    n = len(value)
    # A character is 1 to 4 bytes: only a string between limit/4 and limit
    # characters, and not ASCII, needs encoding to know.
    return 0 < n <= limit and (value.isascii() or 4 * n <= limit
                               or len(value.encode("utf-8", "surrogatepass")) <= limit)


def _short_text(doc: Mapping[str, Any], key: str, out: list[Problem], limit: int = MAX_SHORT) -> None:
    value = doc.get(key)
    if value is not None and not text_size_ok(value, limit):
        out.append(Problem(key, f"must be text of 1..{limit} UTF-8 bytes"))


# The line rules in C (kernel/_speedups.c), when the C codec is in use: True
# exactly when _check_line finds nothing in any line (then the Python rules
# are skipped; otherwise they run and name the problems). It earns its place:
# an order's lines checked in Python cost ~12 % of a kernel round trip
# (docs/performance.md, issue 15). The limits are the ones above, passed in.
if _speedups is not None:
    _speedups.configure(max_text=MAX_TEXT, max_short=MAX_SHORT)
    _lines_ok = _speedups.lines_ok
else:
    _lines_ok = None

_DECIMAL_MATCH: Final = _DECIMAL_RE.fullmatch
_LINE_DECIMALS: Final = ("qty", "unit_price", "amount", "tax_rate")


def _check_line(line: Any, path: str, out: list[Problem]) -> None:
    # Hot: an order has many lines and both parties validate each one, so the
    # common case (a valid line) takes as few steps as possible.
    if type(line) is not dict:
        out.append(Problem(path, "a line is a map with at least 'text'"))
        return
    if not line.keys() <= _LINE_FIELDS:
        for key in line.keys() - _LINE_FIELDS:
            out.append(Problem(f"{path}.{key}", "unknown line field (plugin fields go under 'ext')"))
    text = line.get("text")
    if not text_size_ok(text, MAX_TEXT) or not text.strip():
        out.append(Problem(f"{path}.text", f"free text of 1..{MAX_TEXT} UTF-8 bytes is required"))
    for key in _LINE_DECIMALS:
        value = line.get(key)
        if value is not None and (type(value) is not str or _DECIMAL_MATCH(value) is None):
            out.append(Problem(f"{path}.{key}", "must be a decimal string such as '12.50'"))
    for key in ("unit", "ref", "tax_category"):
        value = line.get(key)
        if value is not None and not text_size_ok(value, MAX_SHORT):
            out.append(Problem(f"{path}.{key}", f"must be text of 1..{MAX_SHORT} UTF-8 bytes"))
    if "ext" in line:
        _check_ext(line["ext"], f"{path}.ext", out)


def _check_tax(tax: Any, out: list[Problem]) -> None:
    if type(tax) is not list or not 0 < len(tax) <= MAX_TAX:
        out.append(Problem("tax", f"must be a list of 1..{MAX_TAX} tax subtotals"))
        return
    for i, item in enumerate(tax):
        path = f"tax[{i}]"
        if type(item) is not dict:
            out.append(Problem(path, "a tax subtotal is a map of category, rate, taxable, amount"))
            continue
        for key in sorted(item.keys() - set(_TAX_FIELDS), key=str):
            out.append(Problem(f"{path}.{key}", "unknown tax subtotal field"))
        if not text_size_ok(item.get("category"), MAX_SHORT):
            out.append(Problem(f"{path}.category", f"required, text of 1..{MAX_SHORT} UTF-8 bytes"))
        for key in _TAX_FIELDS[1:]:
            if not is_decimal(item.get(key)):
                out.append(Problem(f"{path}.{key}", "required, a decimal string such as '10'"))


def _check_parties(parties: Any, out: list[Problem]) -> None:
    if type(parties) is not dict:
        out.append(Problem("parties", "must be a map with 'from' and/or 'to'"))
        return
    for side in sorted(parties.keys() - _PARTY_SIDES, key=str):
        out.append(Problem(f"parties.{side}", "unknown side (only 'from' and 'to')"))
    for side in ("from", "to"):
        if side not in parties:
            continue
        party_map, path = parties[side], f"parties.{side}"
        if type(party_map) is not dict:
            out.append(Problem(path, "a party is a map of name, tax_id, address, ..."))
            continue
        for key in sorted(party_map.keys() - _PARTY_FIELDS.keys(), key=str):
            out.append(Problem(f"{path}.{key}", "unknown party field"))
        for key, limit in _PARTY_FIELDS.items():
            if key not in party_map:
                continue
            value = party_map[key]
            if limit == 0:
                if type(value) is not str or not _COUNTRY_RE.fullmatch(value):
                    out.append(Problem(f"{path}.{key}", "must be an ISO 3166-1 alpha-2 code such as 'JP'"))
            elif not text_size_ok(value, limit):
                out.append(Problem(f"{path}.{key}", f"must be text of 1..{limit} UTF-8 bytes"))


def _check_commerce(doc: Mapping[str, Any], out: list[Problem]) -> None:
    """Shapes of the optional commercial fields (issue 19); never their arithmetic."""
    if "tax" in doc:
        _check_tax(doc["tax"], out)
    rounding = doc.get("rounding")
    if rounding is not None and (type(rounding) is not str or rounding not in ROUNDINGS):
        out.append(Problem("rounding", "must be one of " + ", ".join(sorted(ROUNDINGS))))
    _short_text(doc, "payment_terms", out, MAX_TEXT)
    if "parties" in doc:
        _check_parties(doc["parties"], out)


def document_problems(doc: Any, kinds: Iterable[str] = ()) -> list[Problem]:
    """Every kernel rule ``doc`` breaks; an empty list means it is valid.

    ``kinds`` adds kinds declared by enabled plugins; they must be namespaced
    (``medical.approval``), the bare names belong to the kernel.
    """
    out: list[Problem] = []
    if type(doc) is not dict:
        return [Problem("", "a document is a map")]
    if not doc.keys() <= _TOP_FIELDS:
        for key in sorted(doc.keys() - _TOP_FIELDS):
            out.append(Problem(key, "unknown field (plugin fields go under 'ext')"))
    if doc.get("v") != VERSION or type(doc.get("v")) is not int:
        out.append(Problem("v", f"must be {VERSION}"))
    kind = doc.get("kind")
    extra = set(kinds)
    if type(kind) is not str or not _KIND_RE.fullmatch(kind):
        out.append(Problem("kind", "missing or not a valid kind name"))
    elif "." not in kind and kind not in KERNEL_KINDS:
        out.append(Problem("kind", f"unknown kind {kind!r}; plugin kinds are namespaced"))
    elif "." in kind and extra and kind not in extra:
        out.append(Problem("kind", f"kind {kind!r} is not declared by an enabled plugin"))
    for key in ("from", "to"):
        try:
            party(doc.get(key))
        except MalformedError as exc:
            out.append(Problem(key, str(exc)))
    if doc.get("from") == doc.get("to"):
        out.append(Problem("to", "a document is between two different parties"))
    try:
        parse_time(doc.get("issued_at"))
    except MalformedError as exc:
        out.append(Problem("issued_at", str(exc)))
    for key in ("valid_until", "due"):
        if key in doc:
            try:
                parse_time(doc[key])
            except MalformedError as exc:
                out.append(Problem(key, str(exc)))
    thread = doc.get("thread")
    prev = doc.get("prev")
    if thread is not None and type(thread) is not CID:
        out.append(Problem("thread", "must be a CID link to the thread's first document"))
    if prev is not None:
        if type(prev) is not list or not all(type(p) is CID for p in prev):
            out.append(Problem("prev", "must be a list of CID links"))
        elif len(prev) > MAX_PREV or len(set(prev)) != len(prev):
            out.append(Problem("prev", f"at most {MAX_PREV} distinct links"))
    if (thread is None) != (not prev):
        out.append(Problem("prev", "a reply has both 'thread' and 'prev'; a first document neither"))
    for key in ("ref", "user"):
        _short_text(doc, key, out)
    _short_text(doc, "note", out, MAX_TEXT)
    currency = doc.get("currency")
    if currency is not None and (type(currency) is not str or not _CURRENCY_RE.fullmatch(currency)):
        out.append(Problem("currency", "must be an ISO 4217 code such as 'JPY'"))
    for key in ("total", "net", "tax_total"):
        if key in doc and not is_decimal(doc[key]):
            out.append(Problem(key, "must be a decimal string"))
    _check_commerce(doc, out)
    response = doc.get("response")
    if kind == "order_response" and (type(response) is not str or response not in RESPONSES):
        out.append(Problem("response", "an order_response says accept, reject or counter"))
    elif response is not None and kind != "order_response":
        out.append(Problem("response", "only an order_response carries a response"))
    lines = doc.get("lines")
    if lines is not None:
        if type(lines) is not list or len(lines) > MAX_LINES:
            out.append(Problem("lines", f"must be a list of at most {MAX_LINES} lines"))
        elif _lines_ok is None or not _lines_ok(lines):
            for i, line in enumerate(lines):
                _check_line(line, "lines[%d]" % i, out)  # noqa: UP031 (hot loop)
    if "ext" in doc:
        _check_ext(doc["ext"], "ext", out)
    return out


def validate_document(doc: Any, kinds: Iterable[str] = ()) -> None:
    """Raise InvalidDocumentError naming every broken rule, or return None."""
    problems = document_problems(doc, kinds)
    if problems:
        error = InvalidDocumentError("; ".join(str(p) for p in problems[:10]))
        error.problems = problems  # type: ignore[attr-defined]
        raise error

