"""Looking at what a node holds: show a document, list a thread, verify end to end.

A thread is always gathered between two parties (``Ledger.thread``, docs/spec.md
section 9): a document another partner hung on it cannot break it.
"""

from __future__ import annotations

import json
from typing import Any

from kernel import envelope as kenvelope
from kernel.cid import CID
from kernel.document import format_time
from kernel.errors import UsagiError
from kernel.messages import check_ack, open_ack
from kernel.signed import open_signed
from kernel.thread import split_thread, verify_thread

from ..node.errors import NodeError
from ..node.node import Node

__all__ = ["show_document", "thread_documents", "verify_document", "answer_body", "CARRIED"]

#: What an answer sent without a body of its own takes from the document it
#: answers: an order for what was quoted, a delivery note or an invoice for
#: what was ordered. Nothing else (a reference, a note, a response, dates) is
#: the same from one document to the next.
CARRIED = ("currency", "lines", "total")

#: Which documents a kernel kind is filled from (an order from a quote or a
#: counter-offer, and so on). Anything else (a cancel, a message, a plugin's
#: kind, or an answer to the wrong document) needs a body of its own.
ANSWERS: dict[str, frozenset[str]] = {
    "order": frozenset({"quote", "order_response"}),
    "order_response": frozenset({"order"}),
    "delivery_note": frozenset({"order", "order_response"}),
    "invoice": frozenset({"order", "order_response", "delivery_note"}),
}


def _a(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


async def answer_body(node: Node, kind: str, cid: CID) -> dict[str, Any]:
    """The body a ``kind`` answering ``cid`` starts from: its :data:`CARRIED` fields.

    Refused (NodeError, nothing sent) when ``kind`` is not filled from the
    answered kind (:data:`ANSWERS`) or there are no lines to carry over.
    """
    row = await node.ledger.document(cid)
    if row is None:
        raise NodeError(f"{cid} is not in this node's ledger (see 'usagi inbox' and "
                        "'usagi outbox')")
    if kind not in ANSWERS:
        raise NodeError(f"{_a(kind)} {kind} is not filled in from the document it answers; "
                        "give its body as a FILE")
    if row.kind not in ANSWERS[kind]:
        raise NodeError(f"{cid} is {_a(row.kind)} {row.kind}; {_a(kind)} {kind} is filled in "
                        f"from {' or '.join(sorted(ANSWERS[kind]))}. Give a FILE to send it "
                        "anyway")
    document = open_signed(row.signed, "document", "from", kenvelope.DOCUMENT_LIMITS).body
    body = {key: document[key] for key in CARRIED if key in document}
    if not body.get("lines"):
        raise NodeError(f"{cid} has no lines to carry over; give the {kind}'s body as a FILE")
    return body


async def show_document(node: Node, cid: CID) -> dict[str, Any]:
    row = await node.ledger.document(cid)
    if row is None:
        raise NodeError(f"{cid} is not in this node's ledger")
    document = open_signed(row.signed, "document", "from", kenvelope.DOCUMENT_LIMITS).body
    ack = await node.ledger.ack(cid)
    partner = await node.ledger.partner(row.partner)
    opened_ack = open_ack(ack[0]) if ack else None
    return {"cid": str(cid), "direction": row.direction, "status": row.status,
            "reason": row.reason, "thread": str(row.thread), "document": document,
            "partner": {"did": row.partner, "name": partner.name if partner else None},
            "user": row.user, "findings": json.loads(row.findings or "[]"),
            "ack": {"status": ack[1], "reason": ack[2], "by": opened_ack.by,
                    "at": format_time(opened_ack.at)} if ack and opened_ack else None}


async def thread_documents(node: Node, cid: CID) -> list[dict[str, Any]]:
    found = await node.ledger.thread(cid)
    if found is None:
        raise NodeError(f"{cid} is not in this node's ledger")
    _, rows, aliases = found
    opened = {}
    for r in rows:
        opened[r.cid] = kenvelope.Opened(
            r.cid, open_signed(r.signed, "document", "from", kenvelope.DOCUMENT_LIMITS).body,
            r.signed, r.digest, "")
    order = verify_thread(opened.values(), aliases)
    by_cid = {r.cid: r for r in rows}
    return [{"cid": str(o.cid), "kind": o.document["kind"], "ref": o.document.get("ref"),
             "issued_at": o.document["issued_at"], "direction": by_cid[o.cid].direction,
             "status": by_cid[o.cid].status} for o in order]


async def verify_document(node: Node, cid: CID) -> dict[str, Any]:
    """Every check a person needs to trust a document; ``ok`` only if all hold."""
    checks: list[dict[str, Any]] = []

    def record(name: str, ok: bool, detail: str) -> bool:
        checks.append({"name": name, "ok": ok, "detail": detail})
        return ok

    row = await node.ledger.document(cid)
    if not record("ledger", row is not None,
                  "recorded" if row else "not in this node's ledger"):
        return {"cid": str(cid), "ok": False, "checks": checks}
    assert row is not None
    try:
        block = await node.store.get(cid)
        record("block", True, f"{len(block)} bytes hash to the CID")
    except UsagiError as exc:
        record("block", False, f"[{exc.code}] {exc}")
        return {"cid": str(cid), "ok": False, "checks": checks}
    try:
        opened = node.open_envelope(block, cid)
        doc = opened.document
        record("signature", True, f"signed by {opened.signer}")
        record("parties", True, f"{doc['from']} -> {doc['to']}")
        record("digest", opened.digest == row.digest, "matches the ledger"
               if opened.digest == row.digest else "differs from the ledger")
    except UsagiError as exc:
        record("envelope", False, f"[{exc.code}] {exc}")
        return {"cid": str(cid), "ok": False, "checks": checks}
    try:
        found = await node.ledger.thread(cid)
        _, rows, aliases = found if found is not None else (row, [], {})
        members = []
        for r in rows:
            members.append(node.open_envelope(await node.store.get(r.cid), r.cid))
        # This document holds when its own chain does: a broken document elsewhere
        # in the thread is named, but does not take this one with it.
        order, broken = split_thread(row.thread, members, aliases)
        why = {o.cid: exc for o, exc in broken}
        if cid in why:
            record("thread", False, f"[{why[cid].code}] {why[cid]}")
        else:
            record("thread", True, f"{len(order)} document(s) chain from {row.thread}"
                   + (f"; {len(broken)} other(s) do not: "
                      + ", ".join(f"{o.cid} [{e.code}]" for o, e in broken) if broken else ""))
    except UsagiError as exc:
        record("thread", False, f"[{exc.code}] {exc}")
    ack = await node.ledger.ack(cid)
    if ack is None:
        record("ack", False, "no acknowledgement yet")
    else:
        expected_by = doc["to"]  # the receiver acks: the partner, or this node
        try:
            parsed = open_ack(ack[0])
            # The acknowledging party may have rotated its key since.
            if parsed.by != expected_by and await node.canonical(expected_by) == parsed.by:
                expected_by = parsed.by
            check_ack(parsed, cid=cid, by=expected_by, digest=opened.digest)
            record("ack", parsed.ok, f"{parsed.status} by {parsed.by} at {parsed.at.isoformat()}"
                   + (f" ({parsed.reason})" if parsed.reason else ""))
        except UsagiError as exc:
            record("ack", False, f"[{exc.code}] {exc}")
    return {"cid": str(cid), "ok": all(c["ok"] for c in checks), "checks": checks}
