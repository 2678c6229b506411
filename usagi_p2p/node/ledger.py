"""The ledger: what a node has sent and received, and what it owes (SQLite, WAL).

Tables: ``partners``, ``documents`` (each opened document, both directions,
with its signed bytes so it can be shown without decrypting again; the
ciphertext block in the block store stays the source of truth), ``acks``
(signed, verified), ``outbox`` (notices to deliver, with attempts and a lease
so two processes on one home never send the same notice at once) and
``nonces`` (every notice answered, with the ack given, so a replay gets the
same answer and is never processed twice), ``idempotency_keys`` (the local
API's keyed requests, docs/api.md) and ``quarantine`` (documents of an
imported archive that did not verify, kept apart: docs/archive.md).

``synchronous=FULL``: a commit is on disk before the call returns, and the
node signs and sends an ack only after that commit.

The ledger is the one owner of ledger.db: no other module states SQL on it
(tests/node/test_ledger_owner.py). The archive asks it for a consistent read
(:meth:`Ledger.snapshot`) and gives pages back (:meth:`Ledger.restore`); the
tables and their migrations are in :mod:`usagi_p2p.node.schema`. The clock is
the node's (``clock``), never read here. This module is past 600 lines for
that reason: every statement on the database, its reads and the conditional
writes that must see the row as it is, stays in one place to be reviewed
together, rather than in as many modules as there are callers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiosqlite

from ipfs.blockstore import StoreError, StoreUnavailableError
from ipfs.sqlite import ONE_CALL, attach_blocks, busy, create_private, in_thread, migrate
from kernel import Held, canonical, dagcbor
from kernel.cid import CID

from .errors import NameTakenError
from .fulltext import (
    ascii_caseless,
    caseless,
    contains,
    like_pattern,
    normalise,
    party_key,
    signed_text,
)
from .schema import MIGRATIONS
from .stored import pack, unpack

__all__ = ["Ledger", "Partner", "DocumentRow", "OutboxRow", "Snapshot", "ExportRow", "Restore",
           "QuarantineRow", "KeyClaim", "KeyRow", "SearchRow", "Event", "WebhookAttempt"]

log = logging.getLogger("usagi.ledger")

#: Adds a batch's usage to a partner's window, or starts a new window. A
#: batch counted in a window that has since ended does not reset a newer one.
_ADD_USAGE: Final = (
    "INSERT INTO quota_usage (partner, period_start, docs, bytes) VALUES (?,?,?,?) "
    "ON CONFLICT(partner) DO UPDATE SET "
    "docs = CASE WHEN period_start = excluded.period_start THEN docs + excluded.docs "
    "ELSE excluded.docs END, "
    "bytes = CASE WHEN period_start = excluded.period_start THEN bytes + excluded.bytes "
    "ELSE excluded.bytes END, "
    "period_start = excluded.period_start "
    "WHERE excluded.period_start >= period_start")


#: The page size of a new ledger (bytes); see ``Ledger.open``.
PAGE_SIZE: Final = 8192

#: UPDATE … RETURNING (SQLite 3.35+) claims due notices in one statement.
_RETURNING: Final = sqlite3.sqlite_version_info >= (3, 35, 0)
_OUTBOX_COLUMNS: Final = ("cid, partner, notice, state, attempts, next_attempt, last_error, "
                          "created")
#: What a claim reads of each notice: its row, the prev links of its document, and
#: its rowid (the order it was queued in, with ``created``).
_CLAIM_COLUMNS: Final = (_OUTBOX_COLUMNS + ", (SELECT prev FROM documents "
                         "WHERE documents.cid = outbox.cid), outbox.rowid")


def fold(text: str) -> str:
    """A name for caseless matching: NFKC, case-folded, NFKC again (Unicode's
    compatibility caseless match), so that the way a name was typed (case,
    composed or decomposed accents, full-width letters) does not matter.

    One tailoring: the dot that default folding leaves on a Turkish capital
    İ ("i" + U+0307) is dropped, so "istanbul" finds "İstanbul". (The dotless
    ı stays its own letter, as in Turkish.)
    """
    folded = _strict_fold(text)
    if "\u0307" not in folded:
        return folded
    return unicodedata.normalize("NFKC", folded.replace("i\u0307", "i"))


#: :func:`fold` of names seen before: partner names are few and change rarely.
_fold_cached: Final = functools.lru_cache(maxsize=1 << 16)(fold)


def _strict_fold(text: str) -> str:
    """:func:`fold` without the İ tailoring: tells "İnci" from "Inci" when both exist."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def free_name(name: str, taken: set[str]) -> str:
    """``name``, or the first of ``name (2)``, ``name (3)``, … (at most 200 characters)
    whose :func:`_strict_fold` is not in ``taken``."""
    if _strict_fold(name) not in taken:
        return name
    n = 2
    while True:
        suffix = f" ({n})"
        candidate = name[:200 - len(suffix)].rstrip() + suffix
        if _strict_fold(candidate) not in taken:
            return candidate
        n += 1


def _typed(exc: sqlite3.Error) -> StoreError:
    """A SQLite failure as the store error a peer and the CLI understand: a busy or
    locked database is temporary (503, retry), anything else is a store failure.
    Told by SQLite's result code (:func:`ipfs.sqlite.busy`), not the message."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if busy(exc):
        return StoreUnavailableError(f"the ledger is busy ({name}): {exc}")
    return StoreError(f"the ledger cannot be written ({name}): {exc}")


_PARTNER_SELECT = ("SELECT did, name, endpoint, status, added_at, rotated_to, valid_until "
                   "FROM partners ")


@dataclass(frozen=True, slots=True)
class Partner:
    did: str
    name: str
    endpoint: str
    status: str
    added_at: float
    rotated_to: str | None = None
    valid_until: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def accepted_at(self, now: float) -> bool:
        """Whether this key may speak now: active, or rotated and still in its overlap."""
        return self.active or (self.status == "rotated" and self.valid_until is not None
                               and now <= self.valid_until)


@dataclass(frozen=True, slots=True)
class DocumentRow:
    cid: CID
    direction: str
    partner: str
    kind: str
    thread: CID
    ref: str | None
    issued_at: str
    recorded_at: float
    status: str
    reason: str | None
    digest: bytes
    signed: bytes
    user: str | None
    findings: str | None = None


@dataclass(frozen=True, slots=True)
class SearchRow:
    """A document a search found (``Ledger.search``): what a listing shows, and the
    indexed text for the snippet."""

    cid: CID
    direction: str
    partner: str
    kind: str
    ref: str | None
    issued_at: str
    recorded_at: float
    status: str
    #: The indexed columns: (ref, body, partner name when recorded).
    texts: tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """One attempt at a keyed request: the token's id, the key, a random claim."""

    token: str
    key: str
    claim: bytes


@dataclass(frozen=True, slots=True)
class KeyRow:
    """An idempotency key as stored (table ``idempotency_keys``)."""

    token: str
    key: str
    token_name: str
    request: bytes
    claim: bytes
    state: str
    lease_until: float
    cid: CID | None
    status: int | None
    answer: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class OutboxRow:
    cid: CID
    partner: str
    notice: bytes
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    created: float = 0.0
    #: The documents this one answers (its ``prev``), as claimed for delivery
    #: (``claim_due``): delivery keeps a reply behind a batch in flight that
    #: carries what it answers (delivery.py, "In order"). Empty: none, or not read.
    prev: tuple[CID, ...] = ()


def _prev_links(stored: bytes | None) -> tuple[CID, ...]:
    """``documents.prev`` (a DAG-CBOR list of CIDs; NULL for a received row) as CIDs."""
    if not stored or stored == b"\x80":  # NULL, or the empty list
        return ()
    links = dagcbor.decode(stored)
    return tuple(link for link in links if isinstance(link, CID)) if isinstance(
        links, list) else ()


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """A document of an imported archive that did not verify (docs/archive.md, "Import")."""

    cid: CID
    direction: str
    partner: str
    kind: str
    thread: CID
    issued_at: str
    recorded_at: float
    code: str  # why: an error code (docs/spec.md section 14)
    reason: str
    archive: bytes  # the root CID of the archive it came in (raw), or b""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the sequence (docs/spec.md section 11.6): what changed, as committed."""

    seq: int
    at: float
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One attempt to deliver an event to a webhook (the delivery log)."""

    seq: int
    url: str
    attempt: int
    status: int | None
    at: float
    error: str | None


#: The columns of an event as :func:`_event` reads them (schema.py, steps 5 and 7).
_EVENT_SELECT: Final = ("seq, at, type, data, cid, direction, kind, ref, thread, partner, "
                        "partner_name, status, reason")


def _event(row: Sequence[Any]) -> Event:
    """An event row (:data:`_EVENT_SELECT`): a document event's columns made into the
    JSON object step 5's triggers wrote (schema.py, step 7), or its JSON (a partner
    event, or one written before step 7; CIDs stored as hex, since SQL cannot write
    CID text), with CIDs as text."""
    if row[3] == "":
        cid, direction, kind, ref, thread, did, name, status, reason = row[4:13]
        data: dict[str, Any] = {
            "cid": str(CID.from_bytes(cid)), "direction": direction, "kind": kind, "ref": ref,
            "thread": str(CID.from_bytes(thread)), "partner": {"did": did, "name": name},
            "status": status, "reason": reason}
        return Event(int(row[0]), float(row[1]), str(row[2]), data)
    data = json.loads(row[3])
    for key in ("cid", "thread"):
        if isinstance(data.get(key), str):
            data[key] = str(CID.from_bytes(bytes.fromhex(data[key])))
    return Event(int(row[0]), float(row[1]), str(row[2]), data)


@dataclass(slots=True)
class Restore:
    """What one page of an archive gives back to the ledger (:meth:`Ledger.restore`).

    Every row is inserted only where the ledger holds none under its key: what
    the ledger holds stays as it is, and importing an archive twice changes
    nothing the second time.
    """

    #: (row, prev): prev is the DAG-CBOR list of the document's links.
    documents: list[tuple[DocumentRow, bytes]] = field(default_factory=list)
    #: (cid, signed ack, status, reason, at).
    acks: list[tuple[CID, bytes, str, str | None, str]] = field(default_factory=list)
    #: (sender, nonce, cid, our ack, seen at): a replayed notice gets the same answer.
    nonces: list[tuple[str, bytes, CID, bytes, float]] = field(default_factory=list)
    #: (cid, partner, notice, why): back in the outbox, held ``undelivered``.
    outbox: list[tuple[CID, str, bytes, str]] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    #: (did, name, endpoint, status).
    partners: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: Partners' key rotations, old -> new (the old key stays refused: no overlap).
    partner_rotations: dict[str, str] = field(default_factory=dict)
    #: Our own, old -> new: the alias only (its overlap long over).
    own_rotations: dict[str, str] = field(default_factory=dict)


#: One document as an export reads it: (cid, direction, partner, kind, thread,
#: issued_at, recorded_at, status, reason, signed ack or None, ack time or None,
#: block or None). The block comes with the row when the snapshot joins the
#: store's file (:meth:`Ledger.snapshot`), else it is None.
ExportRow = tuple[bytes, str, str, str, bytes, str, float, str, str | None, bytes | None,
                  str | None, bytes | None]


class Snapshot:
    """One consistent read of ledger.db for an export (:meth:`Ledger.snapshot`).

    Its own read-only connection holds one read transaction from the first
    read to :meth:`close`: the count, the partners, the aliases, every row and
    (with the store's file attached) every block are one snapshot, whatever is
    written meanwhile. Rows come :meth:`pages` at a time, so memory stays one
    page whatever the history's size. Blocking: use it from a worker thread.
    """

    def __init__(self, path: str, where: str, args: Sequence[Any], blocks: str | None) -> None:
        self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                    check_same_thread=False)
        try:
            self._con.execute("PRAGMA busy_timeout=10000")
            table = attach_blocks(self._con, blocks, "blk") if blocks is not None else None
            #: Whether each row carries its block (read in the same statement).
            self.joined = table is not None
            self._con.execute("BEGIN")
            self.total = int(self._con.execute(
                f"SELECT count(*) FROM documents d {where}", args).fetchone()[0])  # noqa: S608
            self.partners = [dict(zip(("did", "name", "endpoint", "status"), r, strict=True))
                             for r in self._con.execute(
                                 "SELECT did, name, endpoint, status FROM partners ORDER BY did")]
            # Key rotations (ours and the partners'): the partner's own record wins.
            self.aliases: dict[str, str] = {r[1]: r[2] for r in self._con.execute(_ALIASES)}
            # With the store's file attached the blocks come in the same statement
            # (one B-tree lookup per row, no second query per page); the sort is
            # only within a thread ("temp b-tree for right part of order by").
            self._rows = self._con.execute(
                "SELECT d.cid, d.direction, d.partner, d.kind, d.thread, d.issued_at, "  # noqa: S608
                "d.recorded_at, d.status, d.reason, a.raw, a.at, "
                + ("b.data" if table else "NULL") +
                " FROM documents d LEFT JOIN acks a ON a.cid = d.cid"
                + (f" LEFT JOIN {table} b ON b.cid = d.cid" if table else "")
                + f" {where} ORDER BY d.thread, d.recorded_at, d.cid", args)
        except BaseException:
            self._con.close()
            raise

    def pages(self, size: int) -> Iterator[list[ExportRow]]:
        """The rows in thread order, ``size`` at a time."""
        while rows := self._rows.fetchmany(size):
            yield rows

    def close(self) -> None:
        try:
            if self._con.in_transaction:
                self._con.execute("COMMIT")
        finally:
            self._con.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DOC_COLUMNS = ("cid, direction, partner, kind, thread, ref, issued_at, recorded_at, status, "
                "reason, digest, signed, user, findings")


_KEY_SELECT: Final = ("SELECT token, key, token_name, request, claim, state, lease_until, cid, "
                      "status, answer, created_at FROM idempotency_keys "
                      "WHERE token = ? AND key = ?")


def _key(row: Sequence[Any]) -> KeyRow:
    return KeyRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                  CID.from_bytes(row[7]) if row[7] is not None else None, row[8], row[9], row[10])


def _doc(row: Sequence[Any]) -> DocumentRow:
    return DocumentRow(CID.from_bytes(row[0]), row[1], row[2], row[3], CID.from_bytes(row[4]),
                       row[5], row[6], row[7], row[8], row[9], row[10],
                       unpack(row[11], row[2]), row[12], row[13])


def _report_abandoned(done: asyncio.Future[_Done]) -> None:
    """Log the failure of a write whose caller was cancelled while it ran (it was
    rolled back): there is no one left to raise it to."""
    if not done.cancelled() and (exc := done.exception()) is not None:
        _log_abandoned(exc)


def _log_abandoned(exc: BaseException) -> None:
    log.warning("a ledger write failed after its caller was cancelled (rolled back): %s", exc)


#: The first statement of each write transaction: the time the event triggers
#: stamp (schema.py, step 7: ``events_clock``) is the node's clock as it begins.
_CLOCK: Final = "UPDATE events_clock SET at = ?"


@dataclass(slots=True)
class _Job:
    """One caller's write (:meth:`Ledger.write`), committed with the writes of the
    callers that queued while a transaction ran: one transaction, one sync."""

    groups: list[tuple[str, list[Sequence[Any]]]]
    reads: Sequence[tuple[str, Sequence[Any]]]
    #: Whether its commit must be on disk before it returns (synchronous=FULL).
    durable: bool
    #: What it answers: (rows changed by its last statement, the rows of its reads,
    #: the conflicts its guard found).
    done: asyncio.Future[_Done]
    #: SELECT (digest, cid) run first: a digest of ``expected`` held by another CID
    #: than the one expected leaves its statements and reads out.
    guard: Sequence[tuple[str, Sequence[Any]]] = ()
    expected: dict[bytes, bytes] = field(default_factory=dict)
    #: Its caller was cancelled while it ran: a failure is logged, not raised.
    abandoned: bool = False


#: (rows changed by the last statement, the reads' rows, digest -> the CID holding it).
_Done = tuple[int, list[list[Any]], dict[bytes, bytes]]


def _jobs_transaction(conn: sqlite3.Connection, clock: float,
                      jobs: Sequence[tuple[Sequence[tuple[str, list[Sequence[Any]]]],
                                           Sequence[tuple[str, Sequence[Any]]],
                                           Sequence[tuple[str, Sequence[Any]]],
                                           dict[bytes, bytes]]],
                      sync: bool) -> list[_Done]:
    """Several callers' writes as one transaction, then each one's reads; for each,
    what :class:`_Job` answers. A job whose guard finds a conflict writes nothing
    (its guard runs inside the transaction, right before its statements). Synced
    at commit unless ``sync`` is False (WAL only: see :func:`_lease`). On the
    connection's thread."""
    if not sync:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CLOCK, (clock,))
            changed: list[tuple[int, dict[bytes, bytes]]] = []
            for groups, _, guard, expected in jobs:
                conflicts = {digest: cid for sql, args in guard
                             for digest, cid in conn.execute(sql, args)
                             if expected.get(digest, cid) != cid}
                count = 0
                for sql, rows in () if conflicts else groups:
                    cursor = (conn.execute(sql, rows[0]) if len(rows) == 1
                              else conn.executemany(sql, rows))
                    count = cursor.rowcount
                changed.append((count, conflicts))
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # e.g. SQLite already rolled back (SQLITE_FULL)
                log.debug("nothing rolled back: %s", exc)
            raise
    finally:
        if not sync:
            conn.execute("PRAGMA synchronous=FULL")
    return [(count, [] if conflicts else _selects(conn, reads), conflicts)
            for (count, conflicts), (_, reads, _, _) in zip(changed, jobs, strict=True)]


def _observed_transaction(conn: sqlite3.Connection, before: Sequence[tuple[str, Sequence[Any]]],
                          groups: Sequence[tuple[str, list[Sequence[Any]]]],
                          after: Sequence[tuple[str, Sequence[Any]]]
                          ) -> tuple[list[list[Any]], list[list[Any]]]:
    """A transaction with SELECTs ``before`` and ``after`` the writes inside it,
    so together they tell what the writes changed (no other writer runs between
    them); their rows. On the connection's thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        seen = _selects(conn, before)
        for sql, rows in groups:
            conn.executemany(sql, rows)
        found = _selects(conn, after)
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("nothing rolled back: %s", exc)
        raise
    return seen, found


def _groups(statements: Sequence[tuple[str, Sequence[Any]]]
            ) -> list[tuple[str, list[Sequence[Any]]]]:
    """Consecutive statements with the same SQL as one executemany: a batch of 100
    received documents is three calls, not three hundred."""
    groups: list[tuple[str, list[Sequence[Any]]]] = []
    for sql, args in statements:
        if groups and groups[-1][0] == sql:
            groups[-1][1].append(tuple(args))
        else:
            groups.append((sql, [tuple(args)]))
    return groups


def _selects(conn: sqlite3.Connection,
             queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
    """Several SELECTs, each read to the end; on the connection's thread."""
    return [conn.execute(sql, args).fetchall() for sql, args in queries]


def _chunked(sql: str, fixed: Sequence[Any], values: Sequence[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """``sql`` with ``IN ({marks})`` over ``values``, 500 at a time (SQLite's variable limit)."""
    out = []
    for i in range(0, len(values), 500):
        chunk = tuple(values[i:i + 500])
        out.append((sql.format(marks=",".join("?" * len(chunk))), (*fixed, *chunk)))
    return out


_DIGESTS: Final = "SELECT cid, digest FROM documents WHERE cid IN ({marks})"
_HELD: Final = "SELECT cid, partner, thread, issued_at FROM documents WHERE cid IN ({marks})"
_SEEN: Final = "SELECT nonce, ack FROM nonces WHERE sender = ? AND nonce IN ({marks})"
_SEEN_BY: Final = "SELECT sender, nonce, ack FROM nonces WHERE sender = ? AND nonce IN ({marks})"
_BY_DIGEST: Final = "SELECT digest, cid FROM documents WHERE digest IN ({marks})"
_RECORDED: Final = "SELECT cid FROM documents WHERE cid IN ({marks})"
#: One failed attempt on a notice still pending (?1 attempts to add, ?2 the budget,
#: ?3 the next attempt, ?4 the error, ?5 the CID): past the budget, undelivered.
_FAIL_NOTICE: Final = (
    "UPDATE outbox SET attempts = attempts + ?1, lease_until = 0, "
    "state = CASE WHEN attempts + ?1 >= ?2 THEN 'undelivered' ELSE 'pending' END, "
    "next_attempt = CASE WHEN attempts + ?1 >= ?2 THEN next_attempt ELSE ?3 END, "
    "last_error = CASE WHEN attempts + ?1 >= ?2 "
    "THEN 'undelivered after ' || (attempts + ?1) || ' attempts: ' || ?4 ELSE ?4 END "
    "WHERE cid = ?5 AND state = 'pending'")
#: The document of a notice just given up follows it, unless an ack decided it.
_GIVEN_UP_DOCUMENT: Final = (
    "UPDATE documents SET status = 'undelivered', reason = (SELECT last_error FROM outbox o "
    "WHERE o.cid = documents.cid) WHERE cid = ?1 AND status = 'queued' AND EXISTS "
    "(SELECT 1 FROM outbox o WHERE o.cid = documents.cid AND o.state = 'undelivered')")
#: A restored partner (?1 did … ?5 added_at), inserted only if its DID is new and,
#: unless it is a rotated key, no other partner has its name (see add_partner).
#: A restore's partners check their names against the names taken, folded once per
#: transaction into a keyed temporary table (this connection's only) that each insert
#: then extends: folding every partner's name per insert made 10,000 partners take
#: ~17 s (quadratic). Filled inside the write's transaction, the table is what the
#: ledger holds when the inserts run, as the per-row check was.
_RESTORE_NAMES: Final = (
    ("CREATE TEMP TABLE IF NOT EXISTS restore_names (folded TEXT PRIMARY KEY) WITHOUT ROWID", ()),
    ("DELETE FROM temp.restore_names", ()),
    ("INSERT OR IGNORE INTO temp.restore_names SELECT usagi_strict_fold(name) FROM partners "
     "WHERE status != 'rotated'", ()),
)
_RESTORE_PARTNER: Final = (
    "INSERT INTO partners (did, name, endpoint, status, added_at) "
    "SELECT ?1, ?2, ?3, ?4, ?5 WHERE ?4 = 'rotated' OR NOT EXISTS (SELECT 1 FROM "
    "temp.restore_names WHERE folded = usagi_strict_fold(?2)) "
    "ON CONFLICT(did) DO NOTHING")
_RESTORE_NAME: Final = ("INSERT OR IGNORE INTO temp.restore_names "
                        "SELECT usagi_strict_fold(?1) WHERE ?2 != 'rotated'")
_KNOWN_PARTNERS: Final = "SELECT did FROM partners WHERE did IN ({marks})"
_ALIASES: Final = ("SELECT 0, old, new FROM rotations UNION ALL SELECT 1, did, rotated_to "
                   "FROM partners WHERE rotated_to IS NOT NULL ORDER BY 1")


def _document_where(*, direction: str | None, partners: Sequence[str] | None,
                    thread: CID | None, since: float | None, until: float | None,
                    kind: str | None, status: str | None) -> tuple[list[str], list[Any]]:
    """The WHERE terms (joined by AND) and their arguments of a listing of documents."""
    where: list[str] = []
    args: list[Any] = []
    # The few undelivered documents of a node holding 100,000 are found through the
    # outbox's index (a document is undelivered only while its notice is: mark_failed,
    # retry_undelivered and restore write both), not by reading every row of the
    # direction: the unary + keeps the planner off the direction and partner indexes.
    # (The status page: 0.04 ms instead of 220 ms at 100k sent; bench/ui.py.)
    through_outbox = status == "undelivered"
    plus = "+" if through_outbox else ""
    if through_outbox:
        where.append("cid IN (SELECT cid FROM outbox WHERE state = 'undelivered')")
    if partners:
        where.append(f"{plus}partner IN ({','.join('?' * len(partners))})")
        args.extend(partners)
    for column, value in (("kind", kind), ("status", status)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if direction:
        # With a partner, its index (partner, recorded_at) leads: "+" keeps the
        # direction's index from being chosen instead, which scanned every
        # document of that direction for one partner's page (164 ms at 100k).
        where.append("+direction = ?" if partners or through_outbox else "direction = ?")
        args.append(direction)
    if thread is not None:
        where.append("thread = ?")
        args.append(thread.raw)
    if since is not None:
        where.append("recorded_at >= ?")
        args.append(since)
    if until is not None:
        where.append("recorded_at < ?")
        args.append(until)
    return where, args


def _insert_received(row: DocumentRow, prev: bytes) -> tuple[str, Sequence[Any]]:
    """A received document's INSERT, written only while no other CID holds its digest."""
    return (
        f"INSERT OR IGNORE INTO documents ({_DOC_COLUMNS}, prev) "
        "SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,? "
        "WHERE NOT EXISTS (SELECT 1 FROM documents WHERE digest = ? AND cid != ?)",
        (row.cid.raw, row.direction, row.partner, row.kind, row.thread.raw, row.ref,
         row.issued_at, row.recorded_at, row.status, row.reason, row.digest,
             pack(row.signed, row.partner),
         row.user, row.findings, prev, row.digest, row.cid.raw),
    )


#: How many of a query's matches are ranked (``Ledger.search``): the newest
#: ones; older matches follow them newest first. A page of 20 from 1,000 scored
#: rows costs a few milliseconds however many documents match.
RANKED: Final = 1000

#: A queued document's search row (``Ledger.index_pending``): its ``search_rows``
#: id is taken first, then the row written under it unless it is there (a
#: document queued twice, or indexed by another process meanwhile). The
#: partner's name is the one it has now, in the same transaction. Both
#: statements do nothing for a document the ledger does not hold.
_INDEX_ID: Final = "INSERT OR IGNORE INTO search_rows (cid) SELECT cid FROM documents WHERE cid = ?"
_INDEX: Final = (
    "INSERT INTO search (rowid, ref, body, partner, party) SELECT r.id, ?1, ?2, "
    "coalesce((SELECT name FROM partners WHERE did = ?3), ''), ?5 FROM search_rows r "
    "WHERE r.cid = ?4 AND NOT EXISTS (SELECT 1 FROM search WHERE rowid = r.id)")


def _quiet(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[str, Sequence[Any]]]:
    """``statements`` with the events' triggers silent (schema.py, ``events_quiet``):
    for what restores history rather than makes news (an archive import)."""
    return [("INSERT OR IGNORE INTO events_quiet (one) VALUES (1)", ()), *statements,
            ("DELETE FROM events_quiet", ())]


def _index_statements(items: Sequence[tuple[bytes, str | None, str, str]]
                      ) -> list[tuple[str, Sequence[Any]]]:
    """For each (cid, ref, partner DID, body text): its search row (``_INDEX``)."""
    ids: list[tuple[str, Sequence[Any]]] = [(_INDEX_ID, (cid,)) for cid, *_ in items]
    return ids + [(_INDEX, (normalise(ref or ""), body, partner, cid, party_key(partner)))
                  for cid, ref, partner, body in items]


def _pending_texts(rows: Sequence[Any]) -> list[tuple[bytes, str | None, str, str]]:
    """(cid, ref, partner, signed) -> (cid, ref, partner, body text); blocking."""
    return [(cid, ref, partner, signed_text(unpack(signed, partner)))
            for cid, ref, partner, signed in rows]


#: The next documents waiting for the search index, oldest first: (queue id, CID,
#: ref, partner, signed); the last three NULL for one the ledger does not hold or
#: that is indexed already (nothing to read: its queue row only goes).
_QUEUED: Final = (
    "SELECT q.id, q.cid, d.ref, d.partner, CASE WHEN EXISTS (SELECT 1 FROM search_rows r "
    "WHERE r.cid = q.cid) THEN NULL ELSE d.signed END FROM search_queue q "
    "LEFT JOIN documents d ON d.cid = q.cid ORDER BY q.id LIMIT ?")


def _lease(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    """Run the claim without its own fsync; on the connection's thread.

    A lease is not worth a sync: one lost in a crash only lets a notice be
    claimed again (``serve`` releases every lease when it starts anyway). In
    WAL mode a commit under synchronous=NORMAL is ordered before the next
    commit, whose sync makes both durable, so nothing later can be kept
    without it.
    """
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.execute("PRAGMA synchronous=FULL")


class Ledger:
    """Async access to ledger.db. Use ``async with Ledger(path) as ledger``."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        #: Seconds since the epoch, for the times the ledger stamps on rows
        #: (the node passes its own clock, so a test can move both at once).
        self.clock = clock
        self._db: aiosqlite.Connection | None = None
        self._wal = False  # set by open()
        # One connection, many coroutines: transactions must not interleave.
        self._tx = asyncio.Lock()
        # Set (and replaced) after each commit of this connection: what waits
        # for new events (:meth:`committed`) wakes without polling.
        self._commit = asyncio.Event()
        # Writes waiting for the transaction in progress to end: the next one
        # commits them all at once (:meth:`_run`).
        self._queued: list[_Job] = []
        #: Documents and acks this connection has recorded (sent, received,
        #: delivered): the search indexer (indexing.py) waits for it to stand
        #: still before it takes the CPU and the ledger's one writer.
        self.recorded = 0

    async def __aenter__(self) -> Ledger:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        create_private(self.path)  # 0600: the ledger holds every document in plaintext
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA busy_timeout=10000")
        # Documents (~2.5 KiB signed) pack three to an 8 KiB page, one to a
        # 4 KiB page. A new file only: an existing WAL ledger keeps its size.
        await db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = await db.execute_fetchall("PRAGMA journal_mode=WAL")
        # A file system without shared memory keeps a rollback journal: the
        # ledger works, every commit synced, and the claim syncs too (below).
        self._wal = str(next(iter(mode))[0]).lower() == "wal"
        if not self._wal:
            log.warning("%s: WAL mode unavailable, using a rollback journal", self.path)
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        try:
            await migrate(db, MIGRATIONS)  # the tables: usagi_p2p/node/schema.py
        except BaseException:
            await db.close()
            raise
        await db.create_function("usagi_fold", 1, fold, deterministic=True)
        await db.create_function("usagi_strict_fold", 1, _strict_fold, deterministic=True)
        await db.create_function("usagi_has", 2, contains, deterministic=True)
        self._db = db
        # Not a migration: a ledger made before names were unique may hold two
        # partners under one name (restore and add_partner keep them unique).
        await self._unique_names()

    async def _unique_names(self) -> None:
        """Partner names are unique (add_partner); a ledger made before that rule may
        hold two partners under one name. The one added first keeps it; each later
        one gets the next free ``name (2)``, … and a warning names it."""
        rows = await self._all("SELECT did, name FROM partners WHERE status != 'rotated' "
                               "ORDER BY added_at, did")
        taken = {_strict_fold(name) for _, name in rows}
        seen: set[str] = set()
        renames = []
        for did, name in rows:
            key = _strict_fold(name)
            if key in seen:
                new = free_name(name, taken)
                taken.add(_strict_fold(new))
                seen.add(_strict_fold(new))
                renames.append((did, name, new))
            seen.add(key)
        if renames:
            await self.write([("UPDATE partners SET name = ? WHERE did = ?", (new, did))
                              for did, _, new in renames])
            for did, name, new in renames:
                log.warning("partner %s shared the name %r with another: renamed %r", did, name,
                            new)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("ledger is not open")
        return self._db

    # Every await on the connection is a round trip to its thread (~0.1 ms
    # here); execute_fetchall is one, execute + fetch + close would be three.

    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        rows = list(await self.db.execute_fetchall(sql, tuple(args)))
        return rows[0] if rows else None

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, tuple(args)))

    async def _reads(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Several SELECTs in one round trip to the connection's thread (one each
        without ONE_CALL); their rows, in order."""
        if ONE_CALL:
            return await in_thread(self.db, _selects, [(sql, tuple(a)) for sql, a in queries])
        return [await self._all(sql, args) for sql, args in queries]

    async def write(self, statements: Sequence[tuple[str, Sequence[Any]]],
                    reads: Sequence[tuple[str, Sequence[Any]]] = (), *,
                    durable: bool = True) -> list[list[Any]]:
        """Run statements in one durable transaction; a database failure is a typed error.

        ``reads`` (SELECTs) run after the commit, in the same round trip when
        ONE_CALL; their rows are returned in order. Writes that arrive while a
        transaction runs are committed together by the next one (:meth:`_run`).
        ``durable=False``: the commit may return before it is synced (WAL orders
        it before the next synced commit; for a write that a crash may lose, as
        a lease or an idempotency key's claim).
        """
        try:
            return await self._write(statements, reads, durable=durable)
        except sqlite3.Error as exc:
            raise _typed(exc) from exc
        finally:
            self._notify()

    def _notify(self) -> None:
        """Wake whatever waits for a commit (after a failed write too: harmless)."""
        done, self._commit = self._commit, asyncio.Event()
        done.set()

    def committed(self) -> asyncio.Event:
        """Set at the next commit of this process's ledger connection.

        Take it *before* reading what is new, then wait on it: a commit between
        the read and the wait has set it already, so nothing is missed. Commits
        of other processes are not seen: a waiter also reads again now and then.
        """
        return self._commit

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]],
                     reads: Sequence[tuple[str, Sequence[Any]]] = (), *,
                     durable: bool = True) -> list[list[Any]]:
        """Run statements in one durable transaction."""
        return (await self._run(statements, reads, durable))[1]

    async def _run(self, statements: Sequence[tuple[str, Sequence[Any]]],
                   reads: Sequence[tuple[str, Sequence[Any]]], durable: bool,
                   guard: Sequence[tuple[str, Sequence[Any]]] = (),
                   expected: dict[bytes, bytes] | None = None) -> _Done:
        """Run statements as one transaction: (rows changed by the last, the reads'
        rows, what ``guard`` found: see :class:`_Job`; then nothing is written).

        **Group commit.** The ledger has one writer, and a durable commit is an
        fsync. Callers that arrive while a transaction runs queue their writes;
        the first of them to get the lock commits every write queued by then in
        one transaction, each caller's statements in the order queued, then each
        caller's reads (ONE_CALL). Each write still commits whole or not at all:
        if the shared transaction fails, it is rolled back and each write is run
        again alone, so a caller gets its own answer or error. Eight API clients
        sending at once cost one commit, not eight.
        """
        groups = _groups(statements)
        if not groups:
            return 0, (await self._reads(reads) if reads else []), {}
        if not ONE_CALL:
            assert not guard, "a guarded write needs ONE_CALL"
            return await self._run_alone(groups, reads)
        job = _Job(groups, reads, durable or not self._wal,
                   asyncio.get_running_loop().create_future(), guard, expected or {})
        self._queued.append(job)
        try:
            async with self._tx:
                if not job.done.done():
                    jobs, self._queued = self._queued, []
                    # Shielded: the callers whose writes it carries wait for it,
                    # even if the one that runs it is cancelled.
                    await asyncio.shield(asyncio.ensure_future(self._commit_jobs(jobs)))
        except asyncio.CancelledError:
            if job in self._queued:  # not taken: never written
                self._queued.remove(job)
            elif job.done.done():  # ran already: a failure has no one to go to now
                _report_abandoned(job.done)
            else:  # taken: it runs whole, and its failure is logged (_commit_jobs)
                job.abandoned = True
            raise
        return job.done.result()

    async def _commit_jobs(self, jobs: list[_Job]) -> None:
        """Commit ``jobs`` in one transaction, or (it failed) each alone; set each
        one's result or error."""
        try:
            results = await in_thread(self.db, _jobs_transaction, self.clock(),
                                      [(job.groups, job.reads, job.guard, job.expected)
                                       for job in jobs],
                                      any(job.durable for job in jobs))
        except Exception as exc:
            if len(jobs) == 1:
                if jobs[0].abandoned:
                    _log_abandoned(exc)
                else:
                    jobs[0].done.set_exception(exc)
                return
            for job in jobs:  # whose was it? each on its own
                await self._commit_jobs([job])
            return
        except BaseException as exc:
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(exc)
            raise
        for job, result in zip(jobs, results, strict=True):
            job.done.set_result(result)

    async def _run_alone(self, groups: list[tuple[str, list[Sequence[Any]]]],
                         reads: Sequence[tuple[str, Sequence[Any]]]) -> _Done:
        """:meth:`_run` without ONE_CALL: statement by statement, one transaction."""
        db = self.db
        async with self._tx:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(_CLOCK, (self.clock(),))
                count = 0
                for sql, rows in groups:
                    if len(rows) == 1:
                        cursor = await db.execute(sql, rows[0])
                    else:
                        cursor = await db.executemany(sql, rows)
                    count = cursor.rowcount
                await db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
            return count, [await self._all(sql, args) for sql, args in reads], {}

    async def _observed_write(self, before: Sequence[tuple[str, Sequence[Any]]],
                              statements: Sequence[tuple[str, Sequence[Any]]],
                              after: Sequence[tuple[str, Sequence[Any]]]
                              ) -> tuple[list[list[Any]], list[list[Any]]]:
        """:meth:`write` with SELECTs right before and right after the statements, in
        their transaction (:func:`_observed_transaction`); the rows of both."""
        groups = [(_CLOCK, [(self.clock(),)]), *_groups(statements)]
        try:
            async with self._tx:
                if ONE_CALL:
                    return await in_thread(self.db, _observed_transaction, before, groups, after)
                db = self.db
                await db.execute("BEGIN IMMEDIATE")
                try:
                    seen = [list(await db.execute_fetchall(sql, tuple(a))) for sql, a in before]
                    for sql, rows in groups:
                        await db.executemany(sql, rows)
                    found = [list(await db.execute_fetchall(sql, tuple(a))) for sql, a in after]
                    await db.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
                return seen, found
        except sqlite3.Error as exc:
            raise _typed(exc) from exc

    async def _rollback(self) -> None:
        """Roll back after a failure, keeping the failure as the error.

        A task cancelled while it awaits COMMIT leaves the COMMIT to run on the
        connection's thread: the transaction may be committed by the time the
        ROLLBACK runs, which then has nothing to do. That is not a new error.
        """
        try:
            await self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("nothing rolled back: %s", exc)

    async def _change(self, sql: str, args: Sequence[Any], *, durable: bool = True) -> int:
        """Run one statement as its own durable transaction (:meth:`_run`); return how
        many rows it changed (the way to write "only if" without a read and an
        await before it)."""
        try:
            return (await self._run([(sql, args)], (), durable))[0]
        except sqlite3.Error as exc:
            raise _typed(exc) from exc
        finally:
            self._notify()

    # -- partners -----------------------------------------------------------

    async def add_partner(self, did: str, name: str, endpoint: str, invitation: bytes | None,
                          *, update: bool = True) -> Partner:
        """Store a new partner, active, under a name no other partner has; return it.

        Partner names are unique per node (docs/spec.md section 10): a new
        partner whose name another partner (a rotated key aside) already has,
        compared by :func:`_strict_fold`, is stored as ``name (2)``, ``name
        (3)``, …, so every stored name finds exactly its partner. A partner
        already stored keeps its name and status, which only this node's
        operator changes (rename, suspend, resume); with ``update`` its endpoint
        and invitation become the new ones (a pasted invitation), without it
        nothing changes (an introduction).
        """
        while True:
            taken = {r[0] for r in await self._all(
                "SELECT usagi_strict_fold(name) FROM partners WHERE status != 'rotated'")}
            # One statement: inserted only if the DID is new and the name still free,
            # so a concurrent pairing cannot slip the same name in between.
            inserted = await self._change(
                "INSERT INTO partners (did, name, endpoint, status, added_at, invitation) "
                "SELECT ?1, ?2, ?3, 'active', ?4, ?5 WHERE NOT EXISTS (SELECT 1 FROM partners "
                "WHERE status != 'rotated' AND usagi_strict_fold(name) = usagi_strict_fold(?2)) "
                "ON CONFLICT(did) DO NOTHING",
                (did, free_name(name, taken), endpoint, self.clock(), invitation))
            known = await self.partner(did)
            if inserted or known is not None:
                break  # else the name was taken meanwhile: the next free one
        assert known is not None
        if not inserted and update:
            await self._change("UPDATE partners SET endpoint = ?, invitation = coalesce(?, "
                               "invitation) WHERE did = ?", (endpoint, invitation, did))
            known = await self.partner(did)
            assert known is not None
        return known

    async def partner(self, did: str) -> Partner | None:
        row = await self._one(_PARTNER_SELECT + "WHERE did = ?", (did,))
        return Partner(*row) if row else None

    async def find_partner(self, key: str) -> Partner | None:
        """A partner by DID, exact name, or unique name prefix.

        Names match caselessly in any script (:func:`fold`): "ärzte" finds
        "Ärzte GmbH", "STRASSE" finds "Straße". The key is text, not a pattern.
        """
        if key.startswith("did:"):
            # A DID match wins: looked up by the key alone first, since the query
            # below folds every partner's name (O(partners) per send at 10,000).
            row = await self._one(_PARTNER_SELECT + "WHERE did = ?", (key,))
            if row:
                return Partner(*row)
        # One query for both readings of ``key``; a DID match wins.
        folded = fold(key)
        rows = await self._all(_PARTNER_SELECT + "WHERE did = ?1 OR (status != 'rotated' AND "
                               "substr(usagi_fold(name), 1, length(?2)) = ?2)", (key, folded))
        for r in rows:
            if r[0] == key:
                return Partner(*r)
        exact = [r for r in rows if fold(r[1]) == folded]
        if len(exact) > 1:  # e.g. "Inci" and "İnci": the untailored fold tells them apart
            strict = _strict_fold(key)
            exact = [r for r in exact if _strict_fold(r[1]) == strict] or exact
        rows = exact or rows
        return Partner(*rows[0]) if len(rows) == 1 else None

    async def partners(self) -> list[Partner]:
        rows = await self._all(_PARTNER_SELECT + "ORDER BY name")
        return [Partner(*r) for r in rows]

    async def partners_named(self, terms: Iterable[str]) -> dict[str, list[str]]:
        """For each term, the DIDs (rotated keys too) of the partners whose name now
        contains it, caselessly (:func:`fold`). Reads two columns of each partner
        and folds each name once per process (:func:`_fold_cached`): a search on a
        node with 10,000 partners asks this per query."""
        rows = [(did, _fold_cached(name))
                for did, name in await self._all("SELECT did, name FROM partners")]
        return {term: [did for did, name in rows if fold(term) in name] for term in terms}

    async def partner_names(self, dids: Iterable[str]) -> dict[str, str]:
        """The names of the partners among ``dids`` (those of one page of documents:
        not every partner's, which a node with thousands would read per page)."""
        wanted = sorted(set(dids))
        rows = [row for i in range(0, len(wanted), 500)
                for row in await self._all(
                    "SELECT did, name FROM partners WHERE did IN "
                    f"({','.join('?' * len(wanted[i:i + 500]))})", wanted[i:i + 500])]
        return {did: name for did, name in rows}

    async def set_partner(self, did: str, *, status: str | None = None, name: str | None = None) -> None:
        """Change a partner's status and/or name: one conditional statement, so both
        change or neither. Names stay unique (see add_partner): a name another
        partner has is refused (NameTakenError) and the status stays as it was."""
        if status is None and name is None:
            return
        if not await self._change(
                "UPDATE partners SET status = coalesce(?3, status), name = coalesce(?1, name) "
                "WHERE did = ?2 AND (?1 IS NULL OR NOT EXISTS (SELECT 1 FROM partners WHERE "
                "did != ?2 AND status != 'rotated' AND "
                "usagi_strict_fold(name) = usagi_strict_fold(?1)))", (name, did, status)):
            if name is not None and await self.partner(did) is not None:
                raise NameTakenError(f"another partner is called {name!r}")

    async def partner_rotated(self, old: str, new: str, valid_until: float) -> None:
        """A partner moved from ``old`` to ``new``: the new key takes its place, the
        old one is accepted until ``valid_until`` and refused after.

        ``rotated_to`` is set first: the new key's row is then no
        ``partner.added`` (the event trigger sees whose key it is), and the
        status change reports the rotation as ``partner.changed``."""
        await self.write([
            ("UPDATE partners SET rotated_to = ?, valid_until = ? WHERE did = ?",
             (new, valid_until, old)),
            ("INSERT INTO partners (did, name, endpoint, status, added_at, invitation) "
             "SELECT ?, name, endpoint, status, ?, invitation FROM partners WHERE did = ? "
             "ON CONFLICT(did) DO NOTHING", (new, self.clock(), old)),
            ("UPDATE partners SET status = 'rotated' WHERE did = ?", (old,)),
        ])

    async def record_rotation(self, old: str, new: str, overlap_until: float,
                              statement: bytes) -> None:
        await self.write([("INSERT OR REPLACE INTO rotations (old, new, overlap_until, statement) "
                           "VALUES (?, ?, ?, ?)", (old, new, overlap_until, statement))])

    async def own_rotations(self) -> list[tuple[str, str, float, bytes]]:
        return [tuple(r) for r in await self._all(
            "SELECT old, new, overlap_until, statement FROM rotations")]

    async def aliases(self) -> dict[str, str]:
        """Every rotated key (ours and our partners') -> the key that replaced it."""
        # One round trip; a partner's own record of its rotation wins over ours.
        return {r[1]: r[2] for r in await self._all(_ALIASES)}

    async def add_invitation(self, nonce: bytes, expires: float) -> None:
        await self.write([("INSERT INTO invitations (nonce, expires) VALUES (?, ?)",
                            (nonce, expires))])

    async def use_invitation(self, nonce: bytes, did: str, now: float) -> str | None:
        """Mark an invitation used by ``did``; return why not, or None when it worked.

        An invitation is used once: one conditional statement takes it, so of two
        introductions racing with one nonce exactly one gets it. The DID that
        used it may use it again (its introduction repeated: nothing new).
        """
        if await self._change(
                "UPDATE invitations SET used_by = ?1 WHERE nonce = ?2 AND expires >= ?3 "
                "AND (used_by IS NULL OR used_by = ?1)", (did, nonce, now)):
            return None
        row = await self._one("SELECT expires, used_by FROM invitations WHERE nonce = ?", (nonce,))
        if row is None:
            return "this node issued no such invitation"
        if row[0] < now:
            return "the invitation has expired"
        return "the invitation was already used by another party"

    # -- documents ----------------------------------------------------------

    @staticmethod
    def _insert_document(row: DocumentRow, prev: bytes) -> tuple[str, Sequence[Any]]:
        return (
            f"INSERT INTO documents ({_DOC_COLUMNS}, prev) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row.cid.raw, row.direction, row.partner, row.kind, row.thread.raw, row.ref,
             row.issued_at, row.recorded_at, row.status, row.reason, row.digest,
             pack(row.signed, row.partner),
             row.user, row.findings, prev),
        )

    async def record_sent_many(self, items: Sequence[tuple[DocumentRow, bytes, bytes]],
                               claim: KeyClaim | None = None) -> bool:
        """Each (row, prev, notice): the document and its queued notice, one transaction.

        With ``claim`` (the documents a keyed request of the local API sends),
        the key is given the first document's CID in the same transaction, and
        the documents and notices are written only while ``claim`` still holds
        the key: False, nothing written, when it does not (docs/api.md,
        "Idempotency-Key")."""
        return (await self.record_sent_groups([(items, claim)]))[0]

    async def record_sent_groups(
        self, groups: Sequence[tuple[Sequence[tuple[DocumentRow, bytes, bytes]], KeyClaim | None]],
    ) -> list[bool]:
        """Several sends (each a group of (row, prev, notice), with its key's claim or
        None) in ONE transaction: the local API's concurrent requests, coalesced.

        A keyed group is written only while its claim holds its key, which is
        given the group's first CID (and, for more than one document, the list
        of their CIDs as the key's pending ``answer``: an attempt that takes an
        abandoned key over answers with them, docs/api.md "Idempotency-Key");
        per group, whether it was written. Unkeyed groups are always written.
        """
        now = self.clock()
        statements: list[tuple[str, Sequence[Any]]] = []
        reads: list[tuple[str, Sequence[Any]]] = []
        for items, claim in groups:
            if not items:
                raise ValueError("a group sends at least one document")
            if claim is None:
                statements += [self._insert_document(row, prev) for row, prev, _ in items]
                statements += [
                    ("INSERT INTO outbox (cid, partner, notice, next_attempt, created) "
                     "VALUES (?,?,?,?,?)", (row.cid.raw, row.partner, notice, 0.0, now))
                    for row, _, notice in items]
                continue
            first = items[0][0].cid
            pending = (json.dumps([str(row.cid) for row, _, _ in items])
                       if len(items) > 1 else None)
            held = ("WHERE EXISTS (SELECT 1 FROM idempotency_keys WHERE token = ? AND key = ? "
                    "AND claim = ? AND cid = ?)")
            keyed = (claim.token, claim.key, claim.claim, first.raw)
            statements.append(
                ("UPDATE idempotency_keys SET cid = ?, answer = ? WHERE token = ? AND key = ? "
                 "AND claim = ? AND cid IS NULL",
                 (first.raw, pending, claim.token, claim.key, claim.claim)))
            for row, prev, notice in items:
                statements += [
                    (f"INSERT INTO documents ({_DOC_COLUMNS}, prev) "
                     f"SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,? {held}",
                     (row.cid.raw, row.direction, row.partner, row.kind, row.thread.raw, row.ref,
                      row.issued_at, row.recorded_at, row.status, row.reason, row.digest,
                      pack(row.signed, row.partner), row.user, row.findings, prev, *keyed)),
                    ("INSERT INTO outbox (cid, partner, notice, next_attempt, created) "
                     f"SELECT ?,?,?,?,? {held}",
                     (row.cid.raw, row.partner, notice, 0.0, now, *keyed))]
            reads.append(("SELECT count(*) FROM documents WHERE cid = ?", (first.raw,)))
        found = await self.write(statements, reads=reads)
        self.recorded += sum(len(items) for items, _ in groups)
        rows = iter(found)
        return [True if claim is None else bool(next(rows)[0][0]) for _, claim in groups]

    async def record_received_many(
        self, items: Sequence[tuple[DocumentRow, bytes, bytes, str, str, str, bytes]],
        usage: Sequence[tuple[str, float, int, int]] = (),
    ) -> set[CID]:
        """For each (row, prev, ack, ack status, ack time, sender, nonce): the opened
        document, the ack we give and the notice's nonce, all in one transaction,
        with ``usage`` (partner, window start, documents, bytes) added to the
        partners' quota windows.

        ``OR IGNORE``: a document that raced in twice is stored once. A signed
        document is recorded under one CID only: a row whose digest another CID
        holds already (a second envelope of the same signed document, in a batch
        that raced this one) is not written, nor its ack and nonce. Returns the
        CIDs of such rows, left out; the caller answers them as duplicates.
        """
        statements, reads = self._received(items, usage, self.clock())
        found = await self.write(statements, reads=reads)
        self.recorded += len(items)
        recorded = {raw for rows in found for (raw,) in rows}
        return {row.cid for row, *_ in items if row.cid.raw not in recorded}

    async def record_received_checked(
        self, items: Sequence[tuple[DocumentRow, bytes, bytes, str, str, str, bytes]],
        usage: Sequence[tuple[str, float, int, int]] = (),
    ) -> tuple[dict[bytes, CID], set[CID]]:
        """:meth:`record_received_many`, unless a signed document of ``items`` is
        recorded under another CID already (a second envelope of it): then nothing
        is written and those are returned (digest -> the CID holding it), to be
        answered as duplicates, in the same round trip as the write would be."""
        expected = {row.digest: row.cid.raw for row, *_ in items}
        if not ONE_CALL:
            recorded_as = await self.by_digest(list(expected))
            other = {d: c for d, c in recorded_as.items() if c.raw != expected[d]}
            return (other, set()) if other else ({}, await self.record_received_many(
                items, usage))
        statements, reads = self._received(items, usage, self.clock())
        try:  # committed with other writes waiting (group commit), guarded on its own
            _, found, held = await self._run(statements, reads, True,
                                             _chunked(_BY_DIGEST, (), list(expected)), expected)
        except sqlite3.Error as exc:
            raise _typed(exc) from exc
        finally:
            self._notify()
        self.recorded += len(items)
        if held:
            return {d: CID.from_bytes(c) for d, c in held.items()}, set()
        recorded = {raw for rows in found for (raw,) in rows}
        return {}, {row.cid for row, *_ in items if row.cid.raw not in recorded}

    @staticmethod
    def _received(items: Sequence[tuple[DocumentRow, bytes, bytes, str, str, str, bytes]],
                  usage: Sequence[tuple[str, float, int, int]], now: float
                  ) -> tuple[list[tuple[str, Sequence[Any]]], list[tuple[str, tuple[Any, ...]]]]:
        """The statements recording ``items`` and ``usage``, and the reads telling
        which documents are recorded after them."""
        documents: list[tuple[str, Sequence[Any]]] = []
        acks: list[tuple[str, Sequence[Any]]] = []
        nonces: list[tuple[str, Sequence[Any]]] = []
        for row, prev, ack, status, at, sender, nonce in items:
            documents.append(_insert_received(row, prev))
            acks.append(("INSERT OR IGNORE INTO acks (cid, raw, status, reason, at) "
                         "SELECT ?,?,?,?,? WHERE EXISTS (SELECT 1 FROM documents WHERE cid = ?)",
                         (row.cid.raw, ack, status, None, at, row.cid.raw)))
            nonces.append(("INSERT OR IGNORE INTO nonces (sender, nonce, cid, ack, seen_at) "
                           "SELECT ?,?,?,?,? WHERE EXISTS (SELECT 1 FROM documents WHERE cid = ?)",
                           (sender, nonce, row.cid.raw, ack, now, row.cid.raw)))
        cids = list({row.cid.raw: None for row, *_ in items})
        return (documents + acks + nonces + [(_ADD_USAGE, u) for u in usage],
                _chunked(_RECORDED, (), cids))

    async def add_quota_usage(self, usage: Sequence[tuple[str, float, int, int]]) -> None:
        """Change partners' counts (partner, window start, documents, bytes; negative
        takes back what was counted and not stored)."""
        if usage:
            await self.write([(_ADD_USAGE, u) for u in usage])

    async def quota_usage(self) -> dict[str, tuple[float, int, int]]:
        """partner DID -> (window start, documents, bytes) as last committed."""
        rows = await self._all("SELECT partner, period_start, docs, bytes FROM quota_usage")
        return {r[0]: (float(r[1]), int(r[2]), int(r[3])) for r in rows}

    async def record_nonce(self, sender: str, nonce: bytes, cid: CID, ack: bytes) -> None:
        await self.write([("INSERT OR IGNORE INTO nonces (sender, nonce, cid, ack, seen_at) "
                            "VALUES (?,?,?,?,?)", (sender, nonce, cid.raw, ack, self.clock()))])

    async def seen_nonce(self, sender: str, nonce: bytes) -> tuple[CID, bytes] | None:
        row = await self._one("SELECT cid, ack FROM nonces WHERE sender = ? AND nonce = ?",
                              (sender, nonce))
        return (CID.from_bytes(row[0]), row[1]) if row else None

    async def digests(self, cids: Sequence[CID]) -> dict[CID, bytes]:
        """The signed-document digests of many documents, in one round trip."""
        return {CID.from_bytes(raw): digest
                for rows in await self._reads(_chunked(_DIGESTS, (), [c.raw for c in cids]))
                for raw, digest in rows}

    async def seen_nonces(self, sender: str, nonces: Sequence[bytes]) -> dict[bytes, bytes]:
        """nonce -> the ack already given, for those of ``nonces`` seen before."""
        return {nonce: ack for rows in await self._reads(_chunked(_SEEN, (sender,), nonces))
                for nonce, ack in rows}

    async def receiving(self, nonces: dict[str, list[bytes]], cids: Sequence[CID]
                        ) -> tuple[dict[tuple[str, bytes], bytes], dict[str, str], dict[CID, bytes]]:
        """What a node reads to answer a batch of notices, in one round trip:
        the acks already given to these nonces (``sender -> nonces``), keyed by
        (sender, nonce) since a nonce is only unique per sender; the rotation
        aliases; and the digests of those of ``cids`` already stored."""
        seen = [q for sender, values in nonces.items()
                for q in _chunked(_SEEN_BY, (sender,), values)]
        digests = _chunked(_DIGESTS, (), [c.raw for c in cids])
        results = await self._reads([*seen, (_ALIASES, ()), *digests])
        return ({(sender, nonce): ack for rows in results[:len(seen)]
                 for sender, nonce, ack in rows},
                {r[1]: r[2] for r in results[len(seen)]},
                {CID.from_bytes(raw): d for rows in results[len(seen) + 1:] for raw, d in rows})

    async def by_digest(self, digests: Sequence[bytes]) -> dict[bytes, CID]:
        """digest -> the CID a signed document is recorded under, for those of
        ``digests`` recorded (one round trip)."""
        return {digest: CID.from_bytes(raw)
                for rows in await self._reads(_chunked(_BY_DIGEST, (), list(digests)))
                for digest, raw in rows}

    async def delivering(self, did: str, cids: Sequence[CID]
                         ) -> tuple[Partner | None, dict[CID, bytes], dict[str, str]]:
        """What a node reads to deliver a batch to ``did``, in one round trip: the
        partner, the digests of the documents sent, and the rotation aliases."""
        digests = _chunked(_DIGESTS, (), [c.raw for c in cids])
        results = await self._reads([(_PARTNER_SELECT + "WHERE did = ?", (did,)),
                                     (_ALIASES, ()), *digests])
        partner = Partner(*results[0][0]) if results[0] else None
        return (partner, {CID.from_bytes(raw): d for rows in results[2:] for raw, d in rows},
                {r[1]: r[2] for r in results[1]})

    async def document(self, cid: CID) -> DocumentRow | None:
        row = await self._one(f"SELECT {_DOC_COLUMNS} FROM documents WHERE cid = ?", (cid.raw,))
        return _doc(row) if row else None

    async def held(self, cids: Sequence[CID]) -> dict[CID, Held]:
        """What the ledger knows of those of ``cids`` it holds, in one round trip:
        enough to judge the links of a reply (kernel._thread.check_links)."""
        return {CID.from_bytes(raw): Held(partner, CID.from_bytes(thread), issued_at)
                for rows in await self._reads(_chunked(_HELD, (), [c.raw for c in cids]))
                for raw, partner, thread, issued_at in rows}

    async def thread(self, cid: CID, limit: int = 100_000
                     ) -> tuple[DocumentRow, list[DocumentRow], dict[str, str]] | None:
        """Document ``cid``, its thread, and the rotation aliases, in one round trip;
        None when the ledger does not hold ``cid``.

        The thread is the documents naming the same thread **between the same two
        parties** (the partner followed across key rotations), in recorded order: a
        document another partner hung on this thread (refused on receipt, but a
        ledger may hold one from before) is never gathered with it, so it cannot
        break the verification of anyone else's trade.
        """
        row_sql = f"SELECT {_DOC_COLUMNS} FROM documents WHERE cid = ?"
        members_sql = (f"SELECT {_DOC_COLUMNS} FROM documents WHERE thread = "
                       "(SELECT thread FROM documents WHERE cid = ?) "
                       "ORDER BY recorded_at, cid LIMIT ?")
        found, members, aliases_rows = await self._reads([
            (row_sql, (cid.raw,)), (members_sql, (cid.raw, limit)), (_ALIASES, ())])
        if not found:
            return None
        row = _doc(found[0])
        aliases = {r[1]: r[2] for r in aliases_rows}
        party = canonical(row.partner, aliases)
        return row, [m for m in map(_doc, members)
                     if m.partner == row.partner or canonical(m.partner, aliases) == party], aliases

    async def documents(self, *, direction: str | None = None,
                        partners: Sequence[str] | None = None,
                        thread: CID | None = None, since: float | None = None,
                        until: float | None = None, kind: str | None = None,
                        status: str | None = None, limit: int = 1000,
                        newest: bool = False) -> list[DocumentRow]:
        """Documents in the order they were recorded; ``newest`` keeps the last
        ``limit`` of them rather than the first. ``partners`` matches any of
        several DIDs (a partner's keys across rotations). A ``thread`` is listed
        for one partner only (``partners``): see :meth:`thread`."""
        if thread is not None and not partners:
            raise ValueError("a thread is listed between two parties: give its partners")
        where, args = _document_where(direction=direction, partners=partners, thread=thread,
                                      since=since, until=until, kind=kind, status=status)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        order = "recorded_at DESC, rowid DESC" if newest else "recorded_at, cid"
        rows = await self._all(f"SELECT {_DOC_COLUMNS} FROM documents {clause} "
                               f"ORDER BY {order} LIMIT ?", (*args, limit))
        if newest:
            rows.reverse()
        return [_doc(r) for r in rows]

    async def documents_page(self, *, direction: str | None = None,
                             partners: Sequence[str] | None = None, since: float | None = None,
                             until: float | None = None, kind: str | None = None,
                             status: str | None = None, before: tuple[float, CID] | None = None,
                             limit: int = 50) -> list[DocumentRow]:
        """One page of a listing, newest first: the ``limit`` documents recorded just
        before position ``before`` (recorded_at, CID), or the newest. The position of
        a document never changes, so paging on with the last row's position lists
        every document once, however many are recorded meanwhile (docs/api.md,
        "Pages")."""
        where, args = _document_where(direction=direction, partners=partners, thread=None,
                                      since=since, until=until, kind=kind, status=status)
        if before is not None:
            where.append("(recorded_at, cid) < (?, ?)")
            args.extend((before[0], before[1].raw))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = await self._all(f"SELECT {_DOC_COLUMNS} FROM documents {clause} "
                               "ORDER BY recorded_at DESC, cid DESC LIMIT ?", (*args, limit))
        return [_doc(r) for r in rows]

    async def count_documents(self, direction: str | None = None) -> int:
        if direction:
            row = await self._one("SELECT count(*) FROM documents WHERE direction = ?", (direction,))
        else:
            row = await self._one("SELECT count(*) FROM documents")
        return int(row[0])

    async def ack(self, cid: CID) -> tuple[bytes, str, str | None] | None:
        row = await self._one("SELECT raw, status, reason FROM acks WHERE cid = ?", (cid.raw,))
        return (row[0], row[1], row[2]) if row else None

    async def ack_or_status(self, cid: CID) -> tuple[tuple[bytes, str, str | None] | None, str | None]:
        """(the ack, the document's status) in one query; (None, None) for an unknown CID."""
        row = await self._one("SELECT d.status, a.raw, a.status, a.reason FROM documents d "
                              "LEFT JOIN acks a ON a.cid = d.cid WHERE d.cid = ?", (cid.raw,))
        if row is None:
            return None, None
        return ((row[1], row[2], row[3]) if row[1] is not None else None), row[0]

    # -- search (usagi_p2p/node/fulltext.py) ----------------------------------

    async def search(self, match: str | None, terms: Sequence[tuple[str, Sequence[str]]], *,
                     partners: Sequence[str] | None = None, kind: str | None = None,
                     direction: str | None = None, limit: int = 20, offset: int = 0
                     ) -> list[SearchRow]:
        """The documents whose search row holds every term: the newest :data:`RANKED`
        of them best first (a term in the reference weighs 4, in the partner's
        name 2, in the text 1), ties newest first, then any older ones newest
        first (docs/spec.md section 12, "Search").

        "Newest" is the index's order, the order the documents were indexed: the
        order they were recorded (an archive's, the order it was imported).

        ``match``: an FTS5 expression made by ``fulltext.expression`` (never a
        user's text), the candidates; None: every row is one. ``terms``: (term,
        DIDs) pairs, each met by the term in the reference, body or partner name,
        or by a party among the DIDs. At least one. ``partners``, ``kind``,
        ``direction`` narrow it further.
        """
        if not terms:
            raise ValueError("a search needs a term")
        where: list[str] = []
        args: list[Any] = []
        if match is not None:
            where.append("search MATCH ?")
            args.append(match)
        score: list[str] = []
        score_args: list[Any] = []
        for term, dids in terms:
            if ascii_caseless(term):
                test, needle = "search.{} LIKE ? ESCAPE '\\'", like_pattern(term)
            else:
                test, needle = "usagi_has(search.{}, ?)", caseless(term)
            ref, body, name = (test.format(column) for column in ("ref", "body", "partner"))
            # The parties' keys as one JSON parameter: a term may name thousands.
            party = "search.party IN (SELECT value FROM json_each(?))" if dids else "0"
            keys = [json.dumps([party_key(did) for did in dids])] if dids else []
            where.append(f"({ref} OR {body} OR {name} OR {party})")
            args += [needle, needle, needle, *keys]
            score.append(f"4 * ({ref}) + 2 * ({name} OR {party}) + ({body})")
            score_args += [needle, needle, *keys, needle]
        source = "search"
        if partners or kind or direction:
            source += (" JOIN search_rows r ON r.id = search.rowid "
                       "JOIN documents d ON d.cid = r.cid")
        if partners:
            where.append(f"d.partner IN ({','.join('?' * len(partners))})")
            args += partners
        for column, value in (("kind", kind), ("direction", direction)):
            if value:
                where.append(f"d.{column} = ?")
                args.append(value)
        # Ranking every match cost time in proportion to their number (a word in
        # a third of 100k documents: 120-160 ms, docs/scale.md). FTS5 walks the
        # candidates newest first and stops at a LIMIT, so only the newest
        # ``RANKED`` matches are scored (``head``); a page past them takes the
        # older ones in the index's order (``tail``), a range of rowids below the
        # head's. Only the page's rows are joined to their documents.
        condition = " AND ".join(where)
        rows = await self._all(
            f"WITH head AS MATERIALIZED (SELECT search.rowid AS id, "
            f"-({' + '.join(score)}) AS score "
            f"FROM {source} WHERE {condition} ORDER BY search.rowid DESC LIMIT ?), "
            f"tail AS MATERIALIZED (SELECT search.rowid AS id FROM {source} "
            f"WHERE {condition} AND search.rowid < (SELECT min(id) FROM head) "
            "ORDER BY search.rowid DESC LIMIT ?), "
            "hits AS (SELECT id, 0 AS tier, score FROM head "
            "UNION ALL SELECT id, 1 AS tier, 0 AS score FROM tail), "
            "page AS MATERIALIZED (SELECT id, tier, score FROM hits "
            "ORDER BY tier, score, id DESC LIMIT ? OFFSET ?) "
            "SELECT d.cid, d.direction, d.partner, d.kind, d.ref, d.issued_at, "
            "d.recorded_at, d.status, s.ref, s.body, s.partner FROM page "
            "JOIN search s ON s.rowid = page.id JOIN search_rows r ON r.id = page.id "
            "JOIN documents d ON d.cid = r.cid ORDER BY page.tier, page.score, page.id DESC",
            (*score_args, *args, RANKED, *args, max(0, offset + limit - RANKED), limit, offset))
        return [SearchRow(CID.from_bytes(r[0]), r[1], r[2], r[3], r[4], r[5], float(r[6]), r[7],
                          (r[8], r[9], r[10])) for r in rows]

    async def index_backlog(self) -> int:
        """How many documents wait to be indexed (``index_pending``)."""
        return int((await self._one("SELECT count(*) FROM search_queue"))[0])

    async def index_waiting(self) -> bool:
        """Whether a document waits to be indexed (cheaper than counting them)."""
        return bool((await self._one("SELECT EXISTS (SELECT 1 FROM search_queue)"))[0])

    async def index_pending(self, batch: int = 1000) -> int:
        """Index up to ``batch`` of the documents waiting, oldest first, in one
        transaction; return how many wait still. Each body is read from the
        signed document the ledger holds, so no key is needed; the partner's
        name is the one it has now. Doing it again (another process did it
        meanwhile) changes nothing.

        Its commit does not count in :attr:`recorded`: the indexer's own work is
        not the node being busy."""
        rows = await self._all(_QUEUED, (batch,))
        if not rows:
            return 0
        found = [r[1:] for r in rows if r[4] is not None]
        items = await asyncio.to_thread(_pending_texts, found) if found else []
        done: list[tuple[str, Sequence[Any]]] = [
            ("DELETE FROM search_queue WHERE id = ? AND cid = ?", (r[0], r[1])) for r in rows]
        try:
            left = await self._write(_index_statements(items) + done,
                                     reads=[("SELECT count(*) FROM search_queue", ())])
        except sqlite3.Error as exc:
            raise _typed(exc) from exc
        return int(left[0][0][0])

    async def reset_index(self) -> int:
        """Empty the search index and queue every document to be indexed again; how many."""
        found = await self.write([
            ("DELETE FROM search", ()), ("DELETE FROM search_rows", ()),
            ("DELETE FROM search_queue", ()),
            ("INSERT INTO search_queue (cid) SELECT cid FROM documents ORDER BY rowid", ()),
        ], reads=[("SELECT count(*) FROM search_queue", ())])
        return int(found[0][0][0])

    # -- archives -----------------------------------------------------------

    def snapshot(self, *, partner: str | None = None, since: float | None = None,
                 until: float | None = None, blocks: str | None = None) -> Snapshot:
        """A consistent read of the documents (one partner's, or recorded in
        [since, until)), with their acks, for an export (docs/archive.md).
        ``blocks``: the block store's SQLite file (``BlockStore.sqlite_path``),
        attached read-only so that each row carries its block from the same
        snapshot. Blocking (it opens its own connection): call it from a
        worker thread and close it there."""
        where, args = [], []
        for clause, value in (("d.partner = ?", partner), ("d.recorded_at >= ?", since),
                              ("d.recorded_at < ?", until)):
            if value is not None and value != "":
                where.append(clause)
                args.append(value)
        return Snapshot(self.path, ("WHERE " + " AND ".join(where)) if where else "", args,
                        blocks)

    async def restore(self, page: Restore) -> None:
        """Write what an archive page restores, in one transaction (docs/archive.md,
        "Import"); every row ``OR IGNORE`` (see :class:`Restore`), a partner under a
        name no other partner has (:meth:`_restored_partners`)."""
        now = self.clock()
        statements: list[tuple[str, Sequence[Any]]] = [
            (f"INSERT OR IGNORE INTO documents ({_DOC_COLUMNS}, prev) "
             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
             (row.cid.raw, row.direction, row.partner, row.kind, row.thread.raw, row.ref,
              row.issued_at, row.recorded_at, row.status, row.reason, row.digest,
              pack(row.signed, row.partner),
              row.user, row.findings, prev))
            for row, prev in page.documents]
        statements += [("INSERT OR IGNORE INTO acks (cid, raw, status, reason, at) "
                        "VALUES (?,?,?,?,?)", (cid.raw, raw, status, reason, at))
                       for cid, raw, status, reason, at in page.acks]
        statements += [("INSERT OR IGNORE INTO nonces (sender, nonce, cid, ack, seen_at) "
                        "VALUES (?,?,?,?,?)", (sender, nonce, cid.raw, ack, seen))
                       for sender, nonce, cid, ack, seen in page.nonces]
        statements += [("INSERT OR IGNORE INTO outbox (cid, partner, notice, state, next_attempt, "
                        "last_error, created) VALUES (?,?,?,'undelivered',0,?,?)",
                        (cid.raw, partner, notice, why, now))
                       for cid, partner, notice, why in page.outbox]
        statements += [("INSERT OR IGNORE INTO quarantine (cid, direction, partner, kind, thread, "
                        "issued_at, recorded_at, code, reason, archive, quarantined_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (q.cid.raw, q.direction, q.partner, q.kind, q.thread.raw, q.issued_at,
                         q.recorded_at, q.code, q.reason, q.archive, now))
                       for q in page.quarantine]
        partners = await self._restored_partners(page.partners, now)
        statements += partners
        statements += [("UPDATE partners SET rotated_to = ? WHERE did = ? AND rotated_to IS NULL",
                        (new, old)) for old, new in page.partner_rotations.items()]
        statements += [("INSERT OR IGNORE INTO rotations (old, new, overlap_until, statement) "
                        "VALUES (?,?,0,x'')", (old, new))
                       for old, new in page.own_rotations.items()]
        dids = [did for did, *_ in page.partners]
        # An import restores history; it is not news: no events (schema.py, _EVENTS).
        found = await self.write(_quiet(statements), reads=_chunked(_KNOWN_PARTNERS, (), dids))
        missing = set(dids) - {did for rows in found for (did,) in rows}
        if not missing:
            return
        while missing:  # a name taken meanwhile (another process): the next free one
            rows = [p for p in page.partners if p[0] in missing]
            found = await self.write(_quiet(await self._restored_partners(rows, now)),
                                     reads=_chunked(_KNOWN_PARTNERS, (), sorted(missing)))
            missing -= {did for rows in found for (did,) in rows}
        if page.partner_rotations:  # the rotations of the partners inserted just now
            await self.write(_quiet([("UPDATE partners SET rotated_to = ? WHERE did = ? AND "
                                      "rotated_to IS NULL", (new, old))
                                     for old, new in page.partner_rotations.items()]))

    async def _restored_partners(self, partners: Sequence[tuple[str, str, str, str]], now: float
                                 ) -> list[tuple[str, Sequence[Any]]]:
        """The INSERTs of restored partners under the rule of :meth:`add_partner`: a
        partner the ledger does not know gets its name if no other partner (a rotated
        key aside) has it, else the next free ``name (2)``, …, so the partner that
        holds the name now keeps it. Each INSERT is conditional on the name still
        being free when it runs; one that is not inserts nothing (``restore`` tries
        it again)."""
        if not partners:
            return []
        rows = await self._all("SELECT did, usagi_strict_fold(name) FROM partners "
                               "WHERE status != 'rotated'")
        known = {did for (did, _) in rows}
        taken = {name for (_, name) in rows}
        statements: list[tuple[str, Sequence[Any]]] = []
        for did, name, endpoint, status in partners:
            if did in known:
                continue  # OR IGNORE: what the ledger holds stays
            if status != "rotated":
                name = free_name(name, taken)
                taken.add(_strict_fold(name))
            statements.append((_RESTORE_PARTNER, (did, name, endpoint, status, now)))
            statements.append((_RESTORE_NAME, (name, status)))
        return [*_RESTORE_NAMES, *statements] if statements else []

    # -- outbox -------------------------------------------------------------

    async def claim_due(self, now: float, limit: int, lease: float = 30.0) -> list[OutboxRow]:
        """Take up to ``limit`` due notices with a lease, so no other process sends them:
        the earliest due, in the order they were queued."""
        try:
            return await self._claim_due(now, limit, lease)
        except sqlite3.Error as exc:
            raise _typed(exc) from exc

    async def _claim_due(self, now: float, limit: int, lease: float) -> list[OutboxRow]:
        db = self.db
        if _RETURNING:
            # One statement, one round trip, its own transaction.
            claim = ("UPDATE outbox SET lease_until = ? WHERE cid IN (SELECT cid FROM outbox "
                     "WHERE state = 'pending' AND next_attempt <= ? AND lease_until <= ? "
                     "ORDER BY next_attempt, created LIMIT ?) RETURNING " + _CLAIM_COLUMNS)
            args = (now + lease, now, now, limit)
            async with self._tx:
                if ONE_CALL and self._wal:  # NORMAL is safe in WAL mode only
                    rows = await in_thread(db, _lease, claim, args)
                else:
                    rows = list(await db.execute_fetchall(claim, args))
        else:  # SQLite before 3.35
            async with self._tx:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    rows = list(await db.execute_fetchall(
                        "SELECT " + _CLAIM_COLUMNS + " FROM outbox WHERE state = 'pending' "
                        "AND next_attempt <= ? AND lease_until <= ? "
                        "ORDER BY next_attempt, created LIMIT ?", (now, now, limit)))
                    if rows:
                        await db.executemany("UPDATE outbox SET lease_until = ? WHERE cid = ?",
                                             [(now + lease, r[0]) for r in rows])
                    await db.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
        # The due ones are picked by when they are due; they are handed over in the
        # order they were queued (RETURNING has no order of its own), so a reply is
        # never ahead of what it answers (delivery.py, "In order").
        rows.sort(key=lambda r: (r[7], r[9]))
        return [OutboxRow(CID.from_bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                          _prev_links(r[8])) for r in rows]

    async def release_leases(self) -> None:
        """Forget every lease: called when ``serve`` starts, since a lease held by a
        process that died would otherwise hold its notices back until it expires.
        (A second process delivering the same notice is harmless: the receiver
        answers a replayed notice with the ack it already gave.)"""
        await self.write([("UPDATE outbox SET lease_until = 0 WHERE state = 'pending'", ())])

    async def next_due(self) -> float | None:
        row = await self._one("SELECT min(max(next_attempt, lease_until)) FROM outbox "
                              "WHERE state = 'pending'")
        return float(row[0]) if row and row[0] is not None else None

    async def mark_delivered(self, items: Sequence[tuple[CID, bytes, str, str | None, str]]
                             ) -> dict[CID, tuple[bytes, str, str | None]]:
        """(cid, ack bytes, ack status, reason, at) for each acknowledged document;
        returns the ack stored for each, in the same round trip.

        The first ack stored for a document stays (OR IGNORE): another process
        may have stored one for the same notice, and the receiver may have
        signed the two answers apart. The document's status follows the ack
        that is stored, and so does what this returns.
        """
        if not items:
            return {}
        acks: list[tuple[str, Sequence[Any]]] = []
        docs: list[tuple[str, Sequence[Any]]] = []
        outbox: list[tuple[str, Sequence[Any]]] = []
        for cid, raw, status, reason, at in items:
            acks.append(("INSERT OR IGNORE INTO acks (cid, raw, status, reason, at) "
                         "VALUES (?,?,?,?,?)", (cid.raw, raw, status, reason, at)))
            docs.append(("UPDATE documents SET (status, reason) = (SELECT CASE a.status WHEN "
                         "'rejected' THEN 'rejected' ELSE 'delivered' END, a.reason FROM acks a "
                         "WHERE a.cid = documents.cid) WHERE cid = ?", (cid.raw,)))
            outbox.append(("UPDATE outbox SET state = 'delivered', lease_until = 0, "
                           "last_error = NULL WHERE cid = ?", (cid.raw,)))
        results = await self.write(acks + docs + outbox, reads=_chunked(
            "SELECT cid, raw, status, reason FROM acks WHERE cid IN ({marks})", (),
            [item[0].raw for item in items]))
        self.recorded += len(items)
        return {CID.from_bytes(r[0]): (r[1], r[2], r[3]) for rows in results for r in rows}

    async def mark_failed(self, cids: Sequence[CID], error: str, next_attempts: Sequence[float],
                          max_attempts: int, *, count: bool = True) -> list[CID]:
        """Count an attempt; past the budget the document becomes ``undelivered``.

        One conditional statement per notice, all in one transaction: only a
        notice still ``pending`` is touched, so an ack stored meanwhile (by
        this process or another: ``mark_delivered``) is never overwritten, and
        the attempt is counted on the row as it is, not as it was read. Returns
        the notices this call gave up: pending when its transaction began,
        undelivered at its end (one already given up is not given up again).
        """
        if not cids:
            return []
        step = 1 if count else 0
        # SET reads the row as it was before the UPDATE, in every expression.
        outbox: list[tuple[str, Sequence[Any]]] = [
            (_FAIL_NOTICE, (step, max_attempts, when, error, cid.raw))
                  for cid, when in zip(cids, next_attempts, strict=True)]
        documents: list[tuple[str, Sequence[Any]]] = [
            (_GIVEN_UP_DOCUMENT, (cid.raw,)) for cid in cids]
        raws = [cid.raw for cid in cids]
        pending, undelivered = await self._observed_write(
            _chunked("SELECT cid FROM outbox WHERE state = 'pending' AND cid IN ({marks})", (),
                     raws),
            outbox + documents,
            _chunked("SELECT cid FROM outbox WHERE state = 'undelivered' AND cid IN ({marks})",
                     (), raws))
        given_up = ({raw for rows in pending for (raw,) in rows}
                    & {raw for rows in undelivered for (raw,) in rows})
        return [cid for cid in cids if cid.raw in given_up]

    async def retry_undelivered(self, partner: str | None = None) -> int:
        """Put the undelivered notices (of ``partner``, or all) back in the queue; return
        how many. One transaction; the count is what its last statement changed."""
        args: tuple[Any, ...] = (partner,) if partner else ()
        extra = " AND partner = ?" if partner else ""
        found = await self.write([
            (f"UPDATE documents SET status='queued', reason=NULL WHERE status='undelivered' "
             f"AND cid IN (SELECT cid FROM outbox WHERE state='undelivered'{extra})", args),
            (f"UPDATE outbox SET state='pending', attempts=0, next_attempt=0, lease_until=0 "
             f"WHERE state='undelivered'{extra}", args),
        ], reads=[("SELECT changes()", ())])
        return int(found[0][0][0])

    async def outbox(self, state: str | None = None) -> list[OutboxRow]:
        where = "WHERE state = ?" if state else ""
        rows = await self._all(
            "SELECT cid, partner, notice, state, attempts, next_attempt, last_error, created "
            "FROM outbox "
            f"{where} ORDER BY created", (state,) if state else ())
        return [OutboxRow(CID.from_bytes(r[0]), *r[1:]) for r in rows]

    async def pending_count(self) -> int:
        """Notices not yet delivered nor given up: a walk of the due index's
        pending entries only, cheap to poll however long the outbox grows."""
        row = await self._one("SELECT count(*) FROM outbox WHERE state = 'pending'")
        return int(row[0])

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT state, count(*) FROM outbox GROUP BY state")
        return {r[0]: r[1] for r in rows}

    # -- idempotency keys (the local API: docs/api.md, "Idempotency-Key") ----

    async def claim_key(self, claim: KeyClaim, token_name: str, request: bytes, *,
                        lease_until: float, expire_before: float,
                        per_token: int) -> KeyRow | None:
        """Claim an idempotency key for one attempt, and say how the key stands.

        One transaction: the keys created before ``expire_before`` are dropped,
        then one conditional INSERT claims the key: a new key, while its token
        holds fewer than ``per_token`` (``idempotency_counts``, kept by
        triggers: one lookup, not a count of the token's keys); or a pending key for the same
        ``request`` whose lease ended (its attempt was abandoned: the process
        died). The key's row as it stands afterwards is returned; the caller
        holds it exactly when the row's claim is ``claim.claim``. None: a new
        key, and the token holds ``per_token`` already.

        Not synced on its own (``durable=False``; so are :meth:`finish_key` and
        :meth:`release_key`): WAL commits are ordered, so the document's commit,
        which is synced, makes the claim durable with it. A crash may lose a
        claim only when nothing was sent under it (the key is then new again),
        and a recorded answer only after the key names its document (a retry
        then answers with that document once the lease ends). Never a send twice.
        """
        now = self.clock()
        found = await self.write([
            ("DELETE FROM idempotency_keys WHERE created_at < ?", (expire_before,)),
            ("INSERT INTO idempotency_keys (token, key, token_name, request, claim, state, "
             "lease_until, created_at) SELECT ?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7 "
             "WHERE coalesce((SELECT held FROM idempotency_counts WHERE token = ?1), 0) < ?8 "
             "OR EXISTS (SELECT 1 FROM idempotency_keys WHERE token = ?1 AND key = ?2) "
             "ON CONFLICT(token, key) DO UPDATE SET claim = excluded.claim, "
             "lease_until = excluded.lease_until WHERE state = 'pending' "
             "AND lease_until < ?7 AND request = excluded.request",
             (claim.token, claim.key, token_name, request, claim.claim, lease_until, now,
              per_token)),
        ], reads=[(_KEY_SELECT, (claim.token, claim.key))], durable=False)
        return _key(found[0][0]) if found[0] else None

    async def finish_key(self, claim: KeyClaim, status: int, answer: str) -> bool:
        """Record the answer of a claimed key (it is done); False if the claim was lost."""
        return bool(await self._change(
            "UPDATE idempotency_keys SET state = 'done', status = ?, answer = ? "
            "WHERE token = ? AND key = ? AND claim = ?",
            (status, answer, claim.token, claim.key, claim.claim), durable=False))

    async def release_key(self, claim: KeyClaim) -> bool:
        """Forget a claimed key that sent nothing (its request failed): the same
        request may be tried again. A key that names a document is kept."""
        return bool(await self._change(
            "DELETE FROM idempotency_keys WHERE token = ? AND key = ? AND claim = ? "
            "AND cid IS NULL", (claim.token, claim.key, claim.claim), durable=False))

    # -- events (docs/spec.md section 11.6) -------------------------------------

    async def events(self, after: int, limit: int = 500, types: Sequence[str] = ()
                     ) -> list[Event]:
        """The events after seq ``after``, oldest first, at most ``limit``;
        only those of ``types`` when given."""
        where = ""
        args: list[Any] = [after]
        if types:
            where = f" AND type IN ({','.join('?' * len(types))})"
            args.extend(types)
        rows = await self._all(f"SELECT {_EVENT_SELECT} FROM events WHERE seq > ?"  # noqa: S608
                               f"{where} ORDER BY seq LIMIT ?", (*args, limit))
        return [_event(r) for r in rows]

    async def event(self, seq: int) -> Event | None:
        row = await self._one(f"SELECT {_EVENT_SELECT} FROM events WHERE seq = ?", (seq,))
        return _event(row) if row else None

    async def event_range(self) -> tuple[int, int]:
        """(the oldest seq kept, the last seq given): (last + 1, last) when none is
        kept; last is 0 when there was never an event."""
        first, last = await self._one("SELECT (SELECT min(seq) FROM events), "
                                      "(SELECT seq FROM sqlite_sequence WHERE name = 'events')")
        last = int(last or 0)
        return (int(first) if first is not None else last + 1), last

    async def prune_events(self, before: float, keep: int) -> int:
        """Forget the events older than ``before`` and all but the last ``keep``,
        with their webhook log and queue; return how many events went."""
        gone = ("SELECT seq FROM events WHERE at < ?1 OR seq <= (SELECT seq FROM "
                "sqlite_sequence WHERE name = 'events') - ?2")
        found = await self.write([
            (f"DELETE FROM webhook_log WHERE seq IN ({gone})", (before, keep)),  # noqa: S608
            (f"DELETE FROM webhook_queue WHERE seq IN ({gone})", (before, keep)),  # noqa: S608
            ("DELETE FROM events WHERE at < ?1 OR seq <= (SELECT seq FROM sqlite_sequence "
             "WHERE name = 'events') - ?2", (before, keep)),
        ], reads=[("SELECT changes()", ())])
        return int(found[0][0][0])

    # -- webhooks (docs/api.md, "Webhooks") -----------------------------------

    async def webhook_follow(self, url: str) -> None:
        """Start a webhook's cursor at the last event: it is sent what happens from now."""
        await self.write([("INSERT OR IGNORE INTO webhook_cursor (url, seq) VALUES (?, coalesce("
                           "(SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))",
                           (url,))])

    async def webhook_forget(self, url: str) -> None:
        """A webhook removed: its cursor and what it was owed go (its log stays)."""
        await self.write([("DELETE FROM webhook_cursor WHERE url = ?", (url,)),
                          ("DELETE FROM webhook_queue WHERE url = ?", (url,))])

    async def webhook_enqueue(self, url: str, types: Sequence[str], now: float,
                              limit: int = 500) -> int:
        """Queue the events after the webhook's cursor (of ``types``, or all) and move
        the cursor past them, in one transaction; return how many were queued."""
        row = await self._one("SELECT seq FROM webhook_cursor WHERE url = ?", (url,))
        if row is None:
            return 0
        cursor = int(row[0])
        rows = await self._all("SELECT seq, type FROM events WHERE seq > ? ORDER BY seq "
                               "LIMIT ?", (cursor, limit))
        if not rows:
            return 0
        wanted = [(url, seq, now) for seq, kind in rows if not types or kind in types]
        statements: list[tuple[str, Sequence[Any]]] = [
            ("INSERT OR IGNORE INTO webhook_queue (url, seq, next_at) VALUES (?,?,?)", w)
            for w in wanted]
        # Conditional: a second sender of this ledger that moved it meanwhile wins.
        statements.append(("UPDATE webhook_cursor SET seq = ? WHERE url = ? AND seq = ?",
                           (int(rows[-1][0]), url, cursor)))
        await self.write(statements)
        return len(wanted)

    async def webhook_due(self, url: str, now: float, limit: int = 50
                          ) -> list[tuple[Event, int]]:
        """(event, attempts made) owed to ``url`` and due now, oldest first."""
        rows = await self._all(
            "SELECT " + ", ".join(f"e.{c}" for c in _EVENT_SELECT.split(", "))
            + ", q.attempt FROM webhook_queue q "
            "JOIN events e ON e.seq = q.seq WHERE q.url = ? AND q.next_at <= ? "
            "ORDER BY q.seq LIMIT ?", (url, now, limit))
        return [(_event(r[:13]), int(r[13])) for r in rows]

    async def webhook_next_due(self) -> float | None:
        row = await self._one("SELECT min(next_at) FROM webhook_queue")
        return float(row[0]) if row and row[0] is not None else None

    async def webhook_attempted(self, attempt: WebhookAttempt, next_at: float | None) -> None:
        """Log an attempt; the delivery is done (``next_at`` None: delivered or given
        up) or due again at ``next_at``. One transaction."""
        done: tuple[str, Sequence[Any]] = (
            ("DELETE FROM webhook_queue WHERE url = ? AND seq = ?", (attempt.url, attempt.seq))
            if next_at is None else
            ("UPDATE webhook_queue SET attempt = ?, next_at = ? WHERE url = ? AND seq = ?",
             (attempt.attempt, next_at, attempt.url, attempt.seq)))
        await self.write([
            ("INSERT INTO webhook_log (seq, url, attempt, status, at, error) "
             "VALUES (?,?,?,?,?,?)", (attempt.seq, attempt.url, attempt.attempt, attempt.status,
                                      attempt.at, attempt.error)),
            done])

    async def webhook_replay(self, url: str, seqs: Sequence[int], now: float) -> list[int]:
        """Queue ``seqs`` (those still kept) for ``url`` again, attempts from the
        start; return the seqs queued."""
        kept = [int(r[0]) for rows in await self._reads(
            _chunked("SELECT seq FROM events WHERE seq IN ({marks})", (), list(seqs)))
            for r in rows]
        await self.write([("INSERT INTO webhook_queue (url, seq, attempt, next_at) "
                           "VALUES (?,?,0,?) ON CONFLICT(url, seq) DO UPDATE SET attempt = 0, "
                           "next_at = excluded.next_at", (url, seq, now)) for seq in kept])
        return sorted(kept)

    async def webhook_log(self, *, url: str | None = None, seq: int | None = None,
                          limit: int = 100) -> list[WebhookAttempt]:
        """The last ``limit`` attempts (of ``url``, of event ``seq``), oldest first."""
        where, args = [], []
        for clause, value in (("url = ?", url), ("seq = ?", seq)):
            if value is not None:
                where.append(clause)
                args.append(value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = await self._all("SELECT seq, url, attempt, status, at, error FROM webhook_log "  # noqa: S608
                               f"{clause} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [WebhookAttempt(*r) for r in reversed(rows)]
