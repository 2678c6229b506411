"""``usagi webhook add|list|remove|log|replay``: where events are POSTed (docs/api.md, "Webhooks").

Webhooks live in config.json (``webhooks``); ``usagi serve`` sends to them and
sees a change without a restart. ``add`` prints the signing secret (the
receiver verifies with it; it stays in config.json, mode 0600); ``log`` is the
delivery log; ``replay`` queues events again for the running node to send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from ...node.terminal import printable
from .common import emit, run, table, with_node

if TYPE_CHECKING:
    from ...node import operations as ops
    from ...node.node import Node

__all__ = ["webhook_group"]


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _seqs(values: tuple[str, ...]) -> list[int]:
    """``12``, ``12-20``: event seqs."""
    out: list[int] = []
    for value in values:
        first, _, last = value.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise click.BadParameter(f"{value!r}: an event id or a range like 12-20")
        low, high = int(first), int(last or first)
        if high < low or high - low > 100_000:
            raise click.BadParameter(f"{value!r}: a range from low to high (at most 100000)")
        out.extend(range(low, high + 1))
    return out


@click.group("webhook")
def webhook_group() -> None:
    """Webhooks: POST each event, signed (Standard Webhooks), to the company's systems."""


@webhook_group.command("add")
@click.argument("url")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.pass_context
def webhook_add(ctx: click.Context, url: str, types: tuple[str, ...]) -> None:
    """Send events from now on to URL (http or https; redirects are not followed).

    Prints the secret the receiver verifies signatures with.

    Example: usagi webhook add https://erp.example/usagi --type document.received
    """
    from ...node import operations as ops

    async def add(node: Node) -> ops.Webhook:
        return await ops.add_webhook(node, url, types)

    hook = run(with_node(ctx, add))
    emit(ctx, {"url": hook.url, "secret": hook.secret, "types": list(hook.types)},
         lambda: click.echo(f"added {printable(hook.url)}\nsecret {hook.secret}\n"
                            "(give the secret to the receiver; 'usagi webhook list' hides it)"))


@webhook_group.command("list")
@click.pass_context
def webhook_list(ctx: click.Context) -> None:
    """The configured webhooks and the event types each is sent (secrets hidden).

    Example: usagi webhook list
    """
    from ...node import operations as ops

    async def hooks(node: Node) -> list[ops.Webhook]:
        return ops.webhooks(node)

    found = run(with_node(ctx, hooks))
    emit(ctx, [{"url": h.url, "types": list(h.types)} for h in found],
         lambda: table(["URL", "TYPES"], [[h.url, ",".join(h.types) or "all"] for h in found]))


@webhook_group.command("remove")
@click.argument("url")
@click.pass_context
def webhook_remove(ctx: click.Context, url: str) -> None:
    """Stop sending to URL; what it was still owed is dropped (its log stays).

    Example: usagi webhook remove https://erp.example/usagi
    """
    from ...node import operations as ops

    async def remove(node: Node) -> None:
        await ops.remove_webhook(node, url)

    run(with_node(ctx, remove))
    emit(ctx, {"removed": url}, lambda: click.echo(f"removed {printable(url)}"))


@webhook_group.command("log")
@click.option("--url", default=None, help="Only this webhook.")
@click.option("--seq", type=int, default=None, help="Only this event.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def webhook_log(ctx: click.Context, url: str | None, seq: int | None, limit: int) -> None:
    """The delivery log: each attempt, its HTTP status or error.

    Example: usagi webhook log --url https://erp.example/usagi
    """
    from ...node import operations as ops

    async def log(node: Node) -> list[ops.WebhookAttempt]:
        return await ops.webhook_log(node, url=url, seq=seq, limit=limit)

    attempts = run(with_node(ctx, log))
    emit(ctx, [{"seq": a.seq, "url": a.url, "attempt": a.attempt, "status": a.status,
                "at": _when(a.at), "error": a.error} for a in attempts],
         lambda: table(["SEQ", "ATTEMPT", "STATUS", "AT", "URL", "ERROR"],
                       [[str(a.seq), str(a.attempt), str(a.status or "-"), _when(a.at), a.url,
                         a.error or ""] for a in attempts]))


@webhook_group.command("replay")
@click.argument("seqs", nargs=-1, required=True)
@click.option("--url", default=None, help="Only to this webhook (default: every one).")
@click.pass_context
def webhook_replay(ctx: click.Context, seqs: tuple[str, ...], url: str | None) -> None:
    """Send events again (ids or ranges: 12 15-20), same webhook-id, attempts anew.

    Example: usagi webhook replay 120-135 --url https://erp.example/usagi
    """
    from ...node import operations as ops

    wanted = _seqs(seqs)

    async def replay(node: Node) -> list[int]:
        return await ops.replay_webhook(node, wanted, url)

    queued = run(with_node(ctx, replay))
    emit(ctx, {"queued": queued},
         lambda: click.echo(f"queued {len(queued)} event(s) again"
                            + ("" if len(queued) == len(wanted) else
                               f"; {len(wanted) - len(queued)} no longer kept")))
