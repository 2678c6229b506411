"""Full-text search over a ledger of N documents (docs/performance.md, "Search").

A node's ledger is filled through the real send path (``Node.send_many``:
every document built, checked, sealed, its block stored, and the document,
its notice and its search row recorded in one transaction) with N quotes and
orders of one to five lines of machine-parts text in Japanese and English,
to four partners, no delivery. Then, in the same process:

* ``search_documents`` (limit 20) for a set of queries, each run ``--runs``
  times: its p50; the trigram ones (every term of three or more characters)
  and the 1–2 character ones (a substring scan) are summed up apart;
* the backfill rate: ``reindex_search`` (the index emptied and rebuilt from
  the signed documents, as the first open after the upgrade does).

Last line: ``search: N docs, p50 X ms (trigram), p50 Y ms (1-2 characters),
reindex N docs/s``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel._identity import Identity  # noqa: E402
from usagi_p2p.node import operations  # noqa: E402
from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import Node  # noqa: E402

PARTS = ["六角ナット", "六角ボルト", "平座金", "ばね座金", "キャップスクリュー", "止めねじ",
         "hex nut", "hex bolt", "washer", "set screw", "リベット", "アンカーボルト"]
GRADES = ["SUS304", "SUS316", "SS400", "SCM435", "S45C", "A2-70", "8.8"]
PARTNERS = ["Osaka Precision", "Kyushu Steel", "東北精工", "Nagoya Tools"]
QUERIES = [("六角ナット", "trigram"), ("SCM435 M12", "trigram"), ("キャップスクリュー", "trigram"),
           ("Q-2026-04217", "trigram"), ("東北精工 ボルト", "trigram"), ("チタン", "trigram"),
           ("六角", "short"), ("M8 座金", "short")]


def _lines(rng: random.Random) -> list[dict[str, str]]:
    return [{"text": f"M{rng.choice((3, 4, 5, 6, 8, 10, 12, 16))} {rng.choice(PARTS)} "
                     f"{rng.choice(GRADES)} {rng.randint(1, 5000)}個",
             "qty": str(rng.randint(1, 5000)), "unit_price": f"{rng.randint(1, 900)}.50"}
            for _ in range(rng.randint(1, 5))]


async def fill(node: Node, count: int, rng: random.Random) -> float:
    for name in PARTNERS:
        await node.ledger.add_partner(Identity.generate().did, name, "http://127.0.0.1:9", None)
    started = time.perf_counter()
    batch = 500
    for start in range(0, count, batch):
        items = []
        for i in range(start, min(count, start + batch)):
            body = {"ref": f"Q-2026-{i:05d}", "currency": "JPY", "lines": _lines(rng)}
            if rng.random() < 0.3:
                body["note"] = rng.choice(["納期: 2週間", "送料込み", "delivery within 10 days",
                                           "図面添付"])
            items.append((rng.choice(("quote", "order")), rng.choice(PARTNERS), body, None))
        await node.send_many(items)
    return time.perf_counter() - started


async def measure(node: Node, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for query, _ in QUERIES:
        await operations.search_documents(node, query)  # warm
        for _ in range(runs):
            started = time.perf_counter()
            await operations.search_documents(node, query)
            times.setdefault(query, []).append((time.perf_counter() - started) * 1000)
    return times


async def main(count: int, runs: int) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp) / "kanto")
        home.create("Kanto Machine Tools", None, port=1)
        async with Node.load(home, None) as node:
            took = await fill(node, count, rng)
            print(f"filled {count} documents through send_many in {took:.1f} s "
                  f"({count / took:.0f} docs/s, sealing included; each queued for the index)")
            # Indexed off the send path (usagi_p2p/node/indexing.py): the queue,
            # as the first search (or the serving node, when quiet) works it through.
            started = time.perf_counter()
            queued = await node.index_backlog()
            caught_up = time.perf_counter() - started
            print(f"indexed the {queued} queued documents in {caught_up:.1f} s "
                  f"({queued / caught_up:.0f} docs/s)")
            times = await measure(node, runs)
            for query, kind in QUERIES:
                page = await operations.search_documents(node, query)
                print(f"  {query!r:24} {kind:8} p50 {statistics.median(times[query]):7.2f} ms"
                      f"  ({len(page.hits)} shown{', more' if page.cursor else ''})")
            started = time.perf_counter()
            await operations.reindex_search(node)
            rebuilt = time.perf_counter() - started
        trigram = statistics.median([t for q, k in QUERIES if k == "trigram" for t in times[q]])
        short = statistics.median([t for q, k in QUERIES if k == "short" for t in times[q]])
        print(f"search: {count} docs, p50 {trigram:.1f} ms (trigram), p50 {short:.1f} ms "
              f"(1-2 characters), reindex {count / rebuilt:.0f} docs/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--documents", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="1,000 documents, 10 runs")
    args = parser.parse_args()
    asyncio.run(main(1000 if args.quick else args.documents, 10 if args.quick else args.runs))
