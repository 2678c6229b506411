"""The ``usagi`` command as a client of a running node's local API.

``usagi serve`` writes where its local API listens into ``HOME/serve.json``
(``local_url``, ``local_socket``); a command on the same home finds it there
and shows the home's own token (tokens.py, ``cli``). Today only the kick
rides on it (``usagi send``, ``usagi outbox retry``: deliver now); the other
commands are to follow (issue 16, "The CLI rides on it").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from .tokens import TokenStore

__all__ = ["serving", "call", "kick"]


def serving(home_path: Path) -> dict[str, Any] | None:
    """What ``HOME/serve.json`` says of the running node, or None when none runs."""
    try:
        state = json.loads((home_path / "serve.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


async def call(home_path: Path, method: str, path: str, body: dict[str, Any] | None = None,
               *, timeout: float = 3.0) -> tuple[int, Any] | None:
    """``method path`` on the running node's local API: (status, JSON), or None when none runs."""
    state = serving(home_path)
    if state is None or not (state.get("local_url") or state.get("local_socket")):
        return None
    headers = {"Authorization": f"Bearer {TokenStore(home_path).cli_secret()}"}
    if state.get("local_url"):
        base, connector = str(state["local_url"]), None
    else:
        base, connector = "http://localhost", aiohttp.UnixConnector(path=str(state["local_socket"]))
    try:
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, base + path, json=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def kick(home_path: Path) -> bool:
    """Tell a ``usagi serve`` on this home to deliver now; False when none answers."""
    answer = await call(home_path, "POST", "/api/v1/outbox/retry",
                        {"requeue_undelivered": False})
    return answer is not None and answer[0] == 200
