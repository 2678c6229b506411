"""The local API under load: documents sent through it by 8 clients, each waiting for its ack.

Two real nodes on loopback, each a ``usagi serve`` process (the seller with its
local API on 127.0.0.1); 8 concurrent clients send orders to the buyer through
the seller's local API, each document answered once the buyer's signed ack is
verified and stored (201); a document counts when its answer came, and its
latency is request sent to answer read (POST to ack). The clients are a lean
keep-alive HTTP/1.1 client (:class:`Connection`; ``--client aiohttp`` for
aiohttp's), as a load generator should be: they share the nodes' two cores.
Three shapes, 3,000 documents each (``--docs``; docs/api.md, "Benchmark", says why):

- batches of B (``--batch``, 50; the ``api:`` line): each client sends
  ``POST /api/v1/batches?wait=30`` with B documents, the next when the last one's
  answer came (every ack in), as an ERP sends what it has to send; each
  document's latency is its batch request's. The exchange moves documents in
  batches too: this is the shape that compares the API with it;
- 1 in flight: each client sends one document a request through
  ``POST /api/v1/documents?wait=30``, the next when the last one's answer came;
- W in flight (``--window``, 16): each client keeps W such single-document
  requests in flight. The node coalesces requests that arrive together into
  one ledger transaction (usagi_p2p/company/api/sending.py).

Each shape also runs without the API (the seller's node opened in this
process: 8 tasks of ``node.send_many`` + ``wait_for_ack``, or 8 x W tasks of
``node.send`` + ``wait_for_ack``), and the CPU time per document of each
process is printed: ``0.NNx in process`` is what the API costs on top of the
node for that shape. In the same run the exchange benchmark runs as ``python
bench/exchange.py`` runs it (its own defaults: 10,000 documents queued by
``send_many`` in batches of 100, timed until every ack is stored; ``--quick``:
1,000), once before the API's shapes and once after (the ratios use the mean
of the two: the shared host's speed drifts), and every shape is compared with
it:

    api, 8 clients x 1 in flight (a document a request): N docs/s, p50 X ms, 0.NNx exchange
    api, 8 clients x W in flight (a document a request): N docs/s, p50 X ms, 0.NNx exchange
    api: N docs/s, p50 X ms, 0.NNx exchange (8 clients x POST /api/v1/batches of B, ...)

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
import urllib.parse
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
#: Requests each client keeps in flight in the shape the 'api:' line measures.
WINDOW = 16
#: Documents per POST /api/v1/batches in the batch shape.
BATCH = 50
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


async def warm_up(url: str, token: str) -> None:
    """One document, not counted: connections, caches, the modules a first send imports."""
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/api/v1/documents?wait=30", headers={"Authorization": f"Bearer {token}"},
            json={"kind": "order", "to": "Osaka", "body": EXCHANGE.body(999_999)}) as resp:
        assert resp.status == 201, await resp.text()


class Connection:
    """One keep-alive HTTP/1.1 connection of a load-generating client: a request
    written, its answer read (status, JSON body). Lean on purpose, as a load
    generator should be (wrk, h2load): the clients share the node's two cores,
    and what they spend is not the API's cost (``--client aiohttp`` runs the same
    load through aiohttp's client; each process's CPU per document is printed)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes
                      ) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                          f"{head}\r\n".encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                      if line.lower().startswith("content-length:"))
        return status, json.loads(await self.reader.readexactly(length))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def _aiohttp_clients(url: str, token: str, n: int, window: int, first: int = 0
                           ) -> tuple[float, list[float]]:
    """N documents by CLIENTS concurrent clients, each keeping ``window`` requests in
    flight (each a ``POST ?wait=30`` answered once its ack is stored): (seconds,
    latencies). ``window=1``: each client sends its next document once the last one's
    ack came. Each client has its own connection pool of ``window`` connections."""
    latencies: list[float] = []
    counter = iter(range(first, first + n))
    headers = {"Authorization": f"Bearer {token}"}

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            request = {"kind": "order", "to": "Osaka", "body": EXCHANGE.body(i)}
            start = time.perf_counter()
            async with session.post(f"{url}/api/v1/documents?wait=30", json=request,
                                    headers={**headers, "Idempotency-Key": f"bench-{i}"}
                                    ) as resp:
                answer = await resp.json()
            latencies.append(time.perf_counter() - start)
            if resp.status != 201 or answer["ack"]["status"] != "received":
                raise RuntimeError(f"document {i}: {resp.status} {answer}")

    async def client() -> None:
        connector = aiohttp.TCPConnector(limit=window)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(worker(session) for _ in range(window)))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return time.perf_counter() - start, latencies


async def through_the_api(url: str, token: str, n: int, window: int, first: int = 0,
                          client: str = "lean") -> tuple[float, list[float]]:
    """N documents by CLIENTS concurrent clients, each keeping ``window`` requests in
    flight (each a ``POST ?wait=30`` answered once its ack is stored): (seconds,
    latencies). ``window=1``: each client sends its next document once the last one's
    ack came. Each request in flight has its keep-alive connection (:class:`Connection`;
    ``client="aiohttp"``: each client an aiohttp session with a pool of ``window``)."""
    if client == "aiohttp":
        return await _aiohttp_clients(url, token, n, window, first)
    latencies: list[float] = []
    counter = iter(range(first, first + n))

    async def worker() -> None:
        connection = Connection(url)
        try:
            for i in counter:
                body = json.dumps({"kind": "order", "to": "Osaka",
                                   "body": EXCHANGE.body(i)}).encode()
                start = time.perf_counter()
                status, answer = await connection.request(
                    "POST", "/api/v1/documents?wait=30",
                    {"Authorization": f"Bearer {token}", "Idempotency-Key": f"bench-{i}"}, body)
                latencies.append(time.perf_counter() - start)
                if status != 201 or answer["ack"]["status"] != "received":
                    raise RuntimeError(f"document {i}: {status} {answer}")
        finally:
            await connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS * window)))
    return time.perf_counter() - start, latencies


async def through_batches(url: str, token: str, n: int, batch: int, first: int = 0,
                          client: str = "lean") -> tuple[float, list[float]]:
    """N documents by CLIENTS concurrent clients, each sending ``POST /api/v1/batches
    ?wait=30`` of ``batch`` documents, the next once the last one was answered (every
    ack stored): (seconds, latencies of the batch requests). Each client one
    keep-alive connection (``client="aiohttp"``: an aiohttp session)."""
    latencies: list[float] = []
    starts = iter(range(first, first + n, batch))
    headers = {"Authorization": f"Bearer {token}"}

    async def lean() -> None:
        connection = Connection(url)
        try:
            for start_at in starts:
                count = min(batch, first + n - start_at)
                body = json.dumps({"documents": [
                    {"kind": "order", "to": "Osaka", "body": EXCHANGE.body(i)}
                    for i in range(start_at, start_at + count)]}).encode()
                start = time.perf_counter()
                status, answers = await connection.request(
                    "POST", "/api/v1/batches?wait=30",
                    {**headers, "Idempotency-Key": f"bench-b-{start_at}"}, body)
                latencies.append(time.perf_counter() - start)
                if status != 201 or any(a["ack"]["status"] != "received" for a in answers):
                    raise RuntimeError(f"batch {start_at}: {status} {answers}")
        finally:
            await connection.close()

    async def with_aiohttp() -> None:
        async with aiohttp.ClientSession() as session:
            for start_at in starts:
                count = min(batch, first + n - start_at)
                request = {"documents": [{"kind": "order", "to": "Osaka",
                                          "body": EXCHANGE.body(i)}
                                         for i in range(start_at, start_at + count)]}
                start = time.perf_counter()
                async with session.post(f"{url}/api/v1/batches?wait=30", json=request,
                                        headers={**headers,
                                                 "Idempotency-Key": f"bench-b-{start_at}"}
                                        ) as resp:
                    answers = await resp.json()
                latencies.append(time.perf_counter() - start)
                if resp.status != 201 or any(a["ack"]["status"] != "received"
                                             for a in answers):
                    raise RuntimeError(f"batch {start_at}: {resp.status} {answers}")

    start = time.perf_counter()
    await asyncio.gather(*((lean if client == "lean" else with_aiohttp)()
                           for _ in range(CLIENTS)))
    return time.perf_counter() - start, latencies


async def in_process_batches(home: Home, n: int, batch: int, first: int
                             ) -> tuple[float, list[float]]:
    """The batch shape without the API: CLIENTS tasks of node.send_many(batch) + a
    wait_for_ack of each, in this process."""
    latencies: list[float] = []
    starts = iter(range(first, first + n, batch))
    async with Node.load(home, None) as seller, Service(seller):
        async def task() -> None:
            for start_at in starts:
                count = min(batch, first + n - start_at)
                start = time.perf_counter()
                sent = await seller.send_many([("order", "Osaka", EXCHANGE.body(i), None)
                                               for i in range(start_at, start_at + count)])
                acks = await asyncio.gather(*(seller.wait_for_ack(r.cid, timeout=30)
                                              for r in sent))
                latencies.append(time.perf_counter() - start)
                assert all(a is not None and a[1] == "received" for a in acks)

        warm = await seller.send("order", "Osaka", EXCHANGE.body(first + n))
        assert await seller.wait_for_ack(warm.cid, timeout=30) is not None
        start = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(CLIENTS)))
        return time.perf_counter() - start, latencies


async def in_process(home: Home, n: int, window: int, first: int
                     ) -> tuple[float, list[float]]:
    """The same load without the API: CLIENTS x ``window`` tasks of node.send +
    wait_for_ack in this process (the seller node, its peer listener)."""
    latencies: list[float] = []
    counter = iter(range(first, first + n))
    async with Node.load(home, None) as seller, Service(seller):
        async def task() -> None:
            for i in counter:
                start = time.perf_counter()
                result = await seller.send("order", "Osaka", EXCHANGE.body(i))
                ack = await seller.wait_for_ack(result.cid, timeout=30)
                latencies.append(time.perf_counter() - start)
                assert ack is not None and ack[1] == "received"

        # one warm-up document, not counted
        warm = await seller.send("order", "Osaka", EXCHANGE.body(first + n))
        assert await seller.wait_for_ack(warm.cid, timeout=30) is not None
        start = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(CLIENTS * window)))
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


def figures(n: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    """docs/s over ``n`` documents; p50 and p99 of ``latencies`` (one per request)."""
    latencies = sorted(latencies)
    k = len(latencies)
    return {"docs_per_s": n / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(k - 1, int(k * 0.99))] * 1000}


async def run(n: int, cli_runs: int, window: int, batch: int, client: str = "lean"
              ) -> dict[str, Any]:
    """The three shapes through the API (one in flight per client, ``window``, batches
    of ``batch``), with the CPU time of each process per document; ``usagi send``; then
    the three in process (the seller's ``serve`` stopped, its node opened here)."""
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
        # A token per shape: each request's Idempotency-Key counts against its
        # token's 10,000 keys a day (docs/api.md, 2.3).
        tokens = {shape: TokenStore(seller_home.path).create(f"bench-{shape}", "send")
                  for shape in ("one", "window", "batch")}
        token = tokens["one"]
        procs.append(serve(seller_home))
        state = await serving(seller_home, procs[-1])
        await warm_up(state["local_url"], token)
        result: dict[str, Any] = {}
        for shape, w, first in (("one", 1, 0), ("window", window, n), ("batch", batch, 2 * n)):
            # CPU time per document (robust to a busy machine, unlike docs/s): both
            # nodes, and this process (the clients); after the warm-up.
            before = [EXCHANGE.cpu_seconds(p.pid) for p in procs] + [time.process_time()]
            elapsed, latencies = await (
                through_batches(state["local_url"], tokens[shape], n, w, first, client)
                if shape == "batch" else through_the_api(state["local_url"], tokens[shape], n, w,
                                                         first,
                                                         client))
            after = [EXCHANGE.cpu_seconds(p.pid) for p in procs] + [time.process_time()]
            result[shape] = {**figures(n, elapsed, latencies), "load": os.getloadavg()[0],
                             # buyer, seller, clients: per document
                             "cpu_us": [(b - a) / n * 1e6 for a, b in zip(before, after,
                                                                          strict=True)]}
        cli = cli_send(seller_home, cli_runs, root) if cli_runs else []
        seller_proc = procs.pop()
        seller_proc.terminate()
        seller_proc.wait(10)
        for shape, w, first in (("one", 1, 200_000), ("window", window, 300_000),
                                ("batch", batch, 400_000)):
            before = [EXCHANGE.cpu_seconds(procs[0].pid), time.process_time()]
            figured = figures(n, *await (
                in_process_batches(seller_home, n, w, first) if shape == "batch"
                else in_process(seller_home, n, w, first)))
            after = [EXCHANGE.cpu_seconds(procs[0].pid), time.process_time()]
            # buyer, and the seller node with its callers (this process): per document
            # (the node's opening and its warm-up document included)
            figured["cpu_us"] = [(b - a) / n * 1e6 for a, b in zip(before, after, strict=True)]
            result[f"{shape}_in_process"] = figured
        result["cli_p50_ms"] = statistics.median(cli) * 1000 if cli else None
        result["cli_min_ms"] = min(cli) * 1000 if cli else None
        return result
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=3000,
                        help="documents through each path and shape")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="requests each client keeps in flight in the 'api:' line's shape")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help="documents per POST /api/v1/batches in the batch shape")
    parser.add_argument("--cli-runs", type=int, help="'usagi send' runs (0: none; default 20)")
    parser.add_argument("--client", choices=("lean", "aiohttp"), default="lean",
                        help="the clients' HTTP: a lean keep-alive HTTP/1.1 client (default), "
                             "or aiohttp's client")
    parser.add_argument("--quick", action="store_true",
                        help="200 documents, 5 'usagi send', the exchange on 1,000")
    args = parser.parse_args()
    if args.quick:
        args.docs = 200
    if args.cli_runs is None:
        args.cli_runs = 5 if args.quick else 20
    # The exchange benchmark's own figure, its default run (bench/exchange.py), once
    # before the API's shapes and once after: the shared host's speed drifts by
    # tens of percent within minutes, and the ratios use the mean of the two.
    exchange_docs, exchange_samples = (1000, 50) if args.quick else (10_000, 200)
    before = asyncio.run(EXCHANGE.run(exchange_docs, exchange_samples, 100))
    api = asyncio.run(run(args.docs, args.cli_runs, args.window, args.batch, args.client))
    after = asyncio.run(EXCHANGE.run(exchange_docs, exchange_samples, 100))
    load = os.getloadavg()[0]
    x = (before["docs_per_s"] + after["docs_per_s"]) / 2
    one, win, many = api["one"], api["window"], api["batch"]
    print(f"exchange (same run, {exchange_docs} documents in batches of 100, before and "
          f"after the API's shapes): {x:.0f} docs/s ({before['docs_per_s']:.0f} and "
          f"{after['docs_per_s']:.0f}), p50 {after['p50_ms']:.1f} ms; cpu per document: "
          f"seller {after['cpu_seller_us']:.0f} us, buyer {after['cpu_buyer_us']:.0f} us "
          f"(load average {load:.1f})")
    for shape, label in (("one", "1 in flight"), ("window", f"{args.window} in flight"),
                         ("batch", f"batches of {args.batch} (POST /api/v1/batches)")):
        alone, through = api[f"{shape}_in_process"], api[shape]
        buyer, seller, clients = through["cpu_us"]
        how = ("node.send_many + wait_for_ack" if shape == "batch"
               else "node.send + wait_for_ack")
        print(f"{CLIENTS} clients x {label}, each waiting for its acks:\n"
              f"  in process ({how}, no API): {alone['docs_per_s']:.0f} "
              f"docs/s, p50 {alone['p50_ms']:.1f} ms; cpu per document: seller "
              f"{alone['cpu_us'][1]:.0f} us, buyer {alone['cpu_us'][0]:.0f} us\n"
              f"  through the API: {through['docs_per_s']:.0f} docs/s, p50 "
              f"{through['p50_ms']:.1f} ms, p99 {through['p99_ms']:.1f} ms, "
              f"{through['docs_per_s'] / alone['docs_per_s']:.2f}x in process; cpu per "
              f"document: seller {seller:.0f} us, buyer {buyer:.0f} us, clients {clients:.0f} us "
              f"(load average {through['load']:.1f})")
    print(f"api, {CLIENTS} clients x 1 in flight (a document a request): "
          f"{one['docs_per_s']:.0f} docs/s, p50 {one['p50_ms']:.1f} ms, "
          f"{one['docs_per_s'] / x:.2f}x exchange")
    print(f"api, {CLIENTS} clients x {args.window} in flight (a document a request): "
          f"{win['docs_per_s']:.0f} docs/s, p50 {win['p50_ms']:.1f} ms, "
          f"{win['docs_per_s'] / x:.2f}x exchange (each POST ?wait= answered at its ack)")
    print(f"api: {many['docs_per_s']:.0f} docs/s, p50 {many['p50_ms']:.1f} ms, "
          f"{many['docs_per_s'] / x:.2f}x exchange ({CLIENTS} clients x POST /api/v1/batches "
          f"of {args.batch}, each answered once its documents' acks came)")
    if api["cli_p50_ms"] is not None:
        print(f"usagi send with a running node: p50 {api['cli_p50_ms']:.0f} ms "
              f"(min {api['cli_min_ms']:.0f} ms, {args.cli_runs} runs, waiting for the ack)")


if __name__ == "__main__":
    main()
