"""Archive import: verify the whole archive, then give each page back to the ledger
(docs/archive.md, "Import"; ``Ledger.restore`` writes it, ``INSERT OR IGNORE``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from kernel import dagcbor, make_notice, open_ack
from kernel.cid import CID

from ..node.ledger import DocumentRow, QuarantineRow, Restore
from ..node.node import Node
from .verify import Page, Quarantined, VerifyReport, iter_pages, verify_archive

__all__ = ["RESTORED_UNACKED", "import_archive"]

#: Why a document we sent comes back from an archive without an ack.
RESTORED_UNACKED: Final = ("restored from an archive with no ack; 'usagi outbox retry' "
                           "sends it again (a partner that has it answers with its ack)")


def _restore(page: Page, node: Node, quarantined: dict[CID, Quarantined], root: CID | None
             ) -> Restore:
    """What ``page`` gives back to the ledger."""
    mine = {node.did, *(old.did for old in node.retired)}
    out = Restore()
    for entry in page.entries:
        cid = entry["cid"]
        bad = quarantined.get(cid)
        if bad is not None:  # kept apart: not a document of the node, nor of any thread
            out.quarantine.append(QuarantineRow(
                cid, entry["dir"], entry["partner"], entry["kind"], entry["thread"],
                entry["issued_at"], float(entry["recorded_at"]), bad.code, bad.reason,
                root.raw if root is not None else b""))
            continue
        opened = page.opened[cid]
        doc = opened.document
        status, reason = entry["status"], entry.get("reason")
        unacked = entry["dir"] == "out" and cid not in page.acks
        if unacked:
            # Queued or undelivered when the archive was made: back in the outbox,
            # held until someone says to send (the partner may have it already).
            status, reason = "undelivered", RESTORED_UNACKED
            notice = make_notice(node.identity, cid, entry["partner"], node.now())
            out.outbox.append((cid, entry["partner"], notice, RESTORED_UNACKED))
        out.documents.append((DocumentRow(
            cid, entry["dir"], entry["partner"], doc["kind"], entry["thread"], doc.get("ref"),
            doc["issued_at"], float(entry["recorded_at"]), status, reason, opened.digest,
            opened.signed, doc.get("user")),
            dagcbor.encode(list(doc.get("prev", [])))))
        raw = page.acks.get(cid)
        if raw is None:
            continue
        ack = open_ack(raw)
        out.acks.append((cid, raw, ack.status, ack.reason, entry["ack_at"]))
        if ack.by in mine:  # our ack for a received document answers the notice's nonce
            out.nonces.append((ack.to, ack.nonce, cid, raw, float(entry["recorded_at"])))
    if page.head is not None:
        out.partners = page.partners  # inline in the head, or from its partner lists
        # A partner's rotation, so its threads are still one pair's (Ledger.thread). Its
        # old key stays refused: no overlap end is known, so none is restored.
        out.partner_rotations = dict(page.aliases)
        # Our own rotations, so our threads across them are still one pair's: the
        # alias only (its overlap long over; the signed statement is not archived).
        out.own_rotations = {old: new for old, new in page.aliases.items() if old in mine}
    return out


async def import_archive(node: Node, path: str | os.PathLike[str]) -> VerifyReport:
    """Verify the whole archive first (nothing is written if it fails), then restore it.

    A partial archive is restored but for the documents the verification
    reported (``report.quarantined``): those go to the ``quarantine`` table (their
    blocks to the store), where nothing shows them as the node's documents.
    """
    keys = (node.identity, *node.retired)
    checked = await asyncio.to_thread(verify_archive, path, keys)
    # The first pass knows every verdict; the second yields a page before a thread
    # running on into the next page is judged.
    quarantined = {q.cid: q for q in checked.quarantined}
    report = VerifyReport()
    pages = iter_pages(path, keys, report)
    # Pipelined: the next page is opened and checked (a thread: libsodium and the
    # decoder let go of the GIL) while this one is written (the store's and the
    # ledger's SQLite threads). Each page's blocks are stored before its rows,
    # and pages are written in order, as before.
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, pages, None))
    try:
        while (page := await upcoming) is not None:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, pages, None))
            # Through the node: each block under its CID, and pinned on a store that
            # collects garbage (a Kubo node), as a block sent or received is.
            await node.put_recorded(list(page.blocks.items()))
            await node.ledger.restore(_restore(page, node, quarantined, checked.root))
    finally:
        if not upcoming.done():  # a write failed: let the page being read finish
            await asyncio.wait([upcoming])
        if not upcoming.cancelled():
            upcoming.exception()  # seen: the write's failure is the one raised
    return report
