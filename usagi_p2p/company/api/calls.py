"""What every route of the local API is made of: the route, the call, JSON bodies.

A route is a :class:`Route` (usagi_p2p/company/api/routes.py collects them
in ``ROUTES``); its handler takes a :class:`Call` (the request, the node, the
token, the body already read within the route's limit) and returns a
response. :func:`parse_object` reads a JSON body and reports every broken
rule at once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ...node.node import Node
from .problems import FieldError, ValidationFailedError
from .tokens import Token

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
    errors = member_errors(data, fields)
    wrong = {e["field"] for e in errors}
    typed = {f.name: data[f.name] for f in fields if f.name in data and f.name not in wrong}
    if rules is not None:
        errors.extend(rules(typed))
    if errors:
        raise ValidationFailedError(errors)
    return data


def member_errors(data: dict[str, Any], fields: Sequence[Field]) -> list[FieldError]:
    """Every broken rule of a JSON object's members against ``fields`` (unknown
    members, wrong types, missing required members, strings too long); an
    integral float becomes its integer in ``data`` (1.0 is an integer to JSON
    Schema, openapi.json)."""
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
        if f.kind is int and isinstance(value, float) and value.is_integer():
            value = data[f.name] = int(value)
        # bool is an int in Python; JSON keeps them apart, and so do we.
        if not isinstance(value, f.kind) or (f.kind is int and isinstance(value, bool)):
            errors.append({"field": f.name, "code": "wrong_type",
                           "message": f"must be {_KIND_NAMES.get(f.kind, f.kind.__name__)}"})
        elif isinstance(value, str) and len(value) > f.max_length:
            errors.append({"field": f.name, "code": "too_long",
                           "message": f"at most {f.max_length} characters"})
    return errors


def version() -> str:
    try:
        return metadata.version("usagi-p2p")
    except metadata.PackageNotFoundError:
        return "unknown"
