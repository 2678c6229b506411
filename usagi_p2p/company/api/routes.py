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

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ...node import operations
from ...node.node import Node
from .events import stream_events
from .problems import FieldError, ValidationFailedError
from .tokens import Token

__all__ = ["Route", "Call", "Endpoints", "Field", "ROUTES", "OPENAPI_PATH", "parse_object",
           "version"]

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
    body: int
    handler: Handler


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


def parse_object(call: Call, fields: Sequence[Field]) -> dict[str, Any]:
    """The body as a JSON object of ``fields``; every broken rule is reported at once.

    An empty body is the empty object. Unknown members, wrong types and
    missing required members are each one entry of ``validation_failed``.
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


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/openapi.json", "getOpenAPI", None, 0, openapi),
    Route("GET", "/api/v1/status", "getStatus", "read", 0, status),
    Route("GET", "/api/v1/key", "getKey", "read", 0, key),
    Route("POST", "/api/v1/outbox/retry", "retryOutbox", "send", SMALL, outbox_retry),
    # events (usagi_p2p/company/api/events.py)
    Route("GET", "/api/v1/events", "streamEvents", "read", 0, stream_events),
)
