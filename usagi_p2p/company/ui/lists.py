"""The inbox and the outbox: newest first, filters, full-text search, live rows, unread marks.

``/inbox`` and ``/outbox`` list the documents received and sent
(``operations.page_documents``, a cursor per page); with ``q`` they search
(``operations.search_documents``: Japanese too, best match first). The
table body is also served alone (``/inbox/rows``) so that the page's script
can refresh it when the event stream says a document arrived or changed
(usagi_p2p/company/ui/static/usagi.js): new rows come without a reload,
marked unread until opened (usagi_p2p/company/ui/unread.py).
"""

from __future__ import annotations

from typing import Any, Final, Literal
from urllib.parse import urlencode

from aiohttp import web

from ...node import operations
from .base import KIND_LABELS, form_day, live_from, node_of, render, see_other, state, visitor

__all__ = ["ROUTES", "STATUSES", "PAGE"]

#: Documents per page.
PAGE: Final = 50
#: The states a document can be in, for the filter.
STATUSES: Final = ("queued", "delivered", "undelivered", "rejected", "received")
_FILTERS: Final = ("partner", "kind", "status", "since", "until", "q")


def _filters(request: web.Request) -> dict[str, str]:
    return {k: request.query[k][:500] for k in _FILTERS if request.query.get(k)}


async def _rows(request: web.Request, direction: Literal["in", "out"]
                ) -> tuple[list[dict[str, Any]], str | None, bool]:
    """The rows of a listing (or a search), the next page's cursor, and whether it searched."""
    node = node_of(request)
    chosen = _filters(request)
    partner = chosen.get("partner") or None
    kind = chosen.get("kind") or None
    cursor = request.query.get("cursor") or None
    marks = state(request).marks
    who = visitor(request).user
    marks.seen(who)
    rows: list[dict[str, Any]] = []
    if chosen.get("q"):
        found = await operations.search_documents(node, chosen["q"], partner=partner, kind=kind,
                                                  direction=direction, limit=PAGE, cursor=cursor)
        for hit in found.hits:
            text, parts, at = hit.snippet.text, [], 0
            for start, stop in hit.snippet.matches:
                parts += [(text[at:start], False), (text[start:stop], True)]
                at = stop
            parts.append((text[at:], False))
            rows.append({"cid": str(hit.cid), "kind": hit.kind, "ref": hit.ref,
                         "partner": hit.partner_name or hit.partner, "issued_at": hit.issued_at,
                         "status": hit.status, "snippet": parts,
                         "unread": direction == "in" and marks.unread(
                             who, str(hit.cid), hit.recorded_at.timestamp())})
        return rows, found.cursor, True
    page = await operations.page_documents(
        node, direction=direction, partner=partner, kind=kind,
        status=chosen.get("status") or None, since=form_day(chosen.get("since")),
        until=form_day(chosen.get("until"), end=True), cursor=cursor, limit=PAGE)
    for entry in page.entries:
        rows.append({"cid": str(entry.cid), "kind": entry.kind, "ref": entry.ref,
                     "partner": entry.partner_name or entry.partner,
                     "issued_at": entry.issued_at, "status": entry.status, "snippet": None,
                     "unread": direction == "in" and marks.unread(who, str(entry.cid),
                                                                  entry.recorded_at)})
    return rows, page.next, False


def _listing(direction: Literal["in", "out"]) -> Any:
    async def listing(request: web.Request) -> web.StreamResponse:
        rows, cursor, searched = await _rows(request, direction)
        chosen = _filters(request)
        base = "/inbox" if direction == "in" else "/outbox"
        partners = await operations.partners(node_of(request))
        kinds = sorted(set(KIND_LABELS) | {e for e in [chosen.get("kind")] if e})
        context = {
            "direction": direction, "rows": rows, "searched": searched, "chosen": chosen,
            "base": base,
            "next_url": f"{base}?{urlencode({**chosen, 'cursor': cursor})}" if cursor else None,
            "rows_url": f"{base}/rows?{urlencode(chosen)}",
            "partners": sorted({p.name for p in partners if p.status != "rotated"}),
            "kinds": kinds, "statuses": STATUSES,
            "first_page": not request.query.get("cursor"),
            "live_from": await live_from(request),
        }
        template = "rows.html" if request.path.endswith("/rows") else "list.html"
        return render(request, template, context)

    return listing


async def mark_all_read(request: web.Request) -> web.StreamResponse:
    state(request).marks.all_read(visitor(request).user)
    raise see_other("/inbox")


ROUTES: Final = [
    ("GET", "/inbox", _listing("in")),
    ("GET", "/inbox/rows", _listing("in")),
    ("GET", "/outbox", _listing("out")),
    ("GET", "/outbox/rows", _listing("out")),
    ("POST", "/inbox/read", mark_all_read),
]
