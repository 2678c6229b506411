"""Routes for the standard formats (docs/formats.md): a document as UBL 2.1 (Peppol BIS 3).

A thin route over ``usagi_p2p.node.operations.export_source`` and the pure
mapping ``usagi_p2p.formats.export_ubl``: the same bytes ``usagi export`` writes.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from kernel.cid import CID

from ...formats import Parties, export_ubl
from ...node import operations
from .calls import Call

__all__ = ["document_ubl", "UBL"]

UBL: Final = "application/xml"


async def document_ubl(call: Call) -> web.Response:
    cid = CID.parse(call.request.match_info["cid"])
    source = await operations.export_source(call.node, cid)
    data = export_ubl(source.document, Parties(source.sender, source.receiver),
                      reference=source.reference, order_reference=source.order_reference)
    return web.Response(body=data, content_type=UBL, charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{cid}.xml"',
                                 "Cache-Control": "private, no-cache"})
