"""A document's commercial side on its page: taxes, figures that do not add up, the
three-way match of its thread, the verification in words, and its UBL download.

Everything here is what the node operations give, as typed values
(``operations.show_document``'s ``arithmetic``, ``operations.match_documents``,
``operations.verify_document``'s checks with their ``facts``,
``operations.export_source`` and ``usagi_p2p.formats.export_ubl``); the page
words them itself in the reader's language (templates/commerce.html), so the
kernel's English messages never show under Japanese labels. No rule of
arithmetic or matching lives here: the quantities a sentence names are the
differences of the match's own figures for the code it reported.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final

from aiohttp import web

from kernel import Discrepancy, Match
from kernel.errors import UsagiError

from ...formats import KINDS
from ...node import operations
from .base import node_of
from .i18n import N_

__all__ = ["UBL_KINDS", "ROUNDING_LABELS", "STAGES", "PARTY_LABELS", "arithmetic", "match", "thread_match",
           "paper", "missing_fields"]

#: The kinds with a UBL mapping (docs/formats.md): these get "Download UBL".
UBL_KINDS: Final = KINDS
#: How tax was rounded, as a form says it (spec §5.1 ``rounding``).
ROUNDING_LABELS: Final = {"half_up": N_("rounded half up"),
                          "half_even": N_("rounded half to even"),
                          "down": N_("rounded down"), "up": N_("rounded up")}
#: The stages of the match in the order a trade passes them.
STAGES: Final = (("quoted", N_("quoted")), ("ordered", N_("ordered")),
                 ("delivered", N_("delivered")), ("invoiced", N_("invoiced")))
#: The party fields an export may lack, as a person names them.
PARTY_LABELS: Final = {"name": N_("name"), "country": N_("country"),
                       "endpoint": N_("electronic address (Peppol endpoint)"),
                       "tax_id": N_("tax registration number")}
_INDEX: Final = re.compile(r"^(lines|tax)\[(\d+)\]")


def _index(path: str | None, part: str) -> int | None:
    found = _INDEX.match(path or "")
    return int(found.group(2)) if found and found.group(1) == part else None


def arithmetic(found: tuple[Discrepancy, ...], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure that does not add up, as the values its sentence names.

    ``line`` is the line's number (1-based), ``rate`` the rate of the tax
    subtotal it is about, ``side`` "from"/"to" for a party's tax id.
    """
    stated = doc.get("tax")
    taxes: list[Any] = stated if isinstance(stated, list) else []
    out = []
    for item in found:
        line, tax = _index(item.path, "lines"), _index(item.path, "tax")
        rate = None
        if tax is not None and tax < len(taxes) and isinstance(taxes[tax], dict):
            rate = taxes[tax].get("rate")
        side = item.path.split(".")[1] if item.path.startswith("parties.") else None
        out.append({"code": item.code, "path": item.path, "message": item.message,
                    "expected": item.expected, "found": item.found, "rate": rate, "side": side,
                    "line": line + 1 if line is not None else None})
    return out


def _less(a: Decimal | None, b: Decimal | None) -> str | None:
    return _text(a - b) if a is not None and b is not None else None


def _text(value: Decimal | None) -> str | None:
    """A figure of the match as the decimal string the page's filters format."""
    return None if value is None else format(value.normalize(), "f") if value else "0"


def _price(value: Decimal | None) -> str | None:
    """A unit price as its document wrote it (12.50 stays 12.50, as the form shows it)."""
    return None if value is None else format(value, "f")


def _notes(item: Any, codes: list[str]) -> list[dict[str, Any]]:
    """The item's findings with the figures each sentence names (from the item's own)."""
    ordered, delivered, invoiced = item.ordered, item.delivered, item.invoiced
    figures: dict[str, dict[str, Any]] = {
        "over_delivered": {"n": _less(delivered, ordered)},
        "not_delivered": {"n": _less(ordered, delivered)},
        "billed_over_ordered": {"n": _less(invoiced, ordered)},
        "billed_not_delivered": {"n": _less(invoiced, delivered)},
        "not_billed": {"n": _less(delivered, invoiced)},
        "qty_not_as_quoted": {"a": _text(item.quoted), "b": _text(ordered)},
        "price_not_as_quoted": {"a": _price(item.quoted_price), "b": _price(item.ordered_price)},
    }
    notes: list[dict[str, Any]] = []
    for code in codes:
        if code == "price_not_as_ordered":
            if any(n["code"] == code for n in notes):
                continue  # one sentence names every differing price
            prices = [p for p in item.invoiced_prices if p != item.ordered_price]
            notes.append({"code": code, "a": _price(item.ordered_price),
                          "b": _price(prices[0]) if prices else None})
            continue
        notes.append({"code": code, **figures.get(code, {})})
    return notes


def match(found: Match, labels: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """The match as the page shows it: per item its figures and notes; the rest per document.

    ``labels`` gives each document of the thread (by CID text) its kind and ref.
    """
    stages = [(key, label) for key, label in STAGES
              if any(getattr(it, key) is not None for it in found.items)]
    by_item: dict[int, list[str]] = {}
    others = []
    figures_of: set[str] = set()  # one "its figures do not add up" per document
    for f in found.findings:
        if f.item is not None and f.item < len(found.items):
            by_item.setdefault(f.item, []).append(f.code)
            continue
        if f.code.startswith("arithmetic."):
            if str(f.document) in figures_of:
                continue
            figures_of.add(str(f.document))
        kind, ref = labels.get(str(f.document), (None, None)) if f.document is not None \
            else (None, None)
        line = _index(f.path, "lines")
        others.append({"level": f.level, "code": f.code, "message": f.message,
                       "cid": str(f.document) if f.document is not None else None,
                       "kind": kind, "ref": ref, "line": line + 1 if line is not None else None})
    items = []
    for n, item in enumerate(found.items):
        codes = by_item.get(n, [])
        levels = {f.code: f.level for f in found.findings if f.item == n}
        notes = [{**note, "level": levels.get(note["code"], "info")}
                 for note in _notes(item, codes)]
        items.append({"text": item.text, "unit": item.unit,
                      "counts": [(key, label, _text(getattr(item, key))) for key, label in stages],
                      "ordered_price": _price(item.ordered_price), "notes": notes,
                      "ok": not any(note["level"] == "warning" for note in notes)})
    warnings = sum(1 for f in found.findings if f.level == "warning")
    return {"ok": found.ok, "warnings": warnings, "items": items, "others": others,
            "stages": stages, "currency": found.currency, "summary": found.summary,
            "documents": len(found.documents)}


async def thread_match(request: web.Request, cid: Any,
                       timeline: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The match of ``cid``'s thread for the page; None when there is nothing to match."""
    try:
        found = await operations.match_documents(node_of(request), cid)
    except UsagiError:
        return None  # a broken thread: the timeline says why
    if not found.items and not found.findings:
        return None
    labels = {item["cid"]: (item["kind"], item["ref"]) for item in timeline}
    return match(found, labels)


def paper(doc: dict[str, Any]) -> dict[str, Any]:
    """The commercial fields of ``doc`` the form shows (spec §5.1), only those it carries."""
    stated = doc.get("parties")
    parties: dict[str, Any] = stated if isinstance(stated, dict) else {}
    lines = [ln for ln in doc.get("lines") or [] if isinstance(ln, dict)]
    taxes = [t for t in doc.get("tax") or [] if isinstance(t, dict)]
    return {
        "from": parties.get("from") if isinstance(parties.get("from"), dict) else {},
        "to": parties.get("to") if isinstance(parties.get("to"), dict) else {},
        "tax": taxes,
        "reduced": any(ln.get("tax_category") == "AA" for ln in lines)
        or any(t.get("category") == "AA" for t in taxes),
        "taxed_lines": any("tax_rate" in ln or "tax_category" in ln for ln in lines),
        "net": doc.get("net"), "tax_total": doc.get("tax_total"),
        "rounding": ROUNDING_LABELS.get(str(doc.get("rounding"))),
        "payment_terms": doc.get("payment_terms"),
        "commercial": bool(taxes or doc.get("net") or doc.get("tax_total")),
    }


def missing_fields(missing: tuple[str, ...], direction: str) -> list[dict[str, Any]]:
    """What an export lacks (``ExportIncompleteError.missing``), each as its field and
    whose it is: ``ours`` (this company's profile) or the partner's."""
    ours = "from" if direction == "out" else "to"
    out = []
    for path in missing:
        bits = path.split(".")
        party = len(bits) == 3 and bits[0] == "parties"
        out.append({"path": path, "field": bits[2] if party else path,
                    "party": party, "ours": party and bits[1] == ours})
    return out

