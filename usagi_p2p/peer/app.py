"""The peer HTTP API of a node (docs/spec.md §11; limits §13).

    POST /usagi/v1/notices     DAG-CBOR {"notices": [Signed<Notice>]} -> {"acks": [Signed<Ack>]}
    POST /usagi/v1/introduce   a signed introduction answering one of our invitations
    POST /usagi/v1/rotate      a partner's key rotation statement (kernel/_rotation.py)
    GET  /ipfs/{cid}           trustless gateway, only for a partner who is a party (RFC 9421)

The company's own API is not here: it has a listener of its own
(usagi_p2p/company/api/), and this one never serves its routes.

Every request to a route passes through one middleware (:meth:`Gate.middleware`),
in this order, before anything is buffered:

1. the endpoint table (:attr:`Gate.endpoints`, filled by :meth:`Gate.route`,
   the only way a route is added): a declared body over the endpoint's cap is
   413, before any byte is read;
2. admission: no room for the source address or the endpoint is 503 with
   ``Retry-After``;
3. the body, read bounded by the cap (413, also for chunked bodies), the body
   deadline (408) and the bytes budget of all bodies held (503). Only then
   does a notice batch wait for one of the work slots: a slow body holds a
   reading slot of its own address, never a slot of the work honest partners
   are waiting for;
4. the handler; and around all of it, the answer for every refusal: a
   UsagiError is JSON ``{"error": code, "message": text}`` with the status of
   the one table (``usagi_p2p.node.errors``, docs/spec.md §14); aiohttp's own
   refusals (no such path or method) likewise; anything else, and a code the
   table does not know (a bug), is a typed ``500 internal_error``, logged once
   a minute at most, its detail never sent to the peer.

The connection-level limits (header deadline, connections per address,
HTTP that does not parse) are in usagi_p2p/peer/listener.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ipfs.gateway import GatewayDenied, GatewayHandler
from kernel.cid import CID
from kernel.errors import CIDMismatchError, MalformedError, UsagiError

from ..node.errors import (
    BodyTooLargeError,
    InternalError,
    OverloadedError,
    RequestTimeoutError,
    UnknownCodeError,
    http_status,
)
from ..node.httpsig import ReplayGuard, verify_request
from ..node.node import CONTENT_TYPE, INTRODUCE_PATH, MAX_BODY, NOTICES_PATH, ROTATE_PATH, Node
from .listener import Admission, Endpoint, Limits, ThrottledLog, address_key, typed_http_error

__all__ = ["make_app", "error_response", "MAX_INFLIGHT", "Limits", "Gate"]

log = logging.getLogger("usagi.peer")

#: Notice batches worked on at once (after their bodies are read).
MAX_INFLIGHT: Final = Limits.work
NODE_KEY: Final = web.AppKey("node", Node)
#: The gateway's replay guard (signed requests already accepted in the window).
REPLAY_KEY: Final = web.AppKey("replay", ReplayGuard)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BodyHandler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


#: The body of the request being handled, read by the middleware before the
#: handler runs and set for that call only. (A context variable, as aiohttp's
#: typed request keys need aiohttp 3.14; requests on one connection run one
#: after the other, each in the context of its own call.)
_BODY: Final[ContextVar[bytes]] = ContextVar("usagi_peer_body")

#: Bugs found at the boundary (a code with no row), logged once a minute at most.
_bugs = ThrottledLog(log)


def error_response(exc: UsagiError, *, retry_after: int | None = None) -> web.Response:
    """``{"error": code, "message": text}`` with the table's status for ``exc``.

    A code with no row in the table is a bug, not the peer's doing: the answer
    is ``500 internal_error`` and the code goes to the log (docs/spec.md §14).
    """
    try:
        status = http_status(exc.code)
    except UnknownCodeError:
        _bugs("unknown code", logging.ERROR, "error code %r has no row in the error table "
              "(usagi_p2p/node/errors.py); answered internal_error: %s", exc.code, exc)
        exc, status = InternalError("the node failed to answer; see its log"), 500
    # An error that knows when to come back (overloaded, quota_exceeded) says so itself.
    retry_after = retry_after or getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": exc.code, "message": str(exc)}, status=status,
                             headers=headers)


async def read_body(request: web.Request, cap: int, timeout: float, budget: Admission) -> bytes:
    """The whole body, at most ``cap`` bytes, within ``timeout`` seconds; else a typed error.

    Every byte is charged to ``budget`` as it arrives (key ""); the caller gives
    ``len(body)`` back once done with it. On any error what was taken is given back.
    """
    chunks: list[bytes] = []
    size = 0
    done = False
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                if size + len(chunk) > cap:
                    raise BodyTooLargeError(f"body over {cap} bytes")
                if not budget.take(len(chunk)):
                    raise OverloadedError("too many request bodies held at once")
                size += len(chunk)
                chunks.append(chunk)
        done = True
    except TimeoutError:
        raise RequestTimeoutError(f"the body did not arrive within {timeout:g} s") from None
    except (OSError, asyncio.IncompleteReadError, aiohttp.ClientPayloadError,
            HttpProcessingError):
        # A cut or badly framed body is the peer's problem: no traceback to flood with.
        raise MalformedError("the body was cut off or badly framed") from None
    finally:
        if not done:  # refused, cut off or cancelled: its bytes are dropped
            budget.give(size)
    return b"".join(chunks)


class Gate:
    """The gate of the peer listener: its endpoint table, its limits, and the one
    middleware that applies them to every request (not to be confused with the
    node's intake, usagi_p2p/node/intake.py, which judges what gets through)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.addresses = Admission(limits.requests_per_address)
        self.budget = Admission(limits.body_budget)
        self.throttled = ThrottledLog(log)
        #: The endpoint table: a route's path -> its limits, and the requests it
        #: serves now. Every route is in it (:meth:`route` is how one is added);
        #: the methods of one path share the entry (GET and HEAD of the gateway).
        self.endpoints: dict[str, tuple[Endpoint, Admission]] = {}

    def route(self, method: str, path: str, endpoint: Endpoint, handler: BodyHandler
              ) -> web.RouteDef:
        """A route in the endpoint table, under ``endpoint``'s limits.

        ``handler`` gets the request and its body, read by :meth:`middleware`.
        """
        known = self.endpoints.setdefault(path, (endpoint, Admission(endpoint.inflight)))
        if known[0] != endpoint:
            raise ValueError(f"{path} is in the endpoint table with other limits")

        async def with_body(request: web.Request) -> web.StreamResponse:
            return await handler(request, _BODY.get())  # LookupError: no middleware ran

        return web.route(method, path, with_body, expect_handler=self.expect)

    def endpoint(self, request: web.Request) -> tuple[Endpoint, Admission] | None:
        """The table's entry for the route ``request`` matched; None for no route."""
        resource = request.match_info.route.resource
        return None if resource is None else self.endpoints.get(resource.canonical)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` (run by aiohttp before the middleware).

        aiohttp's default would say "100 Continue" to any size and answer an
        unknown expectation in plain text: refuse before inviting a body.
        """
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error_response(MalformedError("the only Expect understood is 100-continue"))
        entry = self.endpoint(request)
        cap = entry[0].body if entry is not None else 0
        if (request.content_length or 0) > cap:
            return error_response(BodyTooLargeError(
                f"{request.method} {request.path} takes at most {cap} bytes"))
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the 100 is no part of the answer
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request to this app: admitted, its body read, and every refusal typed."""
        try:
            return await self._admitted(request, handler)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return typed_http_error(exc, request.method, request.path)
        except UsagiError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 (the safety net: nothing escapes untyped)
            self.throttled("internal", logging.ERROR, "%s %s failed: %r", request.method,
                           request.path, exc, exc_info=exc)
            return error_response(InternalError("the node failed to answer; see its log"))

    async def _admitted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = self.endpoint(request)
        if entry is None:
            if request.match_info.http_exception is not None:
                return await handler(request)  # aiohttp's 404 / 405: nothing to admit
            raise LookupError(f"{request.method} {request.match_info.route.resource} is not "
                              "in the endpoint table: add routes with Gate.route")
        endpoint, inflight = entry
        declared = request.content_length
        if (declared or 0) > endpoint.body or (
                endpoint.body == 0 and declared is None and request.body_exists):
            raise BodyTooLargeError(
                f"{request.method} {request.path} takes at most {endpoint.body} bytes")
        key = address_key(request.remote)
        if not self.addresses.enter(key):
            self.throttled("address", logging.WARNING,
                           "shedding requests from %s: %d in progress already", key,
                           self.limits.requests_per_address)
            raise OverloadedError(f"too many requests from {key}")
        try:
            if not inflight.enter(""):
                raise OverloadedError()
            body = b""
            try:
                if endpoint.body:
                    try:
                        body = await read_body(request, endpoint.body, self.limits.body_timeout,
                                               self.budget)
                    except UsagiError as exc:
                        log.debug("refused %s %s from %s: %s", request.method, request.path,
                                  request.remote, exc)
                        raise
                token = _BODY.set(body)
                try:
                    return await handler(request)
                except UsagiError as exc:
                    log.info("refused %s %s from %s: %s", request.method, request.path,
                             request.remote, exc)
                    raise
                finally:
                    _BODY.reset(token)
            finally:
                self.budget.give(len(body))
                inflight.leave("")
        finally:
            self.addresses.leave(key)


#: The app's limits and what they currently count (for inspection).
GATE_KEY: Final = web.AppKey("gate", Gate)


def make_app(node: Node, *, max_inflight: int = MAX_INFLIGHT,
             limits: Limits | None = None) -> web.Application:
    limits = limits or Limits(work=max_inflight)
    gate = Gate(limits)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[gate.middleware])
    app[GATE_KEY] = gate
    app[NODE_KEY] = node
    work = asyncio.Semaphore(limits.work)

    async def notices(request: web.Request, body: bytes) -> web.Response:
        # The body is read: only now is a work slot taken (waiting for one is
        # bounded by the endpoint's in-flight limit, and costs no reading).
        async with work:
            acks = await node.receive(body)
        from kernel import dagcbor

        return web.Response(body=dagcbor.encode({"acks": acks}), content_type=CONTENT_TYPE)

    async def introduce(request: web.Request, body: bytes) -> web.Response:
        partner = await node.accept_introduction(body)
        log.info("new partner %s (%s)", partner.name, partner.did)
        return web.json_response({"ok": True, "did": node.did, "name": node.config.name})

    async def rotate(request: web.Request, body: bytes) -> web.Response:
        partner = await node.accept_rotation(body)
        return web.json_response({"ok": True, "partner": partner.name, "did": partner.did})

    replay = app[REPLAY_KEY] = ReplayGuard()

    async def authorize(request: web.Request, cid: CID) -> None:
        now = node.clock()
        try:
            requester = verify_request(request.headers, request.method, request.rel_url.raw_path,
                                       request.rel_url.raw_query_string, now=now)
        except UsagiError as exc:
            # Unsigned or badly signed: a stranger learns nothing, not even the reason.
            log.debug("gateway request refused: %s", exc)
            raise GatewayDenied(str(exc), status=404, conceal=True) from None
        if not await node.may_read(requester, cid):
            raise GatewayDenied("not a party to this block", status=404, conceal=True)
        # Recorded only now, so only a party to the block can fill the guard.
        try:
            replay.check_request(request.headers, now)
        except UsagiError as exc:
            log.warning("gateway request from %s refused: %s", requester, exc)
            raise GatewayDenied(str(exc), status=404, conceal=True) from None

    gateway = GatewayHandler(node.store, authorize=authorize, conceal=True)

    async def blocks(request: web.Request, body: bytes) -> web.StreamResponse:
        try:
            return await gateway.handle(request)
        except CIDMismatchError as exc:
            # Our own stored copy is damaged (the store hashes every block it
            # hands out): this node's failure, not a 422 for the peer's input.
            gate.throttled("damaged", logging.ERROR, "a stored block is damaged: %s", exc)
            raise InternalError("the node failed to answer; see its log") from exc

    async def root(request: web.Request, body: bytes) -> web.Response:
        return web.Response(text=json.dumps({"service": "usagi-p2p", "api": "v1"}),
                            content_type="application/json")

    app.add_routes([
        gate.route("POST", NOTICES_PATH, limits.notices, notices),
        gate.route("POST", INTRODUCE_PATH, limits.introduce, introduce),
        gate.route("POST", ROTATE_PATH, limits.rotate, rotate),
        gate.route("GET", "/", limits.other, root),
        gate.route("GET", "/ipfs/{cid}", limits.gateway, blocks),  # and HEAD
    ])
    return app
