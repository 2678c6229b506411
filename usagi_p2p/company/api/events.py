"""``GET /api/v1/events``: the event sequence as Server-Sent Events (docs/api.md, "Events").

Each event is sent as ``id: SEQ``, ``event: TYPE``, ``data: JSON`` (the WHATWG
HTML "server-sent events" format). A client resumes with the ``Last-Event-ID``
header (what EventSource sends when it reconnects) or ``?after=SEQ``: it is
sent every event after that seq, then each new one as it is committed, so a
client that was away misses nothing and gets nothing twice. Events pruned
meanwhile (the config's retention) are announced by one ``events.lost``
event whose id is the seq before the oldest kept.

New events wake the stream through the ledger's commit signal, not a busy
loop; commits of another process (a CLI command writing the ledger
directly) are seen within :data:`POLL` seconds. A comment line every
:data:`HEARTBEAT` seconds keeps proxies from closing an idle stream and
finds a client that has gone. At most :data:`MAX_STREAMS` streams per token
at once; one more is 503 ``overloaded``.

A plain :class:`aiohttp.web.StreamResponse`, not aiohttp-sse: the format is
three lines per event, and the parts that matter (resume point, wake-up,
the per-token bound, closing on shutdown) are ours either way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Protocol

from aiohttp import web

from ...node import operations
from ...node.errors import OverloadedError
from ...node.node import Node
from .problems import ValidationFailedError
from .tokens import Token

__all__ = ["stream_events", "install", "MAX_STREAMS", "HEARTBEAT", "POLL", "format_event"]

#: Streams one token may hold open at once.
MAX_STREAMS: Final = 8
#: Seconds between two heartbeat comments on an idle stream.
HEARTBEAT: Final = 15.0
#: Seconds between two reads when nothing woke the stream (other processes' commits).
POLL: Final = 2.0
#: Events read (and sent) at a time.
PAGE: Final = 500
#: What EventSource waits before reconnecting (ms), sent first.
RETRY_MS: Final = 2000


class Call(Protocol):
    """What the handler reads of routes.Call (named here: routes imports this module)."""

    @property
    def request(self) -> web.Request: ...
    @property
    def node(self) -> Node: ...
    @property
    def token(self) -> Token | None: ...


@dataclass
class Streams:
    """The open streams of one app: counted per token, ended at shutdown."""

    open: Counter[str] = field(default_factory=Counter)
    closing: asyncio.Event = field(default_factory=asyncio.Event)


STREAMS_KEY: Final = web.AppKey("event_streams", Streams)


def install(app: web.Application) -> None:
    """Give ``app`` its stream registry; streams end when the app shuts down (else
    aiohttp would wait for them until its shutdown timeout)."""
    streams = app[STREAMS_KEY] = Streams()

    async def end_streams(app: web.Application) -> None:
        streams.closing.set()

    app.on_shutdown.append(end_streams)


def format_event(seq: int, kind: str, data: object) -> bytes:
    """One event in the SSE format (JSON has no raw newline: one data line)."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {seq}\nevent: {kind}\ndata: {body}\n\n".encode()


def _resume_point(request: web.Request) -> int:
    """Where to resume: ``Last-Event-ID`` if sent (EventSource's reconnect), else
    ``?after=``, else -1 (from now on). Both are checked when both are sent."""
    found = -1
    for name, raw in (("after", request.query.get("after")),
                      ("Last-Event-ID", request.headers.get("Last-Event-ID"))):
        if raw is None or raw.strip() == "":
            continue
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise ValidationFailedError([{"field": name, "code": "wrong_type",
                                          "message": "must be an event id (a whole number >= 0)"}])
        found = int(raw)  # the header, checked last, wins
    return found


def _types(request: web.Request) -> frozenset[str]:
    raw = request.query.get("types", "")
    types = frozenset(t for t in raw.split(",") if t)
    unknown = sorted(types - set(operations.EVENT_TYPES))
    if unknown:
        raise ValidationFailedError([{"field": "types", "code": "unknown_type",
                                      "message": f"not an event type: {unknown[0][:100]}"}])
    return types


async def stream_events(call: Call) -> web.StreamResponse:
    request, node = call.request, call.node
    after = _resume_point(request)
    types = _types(request)
    streams = request.app[STREAMS_KEY]
    owner = call.token.name if call.token is not None else ""
    if streams.open[owner] >= MAX_STREAMS:
        raise OverloadedError(f"this token holds {MAX_STREAMS} event streams already; "
                              "close one, or resume it with Last-Event-ID")
    first, last = await operations.event_range(node)
    if after < 0:
        after = last
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    streams.open[owner] += 1
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        if after < first - 1:
            # Pruned while the client was away: say so, then go on from the oldest kept.
            await response.write(format_event(first - 1, operations.LOST, {
                "after": after, "first": first,
                "message": "events after your Last-Event-ID were pruned; list the documents "
                           "to catch up"}))
            after = first - 1
        await _follow(response, request, streams, node, after, types)
    except (ConnectionError, asyncio.CancelledError):
        pass  # the client went away, or the server is stopping
    finally:
        streams.open[owner] -= 1
    return response


async def _follow(response: web.StreamResponse, request: web.Request, streams: Streams,
                  node: Node, after: int, types: frozenset[str]) -> None:
    sent_at = time.monotonic()
    while not streams.closing.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        signal = operations.commit_signal(node)  # before the read: no commit slips between
        batch = await operations.events_after(node, after, PAGE)
        if batch:
            chunk = b"".join(format_event(e.seq, e.type, e.data) for e in batch
                             if not types or e.type in types)
            after = batch[-1].seq
            if chunk:
                await response.write(chunk)
                sent_at = time.monotonic()
            if len(batch) == PAGE:
                continue
        if time.monotonic() - sent_at >= HEARTBEAT:
            await response.write(b": heartbeat\n\n")
            sent_at = time.monotonic()
        waits = [asyncio.ensure_future(signal.wait()),
                 asyncio.ensure_future(streams.closing.wait())]
        try:
            await asyncio.wait(waits, timeout=min(POLL, HEARTBEAT),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
