"""The settings page: plugins (enable, disable, configure) and users (add, plugin subset, remove).

What ``usagi plugins …`` and ``usagi user …`` do, through the same
operations (``operations.plugin_list``, ``enable_plugin``, ``disable_plugin``,
``configure_plugin``, ``user_list``, ``add_user``, ``move_user``,
``remove_user``; docs/plugins.md). Changes are written to the home's config
and, as on the command line, take effect when ``usagi serve`` starts next (the
page shows the config as saved, and marks what differs from what runs); a
change refused by its rules (a plugin that does not start with the new
settings, a user that exists) saves nothing and is said beside its form.

Only the company changes settings (usagi_p2p/company/ui/admin.py); it can
also give a user a one-time sign-in link (what ``usagi ui --user NAME``
prints), shown once on the page that answers. A user signed in as themselves
sees the page read-only, with their own plugin subset.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from kernel.errors import UsagiError

from ...node import operations
from ...node.errors import http_status
from .admin import company_only, form_lists, form_of, is_company, problem_text
from .base import gettext_for, node_of, render, see_other, visitor
from .i18n import N_
from .sessions import issue_signin, signin_url

__all__ = ["ROUTES", "DONE", "PLUGIN_STATES"]

#: What the page says after a form was handled (``?done=…&name=…``).
DONE: Final = {
    "enabled": N_("Plugin %(name)s enabled. Restart 'usagi serve' for it to take effect."),
    "disabled": N_("Plugin %(name)s disabled. Restart 'usagi serve' for it to take effect."),
    "configured": N_("Settings of %(name)s saved. Restart 'usagi serve' for them to take "
                     "effect."),
    "user_added": N_("User %(name)s added."),
    "user_moved": N_("User %(name)s now works with the plugins chosen."),
    "user_removed": N_("User %(name)s removed; their key file is kept, renamed."),
}
#: The form of a user's name (usagi_p2p/node/users.py checks it on adding).
_USER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
PLUGIN_STATES: Final = {"enabled": N_("Enabled"), "available": N_("Available"),
                        "broken": N_("Broken")}


async def _page(request: web.Request, *, status: int = 200, **extra: Any) -> web.Response:
    node = node_of(request)
    # The config as saved (what the next start runs), beside what runs now.
    plugins = await operations.plugin_list(operations.offline(node.home))
    running = {p.name: p.state for p in await operations.plugin_list(node)}
    pending = {p.name for p in plugins if running.get(p.name, "available") != p.state}
    settings = {}
    for plugin in plugins:
        current = await operations.configure_plugin(node, plugin.name)
        settings[plugin.name] = json.dumps(current.settings, ensure_ascii=False, indent=2) \
            if current.settings else ""
    users = await operations.user_list(node)
    done = None
    code = request.query.get("done")
    if code in DONE:
        name = request.query.get("name", "")[:200]
        known = {p.name for p in plugins} | {u.name for u in users}
        # A removed user is no longer known; a name of the users' form is said as given.
        if name in known or (code == "user_removed" and _USER_NAME.fullmatch(name)):
            done = gettext_for(request)(DONE[code]) % {"name": name}
    enabled = [p.name for p in plugins if p.state == "enabled"]
    me = visitor(request).user
    context = {"plugins": plugins, "settings": settings, "pending": pending, "users": users, "done": done,
               "enabled": enabled, "company_session": is_company(request),
               "me": next((u for u in users if u.name == me), None),
               "plugin_states": PLUGIN_STATES, "errors": {}, "link": None, "link_user": None,
               "draft": {}, **extra}
    return render(request, "settings.html", context, status=status)


async def settings_page(request: web.Request) -> web.StreamResponse:
    return await _page(request)


async def plugin_action(request: web.Request) -> web.StreamResponse:
    """Enable or disable a plugin (``/settings/plugins/{name}/enable|disable``)."""
    company_only(request)
    name, action = request.match_info["name"], request.match_info["action"]
    if action not in ("enable", "disable"):
        raise web.HTTPNotFound()
    node = node_of(request)
    try:
        if action == "enable":
            await operations.enable_plugin(node, name)
        else:
            await operations.disable_plugin(node, name)
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={f"plugin:{name}": problem_text(exc)})
    raise _done(f"{action}d", name)


async def configure(request: web.Request) -> web.StreamResponse:
    """Replace a plugin's settings with the JSON object given (empty: its defaults)."""
    company_only(request)
    name = request.match_info["name"]
    form = await form_of(request)
    text = (form.get("settings") or "").strip()
    _ = gettext_for(request)
    try:
        values = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        message = _("Not valid JSON: %(why)s") % {"why": exc.msg}
        return await _page(request, status=422, errors={f"settings:{name}": message},
                           draft={name: text})
    if not isinstance(values, dict) or not all(isinstance(k, str) and k.isidentifier()
                                               for k in values):
        message = _('Settings are a JSON object of names and values, e.g. '
                    '{"required_roles": ["pharmacist"]}')
        return await _page(request, status=422, errors={f"settings:{name}": message},
                           draft={name: text})
    try:
        await operations.configure_plugin(node_of(request), name, values=values, clear=True)
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={f"settings:{name}": problem_text(exc)}, draft={name: text})
    raise _done("configured", name)


def _done(code: str, name: str) -> web.HTTPSeeOther:
    return see_other("/settings?" + urlencode({"done": code, "name": name}))


def _subset(lists: dict[str, list[str]]) -> list[str] | None:
    """The plugins checked, or None for "every enabled plugin"."""
    if lists.get("all_plugins"):
        return None
    return [p for p in lists.get("plugins", []) if p]


async def add_user(request: web.Request) -> web.StreamResponse:
    company_only(request)
    lists = await form_lists(request)
    form = {k: v[0] for k, v in lists.items()}
    name = (form.get("name") or "").strip()
    _ = gettext_for(request)
    passphrase = form.get("passphrase") or ""
    unprotected = bool(form.get("no_passphrase"))
    errors: dict[str, str] = {}
    if not passphrase and not unprotected:
        errors["passphrase"] = _("Give a passphrase for the user's key, or choose to store "
                                 "it without one.")
    elif passphrase != (form.get("passphrase2") or ""):
        errors["passphrase"] = _("The two passphrases differ.")
    if not errors:
        try:
            await operations.add_user(node_of(request), name,
                                      None if unprotected else passphrase,
                                      plugins=_subset(lists),
                                      role=(form.get("role") or "").strip() or None)
        except UsagiError as exc:
            errors["name"] = problem_text(exc)
            status = http_status(exc.code)
        else:
            raise _done("user_added", name)
    else:
        status = 422
    return await _page(request, status=status, errors=errors,
                       draft={"user": name, "role": form.get("role") or ""})


async def move_user(request: web.Request) -> web.StreamResponse:
    company_only(request)
    name = request.match_info["name"]
    lists = await form_lists(request)
    try:
        await operations.move_user(node_of(request), name, _subset(lists))
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={f"user:{name}": problem_text(exc)})
    raise _done("user_moved", name)


async def remove_user(request: web.Request) -> web.StreamResponse:
    company_only(request)
    name = request.match_info["name"]
    try:
        await operations.remove_user(node_of(request), name)
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={f"user:{name}": problem_text(exc)})
    raise _done("user_removed", name)


async def signin_link(request: web.Request) -> web.StreamResponse:
    """A one-time sign-in link for a user (``usagi ui --user NAME``), shown once."""
    company_only(request)
    name = request.match_info["name"]
    node = node_of(request)
    try:
        code = issue_signin(node.home, name, clock=node.clock)
    except UsagiError as exc:
        return await _page(request, status=http_status(exc.code),
                           errors={f"user:{name}": problem_text(exc)})
    link = signin_url(f"{request.scheme}://{request.host}", code)
    return await _page(request, link=link, link_user=name)


ROUTES: Final = [
    ("GET", "/settings", settings_page),
    ("POST", "/settings/plugins/{name}/configure", configure),
    ("POST", "/settings/plugins/{name}/{action}", plugin_action),
    ("POST", "/settings/users", add_user),
    ("POST", "/settings/users/{name}/plugins", move_user),
    ("POST", "/settings/users/{name}/remove", remove_user),
    ("POST", "/settings/users/{name}/signin", signin_link),
]
