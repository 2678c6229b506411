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
thread chains. :func:`import_archive` runs the same checks, then restores the
ledger (``INSERT OR IGNORE``: re-import changes nothing).

Errors::

    UsagiError
    └── NodeError
        └── ArchiveError          "archive_invalid"  (names the first failing CID)
            └── ForeignArchiveError "archive_foreign" (not this node's archive)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
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
from kernel.messages import check_ack, open_ack
from kernel.signed import open_signed, sign
from kernel.thread import verify_thread

from .archive_format import (
    ACKS_TYPE,
    INDEX_TYPE,
    PAGE_BLOCK_BYTES,
    PAGE_BYTES,
    PAGE_ENTRIES,
    PAGE_LIMITS,
    PAGE_TYPE,
    ArchiveError,
    ForeignArchiveError,
    check_index,
    entry_size,
    read_entry,
)
from .node import Node

__all__ = ["ArchiveError", "ForeignArchiveError", "ExportReport", "VerifyReport",
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


# -- export ----------------------------------------------------------------------


class _Exporter:
    """Writes pages as rows arrive; holds one page of entries and blocks at most."""

    def __init__(self, writer: CARWriter, me: Identity, filters: dict[str, str]) -> None:
        self.writer, self.me, self.filter = writer, me, filters
        self.seq = 0
        self.prev_page: CID | None = None
        self.prev_index: CID | None = None
        self.documents = self.acks = 0
        self._reset()

    def _reset(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.links: list[CID] = []
        self.bundles: dict[str, list[bytes]] = {}
        self.bundle_bytes: dict[str, int] = {}
        self.est = self.block_bytes = 0

    def full(self) -> bool:
        return (len(self.entries) >= PAGE_ENTRIES or self.est >= PAGE_BYTES
                or self.block_bytes >= PAGE_BLOCK_BYTES
                or any(n >= PAGE_BYTES for n in self.bundle_bytes.values()))

    def add(self, row: tuple[Any, ...], blocks: dict[bytes, bytes]) -> None:
        cid_raw, direction, partner, kind, thread, issued_at, recorded_at, status, reason, \
            ack_raw, ack_at = row
        cid = CID.from_bytes(cid_raw)
        block = blocks[cid_raw]
        self.writer.write(cid, block)  # verifies: a damaged stored block is never archived
        entry: dict[str, Any] = {
            "cid": cid, "dir": direction, "partner": partner, "kind": kind,
            "thread": CID.from_bytes(thread), "issued_at": issued_at,
            "recorded_at": repr(float(recorded_at)), "status": status,
        }
        if reason is not None:
            entry["reason"] = reason
        if ack_raw is not None:
            bundle = self.bundles.setdefault(partner, [])
            entry["ack"] = len(bundle)
            entry["ack_at"] = ack_at
            bundle.append(ack_raw)
            self.bundle_bytes[partner] = self.bundle_bytes.get(partner, 0) + len(ack_raw) + 4
            self.acks += 1
        self.entries.append(entry)
        self.links.append(cid)
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
            self.links.append(sealed.cid)
        body: dict[str, Any] = {"v": 1, "type": PAGE_TYPE, "by": self.me.did, "seq": self.seq,
                                "entries": self.entries, "acks": acks, "filter": self.filter}
        if self.prev_page is not None:
            body["prev"] = self.prev_page
        if head is not None:
            body["head"] = head
        # The manifest names every partner: sealed to this node alone.
        page = kenvelope.seal_signed(sign(self.me, "manifest", body), [self.me.did])
        self.writer.write(page.cid, page.block, verify=False)
        index: dict[str, Any] = {"v": 1, "type": INDEX_TYPE, "seq": self.seq,
                                 "manifest": page.cid, "blocks": self.links}
        if self.prev_index is not None:
            index["prev"] = self.prev_index
        index_cid = self.writer.write_block(dagcbor.encode(index))
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
        cur = con.execute(
            "SELECT d.cid, d.direction, d.partner, d.kind, d.thread, d.issued_at, d.recorded_at, "  # noqa: S608
            f"d.status, d.reason, a.raw, a.at FROM documents d LEFT JOIN acks a ON a.cid = d.cid "
            f"{clause} ORDER BY d.thread, d.recorded_at, d.cid", args)
        with open(tmp, "wb") as fp:
            writer = CARWriter(fp, [_PLACEHOLDER])
            kept = {k: str(v) for k, v in filters.items() if v is not None}
            exporter = _Exporter(writer, node.identity, kept)
            while rows := cur.fetchmany(_FETCH_BATCH):
                blocks = fetch(con, [CID.from_bytes(r[0]) for r in rows])
                for row in rows:
                    if exporter.full():
                        exporter.flush()
                    exporter.add(row, blocks)
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
        if isinstance(store, SQLiteBlockStore):
            marks = ",".join("?" * len(cids))
            found = dict(con.execute(
                f"SELECT cid, data FROM blk.blocks WHERE cid IN ({marks})",  # noqa: S608
                [c.raw for c in cids]).fetchall())
        else:  # any other store: its own async API, from this worker thread
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


@dataclass(slots=True)
class Page:
    """One verified page, as handed to import."""

    seq: int
    entries: list[dict[str, Any]]
    opened: dict[CID, Opened]
    blocks: dict[CID, bytes]
    acks: dict[CID, bytes]
    head: dict[str, Any] | None


class _KeyedChecker:
    def __init__(self, me: Identity, report: VerifyReport) -> None:
        self.me, self.report = me, report
        self.prev_page: CID | None = None
        self.head: dict[str, Any] | None = None
        self.thread: CID | None = None
        self.group: list[Opened] = []

    def page(self, index_cid: CID, index: dict[str, Any], window: dict[CID, bytes]) -> Page:
        page_cid = index["manifest"]
        try:
            signed = kenvelope.open_plaintext(window[page_cid], self.me, page_cid)
        except NotRecipientError:
            raise ForeignArchiveError(f"{page_cid}: the manifest is not sealed to {self.me.did}; "
                                      "this is another company's archive", cid=page_cid) from None
        body = _at(page_cid, lambda: open_signed(signed, "manifest", "by", PAGE_LIMITS)).body
        if body.get("by") != self.me.did:
            raise ForeignArchiveError(f"{page_cid}: manifest signed by {body.get('by')}, "
                                      f"not by {self.me.did}", cid=page_cid)
        if (body.get("type") != PAGE_TYPE or body.get("seq") != index["seq"]
                or body.get("prev") != self.prev_page or self.head is not None):
            raise ArchiveError(f"{page_cid}: manifest page out of order or not chained to the "
                               "previous page", cid=page_cid)
        self.prev_page = page_cid
        self.head = body.get("head")
        self.report.filter = dict(body.get("filter", {}))
        acks: dict[str, list[bytes]] = {}
        for partner, bundle_cid in body["acks"].items():
            block = window[bundle_cid]
            plain = _at(bundle_cid, partial(kenvelope.open_plaintext, block, self.me, bundle_cid))
            bundle = _at(bundle_cid, partial(dagcbor.decode, plain, PAGE_LIMITS))
            if type(bundle) is not dict or bundle.get("type") != ACKS_TYPE:
                raise ArchiveError(f"{bundle_cid}: not an ack bundle", cid=bundle_cid)
            acks[partner] = bundle["acks"]
        linked = set(body["acks"].values())
        out = Page(body["seq"], body["entries"], {}, {}, {}, self.head)
        for raw_entry in body["entries"]:
            entry = read_entry(page_cid, raw_entry)
            cid = entry["cid"]
            linked.add(cid)
            out.opened[cid] = opened = self._document(cid, window, entry)
            out.blocks[cid] = window[cid]
            if "ack" in entry:
                out.acks[cid] = self._ack(cid, entry, acks, opened)
            self._thread(entry["thread"], opened)
        if linked != set(index["blocks"]):
            raise ArchiveError(f"{page_cid}: the manifest and the index of page {body['seq']} "
                               "name different blocks", cid=page_cid)
        self.report.documents += len(body["entries"])
        return out

    def _document(self, cid: CID, window: dict[CID, bytes], entry: dict[str, Any]) -> Opened:
        if cid not in window:
            raise ArchiveError(f"{cid}: listed in the manifest but not in its page", cid=cid)
        opened: Opened = _at(cid, lambda: kenvelope.open(window[cid], self.me, cid))
        doc = opened.document
        mine, theirs = (("from", "to") if entry["dir"] == "out" else ("to", "from"))
        if (doc[mine] != self.me.did or doc[theirs] != entry["partner"]
                or doc["kind"] != entry["kind"] or doc["issued_at"] != entry["issued_at"]
                or doc.get("thread", cid) != entry["thread"]):
            raise ArchiveError(f"{cid}: the document does not match its manifest entry", cid=cid)
        return opened

    def _ack(self, cid: CID, entry: dict[str, Any], acks: dict[str, list[bytes]],
             opened: Opened) -> bytes:
        bundle = acks.get(entry["partner"], [])
        if entry["ack"] >= len(bundle):
            raise ArchiveError(f"{cid}: its ack is missing from the ack bundle", cid=cid)
        raw: bytes = bundle[entry["ack"]]
        by = entry["partner"] if entry["dir"] == "out" else self.me.did
        _at(cid, lambda: check_ack(open_ack(raw), cid=cid, by=by, digest=opened.digest))
        self.report.acks += 1
        return raw

    def _thread(self, thread: CID, opened: Opened | None) -> None:
        if thread != self.thread and self.group:
            self.report.threads += 1
            cids = {o.cid for o in self.group}
            links = {c for o in self.group for c in o.document.get("prev", ())}
            windowed = "since" in self.report.filter or "until" in self.report.filter
            if not windowed or (self.thread in cids and links <= cids):
                _at(self.thread, lambda: verify_thread(self.group))
            else:  # a time window may cut a thread: what is present must still agree
                self.report.partial_threads += 1
            self.group = []
        self.thread = thread
        if opened is not None:
            self.group.append(opened)


def _at(cid: CID | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a kernel error into an ArchiveError naming ``cid``."""
    try:
        return fn()
    except (ThreadError, UsagiError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{cid}: {exc.code}: {exc}", cid=cid) from None


def iter_pages(path: str | os.PathLike[str], me: Identity | None,
               report: VerifyReport | None = None) -> Iterator[Page | None]:
    """Check the archive as it streams; yield each page (None per page without keys)."""
    report = report if report is not None else VerifyReport()
    report.keyed = me is not None
    keyed = _KeyedChecker(me, report) if me is not None else None
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
                if keyed is not None:
                    page = keyed.page(cid, index, window)
                    if page.head is not None:
                        report.by, report.created_at = keyed.me.did, page.head["created_at"]
                    yield page
                else:
                    yield None
                window.clear()
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
    if keyed is not None:
        keyed._thread(CID.for_block(b""), None)  # close the last thread
        if keyed.head is None or keyed.head.get("count") != report.documents:
            raise ArchiveError(f"{keyed.prev_page}: the last manifest page has no head, or its "
                               "count disagrees", cid=keyed.prev_page)


def verify_archive(path: str | os.PathLike[str], me: Identity | None = None) -> VerifyReport:
    """Verify the whole archive; raise ArchiveError at the first failure."""
    report = VerifyReport()
    for _ in iter_pages(path, me, report):
        pass
    return report


# -- import ----------------------------------------------------------------------


def _statements(page: Page, me: str) -> list[tuple[str, tuple[Any, ...]]]:
    docs, acks, nonces = [], [], []
    for entry in page.entries:
        cid = entry["cid"]
        opened = page.opened[cid]
        doc = opened.document
        docs.append((
            "INSERT OR IGNORE INTO documents (cid, direction, partner, kind, thread, ref, "
            "issued_at, recorded_at, status, reason, digest, signed, user, prev) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (cid.raw, entry["dir"], entry["partner"], doc["kind"], entry["thread"].raw,
             doc.get("ref"), doc["issued_at"], float(entry["recorded_at"]), entry["status"],
             entry.get("reason"), opened.digest, opened.signed, doc.get("user"),
             dagcbor.encode(list(doc.get("prev", [])))),
        ))
        raw = page.acks.get(cid)
        if raw is None:
            continue
        ack = open_ack(raw)
        acks.append(("INSERT OR IGNORE INTO acks (cid, raw, status, reason, at) "
                     "VALUES (?,?,?,?,?)", (cid.raw, raw, ack.status, ack.reason,
                                            entry["ack_at"])))
        if ack.by == me:  # our ack for a received document answers the notice's nonce
            nonces.append(("INSERT OR IGNORE INTO nonces (sender, nonce, cid, ack, seen_at) "
                           "VALUES (?,?,?,?,?)", (ack.to, ack.nonce, cid.raw, raw,
                                                  float(entry["recorded_at"]))))
    partners = [("INSERT OR IGNORE INTO partners (did, name, endpoint, status, added_at) "
                 "VALUES (?,?,?,?,?)", (p["did"], p["name"], p["endpoint"], p["status"], 0.0))
                for p in (page.head or {}).get("partners", [])]
    return docs + acks + nonces + partners


async def import_archive(node: Node, path: str | os.PathLike[str]) -> VerifyReport:
    """Verify the whole archive first (nothing is written if it fails), then restore it."""
    await asyncio.to_thread(verify_archive, path, node.identity)
    report = VerifyReport()
    pages = iter_pages(path, node.identity, report)
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        await node.store.put_many(list(page.blocks.values()))
        await node.ledger.write(_statements(page, node.did))
    return report
