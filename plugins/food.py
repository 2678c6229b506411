"""The food plugin: lots, dates, cold chain, allergens, freshness windows on quotes.

Implements docs/plugins.md ("food"). From lines such as
``国産むきえび 1kg 冷凍 -18℃以下 賞味期限 2025/06/30 ロット A2503-17`` or
``Chilled chicken thigh 2kg, 0-4°C, use by 2025-04-02, lot 55821`` it
extracts lot, production date, best-before (賞味期限) and use-by (消費期限)
dates, storage (chilled / frozen / ambient), the temperature range and the
allergens Japan requires on labels (えび, かに, くるみ, 小麦, そば, 卵, 乳,
落花生), named in English (``shrimp,wheat``).

It warns, never refuses, on the kernel's kinds: a delivery dated after a
line's best-before or use-by; chilled or frozen goods without a temperature
range (a cold chain nobody can check); a quote for perishables valid longer
than the goods keep. Its own kind ``food.recall`` requires ``lot`` and
``reason``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from kernel.plugin import Finding, ext_of, required_findings

from ._text import doc_date, find_date, line_ext, normalize, parse_iso_date, utc_offset

__all__ = ["Food", "plugin", "ALLERGENS"]

#: Japan's specific raw materials (特定原材料), with their English names.
ALLERGENS: Final = (
    (r"えび|エビ|海老|\bshrimps?\b|\bprawns?\b", "shrimp"),
    # Rendaku voices the sound in compounds: ずわいがに, 毛ガニ.
    (r"かに|がに|カニ|ガニ|蟹|\bcrabs?\b", "crab"),
    (r"くるみ|クルミ|胡桃|\bwalnuts?\b", "walnut"),
    (r"小麦|\bwheat\b", "wheat"),
    (r"そば|蕎麦|\bbuckwheat\b", "buckwheat"),
    (r"卵|玉子|たまご|\beggs?\b", "egg"),
    (r"乳|\bmilk\b|\bdairy\b", "milk"),
    (r"落花生|ピーナッツ|\bpeanuts?\b", "peanut"),
)
_ALLERGEN_RES: Final = tuple((re.compile(p, re.I), name) for p, name in ALLERGENS)

_LOT_RE: Final = re.compile(r"(?:ロット(?:番号|No\.?)?|\blot(?:\s*no\.?)?)\s*[:#]?\s*"
                            r"([A-Za-z0-9][A-Za-z0-9-]{0,31})",
                            re.I)
_PRODUCED: Final = r"製造(?:年月)?日|加工日|produced(?: on)?|production date|mfg\.?|packed(?: on)?"
_BEST_BEFORE: Final = r"賞味期限|best[- ]before(?: end)?|BBE?|best by"
_USE_BY: Final = r"消費期限|use[- ]by|expiry date|exp\.?"
_STORAGE: Final = (
    (re.compile(r"冷凍|frozen|freezer", re.I), "frozen"),
    (re.compile(r"冷蔵|チルド|chilled|refrigerated|keep cold", re.I), "chilled"),
    (re.compile(r"常温|ambient|room temperature|shelf[- ]stable", re.I), "ambient"),
)
_T: Final = r"([-+]?\d{1,2}(?:\.\d)?)"
# A hyphen separates a range only when unspaced ("0-10°C"): "2025-06-30 -18°C" is a
# date and a temperature, not the range 18..30.
_RANGE_RE: Final = re.compile(rf"(?<![\d./-]){_T}\s*(?:°C)?(?:\s*(?:~|to)\s*|-){_T}\s*°C", re.I)
_BELOW_RE: Final = re.compile(rf"{_T}\s*°C\s*(?:以下|or below|or colder|max)|"
                              rf"(?:below|under|≦|<=?)\s*{_T}\s*°C",
                              re.I)
_SINGLE_RE: Final = re.compile(rf"{_T}\s*°C")


def _temperature(text: str, out: dict[str, str]) -> None:
    match = _RANGE_RE.search(text)
    if match:
        low, high = sorted((match.group(1), match.group(2)), key=float)
        out["temp_min"], out["temp_max"] = low.lstrip("+"), high.lstrip("+")
        return
    match = _BELOW_RE.search(text) or _SINGLE_RE.search(text)
    if match:
        # "-18℃" on frozen goods and "10℃以下" both give an upper bound.
        out["temp_max"] = next(g for g in match.groups() if g is not None).lstrip("+")


class Food:
    """Food and beverages: freshness, cold chain, allergens."""

    name = "food"
    version = "1.0"
    namespace = "food"
    kinds: Mapping[str, tuple[str, ...]] = {"food.recall": ("lot", "reason")}
    line_fields: Mapping[str, str] = {
        "food.lot": "lot number as printed",
        "food.production_date": "production (製造日) date, YYYY-MM-DD",
        "food.best_before": "best-before (賞味期限) date, YYYY-MM-DD",
        "food.use_by": "use-by (消費期限) date, YYYY-MM-DD",
        "food.storage": "chilled, frozen or ambient",
        "food.temp_min": "lowest storage temperature in °C, decimal string",
        "food.temp_max": "highest storage temperature in °C, decimal string",
        "food.allergens": "allergens, English names comma separated, e.g. 'egg,milk,wheat'",
    }

    def __init__(self, *, freshness_days: int = 0, utc_offset_hours: int = 9) -> None:
        # How long before the best-before a quote's validity must end (a buyer
        # wants days left to sell); 0 means "not after the best-before".
        if type(freshness_days) is not int or not 0 <= freshness_days <= 3650:
            raise ValueError(f"freshness_days must be a whole number of days, 0..3650, "
                             f"not {freshness_days!r}")
        self.freshness_days = freshness_days
        self.utc_offset_hours = utc_offset(utc_offset_hours)

    def extract(self, line_text: str) -> dict[str, str]:
        text = normalize(line_text)
        out: dict[str, str] = {}
        lot = _LOT_RE.search(text)
        if lot:
            out["lot"] = lot.group(1)
        for key, label in (("production_date", _PRODUCED), ("best_before", _BEST_BEFORE),
                           ("use_by", _USE_BY)):
            found = find_date(label, text)
            if found:
                out[key] = found
        for pattern, storage in _STORAGE:
            if pattern.search(text):
                out["storage"] = storage
                break
        _temperature(text, out)
        allergens = sorted({name for pattern, name in _ALLERGEN_RES if pattern.search(text)})
        if allergens:
            out["allergens"] = ",".join(allergens)
        return out

    def _delivery_date(self, document: Mapping[str, Any]) -> date | None:
        """The day the goods arrive: stated, else the due date, else a note's issue day."""
        stated = parse_iso_date(ext_of(dict(document), self.namespace).get("delivery_date"))
        if stated is not None:
            return stated
        if "due" in document:
            return doc_date(document["due"], self.utc_offset_hours)
        if document.get("kind") == "delivery_note":
            return doc_date(document.get("issued_at"), self.utc_offset_hours)
        return None

    def validate(self, document: Mapping[str, Any]) -> list[Finding]:
        findings = required_findings(self, document)
        delivery = self._delivery_date(document)
        valid_until = (doc_date(document.get("valid_until"), self.utc_offset_hours)
                       if document.get("kind") == "quote" else None)
        lines = document.get("lines")
        perishable_quote_without_validity = False
        for i, line in enumerate(lines if type(lines) is list else []):
            fields = line_ext(line, self.namespace)
            if not fields:
                continue  # masterless: a line without food fields is none of our business
            path = f"lines[{i}].ext.food"
            dates: dict[str, date] = {}
            for key in ("production_date", "best_before", "use_by"):
                if key in fields:
                    parsed = parse_iso_date(fields[key])
                    if parsed is None:
                        findings.append(Finding(self.name, "warning", f"{path}.{key}", "bad_date",
                                                f"{key} is a date YYYY-MM-DD: {fields[key]!r}"))
                    else:
                        dates[key] = parsed
            for key, label in (("use_by", "use-by"), ("best_before", "best-before")):
                if delivery is not None and key in dates and delivery > dates[key]:
                    findings.append(Finding(
                        self.name, "warning", f"{path}.{key}", f"delivery_after_{key}",
                        f"delivery on {delivery} is after the {label} date {dates[key]}"))
            if ("production_date" in dates and "best_before" in dates
                    and dates["best_before"] < dates["production_date"]):
                findings.append(Finding(self.name, "warning", f"{path}.best_before", "dates_reversed",
                                        "best-before is earlier than the production date"))
            if fields.get("storage") in ("chilled", "frozen") and not (
                    "temp_min" in fields or "temp_max" in fields):
                findings.append(Finding(
                    self.name, "warning", f"{path}.storage", "cold_chain_missing",
                    f"{fields['storage']} goods without a storage temperature range"))
            shelf_end = min((d for k, d in dates.items() if k != "production_date"), default=None)
            if document.get("kind") == "quote" and shelf_end is not None:
                if valid_until is None:
                    perishable_quote_without_validity = True
                elif (shelf_end - valid_until).days < self.freshness_days:
                    findings.append(Finding(
                        self.name, "warning", "valid_until", "quote_outlives_goods",
                        f"the quote is valid until {valid_until}, but line {i} keeps only "
                        f"until {shelf_end}"))
        if perishable_quote_without_validity:
            findings.append(Finding(self.name, "warning", "valid_until", "freshness_window_missing",
                                    "a quote for dated goods should say how long it is valid"))
        return findings


#: The entry point ``food = "plugins.food:plugin"`` loads this instance.
plugin = Food()
