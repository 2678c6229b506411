"""``usagi match``: the three-way match of a trade (docs/commerce.md, issue 19).

The rules are the kernel's (``kernel.match_thread``), reached through the
operation ``match_documents``; this command prints the result
(``usagi_p2p.company.views``): one summary line, the items, then the
findings. It rides on a running ``usagi serve`` like the other commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ...node.terminal import printable
from ..views import MATCH_HEADERS, match_json, match_row
from .common import emit, ride, run, table, with_node

if TYPE_CHECKING:
    from kernel import Match

    from ...node.node import Node

__all__ = ["match", "print_match"]


@click.command()
@click.argument("cid")
@click.pass_context
def match(ctx: click.Context, cid: str) -> None:
    """Match a trade's quote, order, delivery notes and invoices (three-way match).

    CID is any document of the thread. Exit code 0 when nothing disagrees
    (quantities still to deliver or to bill are shown, not failures), 1 when
    something does: billed but not delivered, prices not as ordered, lines
    no document explains, figures that do not add up.

    Example: usagi match bafyrei… && echo "ready to pay"
    """
    from kernel.cid import CID

    target = CID.parse(cid)
    data = ride(ctx, "GET", f"/api/v1/documents/{target}/match")
    if data is None:
        from ...node import operations as ops

        async def matching(node: Node) -> Match:
            return await ops.match_documents(node, target)

        data = match_json(run(with_node(ctx, matching)))
    shown: dict[str, Any] = data
    emit(ctx, shown, lambda: print_match(shown))
    if not shown["ok"]:
        raise SystemExit(1)


def print_match(data: dict[str, Any]) -> None:
    """A match as a person reads it: the verdict, the items, what to check."""
    click.echo(printable(data["summary"]))
    if data["items"]:
        click.echo()
        table(MATCH_HEADERS, [match_row(item) for item in data["items"]])
    if data["findings"]:
        click.echo()
        for f in data["findings"]:
            mark = "warning" if f["level"] == "warning" else "open   "
            click.echo(printable(f"{mark} [{f['code']}] {f['message']}"))
