"""Overload: many partners sending at once to one node (docs/reliability.md, "Overload").

One receiver runs as a real ``usagi serve`` child process on 127.0.0.1. S
sender nodes (default 50), each a real Node with its own home, key, ledger
and block store, run in this process; each queues D documents (default 200)
and runs its delivery loop, all at the same time. The receiver admits
MAX_INFLIGHT (8) batches at once and sheds the rest with 503 +
``Retry-After: 1`` (usagi_p2p/peer.py); a sender honours Retry-After and a
503 costs no attempt from its budget (usagi_p2p/node.py). We report

* throughput: documents stored and acknowledged per second, end to end;
* 503s: how many batch POSTs were shed (counted from the senders' logs);
* the receiver's peak RSS (VmHWM) and the slowest answer to ``GET /``
  probed every 0.2 s during the storm (does it stay responsive?);
* that every document is delivered exactly once in the end.

    python bench/overload.py [--senders 50] [--docs 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from usagi_p2p.node import Node  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from faults import BODY, Child, audit, make_home, query, vm_hwm_mb  # noqa: E402


class Shed(logging.Handler):
    """Counts the senders' 'answered 503' delivery failures (one per shed batch)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.other = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("delivery failed"):
            if "answered 503" in message:
                self.count += 1
            else:
                self.other += 1


async def probe(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                async with session.get(url + "/", timeout=aiohttp.ClientTimeout(30)) as resp:
                    await resp.read()
                samples.append(time.perf_counter() - start)
            except (aiohttp.ClientError, TimeoutError):
                samples.append(float("inf"))
            await asyncio.sleep(0.2)


async def run(root: Path, senders: int, docs: int, timeout: float = 600.0) -> dict[str, Any]:
    shed = Shed()
    logger = logging.getLogger("usagi.node")
    logger.addHandler(shed)
    logger.setLevel(logging.INFO)
    receiver_home = make_home(root / "receiver", "Osaka Precision")
    receiver = Child(receiver_home)
    nodes: list[Node] = []
    stop = asyncio.Event()
    try:
        receiver.start()
        url = receiver_home.load_config().endpoint
        async with Node.load(receiver_home, None) as inviter:
            invitations = [await inviter.invite() for _ in range(senders)]
        for i, invitation in enumerate(invitations):
            home = make_home(root / f"sender-{i:02d}", f"Sender {i:02d} KK")
            node = Node.load(home, None)
            await node.open()
            nodes.append(node)
            await node.add_partner(invitation.text())
        for node in nodes:
            for j in range(0, docs, 100):
                await node.send_many([("order", "Osaka", BODY, None)] * min(100, docs - j))
        samples: list[float] = []
        prober = asyncio.create_task(probe(url, stop, samples))
        start = time.perf_counter()
        loops = [asyncio.create_task(node.delivery_loop(stop)) for node in nodes]
        total = senders * docs
        deadline = time.monotonic() + timeout
        delivered = 0
        while time.monotonic() < deadline:
            delivered = sum([(await n.ledger.outbox_counts()).get("delivered", 0) for n in nodes])
            if delivered >= total:
                break
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - start
        stop.set()
        for node in nodes:
            node.wake.set()
        await asyncio.gather(*loops, prober)
        receiver_rss = vm_hwm_mb(receiver.pid)
        undelivered = sum([(await n.ledger.outbox_counts()).get("undelivered", 0) for n in nodes])
    finally:
        stop.set()
        for node in nodes:
            await node.close()
        receiver.stop()
        logger.removeHandler(shed)
    lost = duplicated = unacked = mismatch = 0
    for node in nodes:
        result = audit(node.home, receiver_home)
        lost += result["lost"]
        unacked += result["unacked"]
        mismatch += result["ack_mismatch"]
    stored = query(receiver_home.ledger_path, "SELECT count(*), count(DISTINCT cid) FROM documents")[0]
    duplicated = stored[0] - stored[1] + max(0, stored[1] - total)
    # 'lost' from audit counts the other senders' documents too (one receiver,
    # many senders); what matters is the receiver's total against the total sent.
    lost = max(0, total - stored[1])
    finite = sorted(s for s in samples if s != float("inf"))
    return {"senders": senders, "docs": total, "delivered": delivered, "undelivered": undelivered,
            "stored": stored[1], "lost": lost, "duplicated": duplicated, "unacked": unacked,
            "ack_mismatch": mismatch, "seconds": elapsed, "docs_per_s": total / elapsed,
            "shed_503": shed.count, "other_failures": shed.other, "receiver_rss_mb": receiver_rss,
            "probe_max_ms": (finite[-1] * 1000) if finite else float("nan"),
            "probe_p50_ms": (finite[len(finite) // 2] * 1000) if finite else float("nan"),
            "probe_failed": len(samples) - len(finite), "harness_rss_mb": vm_hwm_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--docs", type=int, default=200, help="documents per sender")
    parser.add_argument("--quick", action="store_true", help="20 senders x 50 documents")
    args = parser.parse_args()
    if args.quick:
        args.senders, args.docs = 20, 50
    root = Path(tempfile.mkdtemp(prefix="usagi-overload-"))
    try:
        r = asyncio.run(run(root, args.senders, args.docs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(r)
    print(f"overload: {r['senders']} senders x {args.docs} docs -> {r['stored']}/{r['docs']} stored "
          f"once, {r['undelivered']} undelivered, lost {r['lost']}, duplicated {r['duplicated']}, "
          f"unacked {r['unacked']}; {r['docs_per_s']:.0f} docs/s, {r['shed_503']} batches shed "
          f"with 503, receiver peak RSS {r['receiver_rss_mb']:.0f} MB, GET / p50 "
          f"{r['probe_p50_ms']:.0f} ms max {r['probe_max_ms']:.0f} ms during the storm")
    ok = r["stored"] == r["docs"] and not (r["lost"] or r["duplicated"] or r["unacked"]
                                           or r["undelivered"] or r["ack_mismatch"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
