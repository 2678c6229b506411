"""The construction plugin: sites, delivery windows per site schedule, millimetre specs.

Implements docs/plugins.md ("construction"). From lines such as
``構造用合板 1820×910×12mm 現場: 芝浦三丁目新築 搬入 8:00〜10:00`` or
``Gypsum board 1820x910x12.5mm ±0.5mm, site: Shibaura Tower`` it extracts the
site, the dimensions in millimetres (``1820x910x12``), thickness (``t=12``),
tolerance (``±0.5`` or ``+1/-0``), a delivery date and a delivery window.
Shaku sizes are translated: ``3×6板`` (サブロク) is 910×1820.

A site's schedule (the hours and weekdays it accepts deliveries) comes from
the document itself (``ext.construction.site_hours``, ``site_days``), or
from the plugin's own configuration (``Construction(schedules={...})``). It
warns when a delivery falls outside the window and when a dimension in
``ext.construction`` cannot be parsed. Its own kind ``construction.site_schedule``
requires ``site`` and ``site_hours``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from kernel.plugin import Finding, ext_of, required_findings

from ._text import find_date, line_ext, normalize, utc_offset

__all__ = ["Construction", "plugin", "parse_dimensions"]

_NUM: Final = r"\d+(?:\.\d+)?"
# Up to four parts: a board is LxWxT, an H-beam HxBxt1xt2.
_DIMS_RE: Final = re.compile(rf"(?<![\d.])({_NUM})\s*x\s*({_NUM})((?:\s*x\s*{_NUM}){{0,2}})\s*(?:mm)?", re.I)
_DIMS_FULL_RE: Final = re.compile(rf"{_NUM}(?:x{_NUM}){{0,3}}")
_LENGTH_RE: Final = re.compile(rf"(?<![A-Za-z])L\s*=\s*({_NUM})\s*(?:mm)?")
_THICKNESS_RE: Final = re.compile(rf"(?<![A-Za-z])t\s*=?\s*({_NUM})\s*(?:mm)?", re.I)
_TOLERANCE_RE: Final = re.compile(rf"±\s*({_NUM})\s*(?:mm)?")
_ASYM_TOLERANCE_RE: Final = re.compile(rf"\+\s*({_NUM})\s*/\s*-\s*({_NUM})\s*(?:mm)?")
_SITE_RE: Final = re.compile(r"(?:現場(?:名)?|site|工事名|project)\s*:\s*([^,;()]+?)(?=\s+(?:搬入|納品|"
                             r"delivery|deliver)|[,;()]|$)", re.I)
_WINDOW_RE: Final = re.compile(r"(?:搬入|納品|delivery|deliver(?:y window)?)\D{0,12}?"
                               r"(\d{1,2}):(\d{2})\s*(?:~|-|to)\s*(\d{1,2}):(\d{2})", re.I)
_DELIVERY: Final = r"納品日|搬入日|納期|delivery(?: date)?|deliver on"
# Shaku board sizes (3x6 = サブロク): the short side, the long side in mm.
_SHAKU_RE: Final = re.compile(r"(?<![\d.x])([34])\s*x\s*(6|8|10)\s*(?:板|版|合板|ボード|board|panel|サイズ)",
                              re.I)
_SHAKU_MM: Final = {"3": "910", "4": "1220", "6": "1820", "8": "2440", "10": "3030"}
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_dimensions(value: Any) -> list[str] | None:
    """``"1820x910x12"`` (up to four parts) in mm as its parts; None when it is not that form."""
    if type(value) is not str:
        return None
    text = normalize(value).lower().replace(" ", "").removesuffix("mm")
    if not _DIMS_FULL_RE.fullmatch(text):
        return None
    return text.split("x")


def _parse_hours(value: Any) -> tuple[int, int] | None:
    """``"08:00-17:00"`` as minutes after midnight (start, end)."""
    if type(value) is not str:
        return None
    match = re.fullmatch(r"(\d{1,2}):(\d{2})\s*[-~]\s*(\d{1,2}):(\d{2})", normalize(value))
    if not match:
        return None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        return None
    return h1 * 60 + m1, h2 * 60 + m2


def _parse_days(value: Any) -> set[int] | None:
    """``"mon-sat"`` or ``"mon,wed,fri"`` as weekday numbers (Monday = 0)."""
    if type(value) is not str:
        return None
    days: set[int] = set()
    for part in value.lower().replace(" ", "").split(","):
        ends = part.split("-")
        if not all(e in _DAYS for e in ends) or len(ends) > 2:
            return None
        first, last = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        days.update(range(first, last + 1) if first <= last else [*range(first, 7), *range(last + 1)])
    return days


def _local_time(value: Any, offset_hours: int) -> datetime | None:
    """A delivery time: site-local ``YYYY-MM-DD HH:MM``, or a kernel UTC time."""
    if type(value) is not str:
        return None
    try:
        if value.endswith("Z"):
            moment = datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
            return (moment + timedelta(hours=offset_hours)).replace(tzinfo=None)
        return datetime.strptime(value, "%Y-%m-%d %H:%M")
    except ValueError:
        return None


class Construction:
    """Building sites: schedules, deliveries, millimetres."""

    name = "construction"
    version = "1.0"
    namespace = "construction"
    kinds: Mapping[str, tuple[str, ...]] = {"construction.site_schedule": ("site", "site_hours")}
    line_fields: Mapping[str, str] = {
        "construction.site": "the building site the line is delivered to",
        "construction.dimensions": "dimensions in mm, 'LxW' or 'LxWxT', e.g. '1820x910x12'",
        "construction.thickness": "thickness in mm (t=12)",
        "construction.length": "length in mm (L=6000)",
        "construction.tolerance": "symmetric tolerance in mm (±0.5 → '0.5')",
        "construction.tolerance_plus": "upper tolerance in mm",
        "construction.tolerance_minus": "lower tolerance in mm",
        "construction.delivery_date": "delivery day at the site, YYYY-MM-DD",
        "construction.delivery_window": "delivery hours at the site, 'HH:MM-HH:MM'",
        "construction.delivery_at": "delivery time at the site, 'YYYY-MM-DD HH:MM' site-local",
    }

    def __init__(self, *, schedules: Mapping[str, Mapping[str, str]] | None = None,
                 utc_offset_hours: int = 9) -> None:
        # A company may know its sites' schedules as configuration; documents
        # may carry them too, and the document wins (it is the latest word).
        self.schedules = dict(schedules or {})
        for site, schedule in self.schedules.items():
            if (type(site) is not str or not isinstance(schedule, Mapping)
                    or not set(schedule) <= {"hours", "days"}
                    or _parse_hours(schedule.get("hours")) is None
                    or ("days" in schedule and _parse_days(schedule["days"]) is None)):
                raise ValueError(f"schedule for site {site!r} must be {{\"hours\": \"HH:MM-HH:MM\""
                                 f"[, \"days\": \"mon-fri\"]}}, not {schedule!r}")
        self.utc_offset_hours = utc_offset(utc_offset_hours)

    def extract(self, line_text: str) -> dict[str, str]:
        text = normalize(line_text)
        out: dict[str, str] = {}
        site = _SITE_RE.search(text)
        if site:
            out["site"] = site.group(1).strip()
        shaku = _SHAKU_RE.search(text)
        dims = None if shaku else _DIMS_RE.search(text)
        parts: list[str] = []
        if shaku:
            parts = [_SHAKU_MM[shaku.group(2)], _SHAKU_MM[shaku.group(1)]]
        elif dims:
            parts = [dims.group(1), dims.group(2), *re.findall(_NUM, dims.group(3))]
        if parts:
            out["dimensions"] = "x".join(parts)
        thickness = _THICKNESS_RE.search(text)
        if thickness:
            out["thickness"] = thickness.group(1)
        elif len(parts) == 3:  # a board's third dimension is its thickness
            out["thickness"] = parts[2]
        length = _LENGTH_RE.search(text)
        if length:
            out["length"] = length.group(1)
        tolerance = _TOLERANCE_RE.search(text)
        asym = _ASYM_TOLERANCE_RE.search(text)
        if tolerance:
            out["tolerance"] = tolerance.group(1)
        elif asym:
            out["tolerance_plus"], out["tolerance_minus"] = asym.groups()
        window = _WINDOW_RE.search(text)
        if window:
            h1, m1, h2, m2 = window.groups()
            out["delivery_window"] = f"{int(h1):02d}:{m1}-{int(h2):02d}:{m2}"
        day = find_date(_DELIVERY, text)
        if day:
            out["delivery_date"] = day
        return out

    def _schedule(self, site: Any, doc_fields: Mapping[str, Any]) -> tuple[Any, Any]:
        if doc_fields.get("site_hours") and (site is None or doc_fields.get("site") in (None, site)):
            return doc_fields.get("site_hours"), doc_fields.get("site_days")
        known = self.schedules.get(site) if type(site) is str else None
        if known:
            return known.get("hours"), known.get("days")
        return None, None

    def _check_delivery(self, when: Any, site: Any, doc_fields: Mapping[str, Any], path: str,
                        findings: list[Finding]) -> None:
        hours_text, days_text = self._schedule(site, doc_fields)
        if when is None or hours_text is None:
            return
        moment = _local_time(when, self.utc_offset_hours)
        hours = _parse_hours(hours_text)
        days = _parse_days(days_text) if days_text is not None else None
        if moment is None:
            findings.append(Finding(self.name, "warning", path, "bad_delivery_time",
                                    f"not 'YYYY-MM-DD HH:MM' or a UTC time: {when!r}"))
            return
        if hours is None or (days_text is not None and days is None):
            findings.append(Finding(self.name, "warning", "ext.construction.site_hours",
                                    "bad_schedule", f"cannot read the site schedule "
                                    f"{hours_text!r} {days_text or ''}".rstrip()))
            return
        minute = moment.hour * 60 + moment.minute
        where = f" at {site}" if site else ""
        if not hours[0] <= minute <= hours[1]:
            findings.append(Finding(self.name, "warning", path, "outside_site_window",
                                    f"delivery at {moment:%H:%M} is outside the site hours "
                                    f"{hours_text}{where}"))
        elif days is not None and moment.weekday() not in days:
            findings.append(Finding(self.name, "warning", path, "outside_site_days",
                                    f"delivery on a {_DAYS[moment.weekday()]} is outside the "
                                    f"site days {days_text}{where}"))

    def validate(self, document: Mapping[str, Any]) -> list[Finding]:
        findings = required_findings(self, document)
        doc_fields = ext_of(dict(document), self.namespace)
        if "site_hours" in doc_fields and _parse_hours(doc_fields["site_hours"]) is None:
            findings.append(Finding(self.name, "warning", "ext.construction.site_hours",
                                    "bad_schedule", f"not 'HH:MM-HH:MM': {doc_fields['site_hours']!r}"))
        delivery = doc_fields.get("delivery_at")
        if delivery is None and document.get("kind") == "delivery_note":
            delivery = document.get("issued_at")
        self._check_delivery(delivery, doc_fields.get("site"), doc_fields,
                             "ext.construction.delivery_at", findings)
        lines = document.get("lines")
        for i, line in enumerate(lines if type(lines) is list else []):
            fields = line_ext(line, self.namespace)
            path = f"lines[{i}].ext.construction"
            if "dimensions" in fields and parse_dimensions(fields["dimensions"]) is None:
                findings.append(Finding(self.name, "warning", f"{path}.dimensions", "bad_dimension",
                                        "dimensions are 'LxW' or 'LxWxT' in mm, e.g. "
                                        f"'1820x910x12': {fields['dimensions']!r}"))
            for key in ("thickness", "length", "tolerance", "tolerance_plus", "tolerance_minus"):
                if key in fields and parse_dimensions(fields[key]) is None:
                    findings.append(Finding(self.name, "warning", f"{path}.{key}", "bad_dimension",
                                            f"{key} is a number of mm: {fields[key]!r}"))
            if "delivery_at" in fields:
                self._check_delivery(fields["delivery_at"], fields.get("site", doc_fields.get("site")),
                                     doc_fields, f"{path}.delivery_at", findings)
        return findings


#: The entry point ``construction = "plugins.construction:plugin"`` loads this instance.
plugin = Construction()
