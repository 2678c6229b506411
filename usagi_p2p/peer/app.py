"""The peer HTTP API of a node (docs/spec.md §11; limits §13).

    POST /usagi/v1/notices     DAG-CBOR {"notices": [Signed<Notice>]} -> {"acks": [Signed<Ack>]}
    POST /usagi/v1/introduce   a signed introduction answering one of our invitations
    POST /usagi/v1/rotate      a partner's key rotation statement (kernel/rotation.py)
    GET  /ipfs/{cid}           trustless gateway, only for a partner who is a party (RFC 9421)

The company's own API is not here: it has a listener of its own
(usagi_p2p/company/api/), and this one never serves its routes.

Errors are JSON ``{"error": code, "message": text}`` with the status from
``usagi_p2p.node.errors`` (one table), for every refusal: an unknown path or
method too, and anything that fails unexpectedly (a typed 500, logged once a
minute at most).

Every endpoint has a body cap and an in-flight limit (:class:`~.listener.Limits`),
and every source address a limit on its requests in progress. In this order,
before anything is buffered: a declared body over the cap is 413; no room
for the address or the endpoint is 503 with ``Retry-After``; then the body
is read, bounded by the cap (413, also for chunked bodies) and by the body
deadline (408). Only then does a notice batch wait for one of the work slots:
a slow body holds a reading slot of its own address, never a slot of the
work honest partners are waiting for. The connection-level limits (header
deadline, connections per address) are in usagi_p2p/peer/listener.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from ipfs.gateway import GatewayDenied, GatewayHandler
from kernel.cid import CID
from kernel.errors import MalformedError, UsagiError

from ..node.errors import (
    BodyTooLargeError,
    InternalError,
    OverloadedError,
    RequestTimeoutError,
    http_status,
)
from ..node.httpsig import ReplayGuard, verify_request
from ..node.node import CONTENT_TYPE, INTRODUCE_PATH, MAX_BODY, NOTICES_PATH, ROTATE_PATH, Node
from .listener import Admission, Endpoint, Limits, ThrottledLog, address_key, typed_http_error

__all__ = ["make_app", "error_response", "MAX_INFLIGHT", "Limits", "Intake"]

log = logging.getLogger("usagi.peer")

#: Notice batches worked on at once (after their bodies are read).
MAX_INFLIGHT: Final = Limits.work
NODE_KEY: Final = web.AppKey("node", Node)
#: The gateway's replay guard (signed requests already accepted in the window).
REPLAY_KEY: Final = web.AppKey("replay", ReplayGuard)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BodyHandler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


def error_response(exc: UsagiError, *, retry_after: int | None = None) -> web.Response:
    # An error that knows when to come back (quota_exceeded) says so itself.
    retry_after = retry_after or getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": exc.code, "message": str(exc)},
                             status=http_status(exc.code), headers=headers)


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


class Intake:
    """Body caps, in-flight limits and per-address limits for the routes of one app."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.addresses = Admission(limits.requests_per_address)
        self.budget = Admission(limits.body_budget)
        self.throttled = ThrottledLog(log)

    def bounded(self, endpoint: Endpoint, handler: BodyHandler) -> Handler:
        """``handler`` called with the body once every limit of ``endpoint`` has admitted it."""
        inflight = Admission(endpoint.inflight)

        async def admitted(request: web.Request) -> web.StreamResponse:
            declared = request.content_length
            if (declared or 0) > endpoint.body or (
                    endpoint.body == 0 and declared is None and request.body_exists):
                return error_response(BodyTooLargeError(
                    f"{request.method} {request.path} takes at most {endpoint.body} bytes"))
            key = address_key(request.remote)
            if not self.addresses.enter(key):
                self.throttled("address", logging.WARNING,
                               "shedding requests from %s: %d in progress already", key,
                               self.limits.requests_per_address)
                return error_response(OverloadedError(f"too many requests from {key}"),
                                      retry_after=1)
            try:
                if not inflight.enter(""):
                    return error_response(OverloadedError(), retry_after=1)
                body = b""
                try:
                    if endpoint.body:
                        try:
                            body = await read_body(request, endpoint.body,
                                                   self.limits.body_timeout, self.budget)
                        except UsagiError as exc:
                            log.debug("refused %s %s from %s: %s", request.method,
                                      request.path, request.remote, exc)
                            return error_response(
                                exc, retry_after=1 if isinstance(exc, OverloadedError) else None)
                    return await handler(request, body)
                finally:
                    self.budget.give(len(body))
                    inflight.leave("")
            finally:
                self.addresses.leave(key)

        return admitted

    def route(self, method: str, path: str, endpoint: Endpoint, handler: BodyHandler
              ) -> web.RouteDef:
        """A route under ``endpoint``'s limits, also for ``Expect: 100-continue``."""

        async def expect(request: web.Request) -> web.StreamResponse | None:
            # aiohttp's default would say "100 Continue" to any size and answer
            # an unknown expectation in plain text: refuse before inviting a body.
            if request.headers.get("Expect", "").lower() != "100-continue":
                return error_response(MalformedError("the only Expect understood is "
                                                     "100-continue"))
            if (request.content_length or 0) > endpoint.body:
                return error_response(BodyTooLargeError(
                    f"{request.method} {request.path} takes at most {endpoint.body} bytes"))
            if request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # the 100 is no part of the answer
            return None

        return web.route(method, path, self.bounded(endpoint, handler), expect_handler=expect)


def _typed(intake: Intake) -> Middleware:
    """Middleware: every answer is typed JSON, whatever the router or a handler raised."""

    @web.middleware
    async def typed(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return typed_http_error(exc, request.method, request.path)
        except Exception as exc:  # noqa: BLE001 (the safety net: nothing escapes untyped)
            intake.throttled("internal", logging.ERROR, "%s %s failed: %r", request.method,
                             request.path, exc, exc_info=exc)
            return error_response(InternalError("the node failed to answer; see its log"))

    return typed


#: The app's limits and what they currently count (for inspection).
INTAKE_KEY: Final = web.AppKey("intake", Intake)


def make_app(node: Node, *, max_inflight: int = MAX_INFLIGHT,
             limits: Limits | None = None) -> web.Application:
    limits = limits or Limits(work=max_inflight)
    intake = Intake(limits)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_typed(intake)])
    app[INTAKE_KEY] = intake
    app[NODE_KEY] = node
    work = asyncio.Semaphore(limits.work)

    async def notices(request: web.Request, body: bytes) -> web.Response:
        # The body is read: only now is a work slot taken (waiting for one is
        # bounded by the endpoint's in-flight limit, and costs no reading).
        async with work:
            try:
                acks = await node.receive(body)
            except UsagiError as exc:
                log.info("refused a batch from %s: %s", request.remote, exc)
                return error_response(exc)
        from kernel import dagcbor

        return web.Response(body=dagcbor.encode({"acks": acks}), content_type=CONTENT_TYPE)

    async def introduce(request: web.Request, body: bytes) -> web.Response:
        try:
            partner = await node.accept_introduction(body)
        except UsagiError as exc:
            return error_response(exc)
        log.info("new partner %s (%s)", partner.name, partner.did)
        return web.json_response({"ok": True, "did": node.did, "name": node.config.name})

    async def rotate(request: web.Request, body: bytes) -> web.Response:
        try:
            partner = await node.accept_rotation(body)
        except UsagiError as exc:
            return error_response(exc)
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
        return await gateway.handle(request)

    async def root(request: web.Request, body: bytes) -> web.Response:
        return web.Response(text=json.dumps({"service": "usagi-p2p", "api": "v1"}),
                            content_type="application/json")

    app.add_routes([
        intake.route("POST", NOTICES_PATH, limits.notices, notices),
        intake.route("POST", INTRODUCE_PATH, limits.introduce, introduce),
        intake.route("POST", ROTATE_PATH, limits.rotate, rotate),
        intake.route("GET", "/", limits.other, root),
        intake.route("GET", "/ipfs/{cid}", limits.gateway, blocks),  # and HEAD
    ])
    return app
