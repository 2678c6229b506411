"""Archive export: the ledger's snapshot written as a sealed CAR, one page at a time
(docs/archive.md, "Export"; the structures: :mod:`usagi_p2p.archive.structures`).

The ledger gives one consistent read of the documents, their acks and (with
the embedded store) their blocks (``Ledger.snapshot``); this module seals
ack bundles and signed manifest pages and writes the index chain, holding one
page of entries and blocks at most whatever the history's size.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ipfs.car import CARWriter, encode_header
from kernel import Identity, dagcbor, format_time, seal_signed, sign_bytes
from kernel.cid import CID

from ..node.node import Node
from .structures import (
    ACKS_TYPE,
    ALIASES,
    INDEX_LINKS,
    PAGE_BLOCK_BYTES,
    PAGE_BYTES,
    PAGE_ENTRIES,
    PAGE_TYPE,
    PARTNER_LIST_ENTRIES,
    PARTNER_LISTS,
    PARTNERS_TYPE,
    ArchiveError,
    cid_from_raw,
    encode_array,
    encode_map,
    entry_size,
    entry_value,
    index_block,
)

__all__ = ["ExportReport", "export_archive"]

#: A CID of the same length as every root we write (CIDv1, dag-cbor, sha2-256):
#: the header is written with it first and overwritten in place at the end.
_PLACEHOLDER: Final = CID.for_block(b"\xa0")
#: Rows read from the ledger's snapshot at a time.
_FETCH_BATCH: Final = 256


@dataclass(slots=True)
class ExportReport:
    root: CID
    documents: int
    acks: int
    pages: int
    blocks: int
    bytes: int



# -- export ----------------------------------------------------------------------


class _Exporter:
    """Writes pages as rows arrive; holds one page of entries and blocks at most.

    Entries are built as maps already in canonical key order with their links
    as tag 42 (structures.entry_value), so the manifest page encodes in
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

    def finish(self, created_at: str, partners: list[dict[str, str]]) -> CID:
        """Write the last page, whose head names every partner: inline up to
        PARTNER_LIST_ENTRIES partners within PAGE_BYTES (the head archives had before
        partner lists existed), else in partner lists."""
        encoded = [dagcbor.encode(p) for p in partners]
        size = sum(map(len, encoded))
        if len(encoded) <= PARTNER_LIST_ENTRIES and size < PAGE_BYTES:
            if size and self.entries and self.est + size >= PAGE_BYTES:
                self.flush()  # not with this page's entries: the head gets a page of its own
            return self.flush({"count": self.documents, "pages": self.seq + 1,
                               "created_at": created_at, "partners": partners})
        lists: list[list[bytes]] = [[]]
        size = 0
        for one in encoded:
            if lists[-1] and (len(lists[-1]) >= PARTNER_LIST_ENTRIES
                              or size + len(one) > PAGE_BYTES):
                lists.append([])
                size = 0
            lists[-1].append(one)
            size += len(one)
        if len(lists) > PARTNER_LISTS:
            raise ArchiveError(f"{len(partners)} partners do not fit {PARTNER_LISTS} partner "
                               "lists of an archive")
        if len(self.links) + len(self.bundles) + len(lists) > INDEX_LINKS:
            self.flush()  # the lists get a last page of their own: its index stays bounded
        return self.flush({"count": self.documents, "pages": self.seq + 1,
                           "created_at": created_at}, lists)

    def flush(self, head: dict[str, Any] | None = None,
              partner_lists: list[list[bytes]] | None = None) -> CID:
        acks: dict[str, CID] = {}
        for partner, raws in self.bundles.items():
            plain = dagcbor.encode({"v": 1, "type": ACKS_TYPE, "acks": raws})
            # Sealed to both parties: the partner may read its own receipts back.
            sealed = seal_signed(plain, [self.me.did, partner])
            self.writer.write(sealed.cid, sealed.block, verify=False)
            acks[partner] = sealed.cid
            self.links.append(sealed.cid.raw)
        if partner_lists is not None and head is not None:
            # Like the manifest, they name partners: sealed to this node alone. Not
            # signed: the signed head links each by its CID.
            head["partner_lists"] = []
            for items in partner_lists:
                sealed = seal_signed(encode_map({"v": 1, "type": PARTNERS_TYPE},
                                                {"partners": encode_array(items)}), [self.me.did])
                self.writer.write(sealed.cid, sealed.block, verify=False)
                head["partner_lists"].append(sealed.cid)
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
        page = seal_signed(sign_bytes(self.me, "manifest", body), [self.me.did])
        self.writer.write(page.cid, page.block, verify=False)
        index_cid = self.writer.write_block(index_block(
            self.seq, page.cid.raw, self.links,
            self.prev_index.raw if self.prev_index is not None else None))
        self.prev_page, self.prev_index = page.cid, index_cid
        self.seq += 1
        self._reset()
        return index_cid


def _export_sync(node: Node, path: Path, filters: dict[str, Any],
                 fetch: Callable[[list[CID]], dict[bytes, bytes]],
                 progress: Callable[[int, int], None] | None) -> ExportReport:
    tmp = path.with_name(path.name + ".part")
    try:
        # One read transaction: the count, the rows and the blocks are one snapshot.
        with node.ledger.snapshot(partner=filters["partner"], since=filters["since"],
                                  until=filters["until"],
                                  blocks=node.store.sqlite_path) as snapshot, \
                open(tmp, "wb") as fp:
            if len(snapshot.aliases) > ALIASES:  # every page would fail to decode
                raise ArchiveError(f"{len(snapshot.aliases)} key rotations are more than an "
                                   f"archive page carries ({ALIASES})")
            writer = CARWriter(fp, [_PLACEHOLDER])
            kept = {k: str(v) for k, v in filters.items() if v is not None}
            exporter = _Exporter(writer, node.identity, kept, snapshot.aliases)
            for rows in snapshot.pages(_FETCH_BATCH):
                if snapshot.joined:
                    attached = [r[11] for r in rows]
                    if None in attached:
                        missing = cid_from_raw(rows[attached.index(None)][0])
                        raise ArchiveError(f"{missing}: in the ledger but not in the block store",
                                           cid=missing)
                    blocks = [b for b in attached if b is not None]  # all of them
                else:
                    found = fetch([cid_from_raw(r[0]) for r in rows])
                    blocks = [found[r[0]] for r in rows]
                for row, block in zip(rows, blocks, strict=True):
                    if exporter.full():
                        exporter.flush()
                    exporter.add(row[:11], block)
                if progress:
                    progress(exporter.documents, snapshot.total)
            root = exporter.finish(format_time(node.now()), snapshot.partners)
            fp.seek(0)
            fp.write(encode_header([root]))  # same length as the placeholder header
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
        return ExportReport(root, exporter.documents, exporter.acks, exporter.seq,
                            writer.count, writer.bytes_written)
    finally:
        tmp.unlink(missing_ok=True)


async def export_archive(node: Node, path: str | os.PathLike[str], *, partner: str | None = None,
                         since: float | None = None, until: float | None = None,
                         progress: Callable[[int, int], None] | None = None) -> ExportReport:
    """Write the node's history (optionally one partner's, or a time window) to ``path``."""
    loop = asyncio.get_running_loop()
    store = node.store

    def fetch(cids: list[CID]) -> dict[bytes, bytes]:
        # A store without a file to attach (its blocks do not come with the
        # rows): the store's own async API, from this worker thread.
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


