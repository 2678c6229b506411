"""Archive export and full verify against the bare CAR writer (docs/archive.md, "Figures").

A history of N documents with acks is generated straight into a node's ledger
and block store (threads of quote → order → message → message between two
parties, every envelope sealed and every ack signed for real, in two worker
processes), for N = 10,000 and 100,000 (``--quick``: 1,000 and 10,000).

Each size is then measured in a fresh child process:

* export: ``export_archive`` of the whole history (reads the ledger, writes
  documents, sealed ack bundles, signed manifest pages and the index chain);
* floor: the same document blocks, in the same order, through a bare
  ``CARWriter`` (one SELECT of the blocks, no manifest, no acks);
* verify: ``verify_archive`` with the node's key (every envelope opened, every
  signature, ack digest and thread checked), twice: in one process
  (``workers=1``), and with the worker processes it chooses itself (one per
  core, at most 4; pages are opened in the workers, chained in the parent);
* peak RSS (VmHWM) of the child after export and verify, and the largest
  verify worker's (a forked worker shares the parent's pages until written).

Export and the floor are printed with their ratio (export time / floor time).
Last line: ``archive: export N docs/s, verify N docs/s (W processes; 1 process:
N docs/s), rss +N MB 10k->100k``; the verify figure there is the W-process one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipfs.car import CARWriter  # noqa: E402
from kernel import dagcbor  # noqa: E402
from kernel._document import format_time  # noqa: E402
from kernel._envelope import seal  # noqa: E402
from kernel._identity import Identity  # noqa: E402
from kernel._messages import make_ack  # noqa: E402
from kernel.cid import CID  # noqa: E402

SEED_A, SEED_B = b"A" * 32, b"B" * 32
STEPS = (("quote", "out"), ("order", "in"), ("message", "out"), ("message", "in"))
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _thread(t: int) -> list[tuple[Any, ...]]:
    """One thread of four documents: (ledger row args, block)."""
    a, b = Identity(SEED_A), Identity(SEED_B)
    rows: list[tuple[Any, ...]] = []
    root: CID | None = None
    prev: CID | None = None
    for i, (kind, direction) in enumerate(STEPS):
        sender, receiver = (a, b) if direction == "out" else (b, a)
        issued = T0 + timedelta(seconds=t * 10 + i)
        doc: dict[str, Any] = {"v": 1, "kind": kind, "from": sender.did, "to": receiver.did,
                               "issued_at": format_time(issued), "ref": f"R-{t}-{i}"}
        if kind == "message":
            doc["note"] = f"thread {t} step {i}: delivery on the 5th"
        else:
            doc["lines"] = [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs"}]
        if root is not None:
            doc["thread"], doc["prev"] = root, [prev]
        sealed = seal(doc, sender)
        ack = make_ack(receiver, cid=sealed.cid, to=sender.did, nonce=os.urandom(16),
                       status="received", at=issued, digest=sealed.digest)
        root = root or sealed.cid
        prev = sealed.cid
        rows.append((sealed.cid.raw, direction, b.did, kind, root.raw,
                     dagcbor.encode(doc.get("prev", [])), doc["ref"], doc["issued_at"],
                     issued.timestamp(), "delivered" if direction == "out" else "received",
                     sealed.digest, sealed.signed, ack, format_time(issued), sealed.block))
    return rows


def generate(home: Path, first: int, threads: int, pool: Any) -> None:
    """Append ``threads`` threads (from number ``first``) to the node at ``home``."""
    ledger = sqlite3.connect(home / "ledger.db")
    blocks = sqlite3.connect(home / "blocks.db")
    for con in (ledger, blocks):
        con.execute("PRAGMA synchronous=OFF")
    for rows in pool.imap(_thread, range(first, first + threads), chunksize=64):
        ledger.executemany(
            "INSERT INTO documents (cid, direction, partner, kind, thread, prev, ref, issued_at, "
            "recorded_at, status, digest, signed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [r[:12] for r in rows])
        ledger.executemany("INSERT INTO acks (cid, raw, status, at) VALUES (?,?,'received',?)",
                           [(r[0], r[12], r[13]) for r in rows])
        blocks.executemany("INSERT INTO blocks (cid, data) VALUES (?,?)",
                           [(r[0], r[14]) for r in rows])
    for con in (ledger, blocks):
        con.commit()
        con.close()


async def _init(home: Path) -> None:
    from usagi_p2p.node.home import Home
    from usagi_p2p.node.node import Node

    Home(home).create("Kanto Machine Tools", None, seed=SEED_A)
    async with Node.load(home, None) as node:
        await node.ledger.add_partner(Identity(SEED_B).did, "Osaka Precision",
                                      "http://127.0.0.1:9", None)


def vmhwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child(home: Path) -> None:
    """Measure one history in this (fresh) process; print one JSON line."""
    from usagi_p2p.archive.archive import export_archive, verify_archive
    from usagi_p2p.archive.verify import default_workers
    from usagi_p2p.node.node import Node

    out = home / "history.car"

    async def run() -> tuple[float, int]:
        async with Node.load(home, None) as node:
            start = time.perf_counter()
            report = await export_archive(node, out)
            return time.perf_counter() - start, report.documents

    export_s, n = asyncio.run(run())
    start = time.perf_counter()
    with sqlite3.connect(home / "ledger.db") as con, open(home / "floor.car", "wb") as fp:
        con.execute("ATTACH DATABASE ? AS blk", (str(home / "blocks.db"),))
        writer = CARWriter(fp, [CID.for_block(b"\xa0")])
        for raw, data in con.execute("SELECT d.cid, b.data FROM documents d JOIN blk.blocks b "
                                     "ON b.cid = d.cid ORDER BY d.thread, d.recorded_at, d.cid"):
            writer.write(CID.from_bytes(raw), data)
    floor_s = time.perf_counter() - start
    times = {}
    workers = default_workers(out)
    for w in sorted({1, workers}):  # one process, then what verify_archive chooses
        start = time.perf_counter()
        verified = verify_archive(out, Identity(SEED_A), workers=w)
        times[w] = time.perf_counter() - start
        assert verified.documents == n and verified.acks == n and verified.threads == n // 4
    print(json.dumps({"n": n, "export_s": export_s, "floor_s": floor_s, "verify1_s": times[1],
                      "verify_s": times[workers], "workers": workers,
                      "car_bytes": out.stat().st_size, "hwm_kb": vmhwm_kb(),
                      "worker_hwm_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))


def measure(home: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", str(home)], check=True,
                          capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k documents")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    small, large = (1_000, 10_000) if args.quick else (10_000, 100_000)
    work = Path(tempfile.mkdtemp(prefix="usagi-bench-archive-"))
    try:
        homes = {small: work / "small", large: work / "large"}
        start = time.perf_counter()
        asyncio.run(_init(homes[small]))
        with multiprocessing.get_context("fork").Pool(2) as pool:
            generate(homes[small], 0, small // 4, pool)
            shutil.copytree(homes[small], homes[large])
            generate(homes[large], small // 4, (large - small) // 4, pool)
        print(f"generated {small} + {large} documents with acks in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        results = {n: measure(home) for n, home in homes.items()}
        for n, r in results.items():
            print(f"  {n:>7} docs: export {n / r['export_s']:>8.0f} docs/s "
                  f"(bare CARWriter floor {n / r['floor_s']:>8.0f} docs/s, "
                  f"{r['export_s'] / r['floor_s']:.1f}x its time), "
                  f"verify {n / r['verify1_s']:>6.0f} docs/s in 1 process, "
                  f"{n / r['verify_s']:>6.0f} docs/s in {r['workers']}, "
                  f"{r['car_bytes'] / 1e6:.1f} MB CAR, peak RSS {r['hwm_kb'] / 1024:.1f} MB "
                  f"(largest worker {r['worker_hwm_kb'] / 1024:.1f} MB)")
        big = results[large]
        growth = (big["hwm_kb"] - results[small]["hwm_kb"]) / 1024
        print(f"archive: export {large / big['export_s']:.0f} docs/s, "
              f"verify {large / big['verify_s']:.0f} docs/s ({big['workers']} processes; "
              f"1 process: {large / big['verify1_s']:.0f} docs/s), "
              f"rss {growth:+.0f} MB {small // 1000}k->{large // 1000}k")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
