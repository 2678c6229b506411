"""One document as the business form it is, its verification at a glance, its thread.

``/documents/{cid}`` renders a quote, order, order response, delivery note
or invoice as people read one (見積書, 注文書, 注文請書, 納品書, 請求書): who to
whom at the top, reference and dates, the line table with quantities, unit
prices, amounts and the total, then notes, plugin fields and findings
(those of the signed-in user's plugins). Beside it: the checks of
``operations.verify_document`` as badges (green, or red with the reason),
a "verify again" button, the thread as a timeline, and the answers the
document invites ("Order this quote", "Accept / Counter / Reject", "Create
delivery note", "Create invoice"), each opening the compose form filled as
``usagi send --reply-to`` fills it (usagi_p2p/company/ui/compose.py).
The commercial side (taxes per rate, the parties on paper, figures that do
not add up, the thread's three-way match, "Download UBL") is worded from the
operations' typed values by usagi_p2p/company/ui/commerce.py.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from kernel.cid import CID
from kernel.errors import MalformedError, UsagiError

from ...formats import Parties, export_ubl
from ...node import operations
from ...node.errors import ExportIncompleteError
from .base import live_from, node_of, plugin_subset, render, see_other, state, visitor
from .commerce import PARTY_LABELS, UBL_KINDS, arithmetic, missing_fields, paper, thread_match
from .i18n import N_

__all__ = ["ROUTES", "CHECK_LABELS", "answers", "parse_cid"]

#: What each check of operations.verify_document is called on the page.
CHECK_LABELS: Final = {
    "ledger": N_("Recorded"),
    "block": N_("Block hash"),
    "envelope": N_("Envelope"),
    "signature": N_("Signature"),
    "parties": N_("Parties"),
    "digest": N_("Digest"),
    "thread": N_("Thread chain"),
    "ack": N_("Signed receipt (ack)"),
}
#: What an ack says, as its badge words it.
ACK_WORDS: Final = {"received": N_("received by the partner"),
                    "accepted": N_("accepted by the partner"),
                    "rejected": N_("rejected by the partner")}
#: An order response's answer as a person reads it.
RESPONSE_LABELS: Final = {"accept": N_("Accepted"), "counter": N_("Counter-offer"),
                          "reject": N_("Declined")}


#: The longest thread whose acks the timeline looks up one by one.
TIMELINE_ACKS: Final = 100


def parse_cid(text: str) -> CID:
    try:
        return CID.parse(text)
    except (UsagiError, ValueError):
        raise MalformedError(f"{text[:100]!r} is not a CID") from None


def answers(kind: str, direction: str, response: object) -> list[tuple[str, str, str | None]]:
    """The answers a document invites: (message, kind, response) for each button.

    They follow who speaks next: the buyer orders what was quoted to them (or
    counter-offered), the seller answers an order it received, then delivers
    and invoices what it accepted (from the order, or its own acceptance), and
    invoices what it delivered. Which body each starts from is the operations'
    rule (``operations.answer_body``, as ``usagi send --reply-to``).
    """
    found: list[tuple[str, str, str | None]] = []
    if direction == "in" and kind == "quote":
        found.append((N_("Order this quote"), "order", None))
    if direction == "in" and kind == "order_response" and response == "counter":
        found.append((N_("Order this counter-offer"), "order", None))
    if direction == "in" and kind == "order":
        found += [(N_("Accept"), "order_response", "accept"),
                  (N_("Counter"), "order_response", "counter"),
                  (N_("Reject"), "order_response", "reject")]
    accepted = direction == "out" and kind == "order_response" and response == "accept"
    if (direction == "in" and kind == "order") or accepted:
        found.append((N_("Create delivery note"), "delivery_note", None))
    if (direction == "in" and kind == "order") or accepted \
            or (direction == "out" and kind == "delivery_note"):
        found.append((N_("Create invoice"), "invoice", None))
    return found


def _sum(lines: list[Any]) -> str | None:
    """The sum of the lines' amounts, when every line has one (a form without a total)."""
    total = Decimal(0)
    for line in lines:
        if not isinstance(line, dict) or not isinstance(line.get("amount"), str):
            return None
        try:
            total += Decimal(line["amount"])
        except InvalidOperation:
            return None
    return str(total) if lines else None


def _visible(ext: object, subset: frozenset[str] | None) -> dict[str, Any]:
    """The plugin fields of ``ext`` the user's plugins show (all without a subset)."""
    if not isinstance(ext, dict):
        return {}
    return {ns: fields for ns, fields in ext.items()
            if isinstance(fields, dict) and (subset is None or ns in subset)}


async def _verification(request: web.Request, cid: CID) -> dict[str, Any]:
    checked = await operations.verify_document(node_of(request), cid)
    return {"ok": checked.ok, "ack_words": ACK_WORDS, "checks": [
        {"name": c.name, "label": CHECK_LABELS.get(c.name, c.name), "ok": c.ok,
         "detail": c.detail, "facts": dict(c.facts)} for c in checked.checks]}


async def _timeline(request: web.Request, cid: CID, partner: str) -> tuple[list[dict[str, Any]],
                                                                          str | None]:
    node = node_of(request)
    try:
        entries = await operations.thread_documents(node, cid)
    except UsagiError as exc:
        return [], f"[{exc.code}] {exc}"
    company = node.config.name
    items = []
    for index, entry in enumerate(entries):
        ack_at, response = None, None
        sender = company if entry.direction == "out" else partner
        if index < TIMELINE_ACKS:
            shown = await operations.show_document(node, entry.cid)
            response = shown.document.get("response")
            ack_at = shown.ack.at if shown.ack is not None and shown.ack.status != "rejected" \
                else None
            if entry.direction == "out" and shown.user:
                sender = f"{company} ({shown.user})"
        items.append({"cid": str(entry.cid), "kind": entry.kind, "ref": entry.ref,
                      "issued_at": entry.issued_at, "direction": entry.direction,
                      "status": entry.status, "sender": sender, "acked_at": ack_at,
                      "response": RESPONSE_LABELS.get(response) if isinstance(response, str)
                      else None, "current": entry.cid == cid})
    return items, None


async def show(request: web.Request) -> web.StreamResponse:
    cid = parse_cid(request.match_info["cid"])
    node = node_of(request)
    view = await operations.show_document(node, cid)
    who = visitor(request)
    if view.direction == "in":
        state(request).marks.opened(who.user, str(cid))
    doc = view.document
    subset = plugin_subset(request)
    partner = view.partner_name or view.partner
    company = node.config.name
    lines = [line for line in doc.get("lines") or [] if isinstance(line, dict)]
    timeline, broken = await _timeline(request, cid, partner)
    context = {
        "live_from": await live_from(request),
        "cid": str(cid), "view": view, "doc": doc,
        "sender": company if view.direction == "out" else partner,
        "receiver": partner if view.direction == "out" else company,
        "lines": [{**line, "fields": _visible(line.get("ext"), subset)} for line in lines],
        "line_sum": None if doc.get("total") else _sum(lines),
        "doc_fields": {ns: {k: v for k, v in fields.items() if k != "approvals"}
                       for ns, fields in _visible(doc.get("ext"), subset).items()},
        "approvals": [a for fields in _visible(doc.get("ext"), subset).values()
                      for a in (fields.get("approvals") or []) if isinstance(a, dict)],
        "findings": [f for f in view.findings if subset is None or f.plugin in subset],
        "verification": await _verification(request, cid),
        "digest": view.ack.digest.hex() if view.ack and view.ack.digest else None,
        "timeline": timeline, "thread_broken": broken,
        "paper": paper(doc),
        "arithmetic": arithmetic(view.arithmetic, doc),
        "match": await thread_match(request, cid, timeline),
        "ubl": doc.get("kind") in UBL_KINDS,
        "answers": [(label, "/compose?" + urlencode(
            {"reply_to": str(cid), "kind": kind, **({"response": r} if r else {})}))
            for label, kind, r in answers(str(doc.get("kind")), view.direction,
                                          doc.get("response"))],
        "response_labels": RESPONSE_LABELS,
        "just_sent": request.query.get("sent") == "1" and view.direction == "out",
    }
    return render(request, "document.html", context)


async def verify_again(request: web.Request) -> web.StreamResponse:
    cid = parse_cid(request.match_info["cid"])
    verification = await _verification(request, cid)
    if not request.headers.get("HX-Request"):
        raise see_other(f"/documents/{cid}")
    view = await operations.show_document(node_of(request), cid)
    return render(request, "verification.html", {
        "cid": str(cid), "verification": verification, "again": True,
        "digest": view.ack.digest.hex() if view.ack and view.ack.digest else None})


async def verification_part(request: web.Request) -> web.StreamResponse:
    """The badges alone (refreshed live when the partner's ack arrives)."""
    cid = parse_cid(request.match_info["cid"])
    view = await operations.show_document(node_of(request), cid)
    return render(request, "verification.html", {
        "cid": str(cid), "verification": await _verification(request, cid),
        "digest": view.ack.digest.hex() if view.ack and view.ack.digest else None})


async def thread_part(request: web.Request) -> web.StreamResponse:
    """The timeline alone (refreshed live as acks arrive)."""
    cid = parse_cid(request.match_info["cid"])
    view = await operations.show_document(node_of(request), cid)
    timeline, broken = await _timeline(request, cid, view.partner_name or view.partner)
    return render(request, "timeline.html", {"timeline": timeline, "thread_broken": broken,
                                             "cid": str(cid)})


async def ubl(request: web.Request) -> web.StreamResponse:
    """The document as UBL: the bytes ``GET /api/v1/documents/{cid}/ubl`` serves, or a
    page saying which party data is missing and where to set it (``usagi profile``)."""
    cid = parse_cid(request.match_info["cid"])
    node = node_of(request)
    source = await operations.export_source(node, cid)
    try:
        data = export_ubl(source.document, Parties(source.sender, source.receiver),
                          reference=source.reference, order_reference=source.order_reference)
    except ExportIncompleteError as exc:
        view = await operations.show_document(node, cid)
        return render(request, "export_incomplete.html", {
            "cid": str(cid), "doc": source.document, "message": str(exc),
            "partner": view.partner_name or view.partner, "party_fields": PARTY_LABELS,
            "missing": missing_fields(exc.missing, view.direction)}, status=422)
    return web.Response(body=data, content_type="application/xml", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{cid}.xml"',
                                 "Cache-Control": "private, no-cache"})


ROUTES: Final = [
    ("GET", "/documents/{cid}/ubl", ubl),
    ("GET", "/documents/{cid}", show),
    ("POST", "/documents/{cid}/verify", verify_again),
    ("GET", "/documents/{cid}/thread", thread_part),
    ("GET", "/documents/{cid}/verification", verification_part),
]
