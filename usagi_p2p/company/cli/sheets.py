"""``--export`` of ``usagi inbox|outbox|thread``: documents and their lines as a spreadsheet.

For accounting (docs/formats.md, "Spreadsheets"): one row per document, or one
row per line of each document of a thread; written by ``usagi_p2p.formats``
(openpyxl for .xlsx, the csv module for .csv).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from ...node.terminal import printable
from ..views import document_json
from .common import ride, run, with_node

if TYPE_CHECKING:
    from ...node.node import Node

__all__ = ["EXPORT_HEADERS", "LINE_HEADERS", "export_documents", "export_lines"]


#: The columns of 'usagi inbox/outbox --export' (one row per document, for accounting).
EXPORT_HEADERS: Final = ["direction", "kind", "ref", "partner", "issued_at", "status", "currency",
                         "net", "tax_total", "total", "due", "thread", "cid"]
#: The columns of 'usagi thread --export' (one row per line of each document).
LINE_HEADERS: Final = ["document", "kind", "ref", "issued_at", "line", "text", "qty", "unit",
                       "unit_price", "amount", "tax_category", "tax_rate", "item_ref", "cid"]


def cell(value: Any) -> Any:
    """A decimal string as a Decimal (a number cell in XLSX); anything else as it is."""
    from decimal import Decimal, InvalidOperation

    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def opened_documents(ctx: click.Context, cids: list[str]) -> list[dict[str, Any]]:
    """Each document as 'usagi --json show' has it: through a running node, else opened here."""
    first = ride(ctx, "GET", f"/api/v1/documents/{cids[0]}") if cids else None
    if first is not None:
        return [first] + [ride(ctx, "GET", f"/api/v1/documents/{cid}") or {} for cid in cids[1:]]
    from kernel.cid import CID

    from ...node import operations as ops

    async def showing(node: Node) -> list[dict[str, Any]]:
        return [document_json(await ops.show_document(node, CID.parse(c))) for c in cids]

    return run(with_node(ctx, showing)) if cids else []


def write_sheet(path: Path, headers: list[str], rows: list[list[Any]]) -> None:
    from kernel.errors import UsagiError

    from ...formats import write_table
    from .common import fail

    try:
        data = write_table(headers, rows, path.name)
    except UsagiError as exc:
        fail(exc)
    path.write_bytes(data)
    click.echo(f"wrote {printable(path)}: {len(rows)} row(s)", err=True)


def export_documents(ctx: click.Context, entries: list[Any], path: Path) -> None:
    documents = opened_documents(ctx, [str(e.cid) for e in entries])
    rows = []
    for entry, data in zip(entries, documents, strict=True):
        doc = data["document"]
        rows.append([entry.direction, entry.kind, entry.ref or "",
                     entry.partner_name or entry.partner, entry.issued_at, entry.status,
                     doc.get("currency"), *[cell(doc.get(k)) for k in ("net", "tax_total",
                                                                          "total")],
                     doc.get("due"), str(entry.thread), str(entry.cid)])
    write_sheet(path, EXPORT_HEADERS, rows)


def export_lines(ctx: click.Context, entries: list[Any], path: Path) -> None:
    documents = opened_documents(ctx, [str(e.cid) for e in entries])
    rows = []
    for n, (entry, data) in enumerate(zip(entries, documents, strict=True), start=1):
        doc = data["document"]
        for i, line in enumerate(doc.get("lines") or [], start=1):
            rows.append([n, entry.kind, entry.ref or "", entry.issued_at, i, line.get("text"),
                         *[cell(line.get(k)) for k in ("qty",)], line.get("unit"),
                         *[cell(line.get(k)) for k in ("unit_price", "amount")],
                         line.get("tax_category"), cell(line.get("tax_rate")),
                         line.get("ref"), str(entry.cid)])
    write_sheet(path, LINE_HEADERS, rows)
