"""Files in and out of the local API with bounded memory: a download streamed from
a file, an upload streamed into one (the archive routes, docs/api.md "Archives").

Both work on a temporary file in the node's home (``HOME/tmp``, mode 0700),
which the caller removes when done: :func:`scratch` names one. A download is
sent in chunks of :data:`CHUNK` bytes (``Transfer-Encoding: chunked``); an
upload is written chunk by chunk and refused (413 ``too_large``) the moment it
passes its limit; :func:`scratch` removes the file, whole or partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from kernel.errors import MalformedError

from ...node.errors import BodyTooLargeError, RequestTimeoutError

__all__ = ["CHUNK", "IDLE_TIMEOUT", "scratch", "send_file", "receive_file"]

#: Bytes read from, and written to, a file at a time.
CHUNK: Final = 256 << 10
#: Seconds an upload may send nothing before it is refused (408).
IDLE_TIMEOUT: Final = 30.0


@contextlib.contextmanager
def scratch(home: Path, suffix: str) -> Iterator[Path]:
    """A fresh path in ``HOME/tmp``, removed afterwards whatever happened."""
    folder = home / "tmp"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"api-{secrets.token_hex(8)}{suffix}"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


async def send_file(request: web.Request, path: Path, *, content_type: str, filename: str,
                    headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """``path`` as a chunked download of ``content_type``, read :data:`CHUNK` at a time."""
    response = web.StreamResponse(headers={
        "Content-Type": content_type,
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Content-Type-Options": "nosniff",
        **(headers or {})})
    response.enable_chunked_encoding()
    await response.prepare(request)
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK):
            await response.write(chunk)
    await response.write_eof()
    return response


async def receive_file(request: web.Request, path: Path, limit: int) -> int:
    """Write the request's body to ``path`` (mode 0600); its size.

    413 ``too_large`` as soon as it passes ``limit`` bytes (a declared
    length over it was refused before: app.py), 408 when it stalls for
    :data:`IDLE_TIMEOUT`. The caller removes ``path``, done or not (:func:`scratch`).
    """
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        chunk = await request.content.readany()
                except TimeoutError:
                    raise RequestTimeoutError(f"the upload sent nothing for {IDLE_TIMEOUT:g} s"
                                              ) from None
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyTooLargeError(f"an upload takes at most {limit} bytes "
                                            "(local_upload_max in the config)")
                await asyncio.to_thread(sink.write, chunk)
    except (ConnectionError, asyncio.IncompleteReadError, aiohttp.ClientPayloadError,
            HttpProcessingError):
        raise MalformedError("the upload was cut off or badly framed") from None
    return size
