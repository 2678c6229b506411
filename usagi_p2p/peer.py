"""The peer HTTP API of a node (docs/spec.md, "Peer API").

    POST /usagi/v1/notices     DAG-CBOR {"notices": [Signed<Notice>]} -> {"acks": [Signed<Ack>]}
    POST /usagi/v1/introduce   a signed introduction answering one of our invitations
    POST /usagi/v1/rotate      a partner's key rotation statement (kernel/rotation.py)
    GET  /ipfs/{cid}           trustless gateway, only for a partner who is a party (RFC 9421)
    POST /local/v1/kick        loopback only, with the home's token: deliver now

Errors are JSON ``{"error": code, "message": text}`` with the status from
``usagi_p2p.errors`` (one table). Bodies are bounded before they are read;
too many requests at once are shed with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from ipfs.gateway import GatewayDenied, GatewayHandler
from kernel.cid import CID
from kernel.errors import UsagiError

from .errors import OverloadedError, http_status
from .httpsig import ReplayGuard, verify_request
from .node import CONTENT_TYPE, INTRODUCE_PATH, MAX_BODY, NOTICES_PATH, ROTATE_PATH, Node

__all__ = ["make_app", "error_response", "local_token", "MAX_INFLIGHT"]

log = logging.getLogger("usagi.peer")

MAX_INFLIGHT: Final = 8
NODE_KEY: Final = web.AppKey("node", Node)
TOKEN_KEY: Final = web.AppKey("token", str)
#: The gateway's replay guard (signed requests already accepted in the window).
REPLAY_KEY: Final = web.AppKey("replay", ReplayGuard)


def error_response(exc: UsagiError, *, retry_after: int | None = None) -> web.Response:
    # An error that knows when to come back (quota_exceeded) says so itself.
    retry_after = retry_after or getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": exc.code, "message": str(exc)},
                             status=http_status(exc.code), headers=headers)


def local_token(home_path: Path) -> str:
    """The secret a local CLI shows to ``/local/v1/kick``; created once, mode 0600."""
    path = home_path / "local.token"
    if not path.exists():
        token = secrets.token_urlsafe(24)
        path.touch(mode=0o600)
        path.write_text(token)
    return path.read_text().strip()


def make_app(node: Node, *, max_inflight: int = MAX_INFLIGHT) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[NODE_KEY] = node
    app[TOKEN_KEY] = local_token(node.home.path)
    inflight = asyncio.Semaphore(max_inflight)

    async def notices(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": "too_large",
                                      "message": f"body over {MAX_BODY} bytes"}, status=413)
        if inflight.locked():
            return error_response(OverloadedError(), retry_after=1)
        async with inflight:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return web.json_response({"error": "too_large",
                                          "message": f"body over {MAX_BODY} bytes"}, status=413)
            except (ConnectionResetError, asyncio.IncompleteReadError, aiohttp.ClientPayloadError):
                # A cut request is the peer's problem: no traceback for anyone to flood.
                log.info("request from %s cut off mid-body", request.remote)
                raise web.HTTPBadRequest() from None
            try:
                acks = await node.receive(body)
            except UsagiError as exc:
                log.info("refused a batch from %s: %s", request.remote, exc)
                return error_response(exc)
        from kernel import dagcbor

        return web.Response(body=dagcbor.encode({"acks": acks}), content_type=CONTENT_TYPE)

    async def introduce(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            partner = await node.accept_introduction(body)
        except UsagiError as exc:
            return error_response(exc)
        log.info("new partner %s (%s)", partner.name, partner.did)
        return web.json_response({"ok": True, "did": node.did, "name": node.config.name})

    async def rotate(request: web.Request) -> web.Response:
        body = await request.read()
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

    async def kick(request: web.Request) -> web.Response:
        if request.remote not in ("127.0.0.1", "::1"):
            raise web.HTTPNotFound()
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given, app[TOKEN_KEY]):
            raise web.HTTPForbidden()
        node.wake.set()
        return web.json_response({"ok": True})

    async def root(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"service": "usagi-p2p", "api": "v1"}),
                            content_type="application/json")

    gateway = GatewayHandler(node.store, authorize=authorize, conceal=True)
    app.add_routes([
        web.post(NOTICES_PATH, notices),
        web.post(INTRODUCE_PATH, introduce),
        web.post(ROTATE_PATH, rotate),
        web.post("/local/v1/kick", kick),
        web.get("/", root),
        *gateway.routes(),
    ])
    return app
