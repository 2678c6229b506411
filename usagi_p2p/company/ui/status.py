"""The status page: this node's health at a glance, and the documents not delivered, with a retry.

``/status`` shows what ``usagi status`` shows (``operations.node_status``:
identity, endpoint, store, partners, documents, outbox, whether the node
serves), the plugins that failed to start (``operations.plugin_list``) and
the key's rotations (``operations.key_info``), then the documents partners
never acknowledged (``operations.page_documents`` with ``status=undelivered``,
newest first, with the last reason). "Retry" queues them again
(``operations.requeue_undelivered``: all of them, or one partner's) and wakes
the delivery loop of this ``usagi serve``, as ``POST /api/v1/outbox/retry``
and ``usagi outbox retry`` do. Retrying is sending: a user may retry too.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from ...node import operations
from ...node.node import Node
from ..api.app import ENDPOINTS_KEY
from .admin import form_of, size_text
from .base import gettext_for, node_of, render, see_other, visitor

__all__ = ["ROUTES", "UNDELIVERED_PAGE"]

#: Undelivered documents shown on the page (the oldest are behind "more").
UNDELIVERED_PAGE: Final = 100


async def status_page(request: web.Request) -> web.StreamResponse:
    node = node_of(request)
    state = await operations.node_status(node)
    outbox = await operations.outbox_counts(node)
    plugins = await operations.plugin_list(node)
    key = await operations.key_info(node)
    cursor = request.query.get("cursor") or None
    undelivered = await operations.page_documents(node, direction="out", status="undelivered",
                                                  cursor=cursor, limit=UNDELIVERED_PAGE)
    by_partner: dict[str, tuple[str, int]] = {}
    for entry in undelivered.entries:
        name, count = by_partner.get(entry.partner, (entry.partner_name or entry.partner, 0))
        by_partner[entry.partner] = (name, count + 1)
    retried = None
    if request.query.get("done") == "retried":
        try:
            count = max(0, int(request.query.get("n", "0")))
        except ValueError:
            count = 0
        retried = gettext_for(request)(
            "%(n)s document(s) queued again; the node is delivering them now.") % {"n": count}
    # The UI answers from the process that serves: its peer listener is known to the
    # local listener (usagi serve passes it); serve.json says so for other processes.
    listening = request.app[ENDPOINTS_KEY].peer
    serving = bool(listening) or state.serving
    context = {
        "state": state, "outbox": outbox, "retried": retried, "serving": serving,
        "listening": listening,
        "broken": [p for p in plugins if p.state == "broken"],
        "enabled": [p.name for p in plugins if p.state == "enabled"],
        "key": key,
        "store_kind": "kubo" if node.config.kubo_url else "sqlite",
        "store_size": _store_size(node, visitor(request).language),
        "undelivered": undelivered.entries, "by_partner": by_partner,
        "next_url": f"/status?cursor={undelivered.next}" if undelivered.next else None,
        "healthy": serving and not outbox["undelivered"] and not any(
            p.state == "broken" for p in plugins),
    }
    return render(request, "status.html", context)


def _store_size(node: Node, language: str) -> str | None:
    """The size of the home's SQLite files (ledger, embedded block store, their WAL)."""
    total = 0
    for path in node.home.path.glob("*.db*"):
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return size_text(total, language) if total else None


async def retry(request: web.Request) -> web.StreamResponse:
    """Queue the undelivered documents (of one partner, or all) again and deliver now."""
    form = await form_of(request)
    node = node_of(request)
    count = await operations.requeue_undelivered(node, form.get("partner") or None)
    node.wake.set()  # this process runs the delivery loop (usagi serve)
    raise see_other(f"/status?done=retried&n={count}")


ROUTES: Final = [
    ("GET", "/status", status_page),
    ("POST", "/status/retry", retry),
]
