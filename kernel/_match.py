"""The three-way match of a thread: quote, order, deliveries and invoices (docs/commerce.md).

Before paying, a buyer checks that the order matches the quote, that what was
delivered matches the order (partial deliveries over several notes add up)
and that what is billed matches both: billed ≤ delivered, prices as ordered,
totals as the lines say. :func:`match_thread` does it over the documents of
one thread, given in causal order (kernel._thread gives that order), and
returns values: the items with their quantities at each stage, findings
(``warning``: something does not agree; ``info``: something is still open),
and sentences a person reads at a glance. It is pure and never raises on odd
documents: what it cannot read it skips or reports.

Lines of the different documents are paired with the order's lines (the
quote's, when there is no order yet), in tiers, the first that decides wins:

1. ``ref``: the line references are equal (normalised as in 4);
2. plugin fields that name an article: ``ext.<namespace>.part_number``,
   then ``…gtin``, then ``…lot``, in any namespace (the machinery, food and
   medical plugins write them), same namespace and equal value;
3. ``text``: the normalised texts are equal: Unicode NFKC, case folded,
   white space collapsed to one space and trimmed;
4. ``similar``: the character-trigram Dice similarity of the normalised
   texts (each padded with two spaces in front and one behind) is at least
   :data:`SIMILARITY` (0.6), and strictly above every other candidate's.

A key that names two lines of the order decides nothing (ambiguous), and the
next tier is tried. A line no tier pairs is a finding of its own. Similarity
is compared for at most :data:`MAX_COMPARISONS` pairs per document, so a
thread of huge documents costs bounded time; past it, the lines left are
reported unpaired.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any, Final, Literal

from ._commerce import EXACT, document_findings, to_decimal

__all__ = ["SIMILARITY", "MAX_COMPARISONS", "MATCH_CODES", "MatchFinding", "MatchItem", "Match",
           "match_thread", "normalise", "similarity"]

SIMILARITY: Final = 0.6
MAX_COMPARISONS: Final = 1_000_000
#: The plugin fields that name an article, strongest first.
ARTICLE_FIELDS: Final = ("part_number", "gtin", "lot")

#: Every code a MatchFinding may have besides the arithmetic ones
#: (kernel._commerce.CODES, given as "arithmetic.<code>"); docs/commerce.md lists each.
MATCH_CODES: Final = (
    "no_order", "order_rejected", "order_countered", "cancelled", "currency", "unit",
    "ambiguous_line", "not_quoted", "quoted_not_ordered", "qty_not_as_quoted",
    "price_not_as_quoted", "delivered_not_ordered", "over_delivered", "not_delivered",
    "billed_not_ordered", "billed_over_ordered", "billed_not_delivered", "not_billed",
    "no_delivery_note", "price_not_as_ordered", "billed_total",
)

Level = Literal["warning", "info"]


@dataclass(frozen=True, slots=True)
class MatchFinding:
    """One thing the match found: ``warning`` (does not agree) or ``info`` (still open).

    ``document`` and ``path`` say where (a document of the thread, a line of
    it: ``lines[2]``), ``item`` which item of :attr:`Match.items`, each when
    there is one.
    """

    level: Level
    code: str
    message: str
    document: Any = None
    path: str | None = None
    item: int | None = None


@dataclass(frozen=True, slots=True)
class MatchItem:
    """One item of the trade across the thread; a quantity is None where no line gave one."""

    text: str
    unit: str | None
    quoted: Decimal | None
    ordered: Decimal | None
    delivered: Decimal | None
    invoiced: Decimal | None
    quoted_price: Decimal | None
    ordered_price: Decimal | None
    invoiced_prices: tuple[Decimal, ...]
    #: Every (document, line index) paired to this item, and how: "base", "ref",
    #: "<namespace>.<field>", "text" or "similar".
    lines: tuple[tuple[Any, int, str], ...]
    #: "ordered 500, delivered 480, invoiced 500: 20 pcs billed but not delivered"
    summary: str


@dataclass(frozen=True, slots=True)
class Match:
    """The match of one thread: its items, findings and a sentence for each."""

    documents: tuple[tuple[Any, str], ...]
    currency: str | None
    items: tuple[MatchItem, ...]
    findings: tuple[MatchFinding, ...]
    summary: str

    @property
    def ok(self) -> bool:
        """No warning (open quantities, ``info``, are not problems)."""
        return not any(f.level == "warning" for f in self.findings)


# -- pairing --------------------------------------------------------------------


def normalise(text: str) -> str:
    """NFKC, case folded, white space collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _trigrams(text: str) -> frozenset[str]:
    padded = f"  {text} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


def similarity(a: str, b: str) -> float:
    """The Dice coefficient of the character trigrams of the normalised texts."""
    ta, tb = _trigrams(normalise(a)), _trigrams(normalise(b))
    return 2 * len(ta & tb) / (len(ta) + len(tb)) if ta or tb else 1.0


def _line_keys(line: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(tier, key) for tiers 1 and 2, strongest first."""
    keys = []
    if type(line.get("ref")) is str:
        keys.append(("ref", normalise(line["ref"])))
    ext = line.get("ext")
    if type(ext) is dict:
        for name in ARTICLE_FIELDS:
            for namespace in sorted(n for n in ext if type(n) is str):
                fields = ext[namespace]
                if type(fields) is dict and type(fields.get(name)) is str and fields[name]:
                    keys.append((f"{namespace}.{name}", normalise(fields[name])))
    return keys


@dataclass(slots=True)
class _Anchors:
    """The base document's lines, indexed for pairing."""

    lines: list[Mapping[str, Any]]
    keys: dict[tuple[str, str], int | None] = field(default_factory=dict)
    texts: dict[str, int | None] = field(default_factory=dict)
    normalised: list[str] = field(default_factory=list)
    #: The trigrams of each line, made when tier 4 is first needed.
    grams: list[frozenset[str]] | None = None

    def __post_init__(self) -> None:
        for i, line in enumerate(self.lines):
            for key in _line_keys(line):
                self.keys[key] = None if key in self.keys else i  # None: ambiguous
            text = normalise(line["text"]) if type(line.get("text")) is str else ""
            self.texts[text] = None if text in self.texts else i
            self.normalised.append(text)

    def pair(self, lines: Sequence[Mapping[str, Any]]) -> list[tuple[int | None, str]]:
        """For each line, the anchor it pairs with (None: unpaired) and how
        ("ambiguous" when a tier found two and none other decided)."""
        out: list[tuple[int | None, str]] = []
        budget = MAX_COMPARISONS
        for line in lines:
            found: tuple[int | None, str] = (None, "unpaired")
            for key in _line_keys(line):
                if key in self.keys:
                    anchor = self.keys[key]
                    if anchor is not None:
                        found = (anchor, key[0])
                        break
                    found = (None, "ambiguous")
            text = normalise(line["text"]) if type(line.get("text")) is str else ""
            if found[0] is None and text in self.texts:
                anchor = self.texts[text]
                found = (anchor, "text") if anchor is not None else (None, "ambiguous")
            if found[0] is None and found[1] != "ambiguous" and budget >= len(self.lines) > 0:
                budget -= len(self.lines)
                if self.grams is None:
                    self.grams = [_trigrams(t) for t in self.normalised]
                grams = _trigrams(text)
                scores = sorted(((2 * len(grams & g) / (len(grams) + len(g)), i)
                                 for i, g in enumerate(self.grams) if grams or g), reverse=True)
                if scores and scores[0][0] >= SIMILARITY:
                    if len(scores) > 1 and scores[1][0] == scores[0][0]:
                        found = (None, "ambiguous")
                    else:
                        found = (scores[0][1], "similar")
            out.append(found)
        return out


# -- the match ------------------------------------------------------------------


def _fmt(value: Decimal | None) -> str:
    if value is None:
        return "?"
    text = format(value.normalize(EXACT), "f") if value else "0"
    return text


def _lines(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    lines = doc.get("lines")
    return [ln for ln in lines if isinstance(ln, Mapping)] if isinstance(lines, list) else []


def _label(doc: Mapping[str, Any]) -> str:
    kind = str(doc.get("kind", "document")).replace("_", " ")
    return f"{kind} {doc['ref']}" if type(doc.get("ref")) is str else kind


@dataclass(slots=True)
class _Item:
    text: str
    unit: str | None
    lines: list[tuple[Any, int, str]] = field(default_factory=list)
    qty: dict[str, Decimal | None] = field(default_factory=dict)
    price: dict[str, list[Decimal]] = field(default_factory=dict)

    def add(self, stage: str, line: Mapping[str, Any]) -> None:
        qty = to_decimal(line.get("qty"))
        if stage not in self.qty:
            self.qty[stage] = qty
        elif qty is not None:
            with localcontext(EXACT):
                before = self.qty[stage]
                self.qty[stage] = qty if before is None else before + qty
        price = to_decimal(line.get("unit_price"))
        if price is not None:
            self.price.setdefault(stage, []).append(price)

    def first_price(self, stage: str) -> Decimal | None:
        prices = self.price.get(stage)
        return prices[0] if prices else None


_STAGES: Final = {"quote": "quoted", "order": "ordered", "delivery_note": "delivered",
                  "invoice": "invoiced"}


def match_thread(documents: Sequence[tuple[Any, Mapping[str, Any]]]) -> Match:
    """The three-way match of one thread's documents, given in causal order.

    Each document is (its id, e.g. its CID; its body). The base is the last
    order (the last quote when there is none); the quote compared with it is
    the last quote before it; every delivery note and invoice counts, their
    quantities added up per item. Kinds other than the kernel's trade kinds
    are not matched.
    """
    findings: list[MatchFinding] = []
    kinds = tuple((cid, str(doc.get("kind"))) for cid, doc in documents)
    orders = [i for i, (_, d) in enumerate(documents) if d.get("kind") == "order"]
    quotes = [i for i, (_, d) in enumerate(documents) if d.get("kind") == "quote"]
    base_at = orders[-1] if orders else (quotes[-1] if quotes else None)
    later = [(cid, d) for cid, d in documents if d.get("kind") in ("delivery_note", "invoice")]
    for cid, doc in documents:
        for found in document_findings(doc):
            findings.append(MatchFinding("warning", f"arithmetic.{found.code}",
                                         f"{_label(doc)}: {found.path}: {found.message}",
                                         cid, found.path))
        if doc.get("kind") == "cancel":
            findings.append(MatchFinding("info", "cancelled", f"{_label(doc)} cancels the trade",
                                         cid))
    if base_at is None:
        if later:
            findings.append(MatchFinding("warning", "no_order",
                                         "deliveries or invoices in a thread with no order or quote"))
        return Match(kinds, None, (), tuple(findings), _overall([], findings, kinds))
    base_id, base = documents[base_at]
    if orders:
        for cid, doc in documents[base_at + 1:]:
            if doc.get("kind") == "order_response" and doc.get("response") == "reject":
                findings.append(MatchFinding("warning", "order_rejected",
                                             f"{_label(doc)} rejects the order", cid))
            elif doc.get("kind") == "order_response" and doc.get("response") == "counter":
                findings.append(MatchFinding("info", "order_countered",
                                             f"{_label(doc)} counters the order; no order "
                                             "follows it yet", cid))
    elif later:
        findings.append(MatchFinding("warning", "no_order",
                                     "deliveries or invoices follow a quote with no order"))
    currency = base.get("currency") if type(base.get("currency")) is str else None
    anchors = _Anchors(_lines(base))
    items = [_Item(str(ln.get("text", "")), ln.get("unit") if type(ln.get("unit")) is str else None)
             for ln in anchors.lines]
    base_stage = _STAGES[str(base.get("kind"))]
    for i, line in enumerate(anchors.lines):
        items[i].add(base_stage, line)
        items[i].lines.append((base_id, i, "base"))
    compared = []
    if orders and quotes and quotes[-1] < base_at:
        compared.append(documents[quotes[-1]])
    compared += later
    extra: list[_Item] = []
    for cid, doc in compared:
        stage = _STAGES[str(doc.get("kind"))]
        doc_currency = doc.get("currency")
        if currency is not None and type(doc_currency) is str and doc_currency != currency:
            findings.append(MatchFinding("warning", "currency",
                                         f"{_label(doc)} is in {doc_currency}, the "
                                         f"{_label(base)} in {currency}", cid, "currency"))
        lines = _lines(doc)
        pairs = anchors.pair(lines)
        for n, (line, (anchor, how)) in enumerate(zip(lines, pairs, strict=True)):
            if anchor is None:
                _unpaired(findings, extra, cid, doc, n, line, how, stage)
                continue
            item = items[anchor]
            item.add(stage, line)
            item.lines.append((cid, n, how))
            unit = line.get("unit") if type(line.get("unit")) is str else None
            if unit and item.unit and normalise(unit) != normalise(item.unit):
                findings.append(MatchFinding(
                    "warning", "unit", f"{_label(doc)} line {n + 1} counts {item.text!r} in "
                    f"{unit}, the {_label(base)} in {item.unit}", cid, f"lines[{n}]", anchor))
        if stage == "invoiced":
            _billed_total(findings, items, cid, doc, lines, pairs)
    stages = {_STAGES[str(d.get("kind"))] for _, d in compared} | {base_stage}
    summaries = []
    for n, item in enumerate(items):
        counts = _counts(item, stages)
        notes = _compare(item, stages, bool(orders))
        for level, code, phrase in notes:
            findings.append(MatchFinding(level, code, f"{item.text[:60]}: {counts}: {phrase}",
                                         item=n))
        summaries.append(f"{item.text[:60]}: {counts}"
                         + (": " + "; ".join(p for _, _, p in notes) if notes else ""))
    summaries += [f"{it.text[:60]}: {_counts(it, stages)}: not in the {_label(base)}"
                  for it in extra]
    made = tuple(_item(it, stages, text) for it, text in zip(items + extra, summaries, strict=True))
    return Match(kinds, currency, made, tuple(findings), _overall(list(made), findings, kinds))


def _unpaired(findings: list[MatchFinding], extra: list[_Item], cid: Any, doc: Mapping[str, Any],
              n: int, line: Mapping[str, Any], how: str, stage: str) -> None:
    text = str(line.get("text", ""))
    item = _Item(text, line.get("unit") if type(line.get("unit")) is str else None)
    item.add(stage, line)
    item.lines.append((cid, n, how))
    extra.append(item)
    where = f"{_label(doc)} line {n + 1} ({text[:60]!r})"
    if how == "ambiguous":
        findings.append(MatchFinding("warning", "ambiguous_line",
                                     f"{where} could be more than one ordered item", cid,
                                     f"lines[{n}]"))
    elif stage == "quoted":
        findings.append(MatchFinding("info", "quoted_not_ordered", f"{where} was quoted, not "
                                     "ordered", cid, f"lines[{n}]"))
    elif stage == "delivered":
        findings.append(MatchFinding("warning", "delivered_not_ordered",
                                     f"{where} was delivered but not ordered", cid, f"lines[{n}]"))
    else:
        findings.append(MatchFinding("warning", "billed_not_ordered",
                                     f"{where} is billed but was not ordered", cid, f"lines[{n}]"))


def _counts(item: _Item, stages: set[str]) -> str:
    """"ordered 500, delivered 480, invoiced 500" (the stages the thread has)."""
    return ", ".join(f"{stage} {_fmt(item.qty.get(stage, Decimal(0)))}"
                     for stage in ("quoted", "ordered", "delivered", "invoiced") if stage in stages)


def _compare(item: _Item, stages: set[str], ordered_base: bool) -> list[tuple[Level, str, str]]:
    """What does not agree (or is still open) about one item: (level, code, phrase)."""
    out: list[tuple[Level, str, str]] = []
    unit = f" {item.unit}" if item.unit else ""
    ordered = item.qty.get("ordered")
    if ordered_base and "quoted" in stages:
        if "quoted" not in item.qty:
            out.append(("warning", "not_quoted", "ordered but not quoted"))
        else:
            quoted = item.qty["quoted"]
            if quoted is not None and ordered is not None and quoted != ordered:
                out.append(("warning", "qty_not_as_quoted",
                            f"quoted {_fmt(quoted)}{unit}, ordered {_fmt(ordered)}{unit}"))
            qp, op = item.first_price("quoted"), item.first_price("ordered")
            if qp is not None and op is not None and qp != op:
                out.append(("warning", "price_not_as_quoted",
                            f"quoted at {_fmt(qp)}, ordered at {_fmt(op)}"))
    delivered = item.qty.get("delivered", Decimal(0)) if "delivered" in stages else None
    invoiced = item.qty.get("invoiced", Decimal(0)) if "invoiced" in stages else None
    with localcontext(EXACT):
        if ordered is not None and delivered is not None:
            if delivered > ordered:
                out.append(("warning", "over_delivered",
                            f"{_fmt(delivered - ordered)}{unit} delivered but not ordered"))
            elif delivered < ordered:
                out.append(("info", "not_delivered", f"{_fmt(ordered - delivered)}{unit} still "
                            "to deliver"))
        if invoiced is not None and ordered is not None and invoiced > ordered:
            out.append(("warning", "billed_over_ordered",
                        f"{_fmt(invoiced - ordered)}{unit} billed but not ordered"))
        if invoiced is not None and delivered is not None:
            if invoiced > delivered:
                out.append(("warning", "billed_not_delivered",
                            f"{_fmt(invoiced - delivered)}{unit} billed but not delivered"))
            elif invoiced < delivered:
                out.append(("info", "not_billed",
                            f"{_fmt(delivered - invoiced)}{unit} delivered, not billed yet"))
        elif invoiced and delivered is None:
            out.append(("info", "no_delivery_note", "billed with no delivery note in the thread"))
    base_price = item.first_price("ordered")
    for price in item.price.get("invoiced", []):
        if base_price is not None and price != base_price:
            out.append(("warning", "price_not_as_ordered",
                        f"ordered at {_fmt(base_price)}, invoiced at {_fmt(price)}"))
    return out


def _billed_total(findings: list[MatchFinding], items: list[_Item], cid: Any,
                  doc: Mapping[str, Any], lines: list[Mapping[str, Any]],
                  pairs: list[tuple[int | None, str]]) -> None:
    """An invoice's net against its quantities at the ordered prices."""
    net = to_decimal(doc.get("net"))
    if net is None:
        return
    total = Decimal(0)
    for line, (anchor, _) in zip(lines, pairs, strict=True):
        qty = to_decimal(line.get("qty"))
        price = items[anchor].first_price("ordered") if anchor is not None else None
        if qty is None or price is None:
            return
        with localcontext(EXACT):
            total += qty * price
    if total != net:
        findings.append(MatchFinding(
            "warning", "billed_total", f"{_label(doc)}: its quantities at the ordered prices "
            f"come to {_fmt(total)}, its net is {_fmt(net)}", cid, "net"))


def _item(item: _Item, stages: set[str], summary: str) -> MatchItem:
    return MatchItem(item.text, item.unit, item.qty.get("quoted"), item.qty.get("ordered"),
                     item.qty.get("delivered", Decimal(0)) if "delivered" in stages else None,
                     item.qty.get("invoiced", Decimal(0)) if "invoiced" in stages else None,
                     item.first_price("quoted"), item.first_price("ordered"),
                     tuple(item.price.get("invoiced", [])), tuple(item.lines), summary)


def _overall(items: list[MatchItem], findings: list[MatchFinding],
             kinds: tuple[tuple[Any, str], ...]) -> str:
    warnings = [f for f in findings if f.level == "warning"]
    counted = {k: sum(1 for _, kind in kinds if kind == k) for k in _STAGES}
    held = ", ".join(f"{n} {k.replace('_', ' ')}{'s' if n > 1 else ''}"
                     for k, n in counted.items() if n)
    if warnings:
        first = "; ".join(f.message for f in warnings[:3])
        more = f" (and {len(warnings) - 3} more)" if len(warnings) > 3 else ""
        return f"{len(warnings)} to check: {first}{more}"
    opened = [f for f in findings if f.level == "info"]
    state = f"; open: {'; '.join(f.message for f in opened[:3])}" if opened else ""
    return f"clean: {len(items)} item{'s' if len(items) != 1 else ''} agree across {held}{state}"
