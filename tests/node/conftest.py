"""Two real nodes on loopback, in this process: real HTTP, real SQLite, no mocks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from usagi_p2p.node.home import Home
from usagi_p2p.node.node import Node
from usagi_p2p.peer.service import Service

REPO = Path(__file__).resolve().parents[2]


#: Ports the tests pick for their listeners: below Linux's ephemeral range
#: (32768-60999, where outgoing connections take theirs), and a range of its own
#: for each pytest-xdist worker. A port is picked, then bound a moment later by
#: the node: from one shared range the other worker could take it in between
#: (it did, once in a few full runs: EADDRINUSE at a test's setup).
_PORTS_PER_WORKER = 2000
_FIRST_PORT = 20000
_picked = 0


def free_port() -> int:
    """A loopback TCP port free now, from this test process's own range."""
    global _picked
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw-1")
    index = int(worker[2:]) + 1 if worker[2:].lstrip("-").isdigit() else 0
    first = _FIRST_PORT + (index % 6) * _PORTS_PER_WORKER
    for _ in range(_PORTS_PER_WORKER):
        port = first + (os.getpid() + _picked) % _PORTS_PER_WORKER
        _picked += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + _PORTS_PER_WORKER - 1}")


@dataclass
class Pair:
    seller: Node
    buyer: Node
    seller_service: Service
    buyer_service: Service


def make_home(path: Path, name: str, port: int | None = None) -> Home:
    home = Home(path)
    home.create(name, None, port=port or free_port())
    return home


async def start(home: Home, **kwargs: object) -> tuple[Node, Service]:
    node = Node.load(home, None, **kwargs)  # type: ignore[arg-type]
    await node.open()
    service = Service(node)
    await service.start()
    return node, service


@contextlib.asynccontextmanager
async def paired(seller_home: Home, buyer_home: Home) -> AsyncIterator[Pair]:
    """Both nodes serving, the buyer having added the seller's invitation; closed after."""
    seller, seller_service = await start(seller_home)
    buyer, buyer_service = await start(buyer_home)
    try:
        await buyer.add_partner((await seller.invite()).text())
        yield Pair(seller, buyer, seller_service, buyer_service)
    finally:
        for service in (seller_service, buyer_service):
            await service.close()
        for node in (seller, buyer):
            await node.close()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async with paired(make_home(tmp_path / "kanto", "Kanto Machine Tools"),
                      make_home(tmp_path / "osaka", "Osaka Precision")) as p:
        yield p


def serve_process(home: Path) -> subprocess.Popen[bytes]:
    """``usagi serve`` as a real child process (for SIGKILL tests).

    Its stderr goes to ``HOME/serve.err`` (appended), not a pipe nobody drains:
    serve writes a line per batch, and a full pipe would stall it.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with (home / "serve.err").open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "usagi_p2p", "--home", str(home), "serve"],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )


def wait_serving(home: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (home / "serve.json").exists():
            return
        if proc.poll() is not None:
            err = home / "serve.err"
            raise RuntimeError(f"usagi serve exited: {err.read_text() if err.exists() else ''}")
        time.sleep(0.05)
    raise RuntimeError("usagi serve did not start")
