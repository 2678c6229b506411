"""Shared helpers for the built-in plugins: text normalisation, dates, small checks.

Line text arrives as people type it, in Japanese and English, often with
full-width digits (``１２``), multiplication signs (``×``), wave dashes
(``〜``) and ``℃``. :func:`normalize` folds those into one ASCII-ish spelling
so each plugin's patterns are written once. Dates are returned as ISO 8601
calendar dates (``2025-03-31``), the form the plugins store in ``ext``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

__all__ = ["utc_offset", "normalize", "find_date", "parse_iso_date", "DATE", "is_plain_decimal",
           "doc_date", "line_ext"]

# NFKC already folds full-width digits and letters, "℃" to "°C" and "～" to
# "~"; these are the look-alikes it leaves alone.
_FOLD: Final = str.maketrans({
    "×": "x", "✕": "x", "＊": "x", "*": "x",
    "〜": "~", "～": "~", "–": "-", "—": "-", "−": "-", "‐": "-",
    "Φ": "φ", "ø": "φ", "Ø": "φ", "⌀": "φ", "∅": "φ",
    "：": ":", "、": ",", "，": ",",
})

#: A calendar date as people write it: 2025-03-31, 2025/3/31, 2025.3.31, 2025年3月31日.
DATE: Final = r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
_DATE_RE: Final = re.compile(DATE)
_ISO_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_PLAIN_DECIMAL_RE: Final = re.compile(r"-?\d{1,9}(\.\d{1,6})?")


def utc_offset(value: Any) -> int:
    """A plugin setting ``utc_offset_hours``: whole hours east of UTC, -12..14."""
    if type(value) is not int or not -12 <= value <= 14:
        raise ValueError(f"utc_offset_hours must be a whole number of hours in -12..14, not {value!r}")
    return value


def normalize(text: str) -> str:
    """NFKC plus the foldings above, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).translate(_FOLD)
    # NFKC turns "℃" into "°C"; the degree sign may also be typed as "度".
    folded = folded.replace("度C", "°C")
    return " ".join(folded.split())


def _iso(year: str, month: str, day: str) -> str | None:
    try:
        return date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return None


def find_date(label_pattern: str, text: str) -> str | None:
    """The ISO date written after a label (``賞味期限 2025/3/31``), or None."""
    match = re.search(rf"(?:{label_pattern})\s*[:=]?\s*{DATE}", text, re.IGNORECASE)
    if match is None:
        return None
    return _iso(*match.groups()[-3:])


def parse_iso_date(value: Any) -> date | None:
    """A ``YYYY-MM-DD`` string as a date; None for anything else."""
    if type(value) is not str or not _ISO_DATE_RE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def is_plain_decimal(value: Any) -> bool:
    return type(value) is str and _PLAIN_DECIMAL_RE.fullmatch(value) is not None


def doc_date(value: Any, offset_hours: int = 9) -> date | None:
    """The local calendar date of a kernel time (``2025-03-31T01:00:00Z``).

    Kernel times are UTC; dates on food and medicine labels are local. The
    default offset is Japan's (+09:00) because that is where the labels
    this plugin reads are printed; a plugin instance may be built with another.
    """
    if type(value) is not str or not value.endswith("Z"):
        return parse_iso_date(value)
    try:
        moment = datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:
        return None
    return (moment + timedelta(hours=offset_hours)).date()


def line_ext(line: Any, namespace: str) -> dict[str, Any]:
    if type(line) is not dict or type(line.get("ext")) is not dict:
        return {}
    fields = line["ext"].get(namespace)
    return fields if type(fields) is dict else {}
