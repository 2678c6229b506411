"""Full-text search: what of a document is indexed, how a query becomes an FTS5
expression, and how a snippet is cut (docs/spec.md section 12, "Search").

Pure functions; the ledger runs the SQL (``Ledger.search``), the operation
``operations.search_documents`` gives faces typed results.

**What is indexed**, per document, in the FTS5 table ``search`` (tokenizer
``trigram``, so Japanese and any other script without spaces is found by any
substring of three or more characters: ``ナット`` finds ``六角ナット``):

* ``ref``: the document's reference;
* ``body``: each line's ``text`` and ``ref``, the ``note``, and the values of
  every plugin field (``ext``, of the document and of each line: what the
  plugins extracted when it was sent), one per line;
* ``partner``: the partner's name when the document was recorded;
* ``party``: a key of the partner's DID (:func:`party_key`: 12 characters, not
  the DID's 56, since every character costs index entries), so that a
  partner's *current* name finds its documents after a rename: a query term that is part of a partner's name
  today also matches ``party`` for that partner's keys (:func:`expression`).
  The name is resolved at query time because a rename would otherwise rewrite
  every row of the partner's documents, and the DID never changes.

Text is indexed NFKC-normalised (full-width ``ＳＵＳ３０４`` is ``SUS304``,
half-width ``ﾅｯﾄ`` is ``ナット``) and so are query terms; the trigram tokenizer
matches case-insensitively.

**Queries** are never passed to FTS5 as written. A query is split on white
space into at most :data:`MAX_TERMS` terms; a document matches when every term
occurs in it. The index keeps which trigrams each row holds, not where
(``detail=none``: a third of the index's size with positions, docs/scale.md):
each term of three or more characters finds its candidates through its
trigrams, each an FTS5 string (``"…"``, inner quotes doubled, so ``"``, ``*``,
``NEAR``, ``AND``, ``-`` or ``col:`` are just characters to look for), and the
ledger keeps the candidates that hold the term itself (``LIKE``, or
:func:`contains` for letters beyond ASCII, so every letter matches
case-insensitively). A term of one or two characters cannot use a trigram
index; it is looked for as a substring in the rows the other terms and filters
leave, or in every row when the query has no longer term.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kernel import DOCUMENT_LIMITS, dagcbor

from .errors import InvalidQueryError

__all__ = ["InvalidQueryError", "Query", "MAX_QUERY", "MAX_TERMS", "TRIGRAM", "document_text",
           "signed_text", "normalise", "party_key", "Snippet", "parse_query", "expression",
           "trigrams", "caseless", "contains", "ascii_caseless", "like_pattern", "snippet"]

#: The longest query accepted, in characters.
MAX_QUERY: Final = 500
#: The most terms a query may have.
MAX_TERMS: Final = 16
#: Characters a term needs to be looked up in the trigram index.
TRIGRAM: Final = 3
#: Characters of context a snippet keeps around its first match.
SNIPPET_CONTEXT: Final = 30


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: its terms (normalised), long ones and short ones."""

    terms: tuple[str, ...]

    @property
    def long(self) -> tuple[str, ...]:
        """Terms the trigram index can look up."""
        return tuple(t for t in self.terms if len(t) >= TRIGRAM)

    @property
    def short(self) -> tuple[str, ...]:
        """Terms of one or two characters: a substring scan (``LIKE``)."""
        return tuple(t for t in self.terms if len(t) < TRIGRAM)


def party_key(did: str) -> str:
    """The ``party`` column's key for a DID: ``@`` and 11 characters of its SHA-256
    (a collision would only add another partner's documents to a term's matches)."""
    return "@" + hashlib.sha256(did.encode()).hexdigest()[:11]


#: Control characters but the line feed and the tab, each indexed as a space: a
#: NUL would end the text for the tokenizer, and none of them is looked for.
_CONTROLS: Final = {c: " " for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))
                    if c not in (0x09, 0x0A)}


def normalise(text: str) -> str:
    """Text as it is indexed and looked for: NFKC, control characters as spaces."""
    return unicodedata.normalize("NFKC", text).translate(_CONTROLS)


def parse_query(text: str) -> Query:
    """The terms of a user's query; :class:`InvalidQueryError` when it has none or too many."""
    if len(text) > MAX_QUERY:
        raise InvalidQueryError(f"a search query has at most {MAX_QUERY} characters, "
                                f"this one {len(text)}")
    terms: list[str] = []
    for raw in normalise(text).split():
        term = "".join(c for c in raw if unicodedata.category(c)[0] != "C")
        if term and term not in terms:
            terms.append(term)
    if not terms:
        raise InvalidQueryError("the search query is empty: give a word to look for")
    if len(terms) > MAX_TERMS:
        raise InvalidQueryError(f"a search query has at most {MAX_TERMS} terms, "
                                f"this one {len(terms)}")
    return Query(tuple(terms))


def _string(text: str) -> str:
    """``text`` as an FTS5 string: in double quotes, each inner one doubled."""
    return '"' + text.replace('"', '""') + '"'


def trigrams(term: str) -> list[str]:
    """Trigrams of ``term`` that cover each of its characters: those starting at 0,
    3, 6, … and the last one. Every document holding ``term`` holds them all;
    one holding them all is a candidate the ledger then checks (:func:`contains`)."""
    starts = [*range(0, len(term) - TRIGRAM + 1, TRIGRAM), len(term) - TRIGRAM]
    return list(dict.fromkeys(term[i:i + TRIGRAM] for i in starts))


def expression(query: Query, parties: Mapping[str, Sequence[str]]) -> str | None:
    """The FTS5 MATCH expression that finds the candidates for the query's long terms
    (None if it has none): for each term, its :func:`trigrams`, or those of the
    ``party`` key of a partner whose name contains it.

    The index keeps no positions (``detail=none``, docs/scale.md), so it cannot
    match a phrase: a candidate holds each trigram somewhere, and the ledger
    keeps those that hold the term itself (``Ledger.search``).

    ``parties``: term -> the DIDs of partners whose current name contains it;
    that term then also matches those partners' documents.
    """
    parts = []
    for term in query.long:
        keys = [term, *(party_key(did) for did in parties.get(term, ()))]
        alternatives = ["(" + " AND ".join(_string(t) for t in trigrams(key)) + ")"
                        for key in keys]
        parts.append("(" + " OR ".join(alternatives) + ")")
    return " AND ".join(parts) or None


def caseless(term: str) -> str:
    """``term`` as :func:`contains` looks for it."""
    return _folded(term)


def contains(text: str | None, needle: str) -> bool:
    """Whether ``text`` holds ``needle`` (made by :func:`caseless`), every letter
    lower-cased as the index does: the ledger's check of a term with letters
    beyond ASCII, which ``LIKE`` would compare case-sensitively."""
    return text is not None and needle in _folded(text)


def ascii_caseless(term: str) -> bool:
    """Whether ``LIKE`` (case-insensitive for ASCII letters only) finds ``term``
    exactly as :func:`contains` would."""
    return all(c.isascii() or c.lower() == c.upper() for c in term)


def like_pattern(term: str) -> str:
    """``term`` as a LIKE pattern matching it anywhere (escape character ``\\``)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _values(value: Any) -> Iterable[str]:
    """Every text or number in a plugin field's value, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        yield str(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _values(v)


def document_text(document: Mapping[str, Any]) -> str:
    """The ``body`` column of a document (see the module docstring): lines' text and
    references, the note, plugin field values; one per line, NFKC."""
    parts: list[str] = []
    lines = document.get("lines")
    for line in lines if isinstance(lines, list) else ():
        if not isinstance(line, Mapping):
            continue
        for key in ("text", "ref"):
            if isinstance(line.get(key), str):
                parts.append(line[key])
        parts.extend(_values(line.get("ext")))
    if isinstance(document.get("note"), str):
        parts.append(document["note"])
    parts.extend(_values(document.get("ext")))
    return normalise("\n".join(p for p in parts if p))


def signed_text(signed: bytes) -> str:
    """:func:`document_text` of a signed document as the ledger holds it ("" if it
    cannot be read). Not verified again: the ledger holds only documents that
    verified when they were recorded."""
    try:
        wrapper = dagcbor.decode(signed)
        body = dagcbor.decode(wrapper["body"], DOCUMENT_LIMITS)
    except Exception:  # noqa: BLE001 (an unreadable row is indexed without its body)
        return ""
    return document_text(body) if isinstance(body, Mapping) else ""


def _folded(text: str) -> str:
    """``text`` lower-cased character by character, keeping every offset."""
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


@dataclass(frozen=True, slots=True)
class Snippet:
    """Where a document matched: a piece of its text, and the (start, end) offsets
    in it, in characters, of each match. The text is kept whole (a face marks
    the ranges as it likes, and escapes the partner's text as it must)."""

    text: str
    matches: tuple[tuple[int, int], ...] = ()


def snippet(texts: Sequence[str], terms: Sequence[str], context: int = SNIPPET_CONTEXT
            ) -> Snippet:
    """A piece of the first of ``texts`` holding a term, every term in it located.

    The window runs ``context`` characters before the first match and twice
    that after it (an ellipsis marks a cut). No match (a document found by its
    partner's current name): the start of the first non-empty text.
    """
    needles = [_folded(t) for t in terms if t]
    for text in texts:
        folded = _folded(text)
        hits = [i for n in needles if (i := folded.find(n)) >= 0]
        if not hits:
            continue
        first = min(hits)
        start, end = max(0, first - context), min(len(text), first + context * 2)
        lead = "…" if start > 0 else ""
        window = folded[start:end]
        spans: list[tuple[int, int]] = []
        for needle in needles:
            at = window.find(needle)
            while at >= 0:
                spans.append((at, min(at + len(needle), len(window))))
                at = window.find(needle, at + 1)
        merged: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return Snippet(lead + text[start:end] + ("…" if end < len(text) else ""),
                       tuple((a + len(lead), b + len(lead)) for a, b in merged))
    for text in texts:
        if text:
            cut = text[:context * 3]
            return Snippet(cut + ("…" if len(text) > len(cut) else ""))
    return Snippet("")
