"""Routes for full-text search: ``GET /api/v1/search`` (docs/api.md, "Search")."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from ...node import operations
from ..views import search_json
from .calls import Call
from .problems import FieldError, ValidationFailedError

#: The query parameters of ``GET /api/v1/search`` and their longest lengths.
_SEARCH_PARAMETERS: Final = {"q": 500, "partner": 500, "kind": 100, "direction": 3,
                             "limit": 3, "cursor": 100}


async def search(call: Call) -> web.Response:
    """Full-text search (``operations.search_documents``): every broken rule of the
    query string in one ``validation_failed``; a query the search cannot use is
    ``invalid_query``."""
    query = call.request.query
    errors: list[FieldError] = []
    for name in sorted(set(query) - set(_SEARCH_PARAMETERS)):
        errors.append({"field": name[:100], "code": "unknown_field",
                       "message": "not a parameter of this route"})
    for name, longest in _SEARCH_PARAMETERS.items():
        values = query.getall(name, [])
        if len(values) > 1:
            errors.append({"field": name, "code": "repeated", "message": "give it once"})
        elif values and len(values[0]) > longest:
            errors.append({"field": name, "code": "too_long",
                           "message": f"at most {longest} characters"})
    if "q" not in query:
        errors.append({"field": "q", "code": "required", "message": "is required"})
    direction = query.get("direction")
    if direction is not None and direction not in ("in", "out"):
        errors.append({"field": "direction", "code": "out_of_range",
                       "message": "must be in or out"})
    limit = query.get("limit", "20")
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= operations.MAX_LIMIT):
        errors.append({"field": "limit", "code": "out_of_range",
                       "message": f"must be an integer from 1 to {operations.MAX_LIMIT}"})
    if errors:
        raise ValidationFailedError(errors)
    page = await operations.search_documents(
        call.node, query["q"], partner=query.get("partner") or None,
        kind=query.get("kind") or None,
        direction="in" if direction == "in" else "out" if direction == "out" else None,
        limit=int(limit), cursor=query.get("cursor") or None)
    return web.json_response(search_json(page))
