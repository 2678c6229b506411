"""The CLI's side of the local API (usagi_p2p/company/api/client.py): when it rides, when not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from usagi_p2p.company.api import client

from ..node.conftest import make_home
from .conftest import Api


def _serving(home: Path, api: Api, pid: int = 0) -> None:
    (home / "serve.json").write_text(json.dumps({"pid": pid, "url": api.service.url,
                                                 "local_url": api.local.url,
                                                 "local_socket": None}))


async def test_the_home_s_own_node_answers_with_its_json(api: Api) -> None:
    home = api.node.home.path
    assert await asyncio.to_thread(client.request, home, "GET", "/api/v1/status") is None
    _serving(home, api)
    status, body = await asyncio.to_thread(client.request, home, "GET", "/api/v1/status")
    assert status == 200 and body["did"] == api.node.did
    # A problem is the CLI's typed error, with the problem's code and detail.
    with pytest.raises(client.Problem) as refused:
        await asyncio.to_thread(client.request, home, "GET", "/api/v1/partners/Nobody")
    assert refused.value.code == "not_found" and "Nobody" in str(refused.value)


async def test_another_node_s_listener_is_not_ridden(api: Api, tmp_path: Path) -> None:
    """serve.json naming a listener that refuses this home's token (its port taken
    over by another node): the command works without it; nothing is sent there."""
    other = make_home(tmp_path / "other", "Other Works")
    _serving(other.path, api)
    assert await asyncio.to_thread(client.request, other.path, "POST", "/api/v1/outbox/retry",
                                   {}) is None
    # A serve.json whose process is gone is not asked at all.
    _serving(api.node.home.path, api, pid=2**22 + 12345)
    assert await asyncio.to_thread(client.request, api.node.home.path, "GET",
                                   "/api/v1/status") is None
