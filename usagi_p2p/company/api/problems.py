"""The local API's errors, answered as RFC 9457 problem details (docs/api.md, "Errors").

Every refusal of the local API is ``application/problem+json``::

    {"type": "tag:usagi-p2p,2026:problem:forbidden_scope",
     "title": "The token's scope does not allow this route.",
     "status": 403, "detail": "POST /api/v1/outbox/retry needs scope send; the token has read",
     "code": "forbidden_scope"}

``code`` is the error code of docs/spec.md §14, the same the CLI prints and
the status comes from the one table (usagi_p2p/node/errors.py). ``type`` is a
tag URI (RFC 4151) naming that code: an identifier, not a page to fetch.
``title`` is the error class's first docstring line, the same for every
occurrence of the code; ``detail`` says what happened this time. A
``validation_failed`` problem lists every broken rule in ``errors``:
``[{"field": "partner", "code": "wrong_type", "message": "..."}]``.

Error tree (all :class:`~usagi_p2p.node.errors.NodeError`):

    UnauthorizedError       unauthorized       401  no token, or not a valid one
    ForbiddenScopeError     forbidden_scope    403  valid token, scope too low
    NotLoopbackError        not_loopback       403  not from this machine, or a foreign Host
    ValidationFailedError   validation_failed  422  the body breaks the route's rules
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final, TypedDict

from aiohttp import web

from kernel.errors import UsagiError

from ...node.errors import InternalError, NodeError, UnknownCodeError, http_status

__all__ = ["UnauthorizedError", "ForbiddenScopeError", "NotLoopbackError",
           "ValidationFailedError", "FieldError", "CONTENT_TYPE", "problem_type", "problem",
           "problem_response"]

CONTENT_TYPE: Final = "application/problem+json"

log = logging.getLogger("usagi.api")


class FieldError(TypedDict):
    """One broken rule of a request body."""

    field: str
    code: str
    message: str


class UnauthorizedError(NodeError):
    """A valid bearer token is needed."""

    code = "unauthorized"

    def __init__(self, message: str | None = None, *, invalid: bool = False) -> None:
        super().__init__(message)
        #: A token was given but is not one (RFC 6750 ``error="invalid_token"``).
        self.invalid = invalid


class ForbiddenScopeError(NodeError):
    """The token's scope does not allow this route."""

    code = "forbidden_scope"


class NotLoopbackError(NodeError):
    """The local API answers only this machine, under its own host name."""

    code = "not_loopback"


class ValidationFailedError(NodeError):
    """The request breaks the route's rules; each broken rule is listed."""

    code = "validation_failed"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors)
                         or "the request is not valid")
        self.errors = errors


def problem_type(code: str) -> str:
    return f"tag:usagi-p2p,2026:problem:{code}"


def _title(exc: UsagiError) -> str:
    doc = (type(exc).__doc__ or "").strip().splitlines()
    return doc[0] if doc else exc.code


def problem(exc: UsagiError) -> dict[str, Any]:
    """The problem details object of ``exc``.

    A code with no row in the table is a bug, not the caller's doing: the
    answer is ``500 internal_error`` and the code goes to the log
    (docs/spec.md §14), as on the peer listener.
    """
    try:
        http_status(exc.code)
    except UnknownCodeError:
        log.error("error code %r has no row in the error table (usagi_p2p/node/errors.py); "
                  "answered internal_error: %s", exc.code, exc)
        exc = InternalError("the node failed to answer; see its log")
    body: dict[str, Any] = {"type": problem_type(exc.code), "title": _title(exc),
                            "status": http_status(exc.code), "detail": str(exc),
                            "code": exc.code}
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list):
        body["errors"] = errors
    return body


def problem_response(exc: UsagiError) -> web.Response:
    """``exc`` as an ``application/problem+json`` answer with its status and headers."""
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, UnauthorizedError):
        # RFC 6750 section 3: the scheme, and why, for a client that sent a token.
        headers["WWW-Authenticate"] = ('Bearer realm="usagi", error="invalid_token"'
                                       if exc.invalid else 'Bearer realm="usagi"')
    body = problem(exc)
    return web.Response(text=json.dumps(body, ensure_ascii=False), status=body["status"],
                        content_type=CONTENT_TYPE, charset="utf-8", headers=headers)
