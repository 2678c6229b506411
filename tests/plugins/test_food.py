"""food: lots, dates, cold chain, allergens (Japanese and English), freshness warnings."""

from __future__ import annotations

import pytest

from plugins.food import Food, plugin

from ._support import codes, doc, line

EXTRACTION = [
    ("国産むきえび 1kg 冷凍 -18℃以下 賞味期限 2025/06/30 ロット A2503-17",
     {"lot": "A2503-17", "best_before": "2025-06-30", "storage": "frozen", "temp_max": "-18",
      "allergens": "shrimp"}),
    ("Chilled chicken thigh 2kg, 0-4°C, use by 2025-04-02, lot 55821",
     {"lot": "55821", "use_by": "2025-04-02", "storage": "chilled", "temp_min": "0",
      "temp_max": "4"}),
    ("牛乳 1L 冷蔵 0〜10℃ 消費期限 2025年4月5日 製造日 2025年3月29日",
     {"production_date": "2025-03-29", "use_by": "2025-04-05", "storage": "chilled",
      "temp_min": "0", "temp_max": "10", "allergens": "milk"}),
    ("Frozen shrimp 2025-06-30 -18°C",  # a date then a temperature, not the range 18..30
     {"storage": "frozen", "temp_max": "-18", "allergens": "shrimp"}),
    ("Wheat flour with egg and milk, best before 2026-01-31",
     {"best_before": "2026-01-31", "allergens": "egg,milk,wheat"}),
    ("ずわいがに 冷凍 -20℃ 賞味期限 2025.12.31",
     {"best_before": "2025-12-31", "storage": "frozen", "temp_max": "-20", "allergens": "crab"}),
    ("そば粉 5kg 常温", {"storage": "ambient", "allergens": "buckwheat"}),
    ("buckwheat noodles", {"allergens": "buckwheat"}),  # "wheat" inside "buckwheat" is not wheat
    ("ピーナッツ バター 落花生 くるみ入り", {"allergens": "peanut,walnut"}),
    ("卵焼き 冷蔵 3~8℃", {"storage": "chilled", "temp_min": "3", "temp_max": "8",
                          "allergens": "egg"}),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract(text: str, expected: dict[str, str]) -> None:
    assert plugin.extract(text) == expected


def test_plain_text_gives_nothing() -> None:
    assert plugin.extract("キャベツ 10玉") == {}
    assert plugin.extract("Delivery charge") == {}


def test_masterless_line_has_no_findings() -> None:
    assert plugin.validate(doc("order", [line("キャベツ 10玉")])) == []


def test_delivery_after_best_before_warns() -> None:
    document = doc("order", [line("えび", "food", best_before="2025-04-10")],
                   due="2025-04-12T00:00:00Z")
    assert codes(plugin.validate(document)) == [("warning", "delivery_after_best_before")]
    fine = doc("order", [line("えび", "food", best_before="2025-04-10")], due="2025-04-09T00:00:00Z")
    assert plugin.validate(fine) == []


def test_delivery_date_uses_local_day() -> None:
    # 2025-04-10T16:00Z is already the 11th in Japan, after a best-before of the 10th.
    document = doc("order", [line("milk", "food", use_by="2025-04-10")], due="2025-04-10T16:00:00Z")
    assert codes(plugin.validate(document)) == [("warning", "delivery_after_use_by")]


def test_delivery_note_is_dated_by_issue() -> None:
    document = doc("delivery_note", [line("milk", "food", use_by="2025-03-31")])
    assert codes(plugin.validate(document)) == [("warning", "delivery_after_use_by")]


def test_chilled_without_range_warns() -> None:
    document = doc("order", [line("鶏もも 冷蔵", "food", storage="chilled")])
    assert codes(plugin.validate(document)) == [("warning", "cold_chain_missing")]
    ok = doc("order", [line("鶏もも 冷蔵", "food", storage="chilled", temp_min="0", temp_max="4")])
    assert plugin.validate(ok) == []


def test_quote_outliving_goods_warns() -> None:
    lines = [line("牛乳", "food", use_by="2025-04-05")]
    late = doc("quote", lines, valid_until="2025-04-20T00:00:00Z")
    assert codes(plugin.validate(late)) == [("warning", "quote_outlives_goods")]
    missing = doc("quote", lines)
    assert codes(plugin.validate(missing)) == [("warning", "freshness_window_missing")]
    strict = Food(freshness_days=3)
    soon = doc("quote", lines, valid_until="2025-04-03T00:00:00Z")
    assert plugin.validate(soon) == []
    assert codes(strict.validate(soon)) == [("warning", "quote_outlives_goods")]


def test_bad_dates_warn_not_refuse() -> None:
    document = doc("order", [line("x", "food", best_before="30/06/2025")])
    assert codes(plugin.validate(document)) == [("warning", "bad_date")]


def test_recall_requires_lot_and_reason() -> None:
    document = doc("food.recall", [line("むきえび")], ext={"food": {"lot": "A2503-17"}})
    assert codes(plugin.validate(document)) == [("error", "required_field")]
