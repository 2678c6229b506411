"""kernel._document: the kernel's kinds and rules; masterless free text; no floats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kernel._document import (
    KERNEL_KINDS,
    MAX_PREV,
    document_problems,
    format_time,
    is_decimal,
    parse_time,
    validate_document,
)
from kernel.cid import CID
from kernel.errors import InvalidDocumentError, MalformedError

from ._support import BUYER, SELLER, STRANGER, order

ROOT = CID.for_block(b"root")
OTHER = CID.for_block(b"other")


def paths(doc: Any, kinds: tuple[str, ...] = ()) -> set[str]:
    return {p.path for p in document_problems(doc, kinds)}


def test_minimal_free_text_order_is_valid() -> None:
    doc = order()
    assert document_problems(doc) == []
    validate_document(doc)


def test_masterless_lines_need_nothing_but_text() -> None:
    doc = order(
        lines=[{"text": "something like the bolts we had last spring, 2 boxes"}, {"text": "水"}]
    )
    assert document_problems(doc) == []
    assert document_problems(order(lines=None)) == []  # lines are optional (e.g. a cancel)


def test_full_line_and_document_fields() -> None:
    doc = order(
        currency="JPY",
        total="12500",
        ref="PO-1",
        note="deliver to gate 3",
        user="tanaka",
        valid_until="2025-05-01T00:00:00Z",
        due="2025-06-01T00:00:00Z",
        lines=[
            {
                "text": "bolt",
                "qty": "500",
                "unit": "pcs",
                "unit_price": "25",
                "amount": "12500",
                "ref": "B-6-20",
                "ext": {"machinery": {"thread": "M6", "material": "SUS304"}},
            }
        ],
        ext={"machinery": {"drawing": "D-12"}, "food-safety": {"lot": ["A", "B"]}},
    )
    assert document_problems(doc) == []


def test_validate_raises_with_every_problem() -> None:
    doc = order(v=2, kind="nonsense", currency="yen")
    with pytest.raises(InvalidDocumentError) as info:
        validate_document(doc)
    assert {p.path for p in info.value.problems} == {"v", "kind", "currency"}  # type: ignore[attr-defined]
    assert info.value.code == "invalid_document"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"total": 1.5}, "total"),
        ({"lines": [{"text": "x", "qty": 2.0}]}, "lines[0].qty"),
        ({"ext": {"machinery": {"tolerance": 0.01}}}, "ext.machinery.tolerance"),
        ({"ext": {"machinery": {"deep": [{"x": [1, 2.5]}]}}}, "ext.machinery.deep[0].x[1]"),
        ({"lines": [{"text": "x", "ext": {"food": {"temp": -18.0}}}]}, "lines[0].ext.food.temp"),
    ],
)
def test_floats_are_refused_anywhere(changes: dict[str, Any], path: str) -> None:
    assert path in paths(order(**changes))


@pytest.mark.parametrize(
    "text", ["0", "1", "-3", "12.50", "0.000000000001", "123456789012345678901234567", "-0.5"]
)
def test_decimals_accepted(text: str) -> None:
    assert is_decimal(text)
    assert document_problems(order(total=text)) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "01",
        "1.",
        ".5",
        "+1",
        "1e3",
        "1,000",
        "1 000",
        "1.0000000000001",
        "1234567890123456789012345678",
        "--1",
        "١",
        "½",
        " 1",
        "NaN",
        12,
        1.5,
        None,
    ],
)
def test_decimals_refused(text: Any) -> None:
    assert not is_decimal(text)


@pytest.mark.parametrize("text", ["12.50\n", "1\n"])
def test_decimal_with_trailing_newline_refused(text: str) -> None:
    assert not is_decimal(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-04-01T09:30:00Z", datetime(2025, 4, 1, 9, 30, tzinfo=UTC)),
        ("2025-04-01T09:30:00.5Z", datetime(2025, 4, 1, 9, 30, 0, 500000, tzinfo=UTC)),
        ("2024-02-29T23:59:59.123456Z", datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)),
        ("2000-02-29T00:00:00Z", datetime(2000, 2, 29, tzinfo=UTC)),  # divisible by 400
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_times_parse(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected
    assert format_time(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "2025-04-01",
        "2025-04-01T09:30:00",
        "2025-04-01T09:30:00+00:00",
        "2025-04-01T09:30:00+09:00",
        "2025-04-01 09:30:00Z",
        "2025-04-01T09:30:00z",
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-04-01T24:00:00Z",
        "2026-02-30T00:00:00Z",  # a day the month lacks (spec section 5)
        "2026-04-31T00:00:00Z",
        "2026-02-29T00:00:00Z",  # not a leap year
        "1900-02-29T00:00:00Z",  # divisible by 100, not by 400
        "0000-01-01T00:00:00Z",  # years start at 0001
        "2016-12-31T23:59:60Z",  # a real leap second: not representable
        "2025-04-01T09:60:00Z",
        "2025-04-01T09:30:00.1234567Z",
        "٢٠٢٥-04-01T09:30:00Z",
        "",
        1743499800,
        None,
    ],
)
def test_times_refused(text: Any) -> None:
    with pytest.raises(MalformedError):
        parse_time(text)
    assert "issued_at" in paths(order(issued_at=text))


# -- text sizes are UTF-8 bytes (CDDL .size on tstr), spec section 5 -------------

#: Japanese in the BMP is 3 bytes a character, 𠮷 (U+20BB7, in company and
#: family names) 4: a text of the former 4,000-character limit fits either way.
@pytest.mark.parametrize(("text", "ok"), [
    ("x" * 16_000, True), ("x" * 16_001, False),
    ("六" * 4_000, True), ("六" * 5_333, True), ("六" * 5_334, False),
    ("𠮷" * 4_000, True), ("𠮷" * 4_001, False),
    ("é" * 8_000, True), ("é" * 8_001, False),
])
def test_text_size_counts_utf8_bytes(text: str, ok: bool) -> None:
    assert ("note" not in paths(order(note=text))) is ok
    assert ("lines[0].text" not in paths(order(lines=[{"text": text}]))) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("R" * 800, True), ("R" * 801, False), ("注" * 200, True), ("注" * 266, True),
    ("注" * 267, False), ("𠮷" * 200, True), ("𠮷" * 201, False), ("", False),
])
def test_short_size_counts_utf8_bytes(text: str, ok: bool) -> None:
    for field in ("ref", "user"):
        assert (field not in paths(order(**{field: text}))) is ok
    for field in ("unit", "ref"):
        assert (f"lines[0].{field}" not in paths(order(lines=[{"text": "x", field: text}]))) is ok


def test_a_realistic_japanese_line_fits() -> None:
    line = {"text": "六角穴付きボルト M6×20 SUS304 500本 図番 A-1234-01 納期 4月10日 " * 40,
            "unit": "本", "ref": "注文番号 PO-88231 第三工場向け"}
    assert document_problems(order(lines=[line], note="いつもお世話になっております。" * 100)) == []


def test_currency_is_the_iso_4217_shape_not_a_list() -> None:
    # Spec section 5: three upper-case ASCII letters; a code not (yet) in the
    # ISO 4217 list is accepted, so validity never depends on a list's version.
    for code in ("JPY", "EUR", "XAU", "XXX", "ZWG", "QQQ"):
        assert "currency" not in paths(order(currency=code))
    for code in ("jpy", "JP", "JPYY", "ＪＰＹ", "J P", "", 392):
        assert "currency" in paths(order(currency=code))


def test_time_with_trailing_newline_refused() -> None:
    with pytest.raises(MalformedError):
        parse_time("2025-04-01T09:30:00Z\n")


def test_format_time() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert format_time(datetime(2025, 4, 1, 18, 30, tzinfo=tokyo)) == "2025-04-01T09:30:00Z"
    assert (
        format_time(datetime(2025, 4, 1, 9, 30, 0, 120000, tzinfo=UTC)) == "2025-04-01T09:30:00.12Z"
    )
    with pytest.raises(ValueError):
        format_time(datetime(2025, 4, 1))


def test_optional_times_checked() -> None:
    assert "due" in paths(order(due="tomorrow"))
    assert "valid_until" in paths(order(valid_until="2025-04-01"))


@pytest.mark.parametrize("kind", sorted(KERNEL_KINDS - {"order_response"}))
def test_every_kernel_kind(kind: str) -> None:
    assert document_problems(order(kind=kind)) == []


def test_kernel_kinds_are_the_seven() -> None:
    assert KERNEL_KINDS == {
        "quote",
        "order",
        "order_response",
        "delivery_note",
        "invoice",
        "cancel",
        "message",
    }


@pytest.mark.parametrize(
    "kind",
    ["", "Order", "orders", "invoice2", "x" * 41, "a.b.c", ".order", "order.", "9lives", 3, None],
)
def test_bad_kinds(kind: Any) -> None:
    assert "kind" in paths({**order(), "kind": kind})


def test_namespaced_plugin_kinds() -> None:
    assert (
        document_problems(order(kind="medical.approval")) == []
    )  # no plugins enabled: not checked
    assert document_problems(order(kind="medical.approval"), kinds=("medical.approval",)) == []
    assert "kind" in paths(order(kind="machinery.drawing"), kinds=("medical.approval",))
    assert document_problems(order(kind="order"), kinds=("medical.approval",)) == []
    assert "kind" in paths(
        order(kind="approval"), kinds=("approval",)
    )  # bare names are the kernel's


@pytest.mark.parametrize("response", ["accept", "reject", "counter"])
def test_order_response_responses(response: str) -> None:
    assert document_problems(order(kind="order_response", response=response)) == []


@pytest.mark.parametrize("response", [None, "ok", "Accept", ""])
def test_order_response_needs_a_response(response: Any) -> None:
    assert "response" in paths(order(kind="order_response", response=response))


def test_response_only_on_order_response() -> None:
    assert "response" in paths(order(kind="order", response="accept"))


def test_unhashable_response_is_a_problem() -> None:
    assert "response" in paths(order(kind="order_response", response=["accept"]))


@pytest.mark.parametrize("field", ["to", "from"])
def test_unhashable_party_is_a_problem(field: str) -> None:
    assert field in paths({**order(), field: [SELLER.did]})


def test_parties() -> None:
    assert "to" in paths(order(to=BUYER.did))  # from == to
    assert "to" in paths(order(to="did:key:zNotAKey"))
    assert "from" in paths(order(**{"from": "someone"}))
    assert "to" in paths({k: v for k, v in order().items() if k != "to"})
    assert document_problems(order(to=STRANGER.did)) == []


def test_thread_and_prev_rules() -> None:
    assert document_problems(order(thread=ROOT, prev=[ROOT])) == []
    assert document_problems(order(thread=ROOT, prev=[ROOT, OTHER])) == []
    assert "prev" in paths(order(thread=ROOT))  # a reply without prev
    assert "prev" in paths(order(prev=[ROOT]))  # prev without thread
    assert "prev" in paths(order(thread=ROOT, prev=[]))
    assert "prev" in paths(order(thread=ROOT, prev=[ROOT, ROOT]))  # duplicate link
    assert "prev" in paths(order(thread=ROOT, prev=[str(ROOT)]))  # text, not a link
    assert "prev" in paths(order(thread=ROOT, prev=ROOT))
    assert "thread" in paths(order(thread=str(ROOT), prev=[ROOT]))
    many = [CID.for_block(bytes([i])) for i in range(MAX_PREV + 1)]
    assert document_problems(order(thread=ROOT, prev=many[:MAX_PREV])) == []
    assert "prev" in paths(order(thread=ROOT, prev=many))


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"price": "1"}, "price"),
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"v": "1"}, "v"),
        ({"currency": "jpy"}, "currency"),
        ({"currency": "JPYEN"}, "currency"),
        ({"total": "1,5"}, "total"),
        ({"ref": ""}, "ref"),
        ({"user": "u" * 801}, "user"),
        ({"note": "n" * 16_001}, "note"),
        ({"lines": "bolt"}, "lines"),
        ({"lines": ["bolt"]}, "lines[0]"),
        ({"lines": [{"text": ""}]}, "lines[0].text"),
        ({"lines": [{"text": "   "}]}, "lines[0].text"),
        ({"lines": [{"qty": "1"}]}, "lines[0].text"),
        ({"lines": [{"text": "x", "colour": "red"}]}, "lines[0].colour"),
        ({"lines": [{"text": "x", "unit": ""}]}, "lines[0].unit"),
        ({"lines": [{"text": "x", "ext": []}]}, "lines[0].ext"),
        ({"ext": {"Bad NS": {}}}, "ext.Bad NS"),
        ({"ext": {"machinery": "M6"}}, "ext.machinery"),
        ({"ext": []}, "ext"),
    ],
)
def test_kernel_rules(changes: dict[str, Any], path: str) -> None:
    assert path in paths(order(**changes))


def test_not_a_map() -> None:
    assert paths([]) == {""}
    with pytest.raises(InvalidDocumentError):
        validate_document("order")


def test_v_missing() -> None:
    doc = order()
    del doc["v"]
    assert "v" in paths(doc)
