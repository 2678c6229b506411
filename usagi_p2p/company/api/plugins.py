"""Routes for plugins and users: the list, the extract preview."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from ...node import operations
from .calls import Call, Field, parse_object
from .partners import finding_json
from .problems import FieldError

#: Lines one extract preview takes at most.
MAX_PREVIEW_LINES: Final = 1000


async def list_plugins(call: Call) -> web.Response:
    rows = await operations.plugin_list(call.node)
    return web.json_response({"plugins": [
        {"name": r.name, "version": r.version, "enabled": r.state == "enabled",
         "state": r.state, "kinds": list(r.kinds), "fields": list(r.line_fields),
         "reason": r.reason} for r in rows]})


async def extract_preview(call: Call) -> web.Response:
    """What the plugins make of lines of text; nothing is built, sent or stored."""
    enabled = {r.name for r in await operations.plugin_list(call.node) if r.state == "enabled"}
    users = {u.name for u in await operations.user_list(call.node)}

    def rules(data: dict[str, Any]) -> list[FieldError]:
        errors: list[FieldError] = []
        if ("text" in data) == ("lines" in data):
            errors.append({"field": "text", "code": "required",
                           "message": "give either text or lines"})
        lines = data.get("lines", [])
        if len(lines) > MAX_PREVIEW_LINES:
            errors.append({"field": "lines", "code": "too_long",
                           "message": f"at most {MAX_PREVIEW_LINES} lines"})
        for i, line in enumerate(lines[:MAX_PREVIEW_LINES]):
            if not isinstance(line, str):
                errors.append({"field": f"lines[{i}]", "code": "wrong_type",
                               "message": "must be string"})
            elif len(line) > 2000:
                errors.append({"field": f"lines[{i}]", "code": "too_long",
                               "message": "at most 2000 characters"})
        for i, name in enumerate(data.get("plugins", [])):
            if not isinstance(name, str) or name not in enabled:
                errors.append({"field": f"plugins[{i}]", "code": "unknown",
                               "message": "not a plugin enabled on this node (GET /api/v1/plugins)"})
        if "user" in data and data["user"] not in users:
            errors.append({"field": "user", "code": "unknown",
                           "message": "not a user of this node (GET /api/v1/users)"})
        return errors

    data = parse_object(call, (Field("text", str, max_length=2000), Field("lines", list),
                               Field("plugins", list), Field("user", str, max_length=40),
                               Field("kind", str, max_length=100)), rules)
    lines = [data["text"]] if "text" in data else list(data["lines"])
    preview = await operations.extract_preview(
        call.node, lines, kind=data.get("kind", "quote"), plugins=data.get("plugins"),
        user=data.get("user"))
    return web.json_response({
        "lines": [{"text": line.text, "fields": line.fields,
                   "findings": [finding_json(f) for f in line.findings]}
                  for line in preview.lines],
        "findings": [finding_json(f) for f in preview.findings],
        "plugins": list(preview.plugins)})


async def list_users(call: Call) -> web.Response:
    users = await operations.user_list(call.node)
    return web.json_response({"users": [
        {"name": u.name, "did": u.did, "plugins": None if u.plugins is None else list(u.plugins),
         "role": u.role} for u in users]})
