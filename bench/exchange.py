"""Two nodes on loopback: sustained docs/s from send to verified ack, idle latency, RSS.

The seller node runs in this process (it seals, stores, queues, delivers and
verifies acks); the buyer is a separate ``usagi serve`` process (it receives,
opens, validates, stores and acks). Both commit durably (SQLite WAL,
synchronous=FULL) before an ack is sent or recorded. The kernel round trip
(bench/kernel.py) is measured in the same run, and the last line prints the
exchange's cost per document as a multiple of it:

    exchange: N docs/s, p50 X ms, p99 Y ms, rss Z MB, R.Rx kernel
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import Node  # noqa: E402
from usagi_p2p.peer.service import Service  # noqa: E402


def _kernel_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kernel_bench", ROOT / "bench" / "kernel.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vm_hwm_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc), robust to a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks of this machine so far, from /proc/stat.

    Steal is time the hypervisor gave this guest's vCPUs to someone else: on a
    shared host it is why the same run is fast one minute and slow the next.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def thread_cpu(pid: int | str = "self") -> tuple[float, float]:
    """CPU seconds of (the main thread, all other threads) of a process."""
    main = other = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        if task.name == str(os.getpid() if pid == "self" else pid):
            main += used
        else:
            other += used
    return main, other


def body(i: int) -> dict:
    return {
        "ref": f"PO-2026-{i:06d}",
        "currency": "JPY",
        "note": "Deliver to Osaka plant, dock 3. 平日午前中に納品してください。",
        "lines": [
            {"text": f"M{6 + j % 6}x{20 + j} SUS304 hex bolt DIN 933, lot {j:04d}",
             "qty": str(100 * (j + 1)), "unit": "pcs", "unit_price": f"{12 + j}.50",
             "ref": f"ITEM-{j:05d}"}
            for j in range(14)
        ],
    }


async def run(n: int, latency_samples: int, batch: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="usagi-bench-"))
    buyer_proc = None
    try:
        seller_home, buyer_home = Home(root / "kanto"), Home(root / "osaka")
        seller_home.create("Kanto Machine Tools", None, port=free_port())
        buyer_home.create("Osaka Precision", None, port=free_port())
        # The default per-partner quota (100,000 documents, 1 GiB per day;
        # docs/spec.md section 12) is ~10 times this run's 10,200 documents of
        # ~4 KB stored. A much longer run gets a quota of its own, said here.
        config = buyer_home.load_config()
        if n + latency_samples > config.quota_docs // 2:
            config.quota_docs = config.quota_bytes = 1 << 62
            buyer_home.save_config(config)
            print(f"({n + latency_samples} documents: the buyer's quotas are lifted for this run)")
        # BENCH_PROFILE_BUYER=FILE runs the buyer under cProfile (written on exit).
        profile = os.environ.get("BENCH_PROFILE_BUYER")
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        buyer_proc = subprocess.Popen(  # noqa: S603, ASYNC220 (started once, before timing)
            [sys.executable, *prefix, "-m", "usagi_p2p", "--home", str(buyer_home.path),
             *(["-vv"] if os.environ.get("BENCH_BUYER_LOG") else []), "serve"],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))),
            stderr=open(os.environ["BENCH_BUYER_LOG"], "wb")  # noqa: SIM115, ASYNC230
            if os.environ.get("BENCH_BUYER_LOG") else subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (buyer_home.path / "serve.json").exists():
            if time.monotonic() > deadline or buyer_proc.poll() is not None:
                raise RuntimeError("the buyer node did not start")
            await asyncio.sleep(0.05)  # noqa: ASYNC110 (another process writes the file)
        async with Node.load(buyer_home, None) as buyer:
            invitation = await buyer.invite()
        async with Node.load(seller_home, None) as seller, Service(seller):
            await seller.add_partner(invitation.text())

            # Idle latency: one document at a time, send -> verified ack stored.
            latencies = []
            for i in range(latency_samples):
                start = time.perf_counter()
                result = await seller.send("order", "Osaka", body(i))
                ack = await seller.wait_for_ack(result.cid, timeout=30)
                latencies.append(time.perf_counter() - start)
                assert ack is not None and ack[1] == "received"

            # Sustained: queue n documents as fast as they seal, until all are acked.
            cpu_seller, cpu_buyer = time.process_time(), cpu_seconds(buyer_proc.pid)
            threads_before = thread_cpu(), thread_cpu(buyer_proc.pid)
            ticks_before = host_ticks()
            start = time.perf_counter()
            template = body(0)
            for i in range(0, n, batch):
                await seller.send_many([("order", "Osaka", template, None)] * min(batch, n - i))
                await asyncio.sleep(0)
            # Polled through the due index: a GROUP BY over the whole outbox
            # every 10 ms would cost the seller more than the wait measures.
            while await seller.ledger.pending_count():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
            ticks_after = host_ticks()
            cpu_seller = time.process_time() - cpu_seller
            cpu_buyer = cpu_seconds(buyer_proc.pid) - cpu_buyer
            threads_after = thread_cpu(), thread_cpu(buyer_proc.pid)
            counts = await seller.ledger.outbox_counts()
        async with Node.load(buyer_home, None) as buyer:
            received = await buyer.ledger.count_documents("in")
        assert received == n + latency_samples, (received, counts)
        latencies.sort()
        return {
            "docs_per_s": n / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "rss_seller": vm_hwm_mb(),
            "rss_buyer": vm_hwm_mb(buyer_proc.pid),
            "cpu_seller_us": cpu_seller / n * 1e6,
            "cpu_buyer_us": cpu_buyer / n * 1e6,
            "steal": (ticks_after[1] - ticks_before[1]) / max(1, ticks_after[0] - ticks_before[0]),
            # main thread (event loop) vs the rest (SQLite threads), per document
            "split_us": [
                (after[k] - before[k]) / n * 1e6
                for before, after in zip(threads_before, threads_after, strict=True)
                for k in (0, 1)
            ],
        }
    finally:
        if buyer_proc is not None:
            buyer_proc.terminate()
            buyer_proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1,000 documents")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.latency_samples = 1000, 50
    kb = _kernel_bench()
    doc = kb.order()
    kernel_s = kb.measure(kb.round_trip, doc, 2.0)
    result = asyncio.run(run(args.docs, args.latency_samples, args.batch))
    per_doc = 1 / result["docs_per_s"]
    print(f"kernel round trip: {kernel_s * 1e6:.0f} us")
    print(f"seller rss {result['rss_seller']:.0f} MB, buyer rss {result['rss_buyer']:.0f} MB")
    print(f"cpu per document: seller {result['cpu_seller_us']:.0f} us, "
          f"buyer {result['cpu_buyer_us']:.0f} us (load average {os.getloadavg()[0]:.1f}, "
          f"host steal {result['steal']:.0%} of CPU time while sustained)")
    s_main, s_rest, b_main, b_rest = result["split_us"]
    print(f"  event loop / other threads: seller {s_main:.0f} / {s_rest:.0f} us, "
          f"buyer {b_main:.0f} / {b_rest:.0f} us")
    print(f"exchange: {result['docs_per_s']:.0f} docs/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms, rss {max(result['rss_seller'], result['rss_buyer']):.0f} MB, "
          f"{per_doc / kernel_s:.1f}x kernel")


if __name__ == "__main__":
    main()
