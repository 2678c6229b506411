"""One company's node as its history grows: 10k, 100k (and 1M) documents.

A node's ledger and block store are filled with real history — threads of
quote -> order -> order_response -> delivery_note -> invoice with 10, 1,000
and 10,000 partners, every envelope sealed and every ack signed for real (in
two worker processes) — through the ledger's own bulk path, the one
``usagi archive import`` takes (:meth:`Ledger.restore`, one transaction per
page of 1,000 documents, and ``BlockStore.put_many``), not hand-written SQL.
The node grows in place: 10k, measured, 90k more, measured, 900k more, measured.

Each size is then measured in a fresh child process (so its peak RSS is its own):

* send and receive: the node pairs with a fresh partner node (real invitation,
  real HTTP on 127.0.0.1, in the same child) and sends it 200 quotes, then
  receives 200 orders from it; the CPU the big node spends (its event-loop
  callbacks, tagged as in bench/mesh.py, and its two SQLite threads) per
  document;
* inbox page (``operations.page_documents``, newest 50 received, as the
  local API's inbox; and ``list_documents``, as ``usagi inbox``), full-text
  search (``operations.search_documents``: a common word, a reference, a
  partner's name), thread verify (``operations.verify_document`` of an
  invoice: its whole thread), each p50 of 20;
* ``archive export`` of the whole history (docs/s), and at 100k the restore
  of that archive into a fresh node with the same key (``archive import``);
* disk bytes per document (ledger.db + blocks.db, checkpointed) against the
  mean block size; RSS after opening and peak.

Last line: ``growth: 1M docs: per-doc cost X.XXx of 10k, inbox p50 X ms,
search p50 X ms`` (without ``--million``, the same for 100k).

    python bench/growth.py             # 10k and 100k (make bench): ~1.5-2.5 min
    python bench/growth.py --million   # and 1M: 16 min in all on 2 quiet cores (2026-12-07)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = b"G" * 32
KINDS = ("quote", "order", "order_response", "delivery_note", "invoice")
PAGE = 1000
T0 = datetime(2024, 1, 1, tzinfo=UTC)
WORDS = ("hex bolt", "flange nut", "bearing 6204", "plywood 12mm", "salmon fillet",
         "nitrile gloves", "spindle motor", "rebar D13", "ball valve", "carbide insert")


def load_mesh() -> Any:
    """bench/mesh.py (its per-node meter), loaded by path: bench/ also holds a
    kernel.py, which must not shadow the kernel package."""
    import importlib.util

    if "mesh" not in sys.modules:
        spec = importlib.util.spec_from_file_location("mesh", ROOT / "bench" / "mesh.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["mesh"] = module
        spec.loader.exec_module(module)
    return sys.modules["mesh"]


def partner_seed(j: int) -> bytes:
    return hashlib.sha256(b"growth partner %d" % j).digest()


_identities: dict[int, Any] = {}


def identity(j: int) -> Any:
    """Partner ``j``'s identity (-1: the node itself), made once per worker."""
    from kernel._identity import Identity

    if j not in _identities:
        _identities[j] = Identity(SEED if j < 0 else partner_seed(j))
    return _identities[j]


def make_thread(args: tuple[int, int]) -> list[tuple[Any, ...]]:
    """Thread ``t`` with partner ``j``: five documents, sealed and acknowledged."""
    from kernel import dagcbor
    from kernel._document import format_time
    from kernel._envelope import seal
    from kernel._messages import make_ack
    t, j = args
    me, partner = identity(-1), identity(j)
    we_sell = t % 2 == 0
    rng = random.Random(t)
    lines = [{"text": f"{rng.choice(WORDS)} lot {rng.randrange(10_000):04d}",
              "qty": str(rng.randrange(1, 500)), "unit": "pcs",
              "unit_price": f"{rng.randrange(1, 9000)}.50"} for _ in range(rng.randrange(1, 6))]
    out = []
    root = prev = None
    for i, kind in enumerate(KINDS):
        from_us = (kind == "order") != we_sell
        sender, receiver = (me, partner) if from_us else (partner, me)
        issued = T0 + timedelta(seconds=t * 60 + i)
        doc: dict[str, Any] = {"v": 1, "kind": kind, "from": sender.did, "to": receiver.did,
                               "issued_at": format_time(issued), "ref": f"R-{t:07d}-{i}",
                               "currency": "JPY", "lines": lines}
        if kind == "order_response":
            doc["response"] = "accept"
        if root is not None:
            doc["thread"], doc["prev"] = root, [prev]
        sealed = seal(doc, sender)
        ack = make_ack(receiver, cid=sealed.cid, to=sender.did, nonce=os.urandom(16),
                       status="received", at=issued, digest=sealed.digest) if from_us else None
        root = root or sealed.cid
        prev = sealed.cid
        out.append((sealed.cid.raw, "out" if from_us else "in", partner.did, kind, root.raw,
                    doc["ref"], doc["issued_at"], issued.timestamp(),
                    "delivered" if from_us else "received", sealed.digest, sealed.signed,
                    dagcbor.encode(doc.get("prev", [])), ack, format_time(issued),
                    sealed.block))
    return out


#: Threads generated per round: the workers run ahead of the writes, and what
#: they made waits in this process's memory (~15 KB a thread), so a round
#: bounds it (~60 MB) however large the fill (900k documents at --million).
ROUND = 4000


def generated(pool: Any, first: int, threads: int, partners: int) -> Any:
    """The threads ``first`` .. ``first + threads`` (made by the pool), in order."""
    for start in range(first, first + threads, ROUND):
        jobs = ((t, t % partners) for t in range(start, min(start + ROUND, first + threads)))
        yield from pool.imap(make_thread, jobs, chunksize=32)


async def write(node: Any, page: Any, blocks: list[bytes], writing: asyncio.Task[None] | None
                ) -> asyncio.Task[None]:
    """Store ``page``'s blocks while the previous page's rows are restored (two SQLite
    files, two threads), then start restoring ``page``: its blocks are stored
    before its rows, as ``archive import`` does."""
    if writing is None:
        await node.store.put_many(blocks)
    else:
        await asyncio.gather(node.store.put_many(blocks), writing)
    return asyncio.ensure_future(node.ledger.restore(page))


async def fill(home: Path, first: int, threads: int, partners: int, pool: Any) -> None:
    """Append ``threads`` threads (from number ``first``) through Ledger.restore."""
    from kernel.cid import CID
    from usagi_p2p.node.ledger import DocumentRow, Restore
    from usagi_p2p.node.node import Node

    async with Node.load(home, None) as node:
        known = {p.did for p in await node.ledger.partners()}
        new = [(identity(j).did, f"Partner {j:05d}", "http://127.0.0.1:9", "active")
               for j in range(partners) if identity(j).did not in known]
        for i in range(0, len(new), PAGE):
            await node.ledger.restore(Restore(partners=new[i:i + PAGE]))
        page = Restore()
        blocks: list[bytes] = []
        writing: asyncio.Task[None] | None = None
        for rows in generated(pool, first, threads, partners):
            for r in rows:
                cid = CID.from_bytes(r[0])
                page.documents.append((DocumentRow(cid, r[1], r[2], r[3], CID.from_bytes(r[4]),
                                                   r[5], r[6], r[7], r[8], None, r[9], r[10],
                                                   None, None), r[11]))
                if r[12] is not None:
                    page.acks.append((cid, r[12], "received", None, r[13]))
                blocks.append(r[14])
            if len(page.documents) >= PAGE:
                writing = await write(node, page, blocks, writing)
                page, blocks = Restore(), []
        if page.documents:
            writing = await write(node, page, blocks, writing)
        if writing is not None:
            await writing
        # The search index, as a restored node builds it (from the queue the
        # restore filled) before its first search: part of the fill, not of
        # the measurements.
        await node.index_backlog()


# -- measuring one size, in a child process -----------------------------------------


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def timed(fn: Any, times: int = 20) -> list[float]:
    out = []
    for _ in range(times):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    return out


async def measure(home: Path, docs: int, restore: bool) -> dict[str, Any]:
    mesh = load_mesh()

    from usagi_p2p.archive.archive import export_archive, import_archive
    from usagi_p2p.node import operations
    from usagi_p2p.node.home import Home
    from usagi_p2p.node.node import Node
    from usagi_p2p.peer.service import Service

    meter = mesh.Meter()
    meter.install()
    work = Path(tempfile.mkdtemp(prefix="usagi-growth-peer-"))
    result: dict[str, Any] = {"docs": docs}
    try:
        async def start(path: Path, tag: int) -> tuple[Node, Service, tuple[int, int]]:
            async def go() -> tuple[Node, Service, tuple[int, int]]:
                node = Node.load(path, None)
                await node.open()
                service = Service(node, port=0)
                await service.start()
                store_db = getattr(node.store, "_db", None)
                tids = (node.ledger.db._thread.native_id,
                        store_db._thread.native_id if store_db is not None else 0)
                return node, service, tids

            context = contextvars.copy_context()
            context.run(mesh.NODE.set, tag)
            return await asyncio.get_running_loop().create_task(go(), context=context)

        started = time.perf_counter()
        big, big_service, tids = await start(home, 0)
        result["open_s"] = time.perf_counter() - started
        result["rss_open_mb"] = status_kb("VmRSS") / 1024
        Home(work / "peer").create("Peer Trading", None, port=0)
        peer, peer_service, _ = await start(work / "peer", 1)

        def config_endpoint(node: Node, service: Service) -> None:
            node.config.endpoint = f"http://127.0.0.1:{service.port}"

        config_endpoint(big, big_service)
        config_endpoint(peer, peer_service)
        invitation = await meter_call(operations.invite(big), 0)
        await meter_call(operations.add_partner(peer, invitation.text()), 1)

        def cpu() -> float:
            return meter.cpu[0] + sum(mesh.thread_ns(t) for t in tids) / 1e9

        async def exchange(sender: Node, to: str, tag: int, n: int) -> None:
            async def go() -> None:
                sent = [await operations.send(sender, "quote" if tag == 0 else "order",
                                              {"ref": f"X-{tag}-{k}", "currency": "JPY",
                                               "lines": [{"text": "hex bolt M6", "qty": "5"}]},
                                              to=to) for k in range(n)]
                for s in sent:
                    assert (await operations.await_ack(sender, s.cid, 60)).status == "received"
            context = contextvars.copy_context()
            context.run(mesh.NODE.set, tag)
            await asyncio.get_running_loop().create_task(go(), context=context)

        n = 200
        await exchange(big, peer.did, 0, 20)  # warm: connections, caches
        result["probe"] = probe()
        before = cpu()
        await exchange(big, peer.did, 0, n)
        result["send_us"] = (cpu() - before) / n * 1e6
        before = cpu()
        await exchange(peer, big.did, 1, n)
        result["receive_us"] = (cpu() - before) / n * 1e6
        result["probe"] = (result["probe"] + probe()) / 2

        some_partner = f"Partner {7:05d}"
        result["inbox_ms"] = p50(await timed(lambda: operations.page_documents(
            big, direction="in", limit=50)))
        result["inbox_cli_ms"] = p50(await timed(lambda: operations.list_documents(
            big, "in", limit=50)))
        result["inbox_partner_ms"] = p50(await timed(lambda: operations.page_documents(
            big, direction="in", partner=some_partner, limit=50)))
        searches = []
        for query in ("bearing", "R-0000123-2", "flange nut lot", "Partner 00003"):
            searches += await timed(lambda q=query: operations.search_documents(big, q), 5)
        result["search_ms"] = p50(searches)
        result["search_each_ms"] = {q: p50(await timed(
            lambda q=q: operations.search_documents(big, q), 5))
            for q in ("bearing", "R-0000123-2", "flange nut lot", "Partner 00003")}
        invoices = [e.cid for e in (await operations.list_documents(
            big, "out", kind="invoice", limit=50))]
        picks = iter(invoices * 2)
        result["verify_ms"] = p50(await timed(lambda: operations.verify_document(
            big, next(picks))))

        archive = work / "history.car"
        rss_before = status_kb("VmRSS")
        start_t = time.perf_counter()
        report = await export_archive(big, archive)
        result["export_docs_s"] = report.documents / (time.perf_counter() - start_t)
        result["export_rss_mb"] = (status_kb("VmHWM") - rss_before) / 1024
        await peer_service.close()
        await peer.close()
        await big_service.close()
        await big.close()

        sizes = 0
        for name in ("ledger.db", "blocks.db"):
            with contextlib.closing(sqlite3.connect(home / name)) as con:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes += (home / name).stat().st_size
        with contextlib.closing(sqlite3.connect(f"file:{home / 'blocks.db'}?mode=ro",
                                                uri=True)) as con:
            count, mean = con.execute("SELECT count(*), avg(length(data)) FROM blocks").fetchone()
        with contextlib.closing(sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro",
                                                uri=True)) as con:
            result["partners"] = con.execute("SELECT count(*) FROM partners").fetchone()[0]
        result["disk_per_doc"] = sizes / count
        result["block_bytes"] = mean
        result["rss_peak_mb"] = status_kb("VmHWM") / 1024

        if restore:
            fresh = Home(work / "restored")
            fresh.create("Restored", None, seed=SEED, port=0)
            async with Node.load(fresh, None) as node:
                start_t = time.perf_counter()
                imported = await import_archive(node, archive)
                result["restore_s"] = time.perf_counter() - start_t
                result["restored"] = imported.documents
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


async def meter_call(coro: Any, tag: int) -> Any:
    mesh = load_mesh()
    context = contextvars.copy_context()
    context.run(mesh.NODE.set, tag)
    return await asyncio.get_running_loop().create_task(coro, context=context)


def child(home: Path, docs: int, restore: bool) -> None:
    print(json.dumps(asyncio.run(measure(home, docs, restore))))


def run_child(home: Path, docs: int, restore: bool) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", str(home), str(docs),
                           "1" if restore else "0"], check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def label(docs: int) -> str:
    return f"{docs // 1_000_000}M" if docs >= 1_000_000 else f"{docs // 1000}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also 1M documents")
    parser.add_argument("--quick", action="store_true", help="1k and 10k documents")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), args.child[2] == "1")
        return
    sizes = [(10_000, 10), (100_000, 1_000)]
    if args.million:
        sizes.append((1_000_000, 10_000))
    if args.quick:
        sizes = [(1_000, 10), (10_000, 1_000)]
    work = Path(tempfile.mkdtemp(prefix="usagi-growth-"))
    home = work / "node"
    results = []
    try:
        from usagi_p2p.node.home import Home

        Home(home).create("Kanto Machine Tools", None, seed=SEED, port=0)
        have = 0
        with multiprocessing.get_context("fork").Pool(2) as pool:
            for docs, partners in sizes:
                start = time.perf_counter()
                threads = (docs - have) // len(KINDS)
                asyncio.run(fill(home, have // len(KINDS), threads, partners, pool))
                have = docs
                fill_s = time.perf_counter() - start
                r = run_child(home, docs, restore=docs == 100_000)
                r["fill_s"] = fill_s
                results.append(r)
                base = results[0]
                print(f"  {label(docs):>4} docs, {r['partners']} partners (filled in "
                      f"{fill_s:.0f} s, {threads * 5 / fill_s:.0f} docs/s): "
                      f"send {r['send_us']:.0f} us, receive {r['receive_us']:.0f} us CPU/doc "
                      f"({cost(r) / cost(base):.2f}x of {label(base['docs'])}); "
                      f"inbox p50 {r['inbox_ms']:.1f} ms (usagi inbox {r['inbox_cli_ms']:.1f}, "
                      f"one partner {r['inbox_partner_ms']:.1f}), search p50 "
                      f"{r['search_ms']:.1f} ms "
                      f"({', '.join(f'{q!r} {v:.1f}' for q, v in r['search_each_ms'].items())}), "
                      f"thread verify p50 {r['verify_ms']:.1f} ms; export "
                      f"{r['export_docs_s']:.0f} docs/s (+{r['export_rss_mb']:.0f} MB); "
                      f"disk {r['disk_per_doc']:.0f} B/doc = "
                      f"{r['disk_per_doc'] / r['block_bytes']:.2f}x the block "
                      f"({r['block_bytes']:.0f} B); open {r['open_s']:.1f} s, RSS "
                      f"{r['rss_open_mb']:.0f} MB open, {r['rss_peak_mb']:.0f} MB peak"
                      + (f"; restore of the archive {r['restore_s']:.1f} s "
                         f"({r['restored'] / r['restore_s']:.0f} docs/s)"
                         if "restore_s" in r else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results))
    last, base = results[-1], results[0]
    print(f"growth: {label(last['docs'])} docs: per-doc cost {cost(last) / cost(base):.2f}x "
          f"of {label(base['docs'])}, inbox p50 {last['inbox_ms']:.1f} ms, "
          f"search p50 {last['search_ms']:.1f} ms")


def probe() -> float:
    """CPU seconds of a fixed piece of node work (bench/mesh.py, Worker._probe): the
    per-document figures are divided by it, so that sizes measured minutes apart
    on a busy shared host compare."""
    from kernel import Identity, open_envelope, seal

    a, b = Identity(b"a" * 32), Identity(b"b" * 32)
    document = {"v": 1, "kind": "quote", "from": a.did, "to": b.did,
                "issued_at": "2026-12-06T00:00:00Z", "lines": [{"text": "hex bolt"}] * 3}
    samples = []
    for _ in range(7):
        start = time.thread_time()
        for _ in range(20):
            open_envelope(seal(document, a).block, b)
        samples.append((time.thread_time() - start) / 20)
    return statistics.median(samples)


def cost(r: dict[str, Any]) -> float:
    """Send plus receive CPU per document, in probes."""
    return float(r["send_us"] + r["receive_us"]) / r["probe"]


if __name__ == "__main__":
    main()
