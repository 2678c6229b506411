"""Running a node: the peer API on its port plus the delivery loop, until stopped."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .node import Node
from .peer import make_app

__all__ = ["Service"]

log = logging.getLogger("usagi.service")


class Service:
    """A node serving on ``host:port`` and delivering its outbox. ``async with``."""

    def __init__(self, node: Node, host: str | None = None, port: int | None = None) -> None:
        self.node = node
        self.host = host or node.config.listen_host
        self.port = node.config.listen_port if port is None else port
        self.stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = make_app(self.node)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # an ephemeral port: find out which
            server = site._server  # noqa: SLF001 (aiohttp exposes no public accessor)
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await self.node.ledger.release_leases()
        self._loop_task = asyncio.create_task(self.node.delivery_loop(self.stop))
        log.info("%s listening on http://%s:%d", self.node.config.name, self.host, self.port)

    @property
    def app(self) -> web.Application:
        """The running peer application (for inspection)."""
        if self._runner is None:
            raise RuntimeError("the service is not started")
        return self._runner.app

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        self.stop.set()
        self.node.wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def run_forever(self) -> None:
        await self.stop.wait()
