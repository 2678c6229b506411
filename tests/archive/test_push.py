"""Pushing an archive: the real offline IPFS daemon, and a fake Pinning Service API.

The fake speaks the third-party IPFS Pinning Service API on 127.0.0.1 only:
``POST /pins`` answers ``queued``, each ``GET /pins/{id}`` moves it on, and a
CID on the ``fail`` list ends ``failed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ipfs.kubo import KuboBlockStore
from usagi_p2p.archive.archive import export_archive
from usagi_p2p.archive.push import PinningError, pin_remote, push_archive
from usagi_p2p.node.node import Node

from .conftest import Traded

TOKEN = "secret-token"


async def _car(traded: Traded, out: Path) -> Path:
    async with Node.load(traded.a, None) as node:
        await export_archive(node, out)
    return out


def test_push_to_the_offline_daemon(traded: Traded, tmp_path: Path, kubo_url: str) -> None:
    async def run() -> None:
        car = await _car(traded, tmp_path / "kanto.car")
        report = await push_archive(car, kubo_url)
        assert report.pinned
        async with KuboBlockStore(kubo_url) as store:
            assert any(p.digest == report.root.digest for p in await store.pins())
            # The recursive pin reached every block through the index chain.
            exported = await store.dag_export(report.root)
            assert len(exported) > 10_000

    asyncio.run(run())


class FakePinning:
    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.pins: dict[str, dict[str, Any]] = {}
        self.polls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/pins", self.add)
        app.router.add_get("/pins/{rid}", self.get)
        return app

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(text='{"error": {"reason": "UNAUTHORIZED"}}')

    async def add(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await request.json()
        rid = f"req-{len(self.pins)}"
        self.pins[rid] = {"requestid": rid, "status": "queued", "pin": body,
                          "created": "2025-01-01T00:00:00Z", "delegates": [], "info": {}}
        return web.json_response(self.pins[rid], status=202)

    async def get(self, request: web.Request) -> web.Response:
        self._auth(request)
        pin = self.pins.get(request.match_info["rid"])
        if pin is None:
            raise web.HTTPNotFound()
        self.polls += 1
        steps = {"queued": "pinning", "pinning": "failed" if pin["pin"]["cid"] in self.fail
                 else "pinned"}
        pin["status"] = steps.get(pin["status"], pin["status"])
        if pin["status"] == "failed":
            pin["info"] = {"status_details": "content not found on the network"}
        return web.json_response(pin)


async def _serve(fake: FakePinning) -> AsyncIterator[str]:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_pinning_service_happy_and_failed(traded: Traded, tmp_path: Path) -> None:
    from kernel.cid import CID

    good, bad = CID.for_block(b"\xa1ab\x01"), CID.for_block(b"\xa1ab\x02")
    fake = FakePinning({str(bad)})

    async def run() -> None:
        async for url in _serve(fake):
            rid, status = await pin_remote(url, TOKEN, good, "kanto.car", poll=0.01)
            assert status == "pinned" and fake.pins[rid]["pin"]["cid"] == str(good)
            with pytest.raises(PinningError, match="content not found"):
                await pin_remote(url, TOKEN, bad, "kanto.car", poll=0.01)
            with pytest.raises(PinningError, match="401"):
                await pin_remote(url, "wrong", good, "kanto.car", poll=0.01)
            with pytest.raises(PinningError, match="still"):
                fake.fail.add(str(good))
                await pin_remote(url, TOKEN, good, "x", poll=0.01, timeout=0.0)

    asyncio.run(run())


def test_push_with_pinning_service(traded: Traded, tmp_path: Path, kubo_url: str) -> None:
    fake = FakePinning(set())

    async def run() -> None:
        car = await _car(traded, tmp_path / "kanto.car")
        async for url in _serve(fake):
            report = await push_archive(car, kubo_url, pinning_service=url, token=TOKEN,
                                        poll=0.01)
            assert report.service_status == "pinned"
            assert fake.pins[report.request_id or ""]["pin"]["cid"] == str(report.root)

    asyncio.run(run())
