"""What every page of the web UI shares: who asks, in which language, and how a page is rendered.

A handler takes the aiohttp request and reads what the UI's middleware
(usagi_p2p/company/ui/app.py) put on it: the :class:`Visitor` (the session,
the language, the CSRF token). It calls node operations, never the ledger,
and renders a template with :func:`render`; everything a partner wrote is
escaped by Jinja2's autoescaping (nothing is ever marked safe).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from kernel.errors import UsagiError

from ...node import operations
from ...node.node import Node
from .i18n import N_, translations
from .sessions import Session, SessionStore
from .unread import ReadMarks

__all__ = ["form_day", "Visitor", "UIState", "VISITOR", "STATE", "NAV", "CSRFError", "SignInNeeded",
           "KIND_LABELS", "STATUS_LABELS", "render", "visitor", "state", "node_of", "see_other", "local_path",
           "plugin_subset", "gettext_for", "live_from"]


class CSRFError(UsagiError):
    """The form did not come from this node's own pages (no or a wrong CSRF token)."""

    code = "csrf_failed"


class SignInNeeded(Exception):
    """No live session: the person is sent to the sign-in page."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who asks: their session (None on the public pages), language and CSRF token."""

    session: Session | None
    language: str
    csrf: str

    @property
    def user(self) -> str | None:
        """The user signed in; None for the company itself (or nobody)."""
        return self.session.user if self.session else None


@dataclass(frozen=True, slots=True)
class UIState:
    """What the UI keeps for one app: the node and its sessions."""

    node: Node
    sessions: SessionStore
    #: What each person has opened (the inbox's unread marks).
    marks: ReadMarks


#: Where the middleware puts the :class:`Visitor` on a request (a typed key where
#: aiohttp has them, 3.14 on, which warns about plain strings).
VISITOR: Final[Any] = (web.RequestKey("usagi_ui_visitor", Visitor)
                       if hasattr(web, "RequestKey") else "usagi_ui.visitor")
STATE: Final = web.AppKey("usagi_ui", UIState)

#: The navigation, in order: (path, message). A page module adds its own entry here.
NAV: list[tuple[str, str]] = [
    ("/inbox", N_("Inbox")),
    ("/outbox", N_("Outbox")),
    ("/compose", N_("New document")),
    ("/partners", N_("Partners")),
    ("/archive", N_("Archive")),
    ("/status", N_("Status")),
    ("/settings", N_("Settings")),
]

#: The business form each kernel kind is (見積書, 注文書, ...).
KIND_LABELS: Final = {
    "quote": N_("Quote"),
    "order": N_("Purchase order"),
    "order_response": N_("Order response"),
    "delivery_note": N_("Delivery note"),
    "invoice": N_("Invoice"),
    "cancel": N_("Cancellation"),
    "message": N_("Message"),
}

#: What each state of a document is called on a page.
STATUS_LABELS: Final = {
    "queued": N_("Sending"),
    "delivered": N_("Delivered"),
    "undelivered": N_("Undelivered"),
    "rejected": N_("Rejected"),
    "received": N_("Received"),
    "accepted": N_("Accepted"),
}


def visitor(request: web.Request) -> Visitor:
    found = request[VISITOR]
    assert isinstance(found, Visitor)
    return found


def state(request: web.Request) -> UIState:
    return request.app[STATE]


def node_of(request: web.Request) -> Node:
    return request.app[STATE].node


def plugin_subset(request: web.Request) -> frozenset[str] | None:
    """The plugins the signed-in user works with; None: all the node's."""
    user = visitor(request).user
    if user is None:
        return None
    entry = node_of(request).home.load_config().users.get(user) or {}
    plugins = entry.get("plugins")
    return frozenset(plugins) if isinstance(plugins, list) else None


def local_path(target: str | None, default: str = "/inbox") -> str:
    """``target`` if it is a path on this site (no scheme, no host, no ``//``), else ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(c) < 0x20 for c in target) or len(target) > 2000:
        return default
    return target


def see_other(location: str) -> web.HTTPSeeOther:
    """A 303 to a page of this site (after a form was handled)."""
    return web.HTTPSeeOther(location=quote(local_path(location), safe="/?=&%:;,+-_.~"))


async def live_from(request: web.Request) -> int:
    """The last event seq now: a live page follows the event stream from there, so
    nothing that happens between rendering it and connecting is missed."""
    return (await operations.event_range(node_of(request)))[1]


def render(request: web.Request, template: str, context: Mapping[str, Any], *,
           status: int = 200) -> web.Response:
    """``template`` with ``context`` and what every page has (language, CSRF token, nav)."""
    who = visitor(request)
    node = node_of(request)
    full = {
        "lang": who.language,
        "user": who.user,
        "signed_in": who.session is not None,
        "csrf": who.csrf,
        "csrf_headers": json.dumps({"X-CSRF-Token": who.csrf}),
        "company": node.config.name,
        "nav": NAV,
        "path": request.path,
        "here": request.path_qs,
        "kind_labels": KIND_LABELS,
        "status_labels": STATUS_LABELS,
        **context,
    }
    response = aiohttp_jinja2.render_template(template, request, full, status=status)
    response.headers["Content-Language"] = who.language
    return response


def gettext_for(request: web.Request) -> Any:
    """The language's ``gettext`` for text built in Python (a flash message)."""
    return translations(visitor(request).language).gettext


def form_day(text: str | None, *, end: bool = False) -> datetime | None:
    """A ``YYYY-MM-DD`` of a date input as the start (or end) of that day, UTC."""
    if not text:
        return None
    try:
        moment = datetime.strptime(text[:10], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment + timedelta(days=1) if end else moment
