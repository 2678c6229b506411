"""Full-text search over a node's documents (docs/spec.md section 12, "Search").

Part of ``usagi_p2p.node.operations`` (see there). What is indexed and how a
query is read: usagi_p2p/node/fulltext.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from kernel.cid import CID

from ..fulltext import (
    InvalidQueryError,
    Query,
    Snippet,
    expression,
    parse_query,
    snippet,
)
from ..node import Node

__all__ = ["SearchHit", "SearchPage", "MAX_LIMIT", "search_documents", "reindex_search"]

#: The most results one page of a search holds.
MAX_LIMIT: Final = 100
#: How far into the results a cursor may lead (pages of ranked results are
#: counted by offset: a search is for finding, not for walking the ledger).
MAX_OFFSET: Final = 10_000
_CURSOR_PREFIX: Final = "s1:"
#: A term naming more partners than this is looked for as a substring in the
#: rows the other terms leave, not through one index alternative per partner.
BROAD_TERM: Final = 16


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One document a search found."""

    cid: CID
    direction: str
    kind: str
    ref: str | None
    partner: str
    #: The partner's name now; None for a DID this node has no partner under.
    partner_name: str | None
    issued_at: str
    recorded_at: datetime
    status: str
    #: Where it matched, in its text, reference or partner name; the text is
    #: the partner's as written, control characters as spaces (faces escape it).
    snippet: Snippet


@dataclass(frozen=True, slots=True)
class SearchPage:
    hits: tuple[SearchHit, ...]
    #: Give it back for the next page; None when there is none.
    cursor: str | None


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("ascii")
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        offset = int(text[len(_CURSOR_PREFIX):])
    except (UnicodeError, ValueError, binascii.Error):
        raise InvalidQueryError("the cursor is not one this search gave") from None
    if not 0 < offset <= MAX_OFFSET:
        raise InvalidQueryError("the cursor is not one this search gave")
    return offset


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{offset}".encode()).decode().rstrip("=")


async def search_documents(node: Node, query: str, *, partner: str | None = None,
                           kind: str | None = None,
                           direction: Literal["in", "out"] | None = None,
                           limit: int = 20, cursor: str | None = None) -> SearchPage:
    """The documents matching ``query`` (every term of it), best match first, then
    newest; ``partner`` (name, prefix or DID, with its earlier keys), ``kind``
    and ``direction`` narrow it. A term also finds the documents of partners
    whose current name contains it."""
    terms = parse_query(query)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError(f"limit must be 1 to {MAX_LIMIT}, not {limit}")
    offset = _offset(cursor)
    # Documents are indexed off the exchange's path (node/indexing.py): what
    # waits is indexed now, so a document recorded a moment ago is found.
    await node.index_backlog()
    dids = await node.partner_dids(partner) if partner else None
    # The partners each term names today (rotated keys keep their partner's name).
    parties = await node.ledger.partners_named(terms.terms)
    # A term naming many partners ("Partner", "株式会社") is not made one FTS5
    # alternative per partner (a thousand ORed phrases took a second at 10k
    # documents, docs/scale.md): it filters the rows the other terms leave, by
    # its text or the partners it names, as a short term does.
    broad = tuple(t for t in terms.long if len(parties[t]) > BROAD_TERM)
    indexed = Query(tuple(t for t in terms.terms if t not in broad))
    rows = await node.ledger.search(
        expression(indexed, parties), [(t, parties[t]) for t in terms.terms],
        partners=dids, kind=kind, direction=direction, limit=limit + 1, offset=offset)
    names = await node.ledger.partner_names(r.partner for r in rows[:limit])
    hits = tuple(
        SearchHit(r.cid, r.direction, r.kind, r.ref, r.partner, names.get(r.partner),
                  r.issued_at, datetime.fromtimestamp(r.recorded_at, UTC), r.status,
                  snippet((r.texts[1], r.texts[0], r.texts[2], names.get(r.partner) or ""),
                          terms.terms))
        for r in rows[:limit])
    more = len(rows) > limit and offset + limit <= MAX_OFFSET
    return SearchPage(hits, _cursor(offset + limit) if more else None)


async def reindex_search(node: Node, progress: Callable[[int, int], None] | None = None
                         ) -> int:
    """Build the search index again from the documents the ledger holds; how many."""
    await node.ledger.reset_index()
    return await node.index_backlog(progress)
