"""The webhook sender: each event POSTed to the company's URLs, signed (docs/api.md, "Webhooks").

Run by ``usagi serve`` beside the local API (:class:`LocalServer` starts it).
The receivers are config.json's ``webhooks`` (``usagi webhook add``), read
again each round, so a change needs no restart.

**Signature**: the Standard Webhooks specification (standardwebhooks.com,
"Signature scheme"): headers ``webhook-id`` (the event's seq: the same for
every attempt and replay, so a receiver can drop what it has seen),
``webhook-timestamp`` (Unix seconds of this attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, the
key being the base64 after ``whsec_`` in the secret. These are the spec's few
lines (tests/api/test_webhooks.py checks them against its published vector);
the ``standardwebhooks`` package on PyPI does the same, and is the natural
choice on the *receiving* side.

**Delivery**: what each URL is owed is a queue in the ledger, filled from
the event sequence in order (a URL added is sent what happens from then
on). A 2xx answer is delivered; anything else (another status, a redirect,
which is never followed, a timeout, a refused connection) is tried again
after :data:`SCHEDULE` (5 s, then longer, about a day in all), then given
up. Every attempt is in the delivery log (``usagi webhook log``);
``usagi webhook replay SEQ..`` queues events again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import aiohttp

from kernel.errors import UsagiError

from ...node import operations
from ...node.node import Node

__all__ = ["WebhookSender", "SCHEDULE", "sign", "body_of"]

log = logging.getLogger("usagi.webhooks")

#: Seconds before each retry: attempt n+1 waits SCHEDULE[n-1]; after the last, given up.
SCHEDULE: Final = (5.0, 60.0, 300.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 28_800.0)
#: Seconds one attempt may take, connection included.
TIMEOUT: Final = 15.0
#: Seconds between two rounds when nothing woke the sender (other processes' commits).
POLL: Final = 5.0
#: Seconds at least between two rounds.
SPACING: Final = 0.05
#: Deliveries in flight at once, over all URLs.
PARALLEL: Final = 8


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (Standard Webhooks, "Signature scheme")."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def body_of(event: operations.Event) -> bytes:
    """The POSTed JSON: Standard Webhooks' ``type``, ``timestamp``, ``data``, and the seq."""
    at = datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds")
    return json.dumps({"type": event.type, "timestamp": at.replace("+00:00", "Z"),
                       "seq": event.seq, "data": event.data},
                      ensure_ascii=False, separators=(",", ":")).encode()


class WebhookSender:
    """Delivers the queued events of every configured webhook until :meth:`stop`."""

    def __init__(self, node: Node, *, schedule: Sequence[float] = SCHEDULE) -> None:
        self.node = node
        self.schedule = tuple(schedule)
        self._followed: set[str] = set()
        self._hooks: tuple[tuple[float, int, int], list[operations.Webhook]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        while True:
            signal = operations.commit_signal(self.node)
            wait = POLL
            try:
                wait = await self.round()
            except UsagiError as exc:  # a bad config, a busy ledger: said, then tried again
                log.warning("webhooks: %s (%s)", exc, exc.code)
            except Exception as exc:  # noqa: BLE001 (the sender must outlive one bad round)
                log.error("webhooks: %r", exc, exc_info=exc)
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
            # cancellation that meets the wake-up, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await signal.wait()
            await asyncio.sleep(SPACING)  # many commits a second make a round, not one each

    async def round(self) -> float:
        """Queue the new events, send what is due; return seconds until the next is due."""
        node = self.node
        hooks = self._configured()
        if not hooks:
            return POLL
        now = self.node.clock()
        for hook in hooks:
            if hook.url not in self._followed:
                await operations.webhook_follow(node, hook.url)
                self._followed.add(hook.url)
            while await operations.webhook_enqueue(node, hook, now):
                pass
        gate = asyncio.Semaphore(PARALLEL)
        jobs = []
        for hook in hooks:
            for event, attempts in await operations.webhook_due(node, hook.url, now):
                jobs.append(self._deliver(gate, hook, event, attempts))
        await asyncio.gather(*jobs)
        due = await operations.webhook_next_due(node)
        return POLL if due is None else min(POLL, due - self.node.clock())

    def _configured(self) -> list[operations.Webhook]:
        """config.json's webhooks, read again when the file changed (one stat a round)."""
        st = self.node.home.config_path.stat()
        stamp = (st.st_mtime, st.st_size, st.st_ino)
        if self._hooks is None or self._hooks[0] != stamp:
            self._hooks = (stamp, operations.webhooks(self.node))
        return self._hooks[1]

    async def _deliver(self, gate: asyncio.Semaphore, hook: operations.Webhook,
                       event: operations.Event, attempts: int) -> None:
        assert self._session is not None
        async with gate:
            body = body_of(event)
            msg_id = str(event.seq)
            stamp = int(self.node.clock())
            status: int | None = None
            error: str | None = None
            try:
                async with self._session.post(hook.url, data=body, allow_redirects=False,
                                              headers={
                                                  "Content-Type": "application/json",
                                                  "webhook-id": msg_id,
                                                  "webhook-timestamp": str(stamp),
                                                  "webhook-signature": sign(hook.secret, msg_id,
                                                                            stamp, body),
                                              }) as resp:
                    status = resp.status
                    await resp.read()
                    if not 200 <= status < 300:
                        error = f"answered {status}" + (" (redirects are not followed)"
                                                        if 300 <= status < 400 else "")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
            attempt = attempts + 1
            next_at: float | None = None
            if error is not None:
                if attempt <= len(self.schedule):
                    next_at = self.node.clock() + self.schedule[attempt - 1]
                else:
                    error += f"; given up after {attempt} attempts"
                    log.warning("webhook %s: event %d given up: %s", hook.url, event.seq, error)
            await operations.webhook_attempted(self.node, operations.WebhookAttempt(
                event.seq, hook.url, attempt, status, self.node.clock(), error), next_at)
