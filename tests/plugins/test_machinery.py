"""machinery: extraction from Japanese and English part descriptions, design vs purchasing."""

from __future__ import annotations

import pytest

from plugins.machinery import plugin

from ._support import codes, doc, line

EXTRACTION = [
    ("M6x20 SUS304 hex bolt, 500 pcs",
     {"thread": "M6", "length": "20", "material": "SUS304", "part_type": "hex_bolt"}),
    ("六角ボルト M6×20 SUS304",
     {"thread": "M6", "length": "20", "material": "SUS304", "part_type": "hex_bolt"}),
    ("六角ボルト Ｍ６×２０ ＳＵＳ３０４",  # full-width, as typed on a Japanese keyboard
     {"thread": "M6", "length": "20", "material": "SUS304", "part_type": "hex_bolt"}),
    ("M8x1.25x30 S45C 六角穴付きボルト",
     {"thread": "M8", "pitch": "1.25", "length": "30", "material": "S45C",
      "part_type": "socket_head_cap_screw"}),
    ("キャップスクリュー M5×12 ステンレス",
     {"thread": "M5", "length": "12", "material": "stainless",
      "part_type": "socket_head_cap_screw"}),
    ("φ10 4-flute carbide end mill",
     {"diameter": "10", "flutes": "4", "tool_material": "carbide", "part_type": "end_mill"}),
    ("Φ10 超硬エンドミル 4枚刃",
     {"diameter": "10", "flutes": "4", "tool_material": "carbide", "part_type": "end_mill"}),
    ("ø6.8 HSS drill for M8 tap",
     {"diameter": "6.8", "tool_material": "HSS", "part_type": "drill", "thread": "M8"}),
    ("MISUMI SFJ10-100-F5",
     {"maker": "MISUMI", "part_number": "SFJ10-100-F5", "series": "SFJ", "options": "F5"}),
    ("ミスミ SFJ10-100-F5 シャフト",
     {"maker": "MISUMI", "part_number": "SFJ10-100-F5", "series": "SFJ", "options": "F5",
      "part_type": "shaft"}),
    ("NSK 6204ZZ",
     {"maker": "NSK", "part_number": "6204ZZ", "series": "62", "bore": "20", "options": "ZZ",
      "part_type": "bearing"}),
    ("NSK 6205DDUC3 bearing",
     {"maker": "NSK", "part_number": "6205DDUC3", "series": "62", "bore": "25",
      "options": "DDU,C3", "part_type": "bearing"}),
    ("NTN 6001LLU ベアリング",
     {"maker": "NTN", "part_number": "6001LLU", "series": "60", "bore": "12", "options": "LLU",
      "part_type": "bearing"}),
    ("ブラケット 図番 DWG-2024-017 rev B 支給材", {"design_ref": "DWG-2024-017"}),
    ("ステンレス ナット M10", {"thread": "M10", "material": "stainless", "part_type": "nut"}),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract(text: str, expected: dict[str, str]) -> None:
    assert plugin.extract(text) == expected


@pytest.mark.parametrize("text", ["hello world", "送料", "Misc. consumables as discussed",
                                  "Machining as per phone call"])
def test_plain_text_gives_nothing(text: str) -> None:
    assert plugin.extract(text) == {}


def test_values_are_strings() -> None:
    for text, _ in EXTRACTION:
        assert all(type(v) is str for v in plugin.extract(text).values())


def test_masterless_line_has_no_findings() -> None:
    assert plugin.validate(doc("order", [line("ボルト 適当に 100本")])) == []


def test_design_line_on_purchase_document_warns() -> None:
    document = doc("order", [line("bracket per drawing", "machinery", role="design",
                                  design_ref="DWG-2024-017")])
    assert codes(plugin.validate(document)) == [("warning", "design_on_purchase")]


def test_purchase_line_referring_to_design_is_fine() -> None:
    document = doc("order", [line("bracket", "machinery", role="purchase",
                                  design_ref="DWG-2024-017")])
    assert plugin.validate(document) == []


def test_malformed_values_warn() -> None:
    document = doc("quote", [line("bolt", "machinery", thread="6mm", length="20mm")])
    assert codes(plugin.validate(document)) == [("warning", "bad_thread"), ("warning", "bad_number")]


def test_design_spec_requires_drawing() -> None:
    missing = doc("machinery.design_spec", [line("bracket")])
    assert codes(plugin.validate(missing)) == [("error", "required_field")]
    given = doc("machinery.design_spec", [line("bracket")], ext={"machinery": {"drawing": "A-1"}})
    assert plugin.validate(given) == []
