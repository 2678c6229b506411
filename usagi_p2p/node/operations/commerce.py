"""Commercial integrity of a company's trades: arithmetic findings and the three-way match.

Part of ``usagi_p2p.node.operations`` (see there). The rules are the
kernel's (``kernel.document_findings``, ``kernel.match_thread``;
docs/commerce.md): this module only gathers the documents a node holds and
hands back the kernel's typed values, which every face (``usagi show``,
``usagi verify``, ``usagi match``, the local API, the web UI) presents as it
likes. Findings are warnings, never refusals: nothing here changes what the
node holds.
"""

from __future__ import annotations

from kernel import Discrepancy, Match, Opened, document_findings, match_thread, verify_thread
from kernel.cid import CID

from ..errors import UnknownDocumentError
from ..node import Node
from .documents import opened_body

__all__ = ["document_arithmetic", "match_documents"]


async def document_arithmetic(node: Node, cid: CID) -> tuple[Discrepancy, ...]:
    """Every figure of document ``cid`` that does not add up (docs/commerce.md)."""
    row = await node.ledger.document(cid)
    if row is None:
        raise UnknownDocumentError(f"{cid} is not in this node's ledger")
    return tuple(document_findings(opened_body(row)))


async def match_documents(node: Node, cid: CID) -> Match:
    """The three-way match of the thread ``cid`` belongs to (any of its documents).

    The thread's chain is verified first, as ``thread_documents`` does
    (a broken thread is refused with its code); the match then runs over its
    documents in causal order, each named by its CID.
    """
    found = await node.ledger.thread(cid)
    if found is None:
        raise UnknownDocumentError(f"{cid} is not in this node's ledger")
    _, rows, aliases = found
    opened = [Opened(r.cid, opened_body(r), r.signed, r.digest, "") for r in rows]
    return match_thread([(o.cid, o.document) for o in verify_thread(opened, aliases)])
