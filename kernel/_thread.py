"""Threads: a trade's history as a hash-linked chain (docs/spec.md, "Threads").

The first document of a thread has neither ``thread`` nor ``prev``; its
envelope CID names the thread. Every later document carries ``thread`` (that
CID) and ``prev`` (the CIDs of the documents it answers, all in the thread).
A thread holds when every link resolves, one pair of parties speaks
throughout, no document is older than what it answers, and all name the same
thread. Anyone holding the keys can check this end to end.

Three uses, one rule:

* :func:`check_links` judges one reply as it arrives, against what the node
  already holds (:class:`Held`): it may link only documents between the same
  two parties. CIDs are not secret, so without this a partner could hang a
  document on another partner's thread and break its verification.
* :func:`verify_thread` checks a whole thread, all or nothing.
* :func:`split_thread` keeps what holds and names each document that does not
  (an archive import restores the one and quarantines the other).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._document import parse_time
from ._envelope import Opened
from .cid import CID
from .errors import ForeignThreadError, ThreadError, UnknownPrevError

__all__ = ["verify_thread", "split_thread", "check_links", "canonical", "Held"]


@dataclass(frozen=True, slots=True)
class Held:
    """What a node knows of a document it holds: enough to judge a link to it."""

    partner: str  # the other party (every document a node holds is between it and one partner)
    thread: CID  # the thread's first document; a first document's own CID
    issued_at: str


def canonical(did: str, aliases: Mapping[str, str]) -> str:
    """Follow key rotations (old -> new) to the key a party uses now."""
    for _ in range(64):  # a chain of rotations, never a cycle
        nxt = aliases.get(did)
        if nxt is None:
            return did
        did = nxt
    raise ThreadError("key rotations form a cycle")


def check_links(document: Mapping[str, Any], partner: str, held: Mapping[CID, Held],
                aliases: Mapping[str, str] | None = None) -> None:
    """The rule on receipt (docs/spec.md section 9): a reply links only documents the
    node holds with the same partner, all of one thread, none newer than the reply.

    ``partner`` is the reply's other party (on receipt, its sender); ``held`` maps
    CIDs the node holds (at least every one the reply links) to what it knows of
    them; ``aliases`` follow key rotations. A first document links nothing and
    always passes. Raises, in this order of precedence:

    * ForeignThreadError: a link names a document with another party (final);
    * UnknownPrevError: a link names a document not held (the original may still
      be on its way: the sender may try again later);
    * ThreadError: the links break the thread's rules inside the pair (final).
    """
    thread = document.get("thread")
    if thread is None:
        return
    aliases = aliases or {}
    party = canonical(partner, aliases)
    links = [thread, *document.get("prev", ())]
    for link in links:
        known = held.get(link)
        if known is not None and canonical(known.partner, aliases) != party:
            raise ForeignThreadError(f"{link} is a document with another party")
    for link in links:
        if link not in held:
            raise UnknownPrevError(f"{link} is not a document this node holds")
    if held[thread].thread != thread:
        raise ThreadError(f"{thread} is not the first document of a thread")
    issued = parse_time(document["issued_at"])
    for link in document.get("prev", ()):
        if held[link].thread != thread:
            raise ThreadError(f"{link} belongs to thread {held[link].thread}, not {thread}")
        if parse_time(held[link].issued_at) > issued:
            raise ThreadError(f"the document is older than {link}, which it answers")


def verify_thread(documents: Iterable[Opened], aliases: Mapping[str, str] | None = None
                  ) -> list[Opened]:
    """Check a whole thread; return it in causal order (root first).

    ``aliases`` maps rotated keys to their successors (kernel/_rotation.py), so
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
            raise ForeignThreadError(f"{opened.cid} is between other parties than the thread")
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


def split_thread(thread: CID, documents: Iterable[Opened],
                 aliases: Mapping[str, str] | None = None
                 ) -> tuple[list[Opened], list[tuple[Opened, ThreadError]]]:
    """What of ``thread`` holds, in causal order, and every other document with why.

    Where one bad document must not cost the others (an archive import). The
    part that holds is the first document (CID ``thread``) and every document
    between the same two parties, naming ``thread``, whose ``prev`` links all
    lead to documents that hold, none newer than it. When nothing is wrong, the
    first list is exactly what :func:`verify_thread` returns.
    """
    aliases = aliases or {}
    bad: list[tuple[Opened, ThreadError]] = []
    root: Opened | None = None
    seen: set[CID] = set()
    rest: list[Opened] = []
    for opened in documents:
        if opened.cid in seen:
            bad.append((opened, ThreadError(f"{opened.cid} appears twice")))
        elif opened.cid == thread and "thread" not in opened.document:
            root = opened
        else:
            rest.append(opened)
        seen.add(opened.cid)
    if root is None:
        return [], [(o, ThreadError(f"{o.cid}: the thread's first document {thread} is "
                                    "missing")) for o in rest] + bad
    pair = {canonical(root.document["from"], aliases), canonical(root.document["to"], aliases)}
    remaining: dict[CID, Opened] = {}
    for opened in rest:
        doc = opened.document
        if {canonical(doc["from"], aliases), canonical(doc["to"], aliases)} != pair:
            bad.append((opened, ForeignThreadError(
                f"{opened.cid} is between other parties than the thread")))
        elif "thread" not in doc:
            bad.append((opened, ThreadError(f"{opened.cid} is the first document of another "
                                            "thread")))
        elif doc["thread"] != thread:
            bad.append((opened, ThreadError(
                f"{opened.cid} names thread {doc['thread']}, not {thread}")))
        else:
            remaining[opened.cid] = opened
    # Kahn's algorithm as in verify_thread (waves, ties by time then CID); a
    # document whose links never all hold is set aside with the link that does not.
    order = [root]
    placed = {root.cid: root}
    while True:
        ready = [o for o in remaining.values()
                 if all(link in placed for link in o.document.get("prev", ()))]
        if not ready:
            break
        ready.sort(key=lambda o: (o.document["issued_at"], o.cid.raw))
        for opened in ready:
            del remaining[opened.cid]
            issued = parse_time(opened.document["issued_at"])
            older = [link for link in opened.document.get("prev", ())
                     if parse_time(placed[link].document["issued_at"]) > issued]
            if older:
                bad.append((opened, ThreadError(
                    f"{opened.cid} is older than {older[0]}, which it answers")))
                continue
            order.append(opened)
            placed[opened.cid] = opened
    for opened in remaining.values():
        link = next((c for c in opened.document.get("prev", ()) if c not in placed), thread)
        bad.append((opened, ThreadError(
            f"{opened.cid} links {link}, which is not in the thread (or does not hold)")))
    return order, bad
