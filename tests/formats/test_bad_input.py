"""Bad input (docs/formats.md, "Limits"): malformed XML, entity bombs, external entities,
huge files, formulas, thousands of columns: a clear typed error, in bounded time and memory."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import UsagiError
from usagi_p2p.formats import import_ubl, read_lines
from usagi_p2p.formats.safexml import MAX_XML
from usagi_p2p.formats.sheet import MAX_COLUMNS, MAX_ROWS
from usagi_p2p.node.errors import (
    InputTooLargeError,
    MalformedInputError,
    UnsafeInputError,
    UnsupportedFormatError,
    exit_code,
    http_status,
)

from .conftest import official_examples

INVOICE_NS = b'xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"'

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Invoice """ + INVOICE_NS + b"""><ID>&lol9;</ID></Invoice>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<Invoice """ + INVOICE_NS + b"""><ID>&xxe;</ID></Invoice>"""
REMOTE = b"""<?xml version="1.0"?>
<!DOCTYPE foo SYSTEM "http://127.0.0.1:9/evil.dtd">
<Invoice """ + INVOICE_NS + b"""/>"""
PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY % p SYSTEM "http://127.0.0.1:9/x"> %p; ]>
<Invoice """ + INVOICE_NS + b"""/>"""


@pytest.mark.parametrize(("data", "error"), [
    (b"", MalformedInputError),
    (b"<Invoice", MalformedInputError),
    (b"not xml at all", MalformedInputError),
    (b"\xff\xfe\x00<", MalformedInputError),
    (b"<Catalogue xmlns='urn:oasis:names:specification:ubl:schema:xsd:Catalogue-2'/>",
     UnsupportedFormatError),
    (b"<Invoice xmlns='urn:example'/>", MalformedInputError),
    (b"<html><body>an invoice</body></html>", MalformedInputError),
    (BOMB, UnsafeInputError),
    (XXE, UnsafeInputError),
    (REMOTE, UnsafeInputError),
    (PARAMETER, UnsafeInputError),
    (b"<a>" + b" " * (MAX_XML + 1) + b"</a>", InputTooLargeError),
    # an encoding Python has no codec for (found by the byte-changing test below)
    (b'<?xml version="1.0" encoding="U-F-8"?><Invoice/>', MalformedInputError),
], ids=["empty", "truncated", "text", "binary", "catalogue", "foreign", "html", "bomb", "xxe",
        "remote-dtd", "parameter-entity", "huge", "unknown-encoding"])
def test_bad_xml_is_a_typed_error(data: bytes, error: type[UsagiError]) -> None:
    with pytest.raises(error) as caught:
        import_ubl(data)
    code = caught.value.code
    assert http_status(code) in (400, 413, 422) and exit_code(code) == 65


def test_an_invoice_without_lines_text_is_malformed() -> None:
    data = (b"<Invoice " + INVOICE_NS + b" xmlns:cac='urn:oasis:names:specification:ubl:schema:"
            b"xsd:CommonAggregateComponents-2'><cac:InvoiceLine/></Invoice>")
    with pytest.raises(MalformedInputError, match="line 1"):
        import_ubl(data)


def test_a_number_that_is_not_is_malformed() -> None:
    data = (b"<Invoice " + INVOICE_NS + b" xmlns:cbc='urn:oasis:names:specification:ubl:schema:"
            b"xsd:CommonBasicComponents-2' xmlns:cac='urn:oasis:names:specification:ubl:schema:"
            b"xsd:CommonAggregateComponents-2'><cac:LegalMonetaryTotal><cbc:PayableAmount>lots"
            b"</cbc:PayableAmount></cac:LegalMonetaryTotal></Invoice>")
    with pytest.raises(MalformedInputError, match="total"):
        import_ubl(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_are_a_body_or_a_typed_error(data: bytes) -> None:
    try:
        imported = import_ubl(data)
    except UsagiError as exc:
        assert exc.code in ("input_malformed", "input_unsafe", "input_too_large",
                            "format_unsupported")
    else:
        assert isinstance(imported.body, dict)


def _xlsx(rows: list[list[object]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_a_formula_is_refused_naming_its_cell() -> None:
    data = _xlsx([["品名", "数量", "単価", "金額"], ["ボルト", 500, 12, "=B2*C2"]])
    with pytest.raises(UnsafeInputError, match="D2"):
        read_lines(data, "lines.xlsx")


def test_text_that_looks_like_a_formula_in_csv_is_only_text() -> None:
    lines = read_lines(b"text,qty\n=cmd|' /C calc'!A0,1\n", "lines.csv")
    assert lines == [{"text": "=cmd|' /C calc'!A0", "qty": "1"}]


def test_thousands_of_columns_or_rows_are_refused() -> None:
    wide = [["text"] + [f"c{i}" for i in range(MAX_COLUMNS + 10)],
            ["bolt"] + ["x"] * (MAX_COLUMNS + 10)]
    with pytest.raises(InputTooLargeError, match="columns"):
        read_lines(_xlsx(wide), "wide.xlsx")
    tall = "text\n" + "bolt\n" * (MAX_ROWS + 1)
    with pytest.raises(InputTooLargeError, match="rows|lines"):
        read_lines(tall.encode(), "tall.csv")


def test_a_zip_bomb_or_a_broken_workbook_is_refused() -> None:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", b"\0" * (120 << 20))
    with pytest.raises(InputTooLargeError, match="unpacks"):
        read_lines(out.getvalue(), "bomb.xlsx")
    with pytest.raises(MalformedInputError):
        read_lines(b"PK\x03\x04 not really", "broken.xlsx")
    with pytest.raises(UnsupportedFormatError):
        read_lines(b"text\nbolt\n", "lines.ods")


@pytest.mark.parametrize(("text", "match"), [
    ("qty,unit\n1,pcs\n", "text"),
    ("text,qty\nbolt,many\n", "not a number"),
    ("nothing,known\nfoo,bar\n", "header"),
    ("text,qty\n", "no lines"),
])
def test_spreadsheets_that_say_nothing_usable_are_malformed(text: str, match: str) -> None:
    with pytest.raises(MalformedInputError, match=match):
        read_lines(text.encode(), "lines.csv")


_EXAMPLES = official_examples()


@pytest.mark.skipif(not _EXAMPLES, reason="../shared fixtures not present")
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_an_official_example_with_a_byte_changed_is_a_body_or_a_typed_error(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(_EXAMPLES)).read_bytes()
    at = data.draw(st.integers(0, len(original) - 1))
    changed = original[:at] + bytes([data.draw(st.integers(0, 255))]) + original[at + 1:]
    try:
        imported = import_ubl(changed)
    except UsagiError as exc:
        assert exc.code in ("input_malformed", "input_unsafe", "format_unsupported")
    else:
        assert imported.kind in ("invoice", "order", "order_response", "delivery_note", "cancel")
