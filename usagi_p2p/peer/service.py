"""Running a node: the peer API on its port plus the delivery loop, until stopped."""

from __future__ import annotations

import asyncio
import logging
import resource

from aiohttp import web

from ..node.node import Node
from ..node.operations import resume_outbox
from .app import make_app
from .listener import Limits, PeerSite

__all__ = ["Service"]

log = logging.getLogger("usagi.service")


class Service:
    """A node serving on ``host:port`` and delivering its outbox. ``async with``."""

    def __init__(self, node: Node, host: str | None = None, port: int | None = None, *,
                 limits: Limits | None = None) -> None:
        self.node = node
        #: What the peer listener grants callers (docs/spec.md §13).
        self.limits = limits or Limits()
        self.host = host or node.config.listen_host
        self.port = node.config.listen_port if port is None else port
        self.stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._index_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        _raise_open_files()
        app = make_app(self.node, limits=self.limits)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = PeerSite(self._runner, self.host, self.port, self.limits, reuse_address=True)
        await site.start()
        self.port = site.port  # the port bound (an ephemeral one when asked for 0)
        await resume_outbox(self.node)
        self._loop_task = asyncio.create_task(self.node.delivery_loop(self.stop))
        # The search index, kept up when the node is quiet (node/indexing.py).
        self._index_task = asyncio.create_task(self.node.index_loop(self.stop))
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
        if self._index_task is not None:
            await self._index_task
            self._index_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def run_forever(self) -> None:
        await self.stop.wait()


def _raise_open_files(wanted: int = 65536) -> None:
    """Let the process hold as many connections as its hard limit allows (up to ``wanted``).

    The soft limit is often 1024: strangers holding connections from a few
    addresses (each bounded per address) could otherwise use every file
    descriptor, and then no partner could connect.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
