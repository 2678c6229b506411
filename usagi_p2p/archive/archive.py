"""Sealed CAR archives of a node's trade history (docs/archive.md; docs/spec.md, "Archive").

One archive is one CAR v1 file. It is cut into *pages* of at most
:data:`PAGE_ENTRIES` documents; each page is written as::

    document envelopes …   (the blocks already in the store, unchanged)
    ack bundles …          one per partner on the page, sealed to [node, partner]
    manifest page          signed (label "manifest") by the node, sealed to the node only
    index                  clear DAG-CBOR linking all of the above and the previous index

The last index is the CAR's single root (CAR v1 readers do not need the root
first; the header is rewritten once the root is known, its length is fixed).
Pages are written as the ledger is read, so export, verify and import hold
one page at a time whatever the history's size.

Without keys :func:`verify_archive` checks framing, every block's hash, that
every block is linked by exactly the index that closes its page, the index
chain and the root. With the node's identity it also opens every manifest
page, document and ack, checks signatures, ack digests, page chain and
thread chains, in worker processes for large archives (the parent chains
the pages and names the same first failure as one pass would).
:func:`import_archive` runs the same checks, then restores the ledger
(``INSERT OR IGNORE``: re-import changes nothing).

A damaged or forged archive (framing, a hash, the index or manifest chain, a
manifest that does not open) fails as a whole. A sound archive holding a
document that does not verify (it does not open, its ack does not check, or
it breaks its thread, e.g. a reply another partner hung on this thread before
the node refused such replies) is *partial*: verify reports each such
document (:class:`Quarantined`), and import restores everything else and
keeps those apart in the ledger's ``quarantine`` table. No single document
makes an archive unrestorable.

Errors::

    UsagiError
    └── NodeError
        └── ArchiveError          "archive_invalid"  (names the first failing CID)
            └── ForeignArchiveError "archive_foreign" (not this node's archive)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

from ipfs.car import CARReader, CARWriter, encode_header
from ipfs.sqlite import SQLiteBlockStore
from kernel import dagcbor
from kernel import envelope as kenvelope
from kernel.cid import CID
from kernel.document import format_time
from kernel.envelope import Opened
from kernel.errors import NotRecipientError, ThreadError, UsagiError
from kernel.identity import Identity
from kernel.messages import check_ack, make_notice, open_ack
from kernel.signed import open_signed, sign_bytes
from kernel.thread import canonical, split_thread, verify_thread

from ..node.node import Node
from .format import (
    ACKS_TYPE,
    PAGE_BLOCK_BYTES,
    PAGE_BYTES,
    PAGE_ENTRIES,
    PAGE_LIMITS,
    PAGE_TYPE,
    ArchiveError,
    ForeignArchiveError,
    check_index,
    cid_from_raw,
    encode_array,
    encode_map,
    entry_size,
    entry_value,
    index_block,
    read_entry,
)

__all__ = ["ArchiveError", "ForeignArchiveError", "ExportReport", "VerifyReport", "Quarantined",
           "export_archive", "verify_archive", "import_archive"]

#: A CID of the same length as every root we write (CIDv1, dag-cbor, sha2-256):
#: the header is written with it first and overwritten in place at the end.
_PLACEHOLDER: Final = CID.for_block(b"\xa0")
_FETCH_BATCH: Final = 256


@dataclass(slots=True)
class ExportReport:
    root: CID
    documents: int
    acks: int
    pages: int
    blocks: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A document of a sound archive that does not verify: reported, and kept apart on import."""

    cid: CID
    code: str  # the error code (docs/spec.md section 14), e.g. invalid_thread
    reason: str


@dataclass(slots=True)
class VerifyReport:
    root: CID | None = None
    blocks: int = 0
    bytes: int = 0
    pages: int = 0
    keyed: bool = False
    by: str | None = None
    created_at: str | None = None
    filter: dict[str, str] = field(default_factory=dict)
    documents: int = 0
    acks: int = 0
    threads: int = 0
    partial_threads: int = 0
    #: Documents that do not verify, in archive order (the archive is then partial).
    quarantined: list[Quarantined] = field(default_factory=list)


# -- export ----------------------------------------------------------------------


class _Exporter:
    """Writes pages as rows arrive; holds one page of entries and blocks at most.

    Entries are built as maps already in canonical key order with their links
    as tag 42 (archive_format.entry_value), so the manifest page encodes in
    one C call; the bytes are those of ``dagcbor.encode`` (tests/archive).
    """

    def __init__(self, writer: CARWriter, me: Identity, filters: dict[str, str],
                 aliases: dict[str, str]) -> None:
        self.writer, self.me, self.filter, self.aliases = writer, me, filters, aliases
        self.seq = 0
        self.prev_page: CID | None = None
        self.prev_index: CID | None = None
        self.documents = self.acks = 0
        self._reset()

    def _reset(self) -> None:
        self.entries: list[bytes] = []  # each one encoded
        self.links: list[bytes] = []
        self.bundles: dict[str, list[bytes]] = {}
        self.bundle_bytes: dict[str, int] = {}
        self.est = self.block_bytes = self.max_bundle = 0

    def full(self) -> bool:
        return (len(self.entries) >= PAGE_ENTRIES or self.est >= PAGE_BYTES
                or self.block_bytes >= PAGE_BLOCK_BYTES or self.max_bundle >= PAGE_BYTES)

    def add(self, row: tuple[Any, ...], block: bytes) -> None:
        cid_raw, direction, partner, kind, thread, issued_at, recorded_at, status, reason, \
            ack_raw, ack_at = row
        cid = cid_from_raw(cid_raw)
        self.writer.write(cid, block)  # verifies: a damaged stored block is never archived
        ack: int | None = None
        if ack_raw is not None:
            bundle = self.bundles.setdefault(partner, [])
            ack = len(bundle)
            bundle.append(ack_raw)
            size = self.bundle_bytes[partner] = self.bundle_bytes.get(partner, 0) + len(ack_raw) + 4
            self.max_bundle = max(self.max_bundle, size)
            self.acks += 1
        # Encoded at once: a page holds bytes, not 1,000 maps for the collector to walk.
        self.entries.append(dagcbor.encode_ordered(entry_value(
            cid_raw, direction, partner, kind, thread, issued_at, repr(float(recorded_at)),
            status, reason, ack, ack_at)))
        self.links.append(cid_raw)
        self.est += entry_size(reason)
        self.block_bytes += len(block)
        self.documents += 1

    def flush(self, head: dict[str, Any] | None = None) -> CID:
        acks: dict[str, CID] = {}
        for partner, raws in self.bundles.items():
            plain = dagcbor.encode({"v": 1, "type": ACKS_TYPE, "acks": raws})
            # Sealed to both parties: the partner may read its own receipts back.
            sealed = kenvelope.seal_signed(plain, [self.me.did, partner])
            self.writer.write(sealed.cid, sealed.block, verify=False)
            acks[partner] = sealed.cid
            self.links.append(sealed.cid.raw)
        fields: dict[str, Any] = {"v": 1, "type": PAGE_TYPE, "by": self.me.did, "seq": self.seq,
                                  "acks": acks, "filter": self.filter}
        if self.prev_page is not None:
            fields["prev"] = self.prev_page
        if head is not None:
            fields["head"] = head
        if self.aliases:  # every page: its threads are checked before the last page is read
            fields["aliases"] = self.aliases
        body = encode_map(fields, {"entries": encode_array(self.entries)})
        # The manifest names every partner: sealed to this node alone.
        page = kenvelope.seal_signed(sign_bytes(self.me, "manifest", body), [self.me.did])
        self.writer.write(page.cid, page.block, verify=False)
        index_cid = self.writer.write_block(index_block(
            self.seq, page.cid.raw, self.links,
            self.prev_index.raw if self.prev_index is not None else None))
        self.prev_page, self.prev_index = page.cid, index_cid
        self.seq += 1
        self._reset()
        return index_cid


def _query(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    where, args = [], []
    if filters.get("partner"):
        where.append("d.partner = ?")
        args.append(filters["partner"])
    if filters.get("since") is not None:
        where.append("d.recorded_at >= ?")
        args.append(filters["since"])
    if filters.get("until") is not None:
        where.append("d.recorded_at < ?")
        args.append(filters["until"])
    return ("WHERE " + " AND ".join(where)) if where else "", args


def _export_sync(node: Node, path: Path, filters: dict[str, Any],
                 fetch: Callable[[sqlite3.Connection, list[CID]], dict[bytes, bytes]],
                 progress: Callable[[int, int], None] | None) -> ExportReport:
    con = sqlite3.connect(f"file:{node.home.ledger_path}?mode=ro", uri=True,
                          isolation_level=None, check_same_thread=False)
    tmp = path.with_name(path.name + ".part")
    try:
        con.execute("PRAGMA busy_timeout=10000")
        if isinstance(node.store, SQLiteBlockStore):
            con.execute("ATTACH DATABASE ? AS blk", (f"file:{node.store.path}?mode=ro",))
        # One read transaction: the count, the rows and the blocks are one snapshot.
        con.execute("BEGIN")
        clause, args = _query(filters)
        total = con.execute(f"SELECT count(*) FROM documents d {clause}", args).fetchone()[0]  # noqa: S608
        partners = [dict(zip(("did", "name", "endpoint", "status"), r, strict=True)) for r in
                    con.execute("SELECT did, name, endpoint, status FROM partners ORDER BY did")]
        # Key rotations (ours and the partners'): a partner that rotated mid-thread is
        # still the same party. The partner's own record wins over ours (Ledger.aliases).
        aliases = {old: new for _, old, new in con.execute(
            "SELECT 0, old, new FROM rotations UNION ALL SELECT 1, did, rotated_to FROM "
            "partners WHERE rotated_to IS NOT NULL ORDER BY 1")}
        joined = isinstance(node.store, SQLiteBlockStore)
        # With the SQLite store the blocks come in the same statement (one
        # B-tree lookup per row, no second query per batch); the sort is only
        # within a thread ("temp b-tree for right part of order by").
        cur = con.execute(
            "SELECT d.cid, d.direction, d.partner, d.kind, d.thread, d.issued_at, d.recorded_at, "  # noqa: S608
            "d.status, d.reason, a.raw, a.at" + (", b.data" if joined else "") +
            " FROM documents d LEFT JOIN acks a ON a.cid = d.cid" +
            (" LEFT JOIN blk.blocks b ON b.cid = d.cid" if joined else "") +
            f" {clause} ORDER BY d.thread, d.recorded_at, d.cid", args)
        with open(tmp, "wb") as fp:
            writer = CARWriter(fp, [_PLACEHOLDER])
            kept = {k: str(v) for k, v in filters.items() if v is not None}
            exporter = _Exporter(writer, node.identity, kept, aliases)
            while rows := cur.fetchmany(_FETCH_BATCH):
                if joined:
                    blocks = [r[11] for r in rows]
                    if None in blocks:
                        missing = cid_from_raw(rows[blocks.index(None)][0])
                        raise ArchiveError(f"{missing}: in the ledger but not in the block store",
                                           cid=missing)
                else:
                    found = fetch(con, [cid_from_raw(r[0]) for r in rows])
                    blocks = [found[r[0]] for r in rows]
                for row, block in zip(rows, blocks, strict=True):
                    if exporter.full():
                        exporter.flush()
                    exporter.add(row[:11], block)
                if progress:
                    progress(exporter.documents, total)
            head = {"count": exporter.documents, "pages": exporter.seq + 1,
                    "created_at": format_time(datetime.now(UTC)), "partners": partners}
            root = exporter.flush(head)
            fp.seek(0)
            fp.write(encode_header([root]))  # same length as the placeholder header
            fp.flush()
            os.fsync(fp.fileno())
        con.execute("COMMIT")
        os.replace(tmp, path)
        return ExportReport(root, exporter.documents, exporter.acks, exporter.seq,
                            writer.count, writer.bytes_written)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)


async def export_archive(node: Node, path: str | os.PathLike[str], *, partner: str | None = None,
                         since: float | None = None, until: float | None = None,
                         progress: Callable[[int, int], None] | None = None) -> ExportReport:
    """Write the node's history (optionally one partner's, or a time window) to ``path``."""
    loop = asyncio.get_running_loop()
    store = node.store

    def fetch(con: sqlite3.Connection, cids: list[CID]) -> dict[bytes, bytes]:
        # Not the SQLite store (whose blocks come with the rows): the store's
        # own async API, from this worker thread.
        async def get_all() -> list[bytes]:
            return list(await asyncio.gather(*[store.get(c) for c in cids]))

        got = asyncio.run_coroutine_threadsafe(get_all(), loop).result()
        found = {c.raw: b for c, b in zip(cids, got, strict=True)}
        missing = [c for c in cids if c.raw not in found]
        if missing:
            raise ArchiveError(f"{missing[0]}: in the ledger but not in the block store",
                               cid=missing[0])
        return found

    filters = {"partner": partner, "since": since, "until": until}
    return await asyncio.to_thread(_export_sync, node, Path(path), filters, fetch, progress)


# -- verify ----------------------------------------------------------------------

#: Smaller archives are verified in this process (a worker's first page costs more).
PARALLEL_MIN_BYTES: Final = 8 << 20
#: At most this many processes (this one included) when verify_archive chooses.
MAX_WORKERS: Final = 4
#: Pages handed to each worker and not yet done (one running, one queued); bytes pending.
_INFLIGHT_PAGES: Final = 2
_INFLIGHT_BYTES: Final = 64 << 20


@dataclass(slots=True)
class Page:
    """One verified page, as handed to import."""

    seq: int
    entries: list[dict[str, Any]]
    opened: dict[CID, Opened]
    blocks: dict[CID, bytes]
    acks: dict[CID, bytes]
    head: dict[str, Any] | None
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Checked:
    """One page checked on its own (here or in a worker process), for the parent to chain.

    Everything but what spans pages: that no page follows the one with the head,
    and the thread runs that may continue from the previous page (``first``) or
    into the next (``last``). Runs that begin and end inside the page were
    verified already (``threads``). A failure is returned, not raised, with what
    was checked before it, so the parent raises the same first failure as a
    single pass would.
    """

    page_cid: CID
    error: BaseException | None = None
    early: bool = True  # the error came before the manifest's order check
    head: dict[str, Any] | None = None
    filter: dict[str, str] = field(default_factory=dict)
    documents: int = 0
    acks: int = 0
    first: list[Opened] = field(default_factory=list)
    first_closed: bool = False  # a run of another thread followed the first one
    threads: int = 0
    partial_threads: int = 0
    last: list[Opened] = field(default_factory=list)
    #: The page's documents that do not open or check, and those of the runs closed inside it.
    quarantined: list[Quarantined] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # key rotations, old -> new
    page: Page | None = None  # everything opened, when asked for (import)


def _close_run(thread: CID, group: list[Opened], filters: dict[str, str],
               quarantined: list[Quarantined], aliases: dict[str, str]) -> bool:
    """Verify one thread's run of documents; True if a time window cut it (not verified).

    What does not hold goes to ``quarantined``, one entry per document
    (kernel.thread.split_thread): the rest of the thread still counts.
    """
    cids = {o.cid for o in group}
    links = {c for o in group for c in o.document.get("prev", ())}
    windowed = "since" in filters or "until" in filters
    if not windowed or (thread in cids and links <= cids):
        try:
            verify_thread(group, aliases)
        except ThreadError:
            _, bad = split_thread(thread, group, aliases)
            quarantined.extend(Quarantined(o.cid, exc.code, str(exc)) for o, exc in bad)
        return False
    return True  # a time window may cut a thread: what is present must still agree


class _Runs:
    """A page's documents in runs of one thread (the manifest orders entries by thread)."""

    def __init__(self, out: _Checked) -> None:
        self.out = out
        self.thread: CID | None = None
        self.group: list[Opened] = []

    def add(self, thread: CID, opened: Opened) -> None:
        if thread != self.thread and self.group:
            out = self.out
            if out.first_closed:  # began and ended inside the page: verified here
                out.threads += 1
                out.partial_threads += _close_run(self.thread, self.group, out.filter,  # type: ignore[arg-type]
                                                  out.quarantined, out.aliases)
            else:  # may continue the previous page's last run: the parent closes it
                out.first, out.first_closed = self.group, True
            self.group = []
        self.thread = thread
        self.group.append(opened)

    def end(self, failed: bool) -> None:
        if not self.out.first_closed:
            self.out.first = self.group
        elif not failed:
            self.out.last = self.group


#: This node's keys: the current one first, then those it rotated away from
#: (newest first). What was sealed or signed before a rotation opens with them.
Keys = tuple[Identity, ...]


def _keys(me: Identity | Sequence[Identity]) -> Keys:
    return (me,) if isinstance(me, Identity) else tuple(me)


def _open_with(opener: Callable[[bytes, Identity, CID], Any], block: bytes, keys: Keys,
               cid: CID) -> Any:
    """``opener`` with the first of ``keys`` that is a recipient."""
    for key in keys[:-1]:
        try:
            return opener(block, key, cid)
        except NotRecipientError:
            continue
    return opener(block, keys[-1], cid)


def _check_page(keys: Keys, seq: int, page_cid: CID, blocks: list[CID],
                window: dict[CID, bytes], prev_page: CID | None, keep: bool) -> _Checked:
    """Open and check one page: manifest, ack bundles, documents, acks, the runs inside it."""
    me, dids = keys[0], {k.did for k in keys}
    out = _Checked(page_cid)
    runs = _Runs(out)
    try:
        try:
            signed = _open_with(kenvelope.open_plaintext, window[page_cid], keys, page_cid)
        except NotRecipientError:
            raise ForeignArchiveError(f"{page_cid}: the manifest is not sealed to {me.did}; "
                                      "this is another company's archive", cid=page_cid) from None
        except UsagiError as exc:
            raise ArchiveError(f"{page_cid}: {exc.code}: {exc}", cid=page_cid) from None
        body = _at(page_cid, lambda: open_signed(signed, "manifest", "by", PAGE_LIMITS)).body
        if body.get("by") not in dids:
            raise ForeignArchiveError(f"{page_cid}: manifest signed by {body.get('by')}, "
                                      f"not by {me.did}", cid=page_cid)
        out.early = False
        if body.get("type") != PAGE_TYPE or body.get("seq") != seq or body.get("prev") != prev_page:
            raise ArchiveError(f"{page_cid}: manifest page out of order or not chained to the "
                               "previous page", cid=page_cid)
        out.head = body.get("head")
        out.filter = dict(body.get("filter", {}))
        aliases = body.get("aliases", {})
        if type(aliases) is not dict or not all(type(k) is str and type(v) is str
                                                for k, v in aliases.items()):
            raise ArchiveError(f"{page_cid}: the manifest's aliases are not DID -> DID",
                               cid=page_cid)
        out.aliases = aliases
        acks: dict[str, list[bytes]] = {}
        for partner, bundle_cid in body["acks"].items():
            block = window[bundle_cid]
            plain = _at(bundle_cid, partial(_open_with, kenvelope.open_plaintext, block, keys,
                                            bundle_cid))
            bundle = _at(bundle_cid, partial(dagcbor.decode, plain, PAGE_LIMITS))
            if type(bundle) is not dict or bundle.get("type") != ACKS_TYPE:
                raise ArchiveError(f"{bundle_cid}: not an ack bundle", cid=bundle_cid)
            acks[partner] = bundle["acks"]
        linked = set(body["acks"].values())
        page = out.page = Page(body["seq"], body["entries"], {}, {}, {}, out.head,
                               aliases) if keep else None
        for raw_entry in body["entries"]:
            entry = read_entry(page_cid, raw_entry)
            cid = entry["cid"]
            linked.add(cid)
            if cid not in window:
                raise ArchiveError(f"{cid}: listed in the manifest but not in its page", cid=cid)
            if page is not None:
                page.blocks[cid] = window[cid]
            try:  # one document that does not verify is set aside, not the archive
                opened = _document(keys, cid, window, entry, aliases)
                raw = _ack(me.did, dids, cid, entry, acks, opened, aliases) if "ack" in entry else None
            except UsagiError as exc:
                out.quarantined.append(Quarantined(cid, exc.code, str(exc)))
                continue
            if page is not None:
                page.opened[cid] = opened
            if raw is not None:
                out.acks += 1
                if page is not None:
                    page.acks[cid] = raw
            runs.add(entry["thread"], opened)
        if linked != set(blocks):
            raise ArchiveError(f"{page_cid}: the manifest and the index of page {body['seq']} "
                               "name different blocks", cid=page_cid)
        out.documents = len(body["entries"])
    except Exception as exc:  # noqa: BLE001  (handed to the parent, which raises it)
        if isinstance(exc, UsagiError) and not isinstance(exc, ArchiveError):
            exc = ArchiveError(f"{exc.code}: {exc}")
        out.error = exc
    runs.end(out.error is not None)
    return out


def _document(keys: Keys, cid: CID, window: dict[CID, bytes], entry: dict[str, Any],
              aliases: dict[str, str]) -> Opened:
    """Open and check one listed document; a kernel error is raised as it is."""
    opened: Opened = _open_with(kenvelope.open, window[cid], keys, cid)
    doc = opened.document
    mine, theirs = (("from", "to") if entry["dir"] == "out" else ("to", "from"))
    # A partner that rotated may have signed with its old key what its new key noticed.
    if (doc[mine] not in {k.did for k in keys} or (doc[theirs] != entry["partner"] and canonical(
            doc[theirs], aliases) != canonical(entry["partner"], aliases))
            or doc["kind"] != entry["kind"] or doc["issued_at"] != entry["issued_at"]
            or doc.get("thread", cid) != entry["thread"]):
        raise ArchiveError(f"{cid}: the document does not match its manifest entry", cid=cid)
    return opened


def _ack(me: str, dids: set[str], cid: CID, entry: dict[str, Any], acks: dict[str, list[bytes]],
         opened: Opened, aliases: dict[str, str]) -> bytes:
    bundle = acks.get(entry["partner"], [])
    if entry["ack"] >= len(bundle):
        raise ArchiveError(f"{cid}: its ack is missing from the ack bundle", cid=cid)
    raw: bytes = bundle[entry["ack"]]
    ack = open_ack(raw)
    if entry["dir"] == "out":
        by = entry["partner"]
        if ack.by != by and canonical(ack.by, aliases) == canonical(by, aliases):
            by = ack.by  # a partner that rotated its key acks with its new one
    else:  # our own ack, made with the key we had then
        by = ack.by if ack.by in dids else me
    check_ack(ack, cid=cid, by=by, digest=opened.digest)
    return raw


def _thread_of(opened: Opened) -> CID:
    # _document checked that the entry's thread is this.
    thread: CID = opened.document.get("thread", opened.cid)
    return thread


class _KeyedChecker:
    """Chains checked pages in archive order: the manifest chain, the head, thread runs."""

    def __init__(self, keys: Keys, report: VerifyReport) -> None:
        self.me, self.report = keys[0], report
        self.prev_page: CID | None = None
        self.head: dict[str, Any] | None = None
        self.thread: CID | None = None
        self.group: list[Opened] = []
        self.aliases: dict[str, str] = {}

    def accept(self, res: _Checked) -> None:
        if res.error is not None and res.early:
            raise res.error
        self.aliases = res.aliases  # every page carries them all
        if self.head is not None:  # a page after the one with the head
            raise ArchiveError(f"{res.page_cid}: manifest page out of order or not chained to "
                               "the previous page", cid=res.page_cid)
        self.prev_page = res.page_cid
        self.head = res.head
        self.report.filter = res.filter
        for opened in res.first:
            self._thread(_thread_of(opened), opened)
        if res.first_closed:
            self._close()
            self.report.threads += res.threads
            self.report.partial_threads += res.partial_threads
            for opened in res.last:
                self._thread(_thread_of(opened), opened)
        self.report.quarantined += res.quarantined
        if res.error is not None:
            raise res.error
        self.report.documents += res.documents
        self.report.acks += res.acks
        if res.head is not None:
            self.report.by, self.report.created_at = self.me.did, res.head["created_at"]

    def _thread(self, thread: CID, opened: Opened) -> None:
        if thread != self.thread and self.group:
            self._close()
        self.thread = thread
        self.group.append(opened)

    def _close(self) -> None:
        self.report.threads += 1
        self.report.partial_threads += _close_run(self.thread, self.group,  # type: ignore[arg-type]
                                                  self.report.filter, self.report.quarantined,
                                                  self.aliases)
        self.group = []

    def finish(self) -> None:
        if self.group:  # the last thread
            self._close()
        if self.head is None or self.head.get("count") != self.report.documents:
            raise ArchiveError(f"{self.prev_page}: the last manifest page has no head, or its "
                               "count disagrees", cid=self.prev_page)


def _at(cid: CID | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a kernel error into an ArchiveError naming ``cid``."""
    try:
        return fn()
    except (ThreadError, UsagiError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{cid}: {exc.code}: {exc}", cid=cid) from None


def _pages(path: str | os.PathLike[str],
           report: VerifyReport) -> Iterator[tuple[dict[str, Any], dict[CID, bytes]]]:
    """The keyless checks, as the file streams: yield each page's index and its blocks.

    CAR v1 framing, every block's hash (the reader), every index linking exactly
    its page and the previous index, the root being the last index.
    """
    window: dict[CID, bytes] = {}
    prev_index: CID | None = None
    with open(path, "rb") as fp:
        try:
            reader = CARReader(fp, allow_empty_roots=False)
            if len(reader.roots) != 1:
                raise ArchiveError(f"an archive has one root, this CAR has {len(reader.roots)}")
            report.root = reader.roots[0]
            for cid, block in reader:
                report.blocks += 1
                report.bytes += len(block)
                index = check_index(cid, block, window, prev_index)
                if index is None:
                    if cid in window:
                        raise ArchiveError(f"{cid}: appears twice in one page", cid=cid)
                    window[cid] = block
                    continue
                report.pages += 1
                yield index, window
                window = {}
                prev_index = cid
        except ArchiveError:
            raise
        except UsagiError as exc:
            raise ArchiveError(f"{exc.code}: {exc}") from None
    if window:
        first = next(iter(window))
        raise ArchiveError(f"{first}: not linked by any index (trailing blocks)", cid=first)
    if prev_index is None or prev_index != report.root:
        raise ArchiveError(f"{report.root}: the root is not the last index of the archive",
                           cid=report.root)


def iter_pages(path: str | os.PathLike[str], me: Identity | Sequence[Identity] | None,
               report: VerifyReport | None = None) -> Iterator[Page | None]:
    """Check the archive as it streams, in this process; yield each page (None without keys).

    ``me`` is this node's key, or its keys with the current one first (then the
    ones it rotated away from, which open what was sealed before a rotation)."""
    report = report if report is not None else VerifyReport()
    report.keyed = me is not None
    if me is None:
        for _ in _pages(path, report):
            yield None
        return
    keys = _keys(me)
    keyed = _KeyedChecker(keys, report)
    for index, window in _pages(path, report):
        checked = _check_page(keys, index["seq"], index["manifest"], index["blocks"], window,
                              keyed.prev_page, keep=True)
        keyed.accept(checked)
        yield checked.page
    keyed.finish()


# The worker side of a parallel verify. Workers are forked, not spawned: a
# spawned worker imports the caller's __main__ again (a script without a
# ``if __name__ == "__main__"`` guard would run again in each worker), and
# forking needs no import (~0.25 s) and passes the identity without pickling
# it. A worker only runs _check_page on what it is sent.
_worker_identity: Keys | None = None


def _worker_start(keys: Keys) -> None:
    global _worker_identity  # noqa: PLW0603
    _worker_identity = keys


def _worker_page(seq: int, manifest: bytes, blocks: list[bytes], window: list[tuple[bytes, bytes]],
                 prev_page: bytes | None) -> _Checked:
    assert _worker_identity is not None
    return _check_page(_worker_identity, seq, cid_from_raw(manifest),
                       [cid_from_raw(b) for b in blocks],
                       {cid_from_raw(c): b for c, b in window},
                       cid_from_raw(prev_page) if prev_page is not None else None, keep=False)


def _verify_parallel(path: str | os.PathLike[str], keys: Keys, report: VerifyReport,
                     workers: int) -> None:
    """Keyed verify in ``workers`` processes: this one and ``workers - 1`` forked ones.

    This process reads the file (the keyless checks) and hands each page to a
    worker while the workers have room (one page running and one queued
    each); otherwise it checks the page itself. So no core waits, and on a
    machine whose other cores are busy it does most of the work itself rather
    than fighting its workers for one core. Pages are taken back in file
    order; a keyless failure found while pages are still out is raised only
    after them, so the failure named is the first in the file, as in one pass.
    """
    report.keyed = True
    keyed = _KeyedChecker(keys, report)
    pending: deque[tuple[Future[_Checked] | _Checked, int]] = deque()
    inflight = 0  # bytes of the pages with the workers

    def take() -> None:
        nonlocal inflight
        item, size = pending.popleft()
        inflight -= size
        if isinstance(item, Future):
            item = item.result()
        keyed.accept(item)

    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_start, initargs=(keys,))
    try:
        pages = _pages(path, report)
        prev_page: CID | None = None
        while True:
            try:
                item = next(pages, None)
            except ArchiveError:
                while pending:
                    take()
                raise
            if item is None:
                break
            index, window = item
            if sum(1 for f, _ in pending if isinstance(f, Future) and not f.done()) \
                    < _INFLIGHT_PAGES * (workers - 1):
                size = sum(map(len, window.values()))
                pending.append((pool.submit(
                    _worker_page, index["seq"], index["manifest"].raw,
                    [c.raw for c in index["blocks"]], [(c.raw, b) for c, b in window.items()],
                    prev_page.raw if prev_page is not None else None), size))
                inflight += size
            else:  # the workers are busy: check it here (its blocks are not kept)
                pending.append((_check_page(keys, index["seq"], index["manifest"], index["blocks"],
                                            window, prev_page, keep=False), 0))
            prev_page = index["manifest"]
            while pending and (not isinstance(pending[0][0], Future) or pending[0][0].done()
                               or len(pending) > 2 * _INFLIGHT_PAGES * workers
                               or inflight > _INFLIGHT_BYTES):
                take()
        while pending:
            take()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    keyed.finish()


def _default_workers(path: str | os.PathLike[str]) -> int:
    if os.path.getsize(path) < PARALLEL_MIN_BYTES \
            or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


def verify_archive(path: str | os.PathLike[str],
                   me: Identity | Sequence[Identity] | None = None, *,
                   workers: int | None = None) -> VerifyReport:
    """Verify the whole archive; raise ArchiveError at the first failure.

    With keys and ``workers`` > 1, pages are opened and checked in that many
    processes, this one and ``workers - 1`` forked ones (every check still made,
    the same first failure named); ``None`` chooses: one process for small
    archives, else one per core (at most :data:`MAX_WORKERS`).
    """
    if me is not None:
        workers = _default_workers(path) if workers is None else workers
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            report = VerifyReport()
            try:
                _verify_parallel(path, _keys(me), report, workers)
                return report
            except BrokenProcessPool:  # a worker died (killed, out of memory): one process
                pass
    report = VerifyReport()
    for _ in iter_pages(path, me, report):
        pass
    return report


# -- import ----------------------------------------------------------------------


#: Why a document we sent comes back from an archive without an ack.
RESTORED_UNACKED: Final = ("restored from an archive with no ack; 'usagi outbox retry' "
                           "sends it again (a partner that has it answers with its ack)")


def _statements(page: Page, node: Node, quarantined: dict[CID, Quarantined], root: CID | None
                ) -> list[tuple[str, tuple[Any, ...]]]:
    mine = {node.did, *(old.did for old in node.retired)}
    docs, acks, nonces, outbox, apart = [], [], [], [], []
    for entry in page.entries:
        cid = entry["cid"]
        bad = quarantined.get(cid)
        if bad is not None:  # kept apart: not a document of the node, nor of any thread
            apart.append((
                "INSERT OR IGNORE INTO quarantine (cid, direction, partner, kind, thread, "
                "issued_at, recorded_at, code, reason, archive, quarantined_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (cid.raw, entry["dir"], entry["partner"], entry["kind"], entry["thread"].raw,
                 entry["issued_at"], float(entry["recorded_at"]), bad.code, bad.reason,
                 root.raw if root is not None else b"", node.clock())))
            continue
        opened = page.opened[cid]
        doc = opened.document
        status, reason = entry["status"], entry.get("reason")
        unacked = entry["dir"] == "out" and cid not in page.acks
        if unacked:
            # Queued or undelivered when the archive was made: back in the outbox,
            # held until someone says to send (the partner may have it already).
            status, reason = "undelivered", RESTORED_UNACKED
            notice = make_notice(node.identity, cid, entry["partner"], node.now())
            outbox.append((
                "INSERT OR IGNORE INTO outbox (cid, partner, notice, state, next_attempt, "
                "last_error, created) VALUES (?,?,?,'undelivered',0,?,?)",
                (cid.raw, entry["partner"], notice, RESTORED_UNACKED, node.clock())))
        docs.append((
            "INSERT OR IGNORE INTO documents (cid, direction, partner, kind, thread, ref, "
            "issued_at, recorded_at, status, reason, digest, signed, user, prev) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (cid.raw, entry["dir"], entry["partner"], doc["kind"], entry["thread"].raw,
             doc.get("ref"), doc["issued_at"], float(entry["recorded_at"]), status,
             reason, opened.digest, opened.signed, doc.get("user"),
             dagcbor.encode(list(doc.get("prev", [])))),
        ))
        raw = page.acks.get(cid)
        if raw is None:
            continue
        ack = open_ack(raw)
        acks.append(("INSERT OR IGNORE INTO acks (cid, raw, status, reason, at) "
                     "VALUES (?,?,?,?,?)", (cid.raw, raw, ack.status, ack.reason,
                                            entry["ack_at"])))
        if ack.by in mine:  # our ack for a received document answers the notice's nonce
            nonces.append(("INSERT OR IGNORE INTO nonces (sender, nonce, cid, ack, seen_at) "
                           "VALUES (?,?,?,?,?)", (ack.to, ack.nonce, cid.raw, raw,
                                                  float(entry["recorded_at"]))))
    partners: list[tuple[str, tuple[Any, ...]]] = [
        ("INSERT OR IGNORE INTO partners (did, name, endpoint, status, added_at) "
         "VALUES (?,?,?,?,?)", (p["did"], p["name"], p["endpoint"], p["status"], 0.0))
        for p in (page.head or {}).get("partners", [])]
    # A partner's rotation, so its threads are still one pair's (Ledger.thread). Its
    # old key stays refused: no overlap end is known, so none is restored.
    partners += [("UPDATE partners SET rotated_to = ? WHERE did = ? AND rotated_to IS NULL",
                  (new, old)) for old, new in page.aliases.items() if page.head is not None]
    # Our own rotations, so our threads across them are still one pair's: the
    # alias only (its overlap long over; the signed statement is not archived).
    partners += [("INSERT OR IGNORE INTO rotations (old, new, overlap_until, statement) "
                  "VALUES (?,?,0,x'')", (old, new))
                 for old, new in page.aliases.items() if page.head is not None and old in mine]
    return docs + acks + nonces + outbox + apart + partners


async def import_archive(node: Node, path: str | os.PathLike[str]) -> VerifyReport:
    """Verify the whole archive first (nothing is written if it fails), then restore it.

    A partial archive is restored but for the documents the verification
    reported (``report.quarantined``): those go to the ``quarantine`` table (their
    blocks to the store), where nothing shows them as the node's documents.
    """
    keys = (node.identity, *node.retired)
    checked = await asyncio.to_thread(verify_archive, path, keys)
    # The first pass knows every verdict; the second yields a page before a thread
    # running on into the next page is judged.
    quarantined = {q.cid: q for q in checked.quarantined}
    report = VerifyReport()
    pages = iter_pages(path, keys, report)
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        await node.store.put_many(list(page.blocks.values()))
        await node.ledger.write(_statements(page, node, quarantined, checked.root))
    return report
