"""The ``usagi`` command as a client of a running node's local API.

``usagi serve`` writes where its local API listens into ``HOME/serve.json``
(``local_url``, ``local_socket``, ``pid``); a command on the same home finds
it there and shows the home's own token (tokens.py, ``cli``, scope admin).
While a node serves, the CLI's commands ride on its API (:func:`request`,
docs/api.md "The CLI rides on it"): no key to unlock, no node to open.

:func:`request` uses the standard library only (a socket), so a
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


def _open(state: dict[str, Any], timeout: float) -> tuple[socket.socket, str] | None:
    """A connected socket to the local API and the Host to name; None when nothing listens."""
    try:
        if state.get("local_url"):
            url = urlsplit(str(state["local_url"]))
            if url.scheme != "http" or not url.hostname or not url.port:
                return None
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
            sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
            return sock, f"{host}:{url.port}"
        if state.get("local_socket"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(state["local_socket"]))
            except OSError:
                sock.close()
                raise
            return sock, "localhost"
    except (OSError, ValueError):
        return None  # serve.json left behind by a node that stopped: nobody listens
    return None


def _exchange(sock: socket.socket, head: bytes, payload: bytes) -> tuple[int, str, bytes]:
    """One HTTP/1.1 request (``Connection: close``) and its answer: status, reason, body.

    Our own listener answers with a Content-Length (aiohttp's ``web.Response``);
    a chunked answer is read too. Written out rather than a socket,
    whose email parser costs a command ~30 ms to import.
    """
    sock.sendall(head + payload)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    raw = b"".join(chunks)
    header, sep, body = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError("not an HTTP answer")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        out, rest = [], body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out.append(rest[:size])
            rest = rest[size + 2:]
        body = b"".join(out)
    elif "content-length" in fields:
        length = int(fields["content-length"])
        if len(body) < length:
            raise ValueError("the answer was cut off")
        body = body[:length]
    return int(parts[1]), parts[2] if len(parts) > 2 else "", body


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
    opened = _open(state, timeout)
    if opened is None:
        return None
    sock, host = opened
    where = f"{method} {path.split('?')[0]}"
    try:
        payload = b"" if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                f"Authorization: Bearer {TokenStore(home_path).cli_secret()}\r\n"
                "Accept: application/json\r\n"
                + (f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                   if body is not None else "") + "\r\n").encode("latin-1")
        status, reason, raw = _exchange(sock, head, payload)
    except (OSError, ValueError) as exc:
        raise NodeError(f"the running node did not answer {where}: "
                        f"{exc or type(exc).__name__}") from None
    finally:
        sock.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        raise NodeError(f"the running node answered {where} with something that is not "
                        f"JSON ({status})") from None
    if status == 401:
        # cli_secret() made a valid token; a listener that refuses it is not this
        # home's node (its port taken over by another): work without it.
        log.warning("the local API at %s does not take this home's token; working without it",
                    state.get("local_url") or state.get("local_socket"))
        return None
    if status >= 400:
        problem = data if isinstance(data, dict) else {}
        raise Problem(str(problem.get("code") or "node_error"),
                      str(problem.get("detail") or problem.get("title") or reason))
    return status, data


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
