"""The local listener: the company's API on its own address, never the peer port (docs/api.md).

``usagi serve`` starts the peer service (usagi_p2p/peer/service.py) and then a
:class:`LocalServer` for the same node. Where it listens comes from the
config (docs/operations.md, "The local API"):

* ``local_host`` (default ``127.0.0.1``) and ``local_port``: unset means 8471,
  or any free port when 8471 is taken (several nodes on one machine, tests);
  a number means exactly that port, and a taken one stops the start with
  ``config_error``; 0 means any free port. The port actually bound is in
  ``HOME/serve.json`` (``local_url``) and in ``GET /api/v1/status``.
* ``local_socket``: a Unix socket path (relative paths inside the home), mode
  0600; with it and no ``local_port``, the socket is the only listener.

It refuses to share the peer listener's port. A host that is not a loopback
address is the operator's explicit choice: it is logged as a warning, and the
loopback guard is off (tokens still hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Final

from aiohttp import web

from kernel.errors import UsagiError

from ...node import operations
from ...node.errors import ConfigError
from ...node.node import Node
from .app import Guard, make_app
from .routes import Endpoints
from .tokens import TokenStore
from .webhooks import SCHEDULE, WebhookSender

__all__ = ["LocalServer", "DEFAULT_PORT"]

log = logging.getLogger("usagi.api")

DEFAULT_PORT: Final = 8471
#: Seconds between two prunings of the event sequence (config: events_keep_days, events_keep).
PRUNE_EVERY: Final = 3600.0


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a node that was killed; refuse one a live process holds."""
    if path.is_socket():
        if _answers(path):
            raise ConfigError(f"{path}: another process listens on this socket")
        path.unlink()


class LocalServer:
    """The local API of ``node`` listening as its config says. ``async with``."""

    def __init__(self, node: Node, *, host: str | None = None, port: int | None = None,
                 socket_path: str | Path | None = None, peer_url: str | None = None,
                 peer_port: int | None = None,
                 webhook_schedule: tuple[float, ...] = SCHEDULE, ui: bool = True) -> None:
        config = node.config
        self.node = node
        self.host = host or config.local_host
        self.port = port if port is not None else config.local_port
        socket_path = socket_path if socket_path is not None else config.local_socket
        self.socket: Path | None = None
        if socket_path:
            self.socket = Path(socket_path)
            if not self.socket.is_absolute():
                self.socket = node.home.path / self.socket
        self.peer_port = peer_port
        #: Whether the web UI is served beside the API (usagi_p2p/company/ui).
        self.ui = ui
        self.endpoints = Endpoints(peer=peer_url)
        self.tokens = TokenStore(node.home.path, clock=node.clock)
        self.guard = Guard(loopback=_loopback_host(self.host))
        self._runner: web.AppRunner | None = None
        #: Sends each event to config.json's webhooks while the listener runs.
        self.webhooks = WebhookSender(node, schedule=webhook_schedule)
        self._pruning: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LocalServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT`` of the TCP listener; None when only the socket listens."""
        return self.endpoints.local

    @property
    def app(self) -> web.Application | None:
        """The running application (None before :meth:`start`)."""
        return self._runner.app if self._runner is not None else None

    async def start(self) -> None:
        tcp = self.port is not None or self.socket is None
        if tcp and self.peer_port is not None and self.port == self.peer_port and self.port:
            raise ConfigError(f"local_port {self.port} is the peer port: the local API "
                              "never shares the partners' listener")
        if not self.guard.loopback:
            log.warning("the local API listens on %s, not a loopback address: every "
                        "machine that reaches it can try tokens", self.host)
        app = make_app(self.node, self.tokens, endpoints=self.endpoints, guard=self.guard)
        if self.ui:
            # The web UI shares this listener, and only this one (docs/ui.md).
            from ..ui import install

            install(app, self.node)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            if tcp:
                await self._start_tcp()
            if self.socket is not None:
                await self._start_socket(self.socket)
        except BaseException:
            await self.close()
            raise
        self.webhooks.start()
        self._pruning = asyncio.create_task(self._prune(), name="prune events")
        log.info("local API on %s", self.endpoints.local or self.endpoints.local_socket)

    async def _prune(self) -> None:
        """Keep the event sequence within the config's retention, now and hourly."""
        while True:
            try:
                gone = await operations.prune_events(self.node)
                if gone:
                    log.info("pruned %d event(s) past retention", gone)
            except UsagiError as exc:
                log.warning("pruning events: %s (%s)", exc, exc.code)
            await asyncio.sleep(PRUNE_EVERY)

    async def _start_tcp(self) -> None:
        assert self._runner is not None
        wanted = DEFAULT_PORT if self.port is None else self.port
        site = web.TCPSite(self._runner, self.host, wanted)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"the local API cannot listen on {self.host}:{wanted}: "
                                  f"{exc.strerror}") from None
            if self.port is not None:
                raise ConfigError(f"local_port {wanted} is taken; choose another in "
                                  "config.json") from None
            log.warning("port %d is taken: the local API listens on a free port instead "
                        "(set local_port in config.json for a fixed one)", wanted)
            site = web.TCPSite(self._runner, self.host, 0)
            await site.start()
        # The runner serves this one TCP site (a socket path is the other choice, never
        # both): its address is (host, port, ...) for IPv4 and IPv6 alike.
        bound = [a for a in self._runner.addresses if isinstance(a, tuple)]
        port = int(bound[0][1]) if bound else wanted
        self.port = port
        self.guard.port = port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoints.local = f"http://{host}:{port}"

    async def _start_socket(self, path: Path) -> None:
        assert self._runner is not None
        _clear_stale(path)
        old = os.umask(0o177)  # created 0600, not for a moment open to others
        try:
            site = web.UnixSite(self._runner, str(path))
            await site.start()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.endpoints.local_socket = str(path)

    async def close(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
            self._pruning = None
        await self.webhooks.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.socket is not None and self.socket.is_socket():
            self.socket.unlink(missing_ok=True)
