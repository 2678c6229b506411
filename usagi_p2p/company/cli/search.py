"""``usagi search``: find documents by their words (docs/spec.md section 12, "Search").

Calls ``operations.search_documents`` (or ``reindex_search``) and prints the
result (``usagi_p2p.company.views``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import click

from ..views import SEARCH_HEADERS, search_json, search_row
from .common import emit, ride, run, table, wants_json, with_node

if TYPE_CHECKING:
    from ...node import operations as ops
    from ...node.node import Node

__all__ = ["search"]


@click.command()
@click.argument("query", required=False)
@click.option("--partner", default=None, help="Only this partner (name, prefix or DID).")
@click.option("--kind", default=None, help="Only this kind, e.g. quote.")
@click.option("--direction", type=click.Choice(["in", "out"]), default=None,
              help="Only received (in) or sent (out) documents.")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 100),
              help="Show the best N.")
@click.option("--cursor", default=None, help="The next page (the cursor --json printed).")
@click.option("--reindex", is_flag=True,
              help="Build the search index again from the ledger (then search, if QUERY).")
@click.pass_context
def search(ctx: click.Context, query: str | None, partner: str | None, kind: str | None,
           direction: Literal["in", "out"] | None, limit: int, cursor: str | None,
           reindex: bool) -> None:
    """Find documents whose reference, line text, note, plugin fields or partner
    name hold every word of QUERY, best match first.

    Any script works, without spaces between words: 六角ナット finds a line
    "M6 六角ナット SUS304". Words of one or two characters are looked for too,
    more slowly. Quotes, *, NEAR, - and the like are only characters.

    Example: usagi search 六角ナット --partner Osaka
    """
    if query is None and not reindex:
        raise click.UsageError("give a QUERY (or --reindex)")
    if not reindex:  # with a node serving this home, through its local API
        params = {k: v for k, v in (("q", query), ("partner", partner), ("kind", kind),
                                    ("direction", direction), ("limit", str(limit)),
                                    ("cursor", cursor)) if v is not None}
        found = ride(ctx, "GET", "/api/v1/search?" + urlencode(params))
        if found is not None:
            _print_found(ctx, found)
            return

    from ...node import operations as ops

    def progress(done: int, total: int) -> None:
        if not wants_json(ctx):
            click.echo(f"indexed {done} of {total} documents", err=True)

    async def searching(node: Node) -> tuple[int | None, ops.SearchPage | None]:
        indexed = await ops.reindex_search(node, progress) if reindex else None
        page = (await ops.search_documents(node, query, partner=partner, kind=kind,
                                           direction=direction, limit=limit, cursor=cursor)
                if query is not None else None)
        return indexed, page

    indexed, page = run(with_node(ctx, searching))
    if page is None:
        emit(ctx, {"indexed": indexed},
             lambda: click.echo(f"search index rebuilt: {indexed} documents"))
        return

    _print_found(ctx, search_json(page))


def _print_found(ctx: click.Context, found: dict[str, Any]) -> None:
    """A page of results as ``search_json`` gives it (and ``GET /api/v1/search``)."""

    def human() -> None:
        if found["results"]:
            table(SEARCH_HEADERS, [search_row(r) for r in found["results"]])
        else:
            click.echo("nothing found")
        if found["cursor"]:
            click.echo(f"more: usagi search ... --cursor {found['cursor']}", err=True)

    emit(ctx, found, human)
