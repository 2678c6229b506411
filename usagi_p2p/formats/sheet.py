"""Line tables as spreadsheets: XLSX and CSV in (lines to send), rows out (docs/formats.md).

In: the first sheet of an XLSX workbook (openpyxl, read-only) or a CSV file
(UTF-8, with or without a BOM; Shift_JIS as Excel in Japan saves it), whose
first non-empty row names the columns. Columns are found by their header, in
English or Japanese (:data:`HEADERS`); a column with no known header is
ignored, a row with nothing in it skipped. Cells are never evaluated: a
formula is refused (``input_unsafe``), naming its cell: a formula's value is
whatever the last program to save the file computed, or nothing at all.
Numbers become decimal strings as they are written (no float on the way).

Out: rows (a header and values) as XLSX or CSV for accounting. Text that a
spreadsheet program would run as a formula (it starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is written as text: a string cell
in XLSX, and with a leading ``'`` in CSV (OWASP "CSV injection"), which
reading removes again.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from ..node.errors import (
    InputTooLargeError,
    MalformedInputError,
    UnsafeInputError,
    UnsupportedFormatError,
)
from .ubl import decimal_text, model_decimal

__all__ = ["HEADERS", "MAX_SHEET", "MAX_ROWS", "MAX_COLUMNS", "read_lines", "write_table",
           "sheet_format"]

#: The largest spreadsheet file read (bytes), and how far into it: rows of
#: lines (a document holds at most 10,000) and columns.
MAX_SHEET: Final = 10 << 20
MAX_ROWS: Final = 10_000
MAX_COLUMNS: Final = 64
#: The most bytes an XLSX may unpack to (a "zip bomb" of a few KiB is refused).
MAX_UNPACKED: Final = 100 << 20

#: Header (lower case, spaces and underscores removed) -> the line field it fills.
HEADERS: Final = {
    **dict.fromkeys(("text", "description", "item", "品名", "品目", "摘要", "内容", "商品名",
                     "明細"), "text"),
    **dict.fromkeys(("qty", "quantity", "数量"), "qty"),
    **dict.fromkeys(("unit", "uom", "単位"), "unit"),
    **dict.fromkeys(("unitprice", "price", "単価"), "unit_price"),
    **dict.fromkeys(("amount", "linetotal", "金額", "小計"), "amount"),
    **dict.fromkeys(("ref", "partno", "partnumber", "sku", "itemno", "品番", "型番", "品目コード",
                     "商品コード"), "ref"),
    **dict.fromkeys(("taxrate", "vatrate", "税率", "消費税率"), "tax_rate"),
    **dict.fromkeys(("taxcategory", "vatcategory", "税区分"), "tax_category"),
}
_SPACE: Final = re.compile(r"[\s_\u3000]+")
_NUMERIC: Final = frozenset({"qty", "unit_price", "amount", "tax_rate"})
_RISKY: Final = ("=", "+", "-", "@", "\t", "\r")


def sheet_format(name: str) -> str:
    """"xlsx" or "csv" by a file name's suffix; ``format_unsupported`` otherwise."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix in ("xlsx", "xlsm"):
        return "xlsx"
    if suffix in ("csv", "txt"):
        return "csv"
    raise UnsupportedFormatError(f"{name!r}: lines are read from .xlsx or .csv files")


def _key(header: Any) -> str | None:
    if not isinstance(header, str):
        return None
    text = _SPACE.sub("", header.strip().lower()).replace("(円)", "").replace("（円）", "")
    return HEADERS.get(text)


def _number(value: Any, where: str) -> str:
    """A cell as a decimal string of the model."""
    if isinstance(value, bool):
        raise MalformedInputError(f"{where}: {value} is not a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # The float openpyxl read; repr gives the shortest text that is that
        # float, which is what the sheet showed (0.1, not 0.1000000000000000055).
        value = repr(value)
    if isinstance(value, Decimal):
        value = decimal_text(value)
    text = str(value).strip().replace(",", "").replace("，", "").replace("¥", "").replace("￥", "")
    return model_decimal(text.rstrip("%％"), where, shown=str(value))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        value = repr(value)
    text = str(value).strip()
    if text.startswith("'") and text[1:].startswith(_RISKY):
        text = text[1:]  # the escape write_table puts before text a program would run
    return text or None


def _lines(rows: Iterable[Sequence[Any]], name: str) -> list[dict[str, str]]:
    """Lines from rows: the first row with a known header names the columns."""
    columns: dict[int, str] | None = None
    lines: list[dict[str, str]] = []
    for number, row in enumerate(rows, start=1):
        if len(row) > MAX_COLUMNS:
            extra = [v for v in row[MAX_COLUMNS:] if v not in (None, "")]
            if extra:
                raise InputTooLargeError(f"{name}: row {number} has {len(row):,} columns; at "
                                         f"most {MAX_COLUMNS} are read")
        if columns is None:
            found = {i: _key(v) for i, v in enumerate(row[:MAX_COLUMNS])}
            columns = {i: k for i, k in found.items() if k is not None}
            if columns and "text" not in columns.values():
                raise MalformedInputError(f"{name}: row {number} names columns but none for the "
                                          "line's text (text, description, 品名, 品目, 摘要)")
            if not columns:
                if number >= 20:
                    break
                columns = None
            continue
        line: dict[str, str] = {}
        for i, key in columns.items():
            value = row[i] if i < len(row) else None
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            where = f"{name}: row {number}, {key}"
            line[key] = _number(value, where) if key in _NUMERIC else (_text(value) or "")
        line = {k: v for k, v in line.items() if v}
        if not line:
            continue
        if "text" not in line:
            raise MalformedInputError(f"{name}: row {number} has no text (品名/text)")
        if len(lines) >= MAX_ROWS:
            raise InputTooLargeError(f"{name}: more than {MAX_ROWS:,} lines")
        lines.append(line)
    if columns is None:
        raise MalformedInputError(f"{name}: no header row naming the columns (text/品名, qty/"
                                  "数量, unit/単位, unit_price/単価, amount/金額, ...)")
    if not lines:
        raise MalformedInputError(f"{name}: no lines below the header")
    return lines


def _xlsx_rows(data: bytes, name: str) -> list[list[Any]]:
    from openpyxl import load_workbook

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError) as exc:
        raise MalformedInputError(f"{name} is not an XLSX workbook: {exc}") from None
    if unpacked > MAX_UNPACKED:
        raise InputTooLargeError(f"{name} unpacks to {unpacked:,} bytes; at most "
                                 f"{MAX_UNPACKED:,} are read")
    try:
        # read_only streams the sheet; data_only=False keeps formulas as written
        # (never evaluated): they are refused below.
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    except Exception as exc:  # openpyxl raises many kinds for a broken file
        raise MalformedInputError(f"{name} is not a readable XLSX workbook: "
                                  f"{type(exc).__name__}") from None
    try:
        sheet = book.worksheets[0]
        rows: list[list[Any]] = []
        for number, row in enumerate(sheet.iter_rows(max_col=MAX_COLUMNS + 1), start=1):
            if number > MAX_ROWS + 50:
                raise InputTooLargeError(f"{name}: more than {MAX_ROWS:,} rows")
            values = []
            for cell in row:
                value = getattr(cell, "value", None)
                if getattr(cell, "data_type", None) == "f":
                    raise UnsafeInputError(f"{name}: cell {cell.coordinate} is a formula; formulas "
                                           "are never evaluated. Paste the values instead")
                values.append(value)
            rows.append(values)
        return rows
    finally:
        book.close()


def _csv_rows(data: bytes, name: str) -> list[list[str]]:
    for encoding in ("utf-8-sig", "cp932"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise MalformedInputError(f"{name} is neither UTF-8 nor Shift_JIS text")
    if "\x00" in text:
        raise MalformedInputError(f"{name} is not a text file")
    # The delimiter is the one the first line uses most (Excel in Europe writes ";");
    # quoting is always Excel's: a guessed quote character misreads "'" escapes.
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count) if first else ","
    rows: list[list[str]] = []
    try:
        for number, row in enumerate(csv.reader(io.StringIO(text), csv.excel,
                                                delimiter=delimiter), start=1):
            if number > MAX_ROWS + 50:
                raise InputTooLargeError(f"{name}: more than {MAX_ROWS:,} rows")
            rows.append(row)
    except csv.Error as exc:
        raise MalformedInputError(f"{name} is not readable CSV: {exc}") from None
    return rows


def read_lines(data: bytes, name: str) -> list[dict[str, str]]:
    """The lines of a spreadsheet (``name`` says its format: .xlsx or .csv).

    ``input_too_large`` (file, rows, columns), ``input_unsafe`` (a formula),
    ``input_malformed`` (no header, a row without text, a number that is not),
    ``format_unsupported`` (another suffix).
    """
    kind = sheet_format(name)
    if len(data) > MAX_SHEET:
        raise InputTooLargeError(f"{name} is {len(data):,} bytes; at most {MAX_SHEET:,} are read")
    rows: list[Sequence[Any]] = list(_xlsx_rows(data, name) if kind == "xlsx" else _csv_rows(data, name))
    return _lines(rows, name)


def _safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_RISKY):
        return "'" + value
    return value


def write_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], name: str) -> bytes:
    """``rows`` under ``headers`` as an XLSX workbook or CSV (UTF-8 with a BOM, which
    Excel needs to read Japanese), by ``name``'s suffix. Decimal values are
    written as numbers in XLSX; text as text, never as a formula."""
    if sheet_format(name) == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(headers)
        for row in rows:
            writer.writerow([decimal_text(v) if isinstance(v, Decimal) else
                             "" if v is None else _safe(v) for v in row])
        return ("\ufeff" + out.getvalue()).encode("utf-8")
    from openpyxl import Workbook
    from openpyxl.cell.cell import TYPE_STRING

    book = Workbook(write_only=False)
    sheet = book.active
    sheet.append(list(headers))
    for row in rows:
        sheet.append([None if v is None else v for v in row])
        for cell in sheet[sheet.max_row]:
            if isinstance(cell.value, str):
                cell.data_type = TYPE_STRING  # a text cell, even when it starts with "="
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
