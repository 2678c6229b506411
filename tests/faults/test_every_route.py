"""Every route of the peer app passes through the one middleware (usagi_p2p/peer/app.py).

The routes are not listed here: they are read from the running app
(``app.router.routes()``), so a route added tomorrow is checked too. Against
a real node on 127.0.0.1, over raw sockets, each route must answer

* a body over its cap with ``413 too_large`` before reading any of it (a
  declared length with no byte sent; the body deadline is short, so a route
  that waited for the body would answer 408 instead), and a chunked one as
  soon as it passes the cap;
* a full address or a full endpoint with ``503 overloaded`` and ``Retry-After``;
* a failure injected where its handler runs with the typed answer: a
  UsagiError with the table's status, anything else (and a code the table
  does not know) with ``500 internal_error``, whose detail stays in the log.

The failures are injected by a middleware added behind the node's own (inside
it, where a handler's failure comes from), through aiohttp's public API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import usagi_p2p.peer.service as service_module
from ipfs.blockstore import StoreUnavailableError
from kernel.cid import CID
from kernel.errors import UsagiError
from usagi_p2p.node.node import Node
from usagi_p2p.peer.app import GATE_KEY, Gate, make_app
from usagi_p2p.peer.listener import Limits
from usagi_p2p.peer.service import Service

from ..node.conftest import make_home

SECRET = "injected failure, not for the peer's eyes"
UNTABLED = "/untabled"


class NotInTheTableError(UsagiError):
    """A typed error whose code has no row in the table: a bug at the boundary."""

    code = "not_in_the_table"


INJECT: dict[str, Callable[[], BaseException]] = {
    "typed": lambda: StoreUnavailableError(SECRET.replace("not", "fine")),
    "crash": lambda: RuntimeError(SECRET),
    "unknown": lambda: NotInTheTableError(SECRET),
}


@web.middleware
async def injector(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Fails where the route's handler would run, as ``X-Inject`` says."""
    what = request.headers.get("X-Inject")
    if what is not None:
        raise INJECT[what]()
    return await handler(request)


def app_with_injector(node: Node, **kwargs: Any) -> web.Application:
    app = make_app(node, **kwargs)
    app.middlewares.append(injector)  # behind the node's own: inside it

    async def untabled(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # A route added around Gate.route, so not in the endpoint table: refused.
    app.router.add_get(UNTABLED, untabled, allow_head=False)
    return app


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> tuple[int, str]:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self
        answer = json.loads(self.body)
        assert isinstance(answer["message"], str) and SECRET not in answer["message"], answer
        assert set(answer) == {"error", "message"}, answer
        return self.status, answer["error"]


async def request(port: int, method: str, path: str, headers: list[str] | None = None,
                  body: bytes = b"") -> Answer:
    """One request on its own connection, over a raw socket."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", *(headers or [])]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        status_line, *rest = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        got = dict(line.split(": ", 1) for line in rest)
        data = b"" if method == "HEAD" else await asyncio.wait_for(
            reader.readexactly(int(got["Content-Length"])), 15)
    finally:
        writer.close()
    return Answer(int(status_line.split(" ")[1]), got, data)


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    monkeypatch.setattr(service_module, "make_app", app_with_injector)
    node = Node.load(make_home(tmp_path / "osaka", "Osaka Precision"), None)
    await node.open()
    # A short body deadline: a route that read the body before its cap would
    # answer 408 to a declared length with no body, not 413.
    service = Service(node, limits=Limits(body_timeout=2.0))
    await service.start()
    try:
        yield service
    finally:
        await service.close()
        await node.close()


def routes(app: web.Application) -> list[tuple[str, str]]:
    found = [(route.method, route.resource.canonical) for route in app.router.routes()
             if route.resource is not None and route.resource.canonical != UNTABLED]
    # The peer API of spec §11: four POSTs, GET /, and the gateway's GET and HEAD.
    assert len(found) >= 7, found
    return found


async def test_every_route_is_in_the_endpoint_table(service: Service) -> None:
    gate: Gate = service.app[GATE_KEY]
    assert {path for _, path in routes(service.app)} == set(gate.endpoints)
    # A route added around the table is refused, never served unbounded.
    assert (await request(service.port, "GET", UNTABLED)).error == (500, "internal_error")


async def test_every_route_refuses_a_body_over_its_cap_before_reading_it(
        service: Service) -> None:
    gate: Gate = service.app[GATE_KEY]
    cid = str(CID.for_block(b"any block"))
    for method, canonical in routes(service.app):
        path = canonical.format(cid=cid)
        cap = gate.endpoints[canonical][0].body
        where = f"{method} {path}"
        # Declared, and not one byte of it sent.
        answer = await request(service.port, method, path, [f"Content-Length: {cap + 1}"])
        if method == "HEAD":  # an answer to HEAD has no body: its status and type
            assert answer.status == 413, (where, answer)
            assert answer.headers["Content-Type"].startswith("application/json"), where
        else:
            assert answer.error == (413, "too_large"), (where, answer)
        # Chunked: refused once the bytes pass the cap.
        chunked = f"{cap + 1:x}\r\n".encode() + bytes(cap + 1) + b"\r\n0\r\n\r\n"
        answer = await request(service.port, method, path, ["Transfer-Encoding: chunked"],
                               chunked)
        assert answer.status == 413, (where, answer)
        if method != "HEAD":
            assert answer.error == (413, "too_large"), (where, answer)
        assert not gate.budget.counts, where  # every byte read was given back


async def test_every_route_sheds_load_with_a_typed_503(service: Service) -> None:
    gate: Gate = service.app[GATE_KEY]
    cid = str(CID.for_block(b"any block"))
    for method, canonical in routes(service.app):
        path = canonical.format(cid=cid)
        endpoint, inflight = gate.endpoints[canonical]
        # Every request this address may have in progress, then every one the
        # endpoint may serve at once, taken as if by others.
        for full, n, key in ((gate.addresses, gate.limits.requests_per_address,
                              "127.0.0.1"), (inflight, endpoint.inflight, "")):
            assert full.take(n, key)
            try:
                answer = await request(service.port, method, path)
            finally:
                full.give(n, key)
            assert answer.status == 503 and answer.headers["Retry-After"] == "1", \
                (method, path, answer)
            if method != "HEAD":
                assert answer.error == (503, "overloaded")
    assert not gate.addresses.counts


@pytest.mark.parametrize(("inject", "expected"), [
    ("typed", (503, "store_unavailable")),
    ("crash", (500, "internal_error")),
    ("unknown", (500, "internal_error")),
])
async def test_every_route_answers_an_injected_failure_typed(
        service: Service, caplog: pytest.LogCaptureFixture, inject: str,
        expected: tuple[int, str]) -> None:
    caplog.set_level(logging.DEBUG, logger="usagi.peer")
    gate: Gate = service.app[GATE_KEY]
    cid = str(CID.for_block(b"any block"))
    for method, canonical in routes(service.app):
        path = canonical.format(cid=cid)
        cap = gate.endpoints[canonical][0].body
        body = b"x" if cap else b""  # within the cap: read, then the handler fails
        answer = await request(service.port, method, path,
                               [f"X-Inject: {inject}", f"Content-Length: {len(body)}"], body)
        if method == "HEAD":
            assert answer.status == expected[0], (method, path, answer)
        else:
            assert answer.error == expected, (method, path, answer)
        assert SECRET.encode() not in answer.body and b"Traceback" not in answer.body
    assert not gate.addresses.counts and not gate.budget.counts
    logged = [r for r in caplog.records if r.name == "usagi.peer"]
    if inject == "crash":  # the detail is in the log, with its traceback
        assert any(r.levelno == logging.ERROR and r.exc_info and SECRET in str(r.exc_info[1])
                   for r in logged), [r.getMessage() for r in logged]
    if inject == "unknown":  # the code without a row is named in the log
        assert any(r.levelno == logging.ERROR and "not_in_the_table" in r.getMessage()
                   for r in logged), [r.getMessage() for r in logged]
