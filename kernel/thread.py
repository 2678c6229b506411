"""Threads: a trade's history as a hash-linked chain (docs/spec.md, "Threads").

The first document of a thread has neither ``thread`` nor ``prev``; its
envelope CID names the thread. Every later document carries ``thread`` (that
CID) and ``prev`` (the CIDs of the documents it answers, all in the thread).
A thread holds when every link resolves, one pair of parties speaks
throughout, no document is older than what it answers, and all name the same
thread. Anyone holding the keys can check this end to end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .cid import CID
from .document import parse_time
from .envelope import Opened
from .errors import ThreadError

__all__ = ["verify_thread", "canonical"]


def canonical(did: str, aliases: Mapping[str, str]) -> str:
    """Follow key rotations (old -> new) to the key a party uses now."""
    for _ in range(64):  # a chain of rotations, never a cycle
        nxt = aliases.get(did)
        if nxt is None:
            return did
        did = nxt
    raise ThreadError("key rotations form a cycle")


def verify_thread(documents: Iterable[Opened], aliases: Mapping[str, str] | None = None
                  ) -> list[Opened]:
    """Check a whole thread; return it in causal order (root first).

    ``aliases`` maps rotated keys to their successors (kernel/rotation.py), so
    a party that rotated its key mid-thread is still the same party.
    Raises ThreadError naming the first CID that breaks a rule.
    """
    aliases = aliases or {}
    by_cid: dict[CID, Opened] = {}
    for opened in documents:
        if opened.cid in by_cid:
            raise ThreadError(f"{opened.cid} appears twice")
        by_cid[opened.cid] = opened
    if not by_cid:
        raise ThreadError("an empty thread")
    roots = [o for o in by_cid.values() if "thread" not in o.document]
    if len(roots) != 1:
        raise ThreadError(f"a thread has exactly one first document, found {len(roots)}")
    root = roots[0]
    pair = {canonical(root.document["from"], aliases), canonical(root.document["to"], aliases)}
    for opened in by_cid.values():
        doc = opened.document
        if {canonical(doc["from"], aliases), canonical(doc["to"], aliases)} != pair:
            raise ThreadError(f"{opened.cid} is between other parties than the thread")
        if opened is root:
            continue
        if doc["thread"] != root.cid:
            raise ThreadError(f"{opened.cid} names thread {doc['thread']}, not {root.cid}")
        issued = parse_time(doc["issued_at"])
        for link in doc["prev"]:
            answered = by_cid.get(link)
            if answered is None:
                raise ThreadError(f"{opened.cid} links {link}, which is not in the thread")
            if parse_time(answered.document["issued_at"]) > issued:
                raise ThreadError(f"{opened.cid} is older than {link}, which it answers")
    # Causal order: Kahn's algorithm over prev links, ties by time then CID.
    order: list[Opened] = []
    placed: set[CID] = set()
    remaining = dict(by_cid)
    while remaining:
        ready = [
            o for o in remaining.values()
            if all(link in placed for link in o.document.get("prev", ()))
        ]
        if not ready:
            raise ThreadError("the prev links form a cycle")
        ready.sort(key=lambda o: (o.document["issued_at"], o.cid.raw))
        for o in ready:
            order.append(o)
            placed.add(o.cid)
            del remaining[o.cid]
    return order
