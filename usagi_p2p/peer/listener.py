"""The peer listener below the routes: connections, deadlines, broken HTTP (docs/spec.md §11, §13).

Anyone on the internet can open connections to the peer port. What such a
stranger can hold is bounded here, before any handler runs:

* **connections per source address** (:attr:`Limits.connections_per_address`):
  one more is answered ``503 overloaded`` and closed at once;
* **a header deadline** (:attr:`Limits.header_timeout`): the request line and
  headers must arrive within it, counted from the connection (or the end of
  the previous answer on a kept-alive connection); after it the connection is
  closed. aiohttp's server has no deadline of its own for this but starts its
  keep-alive timer when a connection is made and closes a connection whose
  handler is still waiting for a request when it fires: that timer, set to
  the header deadline, is the guard;
* **HTTP that does not parse** (bad request line, bad ``Content-Length``, bad
  chunking, headers too long) is a typed ``400 malformed`` JSON answer, logged
  once a minute at most and without a traceback (aiohttp would answer in
  text and log a traceback for each: a free log flood).

A source address is an IPv4 address, or the /64 an IPv6 address belongs to
(one host usually holds a whole /64). Behind a reverse proxy every
connection comes from the proxy: limit per client there.

The body caps, in-flight limits per endpoint and the body deadline are
applied, from the same :class:`Limits`, by the one middleware every route of
the app passes through (usagi_p2p/peer/app.py, :class:`~.app.Gate`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.web_request import BaseRequest

from kernel.errors import MalformedError, UsagiError

from ..node.errors import (
    BodyTooLargeError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    http_status,
)

__all__ = ["Endpoint", "Limits", "Admission", "ThrottledLog", "PeerSite", "address_key",
           "typed_http_error"]

log = logging.getLogger("usagi.peer")

#: The largest notice batch (usagi_p2p/node/node.py MAX_BODY, spec §13).
_MIB: Final = 1 << 20
#: Bytes read from a socket at once (and the request body buffer is twice this).
_RECV: Final = 16 << 10


@dataclass(frozen=True)
class Endpoint:
    """What one endpoint accepts: its largest body, and how many requests at once."""

    body: int
    inflight: int


@dataclass(frozen=True)
class Limits:
    """Everything the peer listener grants one caller, and all callers together.

    The defaults are the normative values of docs/spec.md §13; tests shorten
    the deadlines.
    """

    #: Request line and headers must arrive within this (seconds). Also the
    #: idle time of a kept-alive connection: longer than aiohttp clients keep an
    #: idle pooled connection (15 s), so a client never reuses one we just closed.
    header_timeout: float = 20.0
    #: The whole body must arrive within this, from the end of the headers.
    body_timeout: float = 30.0
    #: Open connections from one source address (an honest node opens at most 32).
    connections_per_address: int = 256
    #: Requests in progress (body being read, or being worked on) from one address.
    #: An honest node has at most 4 batches and 16 block fetches out at once.
    requests_per_address: int = 32
    #: Notice batches worked on at once, after their body is read (a batch whose
    #: body is read waits for one of these; it is never shed after reading).
    work: int = 8
    #: Bytes of request bodies held at once, all endpoints together: a body
    #: whose next bytes would go past it is shed (503) and its bytes dropped.
    #: Slow bodies hold what they have sent, not what they announce.
    body_budget: int = 64 * _MIB
    #: The in-flight limits bound the requests (tasks, sockets) an endpoint
    #: serves at once; memory is bounded by the budget, so strangers holding
    #: slow bodies from many addresses do not crowd honest partners out early.
    notices: Endpoint = Endpoint(body=_MIB, inflight=1024)
    #: An introduction or rotation encodes to at most 4 KiB (their own limit,
    #: spec §13; the largest legitimate introduction, 200 four-byte characters of
    #: name and a 500-character endpoint, is 1,603 bytes; a rotation 419): twice that.
    introduce: Endpoint = Endpoint(body=8 << 10, inflight=64)
    rotate: Endpoint = Endpoint(body=8 << 10, inflight=64)
    gateway: Endpoint = Endpoint(body=0, inflight=64)
    #: ``GET /``: no body.
    other: Endpoint = Endpoint(body=0, inflight=16)


def address_key(host: str | None) -> str:
    """The unit per-address limits count: an IPv4 address, or an IPv6 /64."""
    if not host:
        return "local"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class Admission:
    """A count per key with a limit: :meth:`enter` says whether there was room."""

    limit: int
    counts: Counter[str] = field(default_factory=Counter)

    def enter(self, key: str) -> bool:
        return self.take(1, key)

    def leave(self, key: str) -> None:
        self.give(1, key)

    def take(self, n: int, key: str = "") -> bool:
        """Like :meth:`enter`, for ``n`` units at once (bytes of a budget)."""
        if self.counts[key] + n > self.limit:
            return False
        self.counts[key] += n
        return True

    def give(self, n: int, key: str = "") -> None:
        self.counts[key] -= n
        if self.counts[key] <= 0:
            self.counts.pop(key, None)


class ThrottledLog:
    """Log a kind of event at most once per ``every`` seconds, with how many were skipped.

    Anyone can trigger these events; the log must not grow with the attack.
    """

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def __call__(self, kind: str, level: int, message: str, *args: Any,
                 exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._skipped[kind] += 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += f" ({skipped} more like it in the last minute, not logged)"
        self.logger.log(level, message, *args, exc_info=exc_info)


class _Forbidden(UsagiError):
    code = "forbidden"


def typed_http_error(exc: web.HTTPException, method: str, path: str) -> web.Response:
    """aiohttp's own refusal (no route, wrong method, ...) as our typed JSON answer."""
    error: UsagiError
    if exc.status == 404:
        error = NotFoundError(f"no {path[:200]!r} here")
    elif exc.status == 405:
        error = MethodNotAllowedError(f"{method[:20]!r} is not allowed here")
    elif exc.status == 403:
        error = _Forbidden("not allowed")
    elif exc.status == 413:
        error = BodyTooLargeError("body too large")
    elif exc.status == 408:
        error = RequestTimeoutError("the request did not arrive in time")
    elif exc.status == 503:
        error = OverloadedError()
    else:
        error = MalformedError(f"refused: {exc.status} {exc.reason}")
    response = web.json_response({"error": error.code, "message": str(error)},
                                 status=http_status(error.code))
    for name in ("Allow", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


def _json(status: int, code: str, message: str, headers: dict[str, str] | None = None
          ) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for use before any request."""
    body = json.dumps({"error": code, "message": message}).encode()
    head = [f"HTTP/1.1 {status} {'Service Unavailable' if status == 503 else 'Error'}",
            "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Guard:
    """State shared by every connection of one listener."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections = Admission(limits.connections_per_address)
        self.throttled = ThrottledLog(log)


class PeerHandler(web.RequestHandler):
    """aiohttp's per-connection protocol with the per-address limit and typed errors."""

    __slots__ = ("_guard", "_address")

    def __init__(self, manager: web.Server, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(getattr(transport, "max_size", None), int):
            # asyncio's selector transport reads up to 256 KiB per recv(), all of
            # it buffered for a body nobody reads yet: with hundreds of strangers'
            # bodies in flight that, not the bodies we read, is the memory.
            transport.max_size = _RECV  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        key = address_key(peer[0] if isinstance(peer, tuple) and peer else None)
        if not self._guard.connections.enter(key):
            # Answered before any request is read: a stranger gets no more than this.
            self._guard.throttled("connections", logging.WARNING,
                                  "refused connections from %s: %d open already", key,
                                  self._guard.limits.connections_per_address)
            assert isinstance(transport, asyncio.WriteTransport)
            error = OverloadedError(f"too many connections from {key}")
            transport.write(_json(503, error.code, str(error), {"Retry-After": "1"}))
            self.force_close()
            return
        self._address = key

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is not None:
            self._guard.connections.leave(self._address)
            self._address = None
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        """HTTP that did not parse (or an error no route caught): typed JSON, no traceback."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent")
        if status >= 500:
            code, text, status = "internal_error", "the node failed to answer", 500
            self._guard.throttled("internal", logging.ERROR, "error answering %s: %r",
                                  request.remote, exc, exc_info=exc)
        else:
            code, status = "malformed", 400
            first = (message or type(exc).__name__).strip().split("\n", 1)[0]
            text = f"not a valid HTTP request: {first}"[:200]
            self._guard.throttled("http", logging.INFO, "malformed HTTP from %s: %s",
                                  request.remote, text)
        response = web.json_response({"error": code, "message": text}, status=status)
        response.force_close()
        return response


    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        # What aiohttp answers by itself, around the routes (an unknown Expect,
        # say), leaves typed too.
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and not resp.prepared:
            resp = typed_http_error(resp, request.method, request.path)
            resp.force_close()
        return await super().finish_response(request, resp, start_time)


class PeerSite(web.TCPSite):
    """A TCP site whose connections are :class:`PeerHandler`\\ s under ``limits``."""

    __slots__ = ("_limits",)

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, limits: Limits,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = _Guard(self._limits)
        options: dict[str, Any] = {
            "loop": loop,
            "access_log": None,
            "keepalive_timeout": self._limits.header_timeout,
            # Our requests carry a handful of short headers.
            "max_headers": 32,
            # Bodies are taken as sent: a compressed body would be a
            # decompression bomb, and no usagi message is compressed.
            "auto_decompress": False,
            # aiohttp buffers up to twice this per request before it stops
            # reading the socket: small, since a stranger's unread body sits there.
            "read_bufsize": _RECV,
        }
        self._server = await loop.create_server(
            lambda: PeerHandler(server, guard, **options),
            self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port
