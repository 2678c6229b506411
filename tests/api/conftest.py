"""A real node with its peer service and its local API on 127.0.0.1, and tokens of each scope."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from usagi_p2p.company.api.server import LocalServer
from usagi_p2p.company.api.tokens import SCOPES, TokenStore
from usagi_p2p.node.node import Node
from usagi_p2p.peer.service import Service

from ..node.conftest import make_home, start

PROBLEM = "application/problem+json"


@dataclass
class Api:
    node: Node
    service: Service
    local: LocalServer
    #: scope -> a token of that scope
    tokens: dict[str, str]

    @property
    def store(self) -> TokenStore:
        return self.local.tokens

    async def call(self, method: str, path: str, *, token: str | None = None,
                   headers: dict[str, str] | None = None, port: int | None = None,
                   **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        """``method path`` over real HTTP: (status, headers, JSON body)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        url = f"http://127.0.0.1:{port or self.local.port}{path}"
        async with aiohttp.ClientSession() as session, session.request(
                method, url, headers=sent, **kwargs) as resp:
            raw = await resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw else None


@contextlib.asynccontextmanager
async def api_node(path: Path, name: str = "Kanto Machine Tools") -> AsyncIterator[Api]:
    node, service = await start(make_home(path, name))
    local = LocalServer(node, port=0, peer_url=service.url, peer_port=service.port)
    await local.start()
    try:
        tokens = {scope: local.tokens.create(f"test-{scope}", scope) for scope in SCOPES}
        yield Api(node, service, local, tokens)
    finally:
        await local.close()
        await service.close()
        await node.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with api_node(tmp_path / "kanto") as a:
        yield a


async def wait_until(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; a bound on waiting, not a timing assertion."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


@dataclass
class Two:
    """Two API nodes, Osaka holding Kanto's invitation (partners both ways)."""

    kanto: Api
    osaka: Api


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    async with api_node(tmp_path / "kanto") as kanto, \
            api_node(tmp_path / "osaka", "Osaka Precision") as osaka:
        await osaka.node.add_partner((await kanto.node.invite()).text())
        yield Two(kanto, osaka)


def conforms(instance: Any, schema: str) -> None:
    """``instance`` is valid against ``schema`` of openapi.json's components."""
    import jsonschema

    from .test_openapi import DOC

    root = {"$ref": f"#/components/schemas/{schema}", "components": DOC["components"]}
    jsonschema.Draft202012Validator(root).validate(instance)
