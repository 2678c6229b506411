"""The ``usagi`` command as a client of a running node's local API.

``usagi serve`` writes where its local API listens into ``HOME/serve.json``
(``local_url``, ``local_socket``, ``pid``); a command on the same home finds
it there and shows the home's own token (tokens.py, ``cli``, scope admin).
While a node serves, the CLI's commands ride on its API (:func:`request`,
docs/api.md "The CLI rides on it"): no key to unlock, no node to open.

:func:`request` uses the standard library only (``http.client``), so a
command that rides starts without loading aiohttp, the stores or the
crypto. It answers None when no node serves this home — no ``serve.json``,
its process gone, nothing listening, or a listener that does not take this
home's token (a port another node took over) — and the command then works
as without a node (it opens the home itself). Once a request is sent, it
never falls back: a send that failed half-way is not sent a second time.

The home's own token is made again when it was revoked or its secret lost
(``TokenStore.cli_secret``), and the running node re-reads the token file
at the next request: revoking ``cli`` does not lock the command out.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from kernel.errors import UsagiError

from ...node.errors import NodeError
from .tokens import TokenStore

__all__ = ["serving", "request", "Problem", "MAX_WAIT", "call", "kick"]

log = logging.getLogger("usagi.cli")

#: The longest ``?wait=`` of ``POST /api/v1/documents``, in seconds.
MAX_WAIT: Final = 60.0


def serving(home_path: Path) -> dict[str, Any] | None:
    """What ``HOME/serve.json`` says of the running node, or None when none runs."""
    try:
        state = json.loads((home_path / "serve.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


class Problem(UsagiError):
    """The running node refused the request (an RFC 9457 problem of the local API).

    Its ``code`` is the problem's: the same code, message and exit code the
    command gives when it opens the node itself.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail or code)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # not said: let the connection tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connection(state: dict[str, Any], timeout: float) -> http.client.HTTPConnection | None:
    if state.get("local_url"):
        url = urlsplit(str(state["local_url"]))
        if url.scheme != "http" or not url.hostname:
            return None
        return http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    if state.get("local_socket"):
        return _UnixConnection(str(state["local_socket"]), timeout)
    return None


def request(home_path: Path, method: str, path: str, body: dict[str, Any] | None = None,
            *, timeout: float = 10.0) -> tuple[int, Any] | None:
    """``method path`` on the local API of the node serving ``home_path``: (status, JSON).

    None when no node serves this home (the caller opens the node itself).
    A problem answer (4xx, 5xx) is raised as :class:`Problem`; a node that
    stops answering once asked is a ``node_error``.
    """
    state = serving(home_path)
    if state is None or not _alive(state.get("pid")):
        return None
    conn = _connection(state, timeout)
    if conn is None:
        return None
    try:
        conn.connect()
    except OSError:
        return None  # serve.json left behind by a node that stopped: nobody listens
    try:
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Authorization": f"Bearer {TokenStore(home_path).cli_secret()}",
                   "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeError(f"the running node did not answer {method} {path.split('?')[0]}: "
                            f"{exc or type(exc).__name__}") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        raise NodeError(f"the running node answered {method} {path.split('?')[0]} with "
                        f"something that is not JSON ({resp.status})") from None
    if resp.status == 401:
        # cli_secret() made a valid token; a listener that refuses it is not this
        # home's node (its port taken over by another): work without it.
        log.warning("the local API at %s does not take this home's token; working without it",
                    state.get("local_url") or state.get("local_socket"))
        return None
    if resp.status >= 400:
        problem = data if isinstance(data, dict) else {}
        raise Problem(str(problem.get("code") or "node_error"),
                      str(problem.get("detail") or problem.get("title") or resp.reason))
    return resp.status, data


async def call(home_path: Path, method: str, path: str, body: dict[str, Any] | None = None,
               *, timeout: float = 3.0) -> tuple[int, Any] | None:
    """``method path`` on the running node's local API: (status, JSON), or None when none runs."""
    import aiohttp

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
