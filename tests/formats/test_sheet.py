"""Spreadsheets in and out (docs/formats.md, "Spreadsheets")."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from usagi_p2p.formats import read_lines, write_table
from usagi_p2p.formats.sheet import HEADERS


def _xlsx(rows: list[list[object]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_japanese_headers_fill_the_line_fields() -> None:
    data = _xlsx([["見積明細"], [],
                  ["品番", "品名", "数量", "単位", "単価", "金額", "税率", "備考"],
                  ["HB-M6-20", "M6x20 SUS304 六角ボルト", 500, "個", 12.5, 6250, "10%", "急ぎ"],
                  [None, None, None, None, None, None, None, None],
                  ["", "お茶", 3, "箱", 1234, 3702, 8, None]])
    assert read_lines(data, "見積.xlsx") == [
        {"ref": "HB-M6-20", "text": "M6x20 SUS304 六角ボルト", "qty": "500", "unit": "個",
         "unit_price": "12.5", "amount": "6250", "tax_rate": "10"},
        {"text": "お茶", "qty": "3", "unit": "箱", "unit_price": "1234", "amount": "3702",
         "tax_rate": "8"}]


def test_english_headers_and_excel_csv_in_shift_jis() -> None:
    text = ("Description,Quantity,UOM,Unit Price,Amount,Part No\r\n"
            "六角ナット M6,\"1,000\",pcs,￥8,8000,HN-M6\r\n")
    assert read_lines(text.encode("cp932"), "lines.csv") == [
        {"text": "六角ナット M6", "qty": "1000", "unit": "pcs", "unit_price": "8",
         "amount": "8000", "ref": "HN-M6"}]
    assert read_lines(("\ufeff" + text).encode("utf-8"), "lines.CSV")[0]["qty"] == "1000"


def test_every_documented_header_is_known() -> None:
    for header, field in HEADERS.items():
        lines = read_lines(f"text,{header}\nbolt,1\n".encode(), "x.csv") if field != "text" \
            else read_lines(f"{header}\nbolt\n".encode(), "x.csv")
        assert field in lines[0], header


def test_export_writes_numbers_as_numbers_and_text_never_as_a_formula() -> None:
    from openpyxl import load_workbook

    rows = [["=HYPERLINK(\"http://evil\")", Decimal("12.50"), "@SUM(A1)"], ["-1+1", None, "ok"]]
    book = load_workbook(io.BytesIO(write_table(["a", "b", "c"], rows, "out.xlsx")))
    sheet = book.active
    assert sheet["A2"].data_type == "s" and sheet["A2"].value.startswith("=HYPERLINK")
    assert sheet["B2"].value == 12.5 and sheet["B2"].data_type == "n"
    text = write_table(["a", "b", "c"], rows, "out.csv").decode("utf-8")
    assert text.startswith("\ufeff")
    got = list(csv.reader(io.StringIO(text[1:])))
    assert got[1] == ["'=HYPERLINK(\"http://evil\")", "12.50", "'@SUM(A1)"]
    assert got[2][0] == "'-1+1"


_cell = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=30).filter(lambda s: s.strip() == s and not s.startswith(("'", "=")))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(_cell, st.decimals(min_value=-10**9, max_value=10**9, places=3)),
                min_size=1, max_size=20))
def test_lines_written_then_read_are_the_same(rows: list[tuple[str, Decimal]]) -> None:
    for name in ("lines.xlsx", "lines.csv"):
        data = write_table(["品名", "金額"], [[t, a] for t, a in rows], name)
        back = read_lines(data, name)
        assert [b["text"] for b in back] == [t for t, _ in rows]
        assert [Decimal(b["amount"]) for b in back] == [a for _, a in rows]
