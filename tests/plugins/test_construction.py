"""construction: sites, millimetres, shaku sizes, delivery windows per site schedule."""

from __future__ import annotations

import pytest

from plugins.construction import Construction, parse_dimensions, plugin

from ._support import codes, doc, line

EXTRACTION = [
    ("構造用合板 1820×910×12mm 現場: 芝浦三丁目新築 搬入 8:00〜10:00",
     {"site": "芝浦三丁目新築", "dimensions": "1820x910x12", "thickness": "12",
      "delivery_window": "08:00-10:00"}),
    ("Gypsum board 1820x910x12.5mm ±0.5mm, site: Shibaura Tower",
     {"site": "Shibaura Tower", "dimensions": "1820x910x12.5", "thickness": "12.5",
      "tolerance": "0.5"}),
    ("コンパネ 3×6板 t=12 納品日 2025/4/10",
     {"dimensions": "1820x910", "thickness": "12", "delivery_date": "2025-04-10"}),
    ("H鋼 200x100x5.5x8 L=6000", {"dimensions": "200x100x5.5x8", "length": "6000"}),
    ("steel plate 500x300 +1/-0mm",
     {"dimensions": "500x300", "tolerance_plus": "1", "tolerance_minus": "0"}),
    ("石膏ボード ９１０×１８２０×９．５ｍｍ ±０．５ｍｍ",
     {"dimensions": "910x1820x9.5", "thickness": "9.5", "tolerance": "0.5"}),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract(text: str, expected: dict[str, str]) -> None:
    assert plugin.extract(text) == expected


def test_plain_text_gives_nothing() -> None:
    assert plugin.extract("養生シート 一式") == {}


def test_parse_dimensions() -> None:
    assert parse_dimensions("1820x910x12") == ["1820", "910", "12"]
    assert parse_dimensions("1820×910mm") == ["1820", "910"]
    assert parse_dimensions("1820 x 9l0") is None
    assert parse_dimensions("about 2m") is None


def test_masterless_line_has_no_findings() -> None:
    assert plugin.validate(doc("order", [line("養生シート 一式")])) == []


def test_unparseable_dimension_warns() -> None:
    document = doc("order", [line("合板", "construction", dimensions="1820x9l0")])
    assert codes(plugin.validate(document)) == [("warning", "bad_dimension")]


SITE = {"site": "芝浦", "site_hours": "08:00-17:00", "site_days": "mon-sat"}


def test_delivery_outside_site_hours_warns() -> None:
    early = doc("delivery_note", [line("合板")],
                ext={"construction": {**SITE, "delivery_at": "2025-04-10 07:30"}})
    assert codes(plugin.validate(early)) == [("warning", "outside_site_window")]
    inside = doc("delivery_note", [line("合板")],
                 ext={"construction": {**SITE, "delivery_at": "2025-04-10 09:00"}})
    assert plugin.validate(inside) == []


def test_delivery_on_closed_day_warns() -> None:
    sunday = doc("order", [line("合板")],
                 ext={"construction": {**SITE, "delivery_at": "2025-04-13 09:00"}})
    assert codes(plugin.validate(sunday)) == [("warning", "outside_site_days")]


def test_delivery_note_issue_time_in_site_time() -> None:
    # Issued 2025-04-01T00:00Z = 09:00 in Japan: inside; 12:00Z = 21:00: outside.
    inside = doc("delivery_note", [line("合板")], ext={"construction": SITE})
    assert plugin.validate(inside) == []
    outside = dict(inside, issued_at="2025-04-01T12:00:00Z")
    assert codes(plugin.validate(outside)) == [("warning", "outside_site_window")]


def test_configured_schedule_per_site() -> None:
    configured = Construction(schedules={"豊洲": {"hours": "09:00-16:00"}})
    document = doc("order", [line("鉄筋", "construction", site="豊洲",
                                  delivery_at="2025-04-10 16:30")])
    assert codes(configured.validate(document)) == [("warning", "outside_site_window")]
    assert plugin.validate(document) == []  # no schedule known: nothing to compare


def test_site_schedule_kind_requires_fields() -> None:
    document = doc("construction.site_schedule", ext={"construction": {"site": "芝浦"}})
    assert codes(plugin.validate(document)) == [("error", "required_field")]
