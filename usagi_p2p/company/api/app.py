"""The local API's aiohttp application: one middleware in front of every route (docs/api.md).

For every request, in this order, before a handler runs:

1. **This machine only** (when bound to loopback, the default): the caller's
   address must be a loopback address (or the request came through the Unix
   socket), and the ``Host`` header must be ``localhost``, ``127.0.0.1`` or
   ``[::1]``, with the listener's own port if it names one. A web page the
   company's browser opened cannot reach the API through DNS rebinding
   (its requests carry the page's host name), nor can another machine.
   Refused: 403 ``not_loopback``, nothing done.
2. **The route**: an unknown path is 404 ``not_found``, a method the path
   does not answer 405 ``method_not_allowed``.
3. **The token** (``Authorization: Bearer usagi_…``) unless the route needs
   none: missing, unknown or revoked is 401 ``unauthorized``; a scope below
   the route's is 403 ``forbidden_scope``.
4. **The body**: a declared length over the route's limit is 413
   ``too_large`` before anything is read; a chunked body as soon as it passes
   the limit; the whole body must arrive within 30 s (408).

Every refusal, and anything a handler raises, is a problem details answer
(usagi_p2p/company/api/problems.py); an unexpected failure is 500
``internal_error`` with nothing of it in the answer (it is logged). No CORS
headers are ever sent: a browser page from elsewhere cannot read an answer,
and cannot send the ``Authorization`` header at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from kernel.errors import MalformedError, UsagiError

from ...node.errors import (
    BodyTooLargeError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTimeoutError,
)
from ...node.node import Node
from .events import install as install_events
from .problems import (
    ForbiddenScopeError,
    NotLoopbackError,
    UnauthorizedError,
    problem_response,
)
from .routes import ROUTES, Call, Endpoints, Route, body_limit
from .sending import install as install_sending
from .tokens import PREFIX, Token, TokenStore, scope_allows

__all__ = ["make_app", "Guard", "ENDPOINTS_KEY", "TOKENS_KEY", "LOCAL_NAMES", "BODY_TIMEOUT"]

log = logging.getLogger("usagi.api")

#: Host names a request to a loopback listener may carry (lower case).
LOCAL_NAMES: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
#: Seconds the whole body has, from the end of the headers.
BODY_TIMEOUT: Final = 30.0
ENDPOINTS_KEY: Final = web.AppKey("endpoints", Endpoints)
TOKENS_KEY: Final = web.AppKey("tokens", TokenStore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """Who may talk to the listener at all: this machine, under a local host name.

    ``loopback``: the listener is bound to a loopback address (or a Unix
    socket). ``port``: the TCP port it listens on, once known.
    """

    def __init__(self, loopback: bool, port: int | None = None) -> None:
        self.loopback = loopback
        self.port = port

    def check(self, request: web.Request) -> None:
        if not self.loopback:
            return  # bound elsewhere on purpose (docs/api.md): the tokens alone guard it
        remote = request.remote
        through_socket = not remote  # a Unix socket has no peer address
        if not through_socket and not _is_loopback(remote or ""):
            raise NotLoopbackError("the local API answers this machine only")
        host = request.headers.get("Host")
        if host is None:
            raise NotLoopbackError("a request must name its Host")
        name, port = _split_host(host.lower())
        if name not in LOCAL_NAMES:
            raise NotLoopbackError(f"Host {host[:100]!r} is not this machine; use "
                                   "localhost or 127.0.0.1")
        if port is not None and not through_socket and self.port is not None and port != self.port:
            raise NotLoopbackError(f"Host {host[:100]!r} names another port")


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _split_host(host: str) -> tuple[str, int | None]:
    """``host[:port]`` as (name, port); a port that is not a number names no listener."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            return host, None
        port = rest[1:] if rest else None
    elif ":" in host:
        name, port = host.rsplit(":", 1)
    else:
        name, port = host, None
    if port is None:
        return name, None
    if not port.isdigit() or not port.isascii() or len(port) > 5:
        return "", None
    return name, int(port)


def _bearer(request: web.Request, tokens: TokenStore) -> Token:
    header = request.headers.get("Authorization")
    if header is None:
        raise UnauthorizedError("send Authorization: Bearer <token> ('usagi token create')")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'", invalid=True)
    token = tokens.check(secret) if secret.startswith(PREFIX) else None
    if token is None:
        raise UnauthorizedError("not a token of this node, or revoked", invalid=True)
    return token


async def _read_body(request: web.Request, route: Route, limit: int) -> bytes:
    declared = request.content_length
    if (declared or 0) > limit or (limit == 0 and declared is None and request.body_exists):
        raise BodyTooLargeError(f"{route.method} {route.path} takes at most {limit} bytes")
    if route.stream:
        return b""  # the handler reads it, within the same limit
    if route.body == 0 or not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > route.body:
                    raise BodyTooLargeError(f"{route.method} {route.path} takes at most "
                                            f"{route.body} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
    except (OSError, asyncio.IncompleteReadError, aiohttp.ClientPayloadError,
            HttpProcessingError):
        raise MalformedError("the body was cut off or badly framed") from None
    return b"".join(chunks)


def _http_error(exc: web.HTTPException, request: web.Request) -> UsagiError:
    if exc.status == 404:
        return NotFoundError(f"no {request.path[:200]!r} in the local API (see /api/v1/openapi.json)")
    if exc.status == 405:
        return MethodNotAllowedError(f"{request.method[:20]!r} is not allowed on "
                                     f"{request.path[:200]!r}")
    if exc.status == 413:
        return BodyTooLargeError("body too large")
    return MalformedError(f"refused: {exc.status} {exc.reason}")


def _middleware(node: Node, tokens: TokenStore, endpoints: Endpoints, guard: Guard,
                routes: dict[AbstractRoute, Route]) -> Middleware:
    @web.middleware
    async def local_api(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            guard.check(request)
            route = routes.get(request.match_info.route)
            if route is None:  # aiohttp's own answer: no such path, or not this method
                return await handler(request)
            token = None
            if route.scope is not None:
                token = _bearer(request, tokens)
                if not scope_allows(token.scope, route.scope):
                    raise ForbiddenScopeError(f"{route.method} {route.path} needs scope "
                                              f"{route.scope}; the token has {token.scope}")
                tokens.note_use(token)
            body = await _read_body(request, route, body_limit(route, node))
            return await route.handler(Call(request, node, token, body, endpoints))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            answer = problem_response(_http_error(exc, request))
            if isinstance(exc, web.HTTPMethodNotAllowed):  # RFC 9110 section 15.5.6
                answer.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            return answer
        except UsagiError as exc:
            if exc.code == "internal_error":
                log.error("%s %s failed: %s", request.method, request.path, exc)
            return problem_response(exc)
        except Exception as exc:  # noqa: BLE001 (the safety net: nothing escapes untyped)
            log.error("%s %s failed: %r", request.method, request.path, exc, exc_info=exc)
            return problem_response(InternalError("the node failed to answer; see its log"))

    return local_api


async def _never(request: web.Request) -> web.StreamResponse:
    # Every table route is answered by the middleware, which calls the route's
    # handler with its Call; reaching this means the middleware is missing.
    raise InternalError("the local API's middleware did not run")


def _expect(route: Route, node: Node
            ) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    async def expect(request: web.Request) -> web.StreamResponse | None:
        # Runs before the middleware: no "100 Continue" for a body we would refuse.
        if request.headers.get("Expect", "").lower() != "100-continue":
            return problem_response(MalformedError("the only Expect understood is 100-continue"))
        limit = body_limit(route, node)
        if (request.content_length or 0) > limit:
            return problem_response(BodyTooLargeError(
                f"{route.method} {route.path} takes at most {limit} bytes"))
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    return expect


def make_app(node: Node, tokens: TokenStore, *, endpoints: Endpoints | None = None,
             guard: Guard | None = None, table: tuple[Route, ...] = ROUTES) -> web.Application:
    """The local API for ``node``, checking tokens against ``tokens``."""
    endpoints = endpoints or Endpoints()
    guard = guard or Guard(loopback=True)
    routes: dict[AbstractRoute, Route] = {}
    app = web.Application(middlewares=[_middleware(node, tokens, endpoints, guard, routes)])
    app[ENDPOINTS_KEY] = endpoints
    app[TOKENS_KEY] = tokens
    install_events(app)
    install_sending(app, node)
    for route in table:
        added = app.router.add_route(route.method, route.path, _never,
                                     expect_handler=_expect(route, node))
        routes[added] = route
    return app
