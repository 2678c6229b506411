"""Sends of concurrent requests coalesced: one ledger transaction for what arrives together.

``POST /api/v1/documents`` and ``POST /api/v1/batches`` hand their
documents (resolved and checked, each request's its own group with its
Idempotency-Key's claim) to the app's :class:`Coalescer`. It waits
:data:`GATHER` seconds after the first, or until :data:`MAX_DOCUMENTS` are
queued, then sends every queued group through ONE
``operations.send_groups``: one block-store put, one ledger transaction, one
wake of the delivery loop (which then delivers them in one batch). While
that send runs, the next requests queue for the next one (group commit), so
an idle node adds only :data:`GATHER` to a request.

Each request still gets its own outcome: its CIDs and findings, or why
nothing of it was sent (a document that cannot be sent fails its own
request only; ``Node.send_groups`` tries the groups alone if their shared
commit fails). A request whose handler was cancelled before its group went
out is left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from ...node import operations
from ...node.ledger import KeyClaim
from ...node.node import Node, SendResult

__all__ = ["Coalescer", "COALESCER_KEY", "GATHER", "MAX_DOCUMENTS", "install"]

#: Seconds the first queued request waits for others to join it.
GATHER: Final = 0.002
#: Documents sent in one transaction at most (a batch request larger than this goes alone).
MAX_DOCUMENTS: Final = 100

_Entry = tuple[Sequence[operations.Outgoing], KeyClaim | None,
               "asyncio.Future[list[SendResult]]"]


class Coalescer:
    """The send queue of one node's local API."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._queue: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Transactions sent and groups in them (for the benchmark and tests).
        self.flushes = 0
        self.groups = 0

    async def send(self, items: Sequence[operations.Outgoing], claim: KeyClaim | None
                   ) -> list[SendResult]:
        """Send ``items`` (one request's documents) with the others queued now; raises
        ``operations.Refused`` (the documents that cannot be sent, nothing sent),
        IdempotencyInProgressError (the claim was lost), or its commit's failure."""
        future: asyncio.Future[list[SendResult]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, claim, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            await asyncio.sleep(GATHER)
            taken: list[_Entry] = []
            count = 0
            while self._queue and (not taken or count + len(self._queue[0][0]) <= MAX_DOCUMENTS):
                entry = self._queue.pop(0)
                if entry[2].done():  # its request was cancelled: send nothing of it
                    continue
                taken.append(entry)
                count += len(entry[0])
            if not taken:
                continue
            self.flushes += 1
            self.groups += len(taken)
            try:
                outcomes = await operations.send_groups(
                    self.node, [(items, claim) for items, claim, _ in taken])
            except Exception as exc:  # noqa: BLE001 (each waiting request answers it)
                outcomes = [exc] * len(taken)
            for (_, _, future), outcome in zip(taken, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


COALESCER_KEY: Final = web.AppKey("coalescer", Coalescer)


def install(app: web.Application, node: Node) -> None:
    app[COALESCER_KEY] = Coalescer(node)
