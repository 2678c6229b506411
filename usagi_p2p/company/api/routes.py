"""The local API's routes: one table says each route's scope, body limit and handler.

A route is a :class:`Route` in :data:`ROUTES`; its handler takes a :class:`Call`
(the request, the node, the token, the body already read within the route's
limit) and returns a response. The middleware (usagi_p2p/company/api/app.py)
does everything else the same way for every route: the loopback guard, the
token, the scope, the body limit, and errors as problem details. Each route
is also an operation of ``openapi.json`` (its ``operationId`` is
:attr:`Route.operation`, its ``x-usagi-scope`` the scope); tests/api/test_openapi.py
checks the two agree. docs/api.md, "Adding a route", says how to add one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from kernel.errors import UsagiError
from kernel.plugin import Finding

from ...node import operations
from ...node.invitation import name_problem
from ...node.ledger import Partner
from ...node.node import Node
from .problems import FieldError, ValidationFailedError
from .tokens import Token
from .transfer import receive_file, scratch, send_file

__all__ = ["Route", "Call", "Endpoints", "Field", "ROUTES", "OPENAPI_PATH", "parse_object",
           "version", "body_limit"]

OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
#: Bodies of JSON routes that take a few fields: far more than they need.
SMALL: Final = 16 << 10


@dataclass
class Endpoints:
    """Where this node listens; filled in as its listeners start."""

    peer: str | None = None
    local: str | None = None
    local_socket: str | None = None


@dataclass(frozen=True)
class Call:
    """One request to a route, admitted by the middleware."""

    request: web.Request
    node: Node
    #: None on a route that needs no token.
    token: Token | None
    #: The whole body, at most the route's :attr:`Route.body` bytes.
    body: bytes
    endpoints: Endpoints


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    #: An aiohttp path pattern, ``{name}`` for a variable part (as in OpenAPI).
    path: str
    #: The OpenAPI ``operationId``.
    operation: str
    #: The lowest token scope that may call it (tokens.SCOPES); None: no token needed.
    scope: str | None
    #: The largest body accepted, in bytes; 0: none (any body is 413 ``too_large``).
    #: For a ``stream`` route: the default of the config's ``local_upload_max``.
    body: int
    handler: Handler
    #: The handler reads the body itself (an upload, into a file): the middleware
    #: only refuses a declared length over :func:`body_limit`, and passes no body.
    stream: bool = False


def body_limit(route: Route, node: Node) -> int:
    """The largest body ``route`` takes on ``node``: an upload's is the config's."""
    return node.config.local_upload_max if route.stream else route.body


@dataclass(frozen=True)
class Field:
    """One member of a JSON object body."""

    name: str
    kind: type
    required: bool = False
    #: For a string: its largest length in characters.
    max_length: int = field(default=1000)


_KIND_NAMES: Final = {str: "string", bool: "boolean", int: "integer", list: "array",
                      dict: "object"}


def parse_object(call: Call, fields: Sequence[Field],
                 rules: Callable[[dict[str, Any]], list[FieldError]] | None = None
                 ) -> dict[str, Any]:
    """The body as a JSON object of ``fields``; every broken rule is reported at once.

    An empty body is the empty object. Unknown members, wrong types and
    missing required members are each one entry of ``validation_failed``;
    ``rules``, given the members of the right type, adds the route's own
    (a range, members that go together), reported with the others.
    """
    if not call.body:
        data: Any = {}
    else:
        if call.request.content_type != "application/json":
            raise ValidationFailedError([{"field": "", "code": "content_type",
                                          "message": "send the body as application/json"}])
        try:
            data = json.loads(call.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValidationFailedError([{"field": "", "code": "malformed",
                                          "message": f"not JSON: {exc}"}]) from None
    if not isinstance(data, dict):
        raise ValidationFailedError([{"field": "", "code": "wrong_type",
                                      "message": "the body must be a JSON object"}])
    errors: list[FieldError] = []
    typed: dict[str, Any] = {}
    known = {f.name: f for f in fields}
    for name in sorted(set(data) - set(known)):
        errors.append({"field": name[:100], "code": "unknown_field",
                       "message": "not a field of this route"})
    for f in fields:
        if f.name not in data:
            if f.required:
                errors.append({"field": f.name, "code": "required", "message": "is required"})
            continue
        value = data[f.name]
        # bool is an int in Python; JSON keeps them apart, and so do we.
        if not isinstance(value, f.kind) or (f.kind is int and isinstance(value, bool)):
            errors.append({"field": f.name, "code": "wrong_type",
                           "message": f"must be {_KIND_NAMES.get(f.kind, f.kind.__name__)}"})
        elif isinstance(value, str) and len(value) > f.max_length:
            errors.append({"field": f.name, "code": "too_long",
                           "message": f"at most {f.max_length} characters"})
        else:
            typed[f.name] = value
    if rules is not None:
        errors.extend(rules(typed))
    if errors:
        raise ValidationFailedError(errors)
    return data


def version() -> str:
    try:
        return metadata.version("usagi-p2p")
    except metadata.PackageNotFoundError:
        return "unknown"


async def status(call: Call) -> web.Response:
    node = call.node
    counts = await operations.outbox_counts(node)
    return web.json_response({
        "name": node.config.name,
        "did": node.did,
        "version": version(),
        "endpoints": {
            "peer": {"listen": call.endpoints.peer, "public": node.config.endpoint},
            "local": {"listen": call.endpoints.local, "socket": call.endpoints.local_socket},
        },
        "outbox": counts,
    })


async def key(call: Call) -> web.Response:
    node = call.node
    return web.json_response({"did": node.did, "public_key": node.identity.public_key.hex(),
                              "retired": [i.did for i in node.retired]})


_RETRY_FIELDS: Final = (Field("partner", str, max_length=500),
                        Field("requeue_undelivered", bool))


async def outbox_retry(call: Call) -> web.Response:
    """Deliver now: wake the delivery loop; by default first queue the given-up documents again."""
    data = parse_object(call, _RETRY_FIELDS)
    node = call.node
    requeued = 0
    if data.get("requeue_undelivered", True):
        requeued = await operations.requeue_undelivered(node, data.get("partner"))
    node.wake.set()
    pending = (await operations.outbox_counts(node))["pending"]
    return web.json_response({"requeued": requeued, "pending": pending})


async def openapi(call: Call) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


# -- partners, plugins, users, archive (issue 16) --------------------------------
#
# Partners are resources named by DID or name (``{partner}``: as everywhere, a
# DID, a name, or a unique name prefix). Changing one follows GitHub's REST
# style: PATCH for its own fields (the name), a sub-resource for a state
# (``PUT …/suspended`` suspends, ``DELETE …/suspended`` resumes, as GitHub's
# suspended users), DELETE for removal (the record stays, status
# ``removed``, docs/spec.md 10), PUT/DELETE ``…/quota`` for its own quota.

#: Days an invitation may be valid at most through the API.
MAX_INVITATION_DAYS: Final = 365
#: Lines one extract preview takes at most.
MAX_PREVIEW_LINES: Final = 1000
CAR_TYPE: Final = "application/vnd.ipld.car"
#: The default of the config's ``local_upload_max`` (home.Config).
UPLOAD_MAX: Final = 1 << 30


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _partner_json(p: Partner) -> dict[str, Any]:
    return {"did": p.did, "name": p.name, "endpoint": p.endpoint, "status": p.status,
            "added_at": _time(p.added_at), "rotated_to": p.rotated_to,
            "valid_until": _time(p.valid_until)}


def _usage_json(q: operations.QuotaUsage) -> dict[str, Any]:
    return {"partner": q.partner, "did": q.did, "docs": q.docs, "docs_quota": q.docs_quota,
            "bytes": q.bytes, "bytes_quota": q.bytes_quota, "own": q.own,
            "resets_at": _time(q.resets_at)}


def _finding_json(f: Finding) -> dict[str, str]:
    return f.to_json()


async def _named(call: Call) -> Partner:
    """The partner of the path's ``{partner}``; 404 ``not_found`` when none."""
    return await operations.partner(call.node, call.request.match_info["partner"])


async def list_partners(call: Call) -> web.Response:
    partners = await operations.partners(call.node)
    return web.json_response({"partners": [_partner_json(p) for p in partners]})


async def get_partner(call: Call) -> web.Response:
    return web.json_response(_partner_json(await _named(call)))


def _days(data: dict[str, Any]) -> list[FieldError]:
    days = data.get("valid_for", 7)
    if not 1 <= days <= MAX_INVITATION_DAYS:
        return [{"field": "valid_for", "code": "invalid",
                 "message": f"a whole number of days, 1..{MAX_INVITATION_DAYS}"}]
    return []


async def create_invitation(call: Call) -> web.Response:
    data = parse_object(call, (Field("valid_for", int),), _days)
    invitation = await operations.invite(call.node, timedelta(days=data.get("valid_for", 7)))
    return web.json_response(
        {"invitation": invitation.text(), "name": invitation.name, "did": invitation.did,
         "endpoint": invitation.endpoint,
         "expires": invitation.expires.astimezone(UTC).isoformat().replace("+00:00", "Z")},
        status=201)


async def add_partner(call: Call) -> web.Response:
    data = parse_object(call, (Field("invitation", str, required=True, max_length=8000),
                               Field("introduce", bool)))
    added = await operations.add_partner(call.node, data["invitation"],
                                         introduce=data.get("introduce", True))
    return web.json_response(_partner_json(added), status=201)


def _name_rule(data: dict[str, Any]) -> list[FieldError]:
    if "name" not in data:
        return []
    try:
        name_problem(data["name"], ValueError)
    except ValueError as exc:
        return [{"field": "name", "code": "invalid", "message": str(exc)}]
    return []


async def update_partner(call: Call) -> web.Response:
    data = parse_object(call, (Field("name", str, required=True, max_length=200),), _name_rule)
    partner = await _named(call)
    change = await operations.rename_partner(call.node, partner.did, data["name"])
    return web.json_response(_partner_json(change.after))


async def _set_status(call: Call, status: operations.PartnerStatus) -> web.Response:
    partner = await _named(call)
    change = await operations.set_partner_status(call.node, partner.did, status)
    return web.json_response(_partner_json(change.after))


async def suspend_partner(call: Call) -> web.Response:
    return await _set_status(call, "suspended")


async def resume_partner(call: Call) -> web.Response:
    return await _set_status(call, "active")


async def remove_partner(call: Call) -> web.Response:
    return await _set_status(call, "removed")


async def partner_usage(call: Call) -> web.Response:
    partner = await _named(call)
    return web.json_response(_usage_json(await operations.quota(call.node, partner.did)))


def _quota_rule(data: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = [
        {"field": key, "code": "invalid", "message": "a whole number >= 0"}
        for key in ("docs", "bytes") if key in data and data[key] < 0]
    return errors


async def set_partner_quota(call: Call) -> web.Response:
    data = parse_object(call, (Field("docs", int), Field("bytes", int)), _quota_rule)
    if not data:
        raise ValidationFailedError([{"field": "", "code": "required",
                                      "message": "give docs, bytes or both"}])
    partner = await _named(call)
    usage = await operations.set_quota(call.node, partner.did, docs=data.get("docs"),
                                       size=data.get("bytes"))
    return web.json_response(_usage_json(usage))


async def drop_partner_quota(call: Call) -> web.Response:
    partner = await _named(call)
    return web.json_response(_usage_json(
        await operations.set_quota(call.node, partner.did, default=True)))


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
                   "findings": [_finding_json(f) for f in line.findings]}
                  for line in preview.lines],
        "findings": [_finding_json(f) for f in preview.findings],
        "plugins": list(preview.plugins)})


async def list_users(call: Call) -> web.Response:
    users = await operations.user_list(call.node)
    return web.json_response({"users": [
        {"name": u.name, "did": u.did, "plugins": None if u.plugins is None else list(u.plugins),
         "role": u.role} for u in users]})


def _query(call: Call, names: Sequence[str]) -> dict[str, str]:
    """The query's parameters, each at most once and each one of ``names``."""
    query = call.request.query
    errors: list[FieldError] = []
    for key in sorted(set(query)):
        if key not in names:
            errors.append({"field": key[:100], "code": "unknown_field",
                           "message": "not a parameter of this route"})
        elif len(query.getall(key)) > 1:
            errors.append({"field": key, "code": "invalid", "message": "given more than once"})
    if errors:
        raise ValidationFailedError(errors)
    return dict(query)


def _moment(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def export_archive(call: Call) -> web.StreamResponse:
    """The history (or one partner's, or a window) as a sealed CAR, streamed."""
    from ...archive.archive import export_archive as export

    query = _query(call, ("partner", "since", "until"))
    window: dict[str, float | None] = {}
    errors: list[FieldError] = []
    for key in ("since", "until"):
        window[key] = _moment(query[key]) if key in query else None
        if key in query and window[key] is None:
            errors.append({"field": key, "code": "invalid",
                           "message": "an ISO 8601 date or date-time (UTC when naive)"})
    if errors:
        raise ValidationFailedError(errors)
    did = (await operations.partner(call.node, query["partner"])).did \
        if "partner" in query else None
    with scratch(call.node.home.path, ".car") as path:
        report = await export(call.node, path, partner=did, since=window["since"],
                              until=window["until"])
        stamp = call.node.now().strftime("%Y%m%d")
        return await send_file(call.request, path, content_type=CAR_TYPE,
                               filename=f"usagi-{stamp}.car",
                               headers={"Usagi-Archive-Root": str(report.root),
                                        "Usagi-Archive-Documents": str(report.documents)})


async def verify_archive(call: Call) -> web.Response:
    """Verify an uploaded CAR with this node's keys; the report, sound or not."""
    from ...archive.archive import verify_archive as verify

    node = call.node
    keys = [node.identity, *node.retired]
    with scratch(node.home.path, ".car") as path:
        size = await receive_file(call.request, path, body_limit(_VERIFY, node))
        if size == 0:
            raise ValidationFailedError([{"field": "", "code": "required",
                                          "message": f"send the archive as {CAR_TYPE}"}])
        try:
            # One process: a running node does not fork its verification.
            report = await asyncio.to_thread(verify, path, keys, workers=1)
        except UsagiError as exc:
            cid = getattr(exc, "cid", None)
            return web.json_response({"ok": False, "bytes": size, "error": {
                "code": exc.code, "message": str(exc),
                "cid": None if cid is None else str(cid)}})
    return web.json_response({
        "ok": not report.quarantined, "bytes": size,
        "root": None if report.root is None else str(report.root), "keyed": report.keyed,
        "by": report.by, "created_at": report.created_at, "filter": report.filter,
        "blocks": report.blocks, "pages": report.pages, "documents": report.documents,
        "acks": report.acks, "threads": report.threads,
        "partial_threads": report.partial_threads,
        "quarantined": [{"cid": str(q.cid), "code": q.code, "reason": q.reason}
                        for q in report.quarantined],
        "error": None})


_VERIFY: Final = Route("POST", "/api/v1/archive/verify", "verifyArchive", "read", UPLOAD_MAX,
                       verify_archive, stream=True)


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/openapi.json", "getOpenAPI", None, 0, openapi),
    Route("GET", "/api/v1/status", "getStatus", "read", 0, status),
    Route("GET", "/api/v1/key", "getKey", "read", 0, key),
    Route("POST", "/api/v1/outbox/retry", "retryOutbox", "send", SMALL, outbox_retry),
    # partners, plugins, users, archive (issue 16)
    Route("GET", "/api/v1/partners", "listPartners", "read", 0, list_partners),
    Route("POST", "/api/v1/partners", "addPartner", "admin", SMALL, add_partner),
    Route("GET", "/api/v1/partners/{partner}", "getPartner", "read", 0, get_partner),
    Route("PATCH", "/api/v1/partners/{partner}", "updatePartner", "admin", SMALL,
          update_partner),
    Route("DELETE", "/api/v1/partners/{partner}", "removePartner", "admin", 0, remove_partner),
    Route("PUT", "/api/v1/partners/{partner}/suspended", "suspendPartner", "admin", 0,
          suspend_partner),
    Route("DELETE", "/api/v1/partners/{partner}/suspended", "resumePartner", "admin", 0,
          resume_partner),
    Route("GET", "/api/v1/partners/{partner}/usage", "getPartnerUsage", "read", 0,
          partner_usage),
    Route("PUT", "/api/v1/partners/{partner}/quota", "setPartnerQuota", "admin", SMALL,
          set_partner_quota),
    Route("DELETE", "/api/v1/partners/{partner}/quota", "dropPartnerQuota", "admin", 0,
          drop_partner_quota),
    Route("POST", "/api/v1/invitations", "createInvitation", "admin", SMALL, create_invitation),
    Route("GET", "/api/v1/plugins", "listPlugins", "read", 0, list_plugins),
    Route("POST", "/api/v1/plugins/extract", "extractPreview", "read", 256 << 10,
          extract_preview),
    Route("GET", "/api/v1/users", "listUsers", "admin", 0, list_users),
    Route("GET", "/api/v1/archive", "exportArchive", "admin", 0, export_archive),
    _VERIFY,
)
