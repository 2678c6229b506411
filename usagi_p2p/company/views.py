"""What the company's faces show of the node's values: JSON shapes and table rows.

Presentation only: the operations (``usagi_p2p.node.operations``) decide and
fetch; this module says how their typed results look as JSON (``--json``
today, the local API tomorrow) and as the rows of a table. The field names
are the CLI's documented output and do not change with the operations.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # the node is imported by the commands that open one (a CLI starts fast)
    from decimal import Decimal

    from kernel import Match
    from kernel.cid import CID

    from ..node import operations as ops
    from ..node.ledger import Partner
    from ..node.node import Node, SendResult

__all__ = ["DOCUMENT_HEADERS", "THREAD_HEADERS", "PARTNER_HEADERS", "QUOTA_HEADERS",
           "entry_json", "listed_json", "page_json", "entry_row", "document_json", "thread_json",
           "thread_row",
           "verification_json", "sent_json", "partner_json", "partner_row", "quota_json",
           "quota_row", "status_json", "key_json", "show_document", "thread_documents",
           "verify_document", "SEARCH_HEADERS", "search_json", "search_row",
           "MATCH_HEADERS", "match_json", "match_row"]

DOCUMENT_HEADERS: Final = ["issued", "kind", "ref", "partner", "status", "cid"]
THREAD_HEADERS: Final = ["issued", "kind", "ref", "direction", "status", "cid"]
PARTNER_HEADERS: Final = ["name", "status", "endpoint", "did"]
QUOTA_HEADERS: Final = ["partner", "documents", "bytes", "quota", "resets"]


def entry_json(e: ops.DocumentEntry) -> dict[str, Any]:
    return {"cid": str(e.cid), "kind": e.kind, "partner": e.partner, "ref": e.ref,
            "issued_at": e.issued_at, "status": e.status, "reason": e.reason,
            "thread": str(e.thread)}


def format_time(moment: datetime) -> str:
    """``kernel.format_time``, loaded when first used: a command that prints what a
    running node answered does not load the document rules to start."""
    from kernel import format_time as kernel_format_time

    return kernel_format_time(moment)


def listed_json(e: ops.DocumentEntry) -> dict[str, Any]:
    """One document of the local API's listing (``GET /api/v1/documents``)."""
    return {"cid": str(e.cid), "direction": e.direction, "kind": e.kind, "ref": e.ref,
            "partner": {"did": e.partner, "name": e.partner_name}, "issued_at": e.issued_at,
            "recorded_at": format_time(datetime.fromtimestamp(e.recorded_at, UTC)),
            "status": e.status, "reason": e.reason, "thread": str(e.thread)}


def page_json(page: ops.DocumentPage) -> dict[str, Any]:
    return {"documents": [listed_json(e) for e in page.entries], "next": page.next}


def entry_row(e: ops.DocumentEntry) -> list[Any]:
    # A DID this node has no partner under is shortened; a name is shown whole.
    return [e.issued_at, e.kind, e.ref, e.partner_name or e.partner[:20], e.status, str(e.cid)]


def document_json(v: ops.DocumentView) -> dict[str, Any]:
    return {"cid": str(v.cid), "direction": v.direction, "status": v.status,
            "reason": v.reason, "thread": str(v.thread), "document": v.document,
            "partner": {"did": v.partner, "name": v.partner_name},
            "user": v.user, "findings": [f.to_json() for f in v.findings],
            "ack": {"status": v.ack.status, "reason": v.ack.reason, "by": v.ack.by,
                    "at": format_time(v.ack.at)} if v.ack else None,
            "arithmetic": [d.to_json() for d in v.arithmetic]}


def thread_json(entries: list[ops.ThreadEntry]) -> list[dict[str, Any]]:
    return [{"cid": str(e.cid), "kind": e.kind, "ref": e.ref, "issued_at": e.issued_at,
             "direction": e.direction, "status": e.status} for e in entries]


def thread_row(e: ops.ThreadEntry) -> list[Any]:
    return [e.issued_at, e.kind, e.ref, e.direction, e.status, str(e.cid)]


def verification_json(v: ops.Verification) -> dict[str, Any]:
    return {"cid": str(v.cid), "ok": v.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "facts": dict(c.facts)}
                       for c in v.checks],
            "arithmetic": [d.to_json() for d in v.arithmetic]}


def sent_json(result: SendResult, delivery: ops.Delivery | None) -> dict[str, Any]:
    """A sent document, and (when it was waited for) its ack or its status."""
    out: dict[str, Any] = {"cid": str(result.cid), "thread": str(result.thread),
                           "digest": result.digest.hex(),
                           "findings": [f.to_json() for f in result.findings]}
    if delivery is not None and delivery.ack is None:
        out.update(ack=None, status=delivery.status, reason=delivery.reason)
    elif delivery is not None and delivery.ack is not None:
        ack = delivery.ack
        out["ack"] = {"status": ack.status, "by": ack.by, "at": ack.at.isoformat(),
                      "reason": ack.reason, "signed": ack.signed.hex()}
    return out


def partner_json(p: Partner) -> dict[str, Any]:
    return {"did": p.did, "name": p.name, "endpoint": p.endpoint, "status": p.status}


def partner_row(p: Partner) -> list[Any]:
    return [p.name, p.status, p.endpoint, p.did]


def quota_json(q: ops.QuotaUsage) -> dict[str, Any]:
    return {"partner": q.partner, "did": q.did, "docs": q.docs, "docs_quota": q.docs_quota,
            "bytes": q.bytes, "bytes_quota": q.bytes_quota, "own": q.own,
            "resets_at": q.resets_at}


def quota_row(q: ops.QuotaUsage) -> list[Any]:
    from ..node.quota import format_size

    return [q.partner, f"{q.docs:,} / {q.docs_quota:,}",
            f"{format_size(q.bytes)} / {format_size(q.bytes_quota)}",
            "own" if q.own else "default",
            datetime.fromtimestamp(q.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]


def status_json(s: ops.NodeStatus) -> dict[str, Any]:
    return {"name": s.name, "did": s.did, "endpoint": s.endpoint, "store": s.store,
            "partners": s.partners, "sent": s.sent, "received": s.received,
            "outbox": s.outbox, "serving": s.serving,
            "quotas": [quota_json(q) for q in s.quotas]}


def key_json(k: ops.KeyInfo) -> dict[str, Any]:
    return {"did": k.did, "retired": list(k.retired),
            "rotations": [{"old": r.old, "new": r.new, "overlap_until": r.overlap_until}
                          for r in k.rotations]}


# The operations with their JSON shape, for scripts and tests that read dicts.

async def show_document(node: Node, cid: CID) -> dict[str, Any]:
    from ..node import operations as ops

    return document_json(await ops.show_document(node, cid))


async def thread_documents(node: Node, cid: CID) -> list[dict[str, Any]]:
    from ..node import operations as ops

    return thread_json(await ops.thread_documents(node, cid))


async def verify_document(node: Node, cid: CID) -> dict[str, Any]:
    """Every check a person needs to trust a document; ``ok`` only if all hold."""
    from ..node import operations as ops

    return verification_json(await ops.verify_document(node, cid))


# -- commercial integrity (issue 19, docs/commerce.md) ----------------------------

MATCH_HEADERS: Final = ["item", "unit", "quoted", "ordered", "delivered", "invoiced", "price"]


def _number(value: Decimal | None) -> str | None:
    """A quantity or price as a decimal string as written ("12.50"), None when absent."""
    return None if value is None else format(value, "f")


def match_json(m: Match) -> dict[str, Any]:
    """The three-way match of a thread (``usagi --json match``, ``GET …/match``)."""
    return {
        "ok": m.ok, "summary": m.summary, "currency": m.currency,
        "documents": [{"cid": str(cid), "kind": kind} for cid, kind in m.documents],
        "items": [{"text": i.text, "unit": i.unit, "quoted": _number(i.quoted),
                   "ordered": _number(i.ordered), "delivered": _number(i.delivered),
                   "invoiced": _number(i.invoiced), "quoted_price": _number(i.quoted_price),
                   "ordered_price": _number(i.ordered_price),
                   "invoiced_prices": [_number(p) for p in i.invoiced_prices],
                   "lines": [{"cid": str(cid), "line": n, "paired_by": how}
                             for cid, n, how in i.lines],
                   "summary": i.summary} for i in m.items],
        "findings": [{"level": f.level, "code": f.code, "message": f.message,
                      "document": str(f.document) if f.document is not None else None,
                      "path": f.path, "item": f.item} for f in m.findings]}


def match_row(item: dict[str, Any]) -> list[Any]:
    """One item of :func:`match_json` as a row of ``usagi match``."""
    return [item["text"], item["unit"], item["quoted"], item["ordered"], item["delivered"],
            item["invoiced"], item["ordered_price"] or item["quoted_price"]]


# -- search -------------------------------------------------------------------

SEARCH_HEADERS: Final = ["recorded", "kind", "ref", "partner", "match", "cid"]


def search_json(page: ops.SearchPage) -> dict[str, Any]:
    """A page of search results (``usagi search --json`` and ``GET /api/v1/search``)."""
    return {"results": [
        {"cid": str(h.cid), "direction": h.direction, "kind": h.kind, "ref": h.ref,
         "partner": {"did": h.partner, "name": h.partner_name}, "issued_at": h.issued_at,
         "recorded_at": format_time(h.recorded_at), "status": h.status,
         "snippet": {"text": h.snippet.text,
                     "matches": [list(span) for span in h.snippet.matches]}}
        for h in page.hits], "cursor": page.cursor}


def search_row(r: dict[str, Any]) -> list[Any]:
    """One result of :func:`search_json` (as the local API gives it too) as a row."""
    # The partner's text as written, unmarked (table() escapes it).
    return [r["recorded_at"], r["kind"], r["ref"], r["partner"]["name"] or r["partner"]["did"][:20],
            r["snippet"]["text"], r["cid"]]
