"""Archive verify: the keyless and the keyed checks, in this process or in
forked workers (docs/archive.md, "Verify").

Without keys, framing, every block's hash, the index chain and the root; with
the node's keys, every manifest page, document and ack is opened and checked,
with the page chain and thread chains. A document that does not verify in a
sound archive is reported (:class:`Quarantined`), the archive is then partial.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from ipfs.car import CARReader
from kernel import (
    Identity,
    Opened,
    canonical,
    check_ack,
    dagcbor,
    open_ack,
    open_envelope,
    open_plaintext,
    open_signed,
    split_thread,
    verify_thread,
)
from kernel.cid import CID
from kernel.errors import NotRecipientError, ThreadError, UsagiError

from .structures import (
    ACKS_TYPE,
    PAGE_LIMITS,
    PAGE_TYPE,
    ArchiveError,
    ForeignArchiveError,
    check_index,
    cid_from_raw,
    read_entry,
    read_head,
    read_partner_list,
)

__all__ = ["Quarantined", "VerifyReport", "Page", "verify_archive", "iter_pages",
           "default_workers", "PARALLEL_MIN_BYTES", "MAX_WORKERS"]


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
    #: The head's partners (inline or from its partner lists): (did, name, endpoint, status).
    partners: list[tuple[str, str, str, str]] = field(default_factory=list)


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
    (kernel._thread.split_thread): the rest of the thread still counts.
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
            signed = _open_with(open_plaintext, window[page_cid], keys, page_cid)
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
        partners, lists = _head(keys, page_cid, out.head, window) \
            if out.head is not None else ([], [])
        acks: dict[str, list[bytes]] = {}
        for partner, bundle_cid in body["acks"].items():
            block = window[bundle_cid]
            plain = _at(bundle_cid, partial(_open_with, open_plaintext, block, keys,
                                            bundle_cid))
            bundle = _at(bundle_cid, partial(dagcbor.decode, plain, PAGE_LIMITS))
            if type(bundle) is not dict or bundle.get("type") != ACKS_TYPE:
                raise ArchiveError(f"{bundle_cid}: not an ack bundle", cid=bundle_cid)
            acks[partner] = bundle["acks"]
        linked = {*body["acks"].values(), *lists}
        page = out.page = Page(body["seq"], body["entries"], {}, {}, {}, out.head,
                               aliases, partners) if keep else None
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


def _head(keys: Keys, page_cid: CID, head: Any, window: dict[CID, bytes]
          ) -> tuple[list[tuple[str, str, str, str]], list[CID]]:
    """The last page's partners, inline or from the partner lists its head links
    (sealed blocks of the page); and those lists."""
    partners, lists = read_head(page_cid, head)
    for cid in lists:
        if cid not in window:
            raise ArchiveError(f"{cid}: a partner list the head links is not in its page",
                               cid=cid)
        plain = _at(cid, partial(_open_with, open_plaintext, window[cid], keys, cid))
        partners += read_partner_list(cid, _at(cid, partial(dagcbor.decode, plain, PAGE_LIMITS)))
    return partners, lists


def _document(keys: Keys, cid: CID, window: dict[CID, bytes], entry: dict[str, Any],
              aliases: dict[str, str]) -> Opened:
    """Open and check one listed document; a kernel error is raised as it is."""
    opened: Opened = _open_with(open_envelope, window[cid], keys, cid)
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


def default_workers(path: str | os.PathLike[str]) -> int:
    """How many processes :func:`verify_archive` uses for ``path`` when not told."""
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
        workers = default_workers(path) if workers is None else workers
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


