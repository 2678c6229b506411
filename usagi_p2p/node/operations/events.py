"""The event sequence and the webhooks' bookkeeping (docs/spec.md section 11.6, docs/api.md).

The ledger writes each event in the transaction of the change it reports
(usagi_p2p/node/schema.py, ``_EVENTS``); these operations read it for the
local API's stream and the webhook sender, prune it as the config says, and
keep what each webhook is owed and the log of every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ..errors import ConfigError, NodeError
from ..ledger import Event, WebhookAttempt
from ..node import Node

__all__ = ["Event", "WebhookAttempt", "Webhook", "EVENT_TYPES", "LOST", "events_after",
           "event_range", "commit_signal", "prune_events", "webhooks", "add_webhook",
           "remove_webhook", "webhook_log", "replay_webhook", "webhook_follow",
           "webhook_enqueue", "webhook_due", "webhook_attempted", "webhook_next_due"]

#: Every type the ledger writes, and what each reports (docs/spec.md section 11.6).
EVENT_TYPES: Final = {
    "document.received": "a partner's document was verified and recorded (its ack given)",
    "document.sent": "a document of this node was recorded and queued for delivery",
    "document.delivered": "the partner's ack said received",
    "document.rejected": "the partner's ack refused the document (reason: its error code)",
    "document.undelivered": "delivery was given up after the configured attempts",
    "document.requeued": "an undelivered document was queued again (outbox retry)",
    "partner.added": "a partner was added (an invitation pasted, or an introduction)",
    "partner.changed": "a partner was renamed, suspended, resumed, removed, moved, or rotated "
                       "its key (change says which)",
}
#: What the stream sends instead of events pruned before a client came back.
LOST: Final = "events.lost"


async def events_after(node: Node, after: int, limit: int = 500) -> list[Event]:
    """The events after seq ``after``, oldest first, at most ``limit``."""
    return await node.ledger.events(after, limit)


async def event_range(node: Node) -> tuple[int, int]:
    """(the oldest seq kept, the last seq given; 0 when none ever was)."""
    return await node.ledger.event_range()


def commit_signal(node: Node) -> asyncio.Event:
    """Set at this process's next ledger commit; take it before reading (Ledger.committed)."""
    return node.ledger.committed()


async def prune_events(node: Node, now: float | None = None) -> int:
    """Forget events past the config's retention (days and count); how many went."""
    config = node.config
    now = node.clock() if now is None else now
    return await node.ledger.prune_events(now - config.events_keep_days * 86_400.0,
                                          max(config.events_keep, 0))


# -- webhooks ------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    """One configured receiver: ``config.json`` ``webhooks``."""

    url: str
    #: ``whsec_`` and the base64 of the HMAC key (Standard Webhooks).
    secret: str
    #: Event types sent; empty: all.
    types: tuple[str, ...] = ()

    def wants(self, kind: str) -> bool:
        return not self.types or kind in self.types or kind == LOST


def check_url(url: str) -> str:
    """An absolute http(s) URL of printable ASCII (an IRI's other characters percent-encoded)."""
    if not url.isascii() or any(not c.isprintable() or c.isspace() for c in url):
        raise ConfigError(f"a webhook URL is printable ASCII without spaces: {url[:200]!r}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"not a URL: {url[:200]!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"a webhook URL is http:// or https:// with a host, not {url[:200]!r}")
    return url


def _webhook(entry: Any) -> Webhook:
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise ConfigError("each of config.json's webhooks is {\"url\": ..., \"secret\": ..., "
                          "\"types\": [...]}")
    secret = entry.get("secret")
    types = entry.get("types") or []
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ConfigError(f"webhook {entry['url'][:200]!r}: its secret must be 'whsec_…'")
    if not isinstance(types, list) or not all(t in EVENT_TYPES for t in types):
        raise ConfigError(f"webhook {entry['url'][:200]!r}: types are of "
                          f"{sorted(EVENT_TYPES)}")
    return Webhook(check_url(entry["url"]), secret, tuple(types))


def webhooks(node: Node) -> list[Webhook]:
    """The webhooks of config.json as it is now (read again: 'usagi webhook add' edits it)."""
    return [_webhook(e) for e in node.home.load_config().webhooks]


async def add_webhook(node: Node, url: str, types: Sequence[str] = ()) -> Webhook:
    """Add a receiver with a new secret; it is sent the events from now on."""
    hook = _webhook({"url": url, "types": list(types),
                     "secret": "whsec_" + base64.b64encode(
                         secrets.token_bytes(32)).decode()})
    config = node.home.load_config()
    if any(e.get("url") == url for e in config.webhooks):
        raise NodeError(f"{url[:200]} is a webhook already")
    config.webhooks.append({"url": hook.url, "secret": hook.secret, "types": list(hook.types)})
    await node.ledger.webhook_follow(url)
    node.home.save_config(config)
    return hook


async def remove_webhook(node: Node, url: str) -> None:
    config = node.home.load_config()
    kept = [e for e in config.webhooks if e.get("url") != url]
    if len(kept) == len(config.webhooks):
        raise NodeError(f"{url[:200]} is not a webhook of this node")
    config.webhooks = kept
    node.home.save_config(config)
    await node.ledger.webhook_forget(url)


async def webhook_log(node: Node, *, url: str | None = None, seq: int | None = None,
                      limit: int = 100) -> list[WebhookAttempt]:
    return await node.ledger.webhook_log(url=url, seq=seq, limit=limit)


async def replay_webhook(node: Node, seqs: Sequence[int], url: str | None = None) -> list[int]:
    """Send events ``seqs`` again (to ``url``, or every webhook that wants each)."""
    hooks = [h for h in webhooks(node) if url is None or h.url == url]
    if url is not None and not hooks:
        raise NodeError(f"{url[:200]} is not a webhook of this node")
    queued: set[int] = set()
    for hook in hooks:
        queued.update(await node.ledger.webhook_replay(hook.url, seqs, 0.0))
    return sorted(queued)


async def webhook_follow(node: Node, url: str) -> None:
    await node.ledger.webhook_follow(url)


async def webhook_enqueue(node: Node, hook: Webhook, now: float) -> int:
    return await node.ledger.webhook_enqueue(hook.url, hook.types, now)


async def webhook_due(node: Node, url: str, now: float, limit: int = 50
                      ) -> list[tuple[Event, int]]:
    return await node.ledger.webhook_due(url, now, limit)


async def webhook_attempted(node: Node, attempt: WebhookAttempt, next_at: float | None) -> None:
    await node.ledger.webhook_attempted(attempt, next_at)


async def webhook_next_due(node: Node) -> float | None:
    return await node.ledger.webhook_next_due()
