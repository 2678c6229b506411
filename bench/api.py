"""The local API under load: documents sent through POST /api/v1/documents, each waiting for its ack.

Two real nodes on loopback, each a ``usagi serve`` process (the seller with its
local API on 127.0.0.1); 8 concurrent aiohttp clients send N documents through
``POST /api/v1/documents?wait=30`` to the buyer, each request answered once
the buyer's signed ack is verified and stored (201). In the same run the
exchange benchmark runs as ``python bench/exchange.py`` runs it (its own
defaults: 10,000 documents queued by ``send_many`` in batches of 100, timed
until every ack is stored; ``--quick``: 1,000), and the line compares the two
throughputs (docs/api.md, "Benchmark", says what each side measures):

    api: N docs/s, p50 X ms, 0.NNx exchange

Then ``usagi send`` (the command, a new process each time, as a script runs
it) against the running seller on the same home, p50 over ~20 runs:

    usagi send with a running node: p50 X ms
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from usagi_p2p.company.api.tokens import TokenStore  # noqa: E402
from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import Node  # noqa: E402
from usagi_p2p.peer.service import Service  # noqa: E402

CLIENTS = 8
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _exchange():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("exchange_bench", ROOT / "bench" / "exchange.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXCHANGE = _exchange()


def serve(home: Home) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "usagi_p2p", "--home", str(home.path), "serve"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def serving(home: Home, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """``HOME/serve.json`` once the node listens (its peer and local URLs)."""
    state = home.path / "serve.json"
    deadline = time.monotonic() + 30
    while True:
        try:
            return dict(json.loads(state.read_text()))
        except (OSError, ValueError):  # not there yet, or being written
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"usagi serve on {home.path} did not start")
        await asyncio.sleep(0.05)


async def through_the_api(url: str, token: str, n: int) -> tuple[float, list[float]]:
    """N documents by CLIENTS concurrent clients, each waiting for its ack: (seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(n))
    headers = {"Authorization": f"Bearer {token}"}

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        for i in counter:
            request = {"kind": "order", "to": "Osaka", "body": EXCHANGE.body(i)}
            start = time.perf_counter()
            async with session.post(f"{url}/api/v1/documents?wait=30", json=request,
                                    headers={**headers, "Idempotency-Key": f"bench-{c}-{i}"}
                                    ) as resp:
                answer = await resp.json()
            latencies.append(time.perf_counter() - start)
            if resp.status != 201 or answer["ack"]["status"] != "received":
                raise RuntimeError(f"document {i}: {resp.status} {answer}")

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        # one warm-up document: connections, caches
        async with session.post(f"{url}/api/v1/documents?wait=30", headers=headers,
                                json={"kind": "order", "to": "Osaka",
                                      "body": EXCHANGE.body(n)}) as resp:
            assert resp.status == 201, await resp.text()
        start = time.perf_counter()
        await asyncio.gather(*(client(session, c) for c in range(CLIENTS)))
        elapsed = time.perf_counter() - start
    return elapsed, latencies


async def in_process(home: Home, n: int) -> tuple[float, list[float]]:
    """The same load without the API: CLIENTS tasks of node.send + wait_for_ack in process."""
    latencies: list[float] = []
    counter = iter(range(n))
    async with Node.load(home, None) as seller, Service(seller):
        async def client() -> None:
            for i in counter:
                start = time.perf_counter()
                result = await seller.send("order", "Osaka", EXCHANGE.body(200_000 + i))
                ack = await seller.wait_for_ack(result.cid, timeout=30)
                latencies.append(time.perf_counter() - start)
                assert ack is not None and ack[1] == "received"

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return time.perf_counter() - start, latencies


def cli_send(home: Home, runs: int, root: Path) -> list[float]:
    """``usagi send order --to Osaka FILE`` (waits for the ack, its default), one process each.

    As an installed ``usagi`` runs: with its modules' bytecode compiled (pip
    compiles them on install). PYTHONDONTWRITEBYTECODE, which a development
    shell may set, would have every run compile the package again (~40 ms):
    the bytecode goes to a cache folder of the run, written by one run that
    is not counted.
    """
    env = {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    times = []
    for i in range(runs + 1):
        path = root / f"order-{i}.json"
        path.write_text(json.dumps(EXCHANGE.body(100_000 + i)))
        start = time.perf_counter()
        subprocess.run(  # noqa: S603
            [sys.executable, "-m", "usagi_p2p", "--home", str(home.path), "send", "order",
             "--to", "Osaka", str(path)], env=env, check=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=60)
        if i:  # the first run writes the bytecode
            times.append(time.perf_counter() - start)
    return times


async def run(n: int, cli_runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="usagi-bench-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        seller_home, buyer_home = Home(root / "kanto"), Home(root / "osaka")
        seller_home.create("Kanto Machine Tools", None, port=EXCHANGE.free_port())
        buyer_home.create("Osaka Precision", None, port=EXCHANGE.free_port())
        config = seller_home.load_config()
        config.local_port = 0  # any free port; serve.json says which
        seller_home.save_config(config)
        procs.append(serve(buyer_home))
        await serving(buyer_home, procs[-1])
        async with Node.load(buyer_home, None) as buyer:
            invitation = await buyer.invite()
        async with Node.load(seller_home, None) as seller:
            await seller.add_partner(invitation.text())
        token = TokenStore(seller_home.path).create("bench", "send")
        procs.append(serve(seller_home))
        state = await serving(seller_home, procs[-1])
        # CPU time per document (robust to a busy machine, unlike docs/s): both
        # nodes, and this process (the 8 clients).
        cpu_before = [EXCHANGE.cpu_seconds(p.pid) for p in procs] + [time.process_time()]
        elapsed, latencies = await through_the_api(state["local_url"], token, n)
        cpu = [(after - before) / n * 1e6 for before, after in zip(
            cpu_before, [EXCHANGE.cpu_seconds(p.pid) for p in procs] + [time.process_time()],
            strict=True)]
        cli = cli_send(seller_home, cli_runs, root) if cli_runs else []
        seller_proc = procs.pop()
        seller_proc.terminate()
        seller_proc.wait(10)
        alone, alone_latencies = await in_process(seller_home, n)
        return {"alone_per_s": n / alone, "alone_p50_ms": statistics.median(alone_latencies) * 1000,
                "docs_per_s": n / elapsed, "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": sorted(latencies)[min(n - 1, int(n * 0.99))] * 1000,
                "cpu_us": cpu,  # buyer, seller, clients: per document
                "cli_p50_ms": statistics.median(cli) * 1000 if cli else None,
                "cli_min_ms": min(cli) * 1000 if cli else None}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000, help="documents through each path")
    parser.add_argument("--cli-runs", type=int, default=20, help="'usagi send' runs (0: none)")
    parser.add_argument("--quick", action="store_true",
                        help="200 documents, 5 'usagi send', the exchange on 1,000")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.cli_runs = 200, 5
    api = asyncio.run(run(args.docs, args.cli_runs))
    # The exchange benchmark's own figure: its default run (bench/exchange.py).
    exchange_docs, exchange_samples = (1000, 50) if args.quick else (10_000, 200)
    exchange = asyncio.run(EXCHANGE.run(exchange_docs, exchange_samples, 100))
    print(f"exchange (same run, {exchange_docs} documents in batches of 100): "
          f"{exchange['docs_per_s']:.0f} docs/s, p50 {exchange['p50_ms']:.1f} ms")
    print(f"the same load without the API ({CLIENTS} tasks of node.send + wait_for_ack in "
          f"process): {api['alone_per_s']:.0f} docs/s, p50 {api['alone_p50_ms']:.1f} ms")
    print(f"  api p99 {api['p99_ms']:.1f} ms with {CLIENTS} clients, "
          f"{api['docs_per_s'] / api['alone_per_s']:.2f}x the same load in process "
          f"(load average {os.getloadavg()[0]:.1f})")
    buyer, seller, clients = api["cpu_us"]
    print(f"cpu per document: api seller {seller:.0f} us, buyer {buyer:.0f} us, clients "
          f"{clients:.0f} us; exchange seller {exchange['cpu_seller_us']:.0f} us, buyer "
          f"{exchange['cpu_buyer_us']:.0f} us (load average {os.getloadavg()[0]:.1f})")
    print(f"api: {api['docs_per_s']:.0f} docs/s, p50 {api['p50_ms']:.1f} ms, "
          f"{api['docs_per_s'] / exchange['docs_per_s']:.2f}x exchange")
    if api["cli_p50_ms"] is not None:
        print(f"usagi send with a running node: p50 {api['cli_p50_ms']:.0f} ms "
              f"(min {api['cli_min_ms']:.0f} ms, {args.cli_runs} runs, waiting for the ack)")


if __name__ == "__main__":
    main()
