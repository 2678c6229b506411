"""Pushing an archive off the server (docs/archive.md, "Push").

* To a Kubo RPC endpoint: ``dag/import`` of the CAR, a *recursive* pin of the
  root (the clear index chain links every block, so the daemon keeps the whole
  archive and nothing else), then ``pin/ls`` must list the root.
* Optionally to an IPFS Pinning Service API (ipfs/pinning-services-api-spec
  v1): ``POST /pins {"cid", "name"}`` with a bearer token, then
  ``GET /pins/{requestid}`` until the status is ``pinned`` or ``failed``. A
  ``failed`` status, an HTTP error or a timeout is raised as
  :class:`PinningError` with what the service said; it is never hidden.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from ipfs.kubo import KuboBlockStore
from kernel.cid import CID

from ..node.errors import NodeError

__all__ = ["PinningError", "PushReport", "push_archive", "pin_remote"]

PIN_DONE: Final = frozenset({"pinned", "failed"})


class PinningError(NodeError):
    """The IPFS node or pinning service did not pin the archive."""

    code = "pinning_failed"


@dataclass(slots=True)
class PushReport:
    root: CID
    ipfs_api: str
    pinned: bool
    service_status: str | None = None
    request_id: str | None = None


async def pin_remote(service: str, token: str, cid: CID, name: str, *,
                     poll: float = 1.0, timeout: float = 600.0,
                     session: aiohttp.ClientSession | None = None) -> tuple[str, str]:
    """Ask a Pinning Service API to pin ``cid``; wait for the outcome; return (requestid, status)."""
    base = service.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    try:
        async with http.post(f"{base}/pins", json={"cid": str(cid), "name": name},
                             headers=headers) as resp:
            answer = await _json(resp, "POST /pins")
        request_id = str(answer.get("requestid", ""))
        status = str(answer.get("status", ""))
        if not request_id:
            raise PinningError(f"{base}: POST /pins answered without a requestid: {answer}")
        deadline = time.monotonic() + timeout
        while status not in PIN_DONE:
            if time.monotonic() > deadline:
                raise PinningError(f"{base}: {cid} still '{status}' after {timeout:.0f} s "
                                   f"(request {request_id})")
            await asyncio.sleep(poll)
            async with http.get(f"{base}/pins/{request_id}", headers=headers) as resp:
                answer = await _json(resp, f"GET /pins/{request_id}")
            status = str(answer.get("status", ""))
        if status == "failed":
            info = answer.get("info") or {}
            raise PinningError(f"{base}: the service failed to pin {cid} (request "
                               f"{request_id}): {info.get('status_details', info) or 'no details'}")
        return request_id, status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PinningError(f"{base}: pinning service unreachable: {exc!r}") from None
    finally:
        if own:
            await http.close()


async def _json(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    body = await resp.text()
    if resp.status >= 300:
        raise PinningError(f"{resp.url}: {what} answered {resp.status}: {body[:300]}")
    try:
        value = await resp.json(content_type=None)
    except ValueError:
        raise PinningError(f"{resp.url}: {what} answered non-JSON: {body[:300]}") from None
    if not isinstance(value, dict):
        raise PinningError(f"{resp.url}: {what} answered {body[:300]}")
    return value


async def push_archive(path: str | os.PathLike[str], ipfs_api: str, *,
                       pinning_service: str | None = None, token: str | None = None,
                       poll: float = 1.0, timeout: float = 600.0) -> PushReport:
    """Import the CAR into the IPFS node at ``ipfs_api``, pin its root, check the pin."""
    store = KuboBlockStore(ipfs_api, timeout=timeout)
    await store.open()
    try:
        roots = await store.dag_import(path)
        if len(roots) != 1:
            raise PinningError(f"{path}: an archive has one root, this CAR has {len(roots)}")
        root = roots[0]
        await store.pin(root, recursive=True)
        pinned = any(p.digest == root.digest for p in await store.pins())
        if not pinned:
            raise PinningError(f"{ipfs_api}: {root} is not listed as pinned after pin/add")
    finally:
        await store.close()
    report = PushReport(root, ipfs_api, pinned)
    if pinning_service:
        if not token:
            raise PinningError("--pinning-service needs --token (or $USAGI_PINNING_TOKEN)")
        report.request_id, report.service_status = await pin_remote(
            pinning_service, token, root, Path(path).name, poll=poll, timeout=timeout)
    return report
