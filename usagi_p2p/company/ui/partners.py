"""The partners page: invite, paste an invitation, rename, suspend, resume, remove; quotas.

``/partners`` lists the partners (spec section 10) with what each stored
here in the current quota period against its quota (section 12); the forms
post to ``/partners/…`` and come back to the page with what was done
(a 303, so a reload repeats nothing). An invitation is shown once, on the
page that answers its form, with a copy button: it is a secret until the
partner uses it. Changing partners is the company's (the ``admin`` scope of
the local API): a user signed in as themselves sees the page read-only.

Every action is a node operation (``operations.invite``, ``add_partner``,
``rename_partner``, ``set_partner_status``, ``set_quota``, ``node_status`` for
the usage).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from kernel.errors import UsagiError

from ...node import operations
from ...node.errors import http_status
from ...node.ledger import Partner
from ...node.quota import parse_size
from .admin import company_only, form_of, is_company, problem_text, size_text
from .base import gettext_for, node_of, render, see_other, visitor
from .i18n import N_

__all__ = ["ROUTES", "DONE", "STATES"]

#: What the page says after a form was handled (``?done=…&who=DID``).
DONE: Final = {
    "added": N_("%(name)s is now a partner: it accepted this node's introduction."),
    "renamed": N_("The partner is now called %(name)s."),
    "suspended": N_("%(name)s is suspended: nothing is exchanged with it until it is resumed."),
    "active": N_("%(name)s is active again."),
    "removed": N_("%(name)s is removed: its notices and block requests are refused."),
    "quota": N_("The quota of %(name)s is saved; it applies at once."),
    "quota_default": N_("%(name)s is back on the node's default quota."),
}
#: What each state of a partner is called on the page.
STATES: Final = {"active": N_("Active"), "suspended": N_("Suspended"),
                 "removed": N_("Removed")}
#: How long an invitation may be valid, in days.
MAX_DAYS: Final = 30
#: The states the company sets with a button, and the words on it.
ACTIONS: Final = {"suspend": "suspended", "resume": "active", "remove": "removed"}


def _usage_row(usage: operations.QuotaUsage | None, language: str) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"bytes_text": size_text(usage.bytes, language),
            "bytes_quota_text": size_text(usage.bytes_quota, language),
            "bytes_quota_input": _exact_size(usage.bytes_quota),
            "docs": usage.docs, "docs_quota": usage.docs_quota, "bytes": usage.bytes,
            "bytes_quota": usage.bytes_quota, "own": usage.own,
            "docs_share": _share(usage.docs, usage.docs_quota),
            "bytes_share": _share(usage.bytes, usage.bytes_quota),
            "resets_at": datetime.fromtimestamp(usage.resets_at, UTC)}


def _exact_size(size: int) -> str:
    """A size the quota form shows and reads back unchanged (``1GiB``, ``500MiB``, bytes)."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _share(used: int, quota: int) -> int:
    return 100 if quota <= 0 else min(100, round(100 * used / quota))


async def _page(request: web.Request, *, status: int = 200,
                **extra: Any) -> web.Response:
    node = node_of(request)
    listed = [p for p in await operations.partners(node) if p.status != "rotated"]
    usage = {u.did: u for u in (await operations.node_status(node)).quotas}
    language = visitor(request).language
    rows = [{"partner": p, "usage": _usage_row(usage.get(p.did), language),
             "added": datetime.fromtimestamp(p.added_at, UTC)}
            for p in sorted(listed, key=lambda p: (p.status != "active", p.name.casefold()))]
    done = None
    code = request.query.get("done")
    if code in DONE:
        who = next((p for p in listed if p.did == request.query.get("who")), None)
        if who is not None:
            done = gettext_for(request)(DONE[code]) % {"name": who.name}
    context = {"rows": rows, "done": done, "company_session": is_company(request),
               "max_days": MAX_DAYS, "invitation": None, "invitation_expires": None,
               "errors": {}, "pasted": "", "partner_states": STATES, **extra}
    return render(request, "partners.html", context, status=status)


async def partners_page(request: web.Request) -> web.StreamResponse:
    return await _page(request)


async def create_invitation(request: web.Request) -> web.StreamResponse:
    """A new invitation, shown on the page that answers (never stored in a URL)."""
    company_only(request)
    form = await form_of(request)
    try:
        days = int(form.get("days") or 7)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        message = gettext_for(request)("An invitation is valid for 1 to %(n)s days.") % {
            "n": MAX_DAYS}
        return await _page(request, status=422, errors={"days": message})
    invitation = await operations.invite(node_of(request), timedelta(days=days))
    return await _page(request, invitation=invitation.text(),
                       invitation_expires=invitation.expires)


async def add_partner(request: web.Request) -> web.StreamResponse:
    """Add the partner a pasted invitation names (this node introduces itself to it)."""
    company_only(request)
    form = await form_of(request)
    text = (form.get("invitation") or "").strip()
    if not text:
        message = gettext_for(request)("Paste the invitation your partner sent you.")
        return await _page(request, status=422, errors={"invitation": message})
    try:
        added = await operations.add_partner(node_of(request), text)
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code) if exc.code else 400,
                           errors={"invitation": problem_text(exc)},
                           pasted=text[:10_000])
    raise see_other(f"/partners?done=added&who={added.did}")


async def _partner(request: web.Request) -> Partner:
    return await operations.partner(node_of(request), request.match_info["did"])


async def rename(request: web.Request) -> web.StreamResponse:
    company_only(request)
    form = await form_of(request)
    found = await _partner(request)
    try:
        change = await operations.rename_partner(node_of(request), found.did,
                                                 (form.get("name") or "").strip())
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={f"name:{found.did}": problem_text(exc)})
    raise see_other(f"/partners?done=renamed&who={change.after.did}")


async def set_status(request: web.Request) -> web.StreamResponse:
    company_only(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    found = await _partner(request)
    status = ACTIONS[action]
    await operations.set_partner_status(node_of(request), found.did, status)  # type: ignore[arg-type]
    raise see_other(f"/partners?done={status}&who={found.did}")


async def set_quota(request: web.Request) -> web.StreamResponse:
    """Set what a partner may store here per period, or drop its own quota
    (``usagi partner quota``); the running node applies it at once."""
    company_only(request)
    form = await form_of(request)
    found = await _partner(request)
    _ = gettext_for(request)
    key = f"quota:{found.did}"
    default = bool(form.get("default"))
    docs: int | None = None
    size: int | None = None
    if not default:
        try:
            docs = int(form["docs"]) if form.get("docs", "").strip() else None
            if docs is not None and docs < 0:
                raise ValueError(docs)
        except ValueError:
            return await _page(request, status=422, errors={
                key: _("Documents per day: a whole number, 0 or more.")})
        try:
            size = parse_size(form["bytes"]) if form.get("bytes", "").strip() else None
        except ValueError:
            return await _page(request, status=422, errors={
                key: _("Bytes per day: a size such as 500MiB, 2GiB or 300000.")})
    try:
        await operations.set_quota(node_of(request), found.did, docs=docs, size=size,
                                   default=default)
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={key: problem_text(exc)})
    raise see_other(f"/partners?done={'quota_default' if default else 'quota'}&who={found.did}")


ROUTES: Final = [
    ("GET", "/partners", partners_page),
    ("POST", "/partners/invite", create_invitation),
    ("POST", "/partners/add", add_partner),
    ("POST", "/partners/{did}/rename", rename),
    ("POST", "/partners/{did}/quota", set_quota),
    ("POST", "/partners/{did}/{action}", set_status),
]
