"""The search index kept up off the exchange's path (docs/spec.md section 12, "Search").

Recording a document only queues it for the index (schema step 6: a trigger
appends its CID to ``search_queue`` in the transaction that records it). The
:class:`Indexer` of a node then indexes the queue in batches
(``Ledger.index_pending``: one transaction each, the bodies read from the
signed documents on a worker thread):

* in the background (:meth:`Indexer.loop`, run by the serving node beside its
  delivery loop): once the ledger has recorded nothing for :data:`QUIET`
  seconds, batch after batch while it stays quiet; under a load that never
  pauses, one batch every :data:`MAX_LAG` seconds, so the queue is worked
  through as long as documents come slower than a batch per lag;
* before a search (:meth:`Indexer.catch_up`): what waits is indexed first,
  so a document is found by a search made right after it was recorded.

Indexing costs the same CPU as before, once per document, in batches (FTS5
builds one segment per transaction, so a batch of hundreds is cheaper per
document than one transaction per document); the exchange no longer pays it
while documents flow. What it costs and saves: docs/performance.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from .ledger import Ledger

__all__ = ["Indexer", "QUIET", "MAX_LAG", "BATCH"]

log = logging.getLogger("usagi.node")

#: Seconds without a document or ack recorded before the background indexer works.
QUIET: Final = 0.2
#: Seconds the background indexer waits at most, under a load that never pauses,
#: before it indexes one batch anyway.
MAX_LAG: Final = 2.0
#: Documents per transaction of the background indexer.
BATCH: Final = 500
#: Seconds between two looks at the queue when this process records nothing
#: (another process on the home, a command without a running node, may queue).
LOOK_EVERY: Final = 5.0


class Indexer:
    """Indexes a ledger's queued documents: in the background, or all before a search."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # One indexer at a time in this process: the loop and a search's catch-up
        # would otherwise index the same rows twice (harmless, but twice the work).
        self._lock = asyncio.Lock()

    async def catch_up(self, progress: Callable[[int, int], None] | None = None,
                       batch: int = 1000) -> int:
        """Index every document waiting, in batches; return how many.

        A large queue (a ledger from before the index, or after ``reset_index``)
        takes a while (about 6,000 documents a second here; a warning says
        so); ``progress(done, total)`` is called after each batch.
        """
        if not await self.ledger.index_waiting():
            return 0
        async with self._lock:
            total = await self.ledger.index_backlog()
            if total > batch:
                log.warning("indexing %d documents for search", total)
            left = total
            # What waited when it began, and what came meanwhile up to one more
            # batch: documents recorded all the while cannot keep it going.
            for _ in range(-(-total // batch) + 1):
                left = await self.ledger.index_pending(batch)
                if progress is not None:
                    progress(total - min(left, total), total)
                if not left:
                    break
            if total:
                log.info("indexed %d documents for search", total)
            return total

    async def loop(self, stop: asyncio.Event) -> None:
        """Index in the background until ``stop`` is set (see the module docstring)."""
        ledger = self.ledger
        forced = looked = time.monotonic()
        empty_at: int | None = None  # ``ledger.recorded`` when the queue was last found empty
        while not stop.is_set():
            if empty_at == ledger.recorded:
                # Nothing recorded here since the queue was found empty: sleep until
                # this process's ledger commits (or LOOK_EVERY, for other
                # processes), not QUIET at a time (docs/scale.md: a thousand idle
                # nodes in one machine each woke five times a second for nothing).
                signal = ledger.committed()
                await _first(stop, signal, looked + LOOK_EVERY - time.monotonic())
                if stop.is_set():
                    break
            seen = ledger.recorded
            try:
                await asyncio.wait_for(stop.wait(), QUIET)
                break
            except TimeoutError:
                pass
            now = time.monotonic()
            quiet = ledger.recorded == seen
            if not quiet and now - forced < MAX_LAG:
                continue
            if empty_at == ledger.recorded and now - looked < LOOK_EVERY:
                continue  # nothing recorded here since the queue was empty
            try:
                looked = now
                if not await ledger.index_waiting():
                    empty_at, forced = ledger.recorded, now
                    continue
                empty_at = None
                while not stop.is_set():
                    # The lock per batch: a search catching up waits one batch at most.
                    async with self._lock:
                        left = await ledger.index_pending(BATCH)
                    forced = time.monotonic()
                    if not left:
                        empty_at = ledger.recorded
                    # Under load, one batch; while quiet, on until it is done.
                    if not left or not quiet or ledger.recorded != seen:
                        break
            except Exception:  # the loop must survive a busy or failing ledger
                log.exception("indexing for search failed; tried again later")


async def _first(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Until ``a`` or ``b`` is set, or ``timeout`` seconds have passed."""
    if a.is_set() or b.is_set() or timeout <= 0:
        return
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
