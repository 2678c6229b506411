"""A mesh of N companies, each a real node, trading whole threads with its partners.

The founding claim (DESIGN.md, "Scale"): a node's cost is the cost of its own
trades, however many companies join. This measures it (docs/scale.md).

* N companies, each the same :class:`Node` and :class:`Service` as ``usagi
  serve`` — its own home, ledger.db, blocks.db, peer listener on 127.0.0.1 —
  packed into ``--procs`` worker processes (one event loop each) so that
  1,000 fit on a 2-core machine. Nothing is shared between two nodes of one
  process but the event loop and the interpreter.
* A heavy-tailed partner graph: Barabási–Albert preferential attachment with
  m = 3 (mean degree ~6; the first companies become hubs with dozens of
  partners). Every edge is paired through a real invitation: one node
  invites, the other adds it and introduces itself over HTTP.
* Trades are whole threads, quote -> order -> order_response ->
  delivery_note -> invoice, at a steady rate per edge (``--threads`` per edge,
  evenly spread over ``--seconds``, random phase); the seller of each edge
  is drawn at random. Each company runs one to two of the industry plugins,
  and a small responder on the node's event sequence (what the local API's
  stream and webhooks read): a buyer orders what it is quoted, a seller
  confirms, delivers and invoices what it is ordered.
* The window is the same for every N of a run, so every edge trades at the
  same rate at every N. By default it is ``SECONDS_PER_COMPANY`` (0.35 s) per
  company of the largest N, at least 30 s: N = 1,000's ~6,000 trades at ~50 ms
  of CPU each then ask ~0.9 of a core, and the host is not saturated (a
  saturated host times requests out and retries them, and its nodes' idle
  cost runs on over a longer run: that measures the host, not the mesh).
  The printed *demand* says what the run asked.
* Setup is kept out of the collector's way: once paired, each process
  freezes what it holds (``gc.collect(); gc.freeze()``; ``--no-freeze`` not).
  250 nodes in one interpreter make one heap, and each full collection walks
  all their long-lived objects, ~250 times what a node walks in its own
  process (a real deployment: one node, one process). This controls a
  packing artefact; the collector's CPU during trading is still counted.

Measured per node, inside the shared processes, over the trading window (from
the first trade until every notice is answered):

* CPU: the event-loop time of every callback run in the node's context
  (a context variable set when the node starts; every task, connection and
  timer the node makes inherits it), plus the CPU of the node's two SQLite
  threads (``/proc/self/task/TID/schedstat``, nanoseconds), less the garbage
  collections that ran inside them (``gc.callbacks``, per thread): a
  collection is paid by whichever callback allocates when it is due, with
  250 nodes in one heap mostly a node that did not make the garbage. The
  collector's CPU is reported apart (*collector*) and counted in the
  network's cost. What no node owns (the pipe to the parent, aiosqlite's
  result hand-off, the probes) is reported apart, in *process total*;
* idle: before trading, the paired nodes do nothing for ``--idle`` seconds:
  CPU per node-second (the delivery loop's look at its outbox, every
  ``IDLE_MAX``), and what share of the nodes' CPU in the window that rate is;
* refusals and retries, from each node's log: ``refused:<code>`` (a notice
  this node refused), ``retry:<why>`` (a notice it must send again: a
  partner's temporary refusal such as ``unknown_prev``, ``unreachable`` for a
  timeout, ``busy`` for 429/503), ``undelivered``; printed per trade;
* bytes and requests in and out, counted at the sockets: what each node's
  listener reads and writes, and what its client sends to and reads from
  each listener port;
* ledger and block store size (bytes over an empty node's), blocks held, and
  the WAL files' length before they are checkpointed for the sizes.

Normalised, beside the raw figure: the largest node's CPU per own trade less
the mean idle rate over the window (a fixed cost per node, not per trade),
against the network's mean computed the same way.

For the run: *demand*, the worker processes' CPU over the trading window in
cores (everything: nodes, collector, probes), and the load average before and
after trading. A *probe* (seal and open one quote, timed every half second in
each process) says how fast the CPU is under the host's load at the time.

Asserted by counting (also for N = 1,000): every request and byte a node's
client sent went to one of its partners' listeners, and every byte a
listener read was sent by a partner's client to it (the two sides counted in
different processes agree); every node holds exactly the blocks of its own
trades (5 per thread) and documents with its partners only.

Printed, per N: the raw figures (CPU per trade in ms, raw ratio to the first
N), the same in probes, the three nodes with the highest CPU per own trade
(with their partners, trades, requests, refusals and retries). Last line:
``mesh: N=…, per-trade cost X.XXx of N=10, max node load / own trades
Y.YYx``: the network's CPU per trade (nodes + collector, in probes) against
the first N's in the same run, and the largest node's CPU per own trade
against the network's mean per own trade. Pictures (``--plots DIR``,
matplotlib): per-trade cost against N, each node's load against its own
trades, the partner graph.

    python bench/mesh.py                 # N = 10, 100 over 35 s (make bench): ~3 min
    python bench/mesh.py --n 10 1000 --plots docs/scale
                                         # 10 and 1,000 companies over 350 s: ~16 min

With N = 1,000 the four processes hold ~450 MB each (1,000 nodes, 2,000
SQLite threads, several GB of files, mostly WAL) and the per-address limits
of the listener are lifted (every company connects from 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import errno
import json
import multiprocessing
import os
import random
import resource
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLUGINS = ("machinery", "food", "construction", "medical")
KINDS = ("quote", "order", "order_response", "delivery_note", "invoice")
DOCS_PER_THREAD = len(KINDS)
#: The default window (``--seconds``) per company of the largest mesh of a run:
#: N = 1,000 asks ~6,000 trades x ~50 ms of CPU = ~300 s of CPU, so 350 s keeps
#: the trades' demand near 0.9 of a core on a 2-core host (docs/scale.md).
SECONDS_PER_COMPANY = 0.35

# -- the partner graph ---------------------------------------------------------


def partner_graph(n: int, m: int = 3, seed: int = 1) -> list[tuple[int, int]]:
    """Barabási–Albert: each new company pairs with ``m`` existing ones, chosen in
    proportion to how many partners they have (a clique of m + 1 to start)."""
    rng = random.Random(seed)
    if n <= m + 1:
        return [(a, b) for a in range(n) for b in range(a + 1, n)]
    edges = [(a, b) for a in range(m + 1) for b in range(a + 1, m + 1)]
    ends = [x for edge in edges for x in edge]  # each node once per partner
    for new in range(m + 1, n):
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(rng.choice(ends))
        for old in sorted(chosen):
            edges.append((old, new))
            ends += (old, new)
    return edges


# -- measuring inside one process ------------------------------------------------

NODE: contextvars.ContextVar[int] = contextvars.ContextVar("mesh_node", default=-1)


@dataclass
class Meter:
    """Per-node counters of one worker process, filled by the patches of :meth:`install`."""

    cpu: Counter[int] = field(default_factory=Counter)          # event-loop seconds
    listener_in: Counter[int] = field(default_factory=Counter)   # bytes read by a listener
    listener_out: Counter[int] = field(default_factory=Counter)  # bytes a listener wrote
    requests_in: Counter[int] = field(default_factory=Counter)
    # (node, listener port) -> count, by the node's client
    sent: Counter[tuple[int, int]] = field(default_factory=Counter)
    received: Counter[tuple[int, int]] = field(default_factory=Counter)
    requests: Counter[tuple[int, int]] = field(default_factory=Counter)
    # CPU seconds of the garbage collector, by native thread id (gc.callbacks)
    gc: Counter[int] = field(default_factory=Counter)
    # node -> what its log said: refusals it gave ("refused:<code>"), notices it
    # must send again ("retry:<why>"), notices given up ("undelivered")
    events: Counter[tuple[int, str]] = field(default_factory=Counter)

    def install(self) -> None:
        import asyncio.events
        import asyncio.selector_events
        import gc
        import logging
        import threading

        from aiohttp import client_proto, web_protocol

        cpu, thread_time = self.cpu, time.thread_time
        collected, get_tid = self.gc, threading.get_native_id
        loop_tid = get_tid()
        gc_started: dict[int, float] = {}

        def timed_gc(phase: str, info: dict[str, int]) -> None:
            tid = get_tid()
            if phase == "start":
                gc_started[tid] = thread_time()
            elif tid in gc_started:
                collected[tid] += thread_time() - gc_started.pop(tid)

        gc.callbacks.append(timed_gc)
        run = asyncio.events.Handle._run

        def timed_run(handle: Any) -> None:
            # A collection is paid by whichever callback allocates when it is due:
            # with 250 nodes in one heap, by a node that did not make the garbage.
            # It is counted apart (``gc``), not charged to that node.
            context = handle._context
            gc_before = collected[loop_tid]
            start = thread_time()
            try:
                run(handle)
            finally:
                cpu[context.get(NODE, -1) if context is not None else -1] += (
                    thread_time() - start - (collected[loop_tid] - gc_before))

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

        events = self.events

        class Events(logging.Handler):
            """The node's refusals and retries, counted per node (its log lines)."""

            def emit(self, record: logging.LogRecord) -> None:
                node, message = NODE.get(), record.msg
                if message.startswith("rejecting"):  # intake: (cid, sender, error)
                    events[node, "refused:" + getattr(record.args[2], "code", "?")] += 1
                elif message.startswith("delivery failed"):  # (count, why)
                    why = str(record.args[1])
                    kind = (why.rsplit(": ", 1)[-1] if "cannot take it now" in why
                            else "unreachable" if why.startswith("cannot reach")
                            else "busy" if " answered 429" in why or " answered 503" in why
                            else "other")
                    events[node, "retry:" + kind] += int(record.args[0])
                elif message.endswith("undelivered: %s"):
                    events[node, "undelivered"] += 1

        node_log = logging.getLogger("usagi.node")
        node_log.setLevel(logging.INFO)
        node_log.addHandler(Events())

        def peer_port(transport: Any) -> int:
            peer = transport.get_extra_info("peername") if transport is not None else None
            return int(peer[1]) if peer else -1

        server_read = web_protocol.RequestHandler.data_received

        def counted_server_read(handler: Any, data: bytes) -> None:
            self.listener_in[NODE.get()] += len(data)
            server_read(handler, data)

        web_protocol.RequestHandler.data_received = counted_server_read  # type: ignore[method-assign]

        client_read = client_proto.ResponseHandler.data_received

        def counted_client_read(handler: Any, data: bytes) -> None:
            self.received[NODE.get(), peer_port(handler.transport)] += len(data)
            client_read(handler, data)

        client_proto.ResponseHandler.data_received = counted_client_read  # type: ignore[method-assign]

        transport_cls = asyncio.selector_events._SelectorSocketTransport
        write, writelines = transport_cls.write, transport_cls.writelines
        listening = self.listening = set[int]()

        def account(transport: Any, size: int) -> None:
            local = transport.get_extra_info("sockname")
            if local and local[1] in listening:
                self.listener_out[NODE.get()] += size
            else:
                self.sent[NODE.get(), peer_port(transport)] += size

        def counted_write(transport: Any, data: Any) -> None:
            account(transport, len(data))
            write(transport, data)

        def counted_writelines(transport: Any, lines: Any) -> None:
            lines = list(lines)
            account(transport, sum(len(x) for x in lines))
            writelines(transport, lines)

        transport_cls.write = counted_write  # type: ignore[method-assign]
        transport_cls.writelines = counted_writelines  # type: ignore[method-assign]

        handle_request = web_protocol.RequestHandler._handle_request

        async def counted_request(handler: Any, request: Any, *args: Any) -> Any:
            self.requests_in[NODE.get()] += 1
            return await handle_request(handler, request, *args)

        web_protocol.RequestHandler._handle_request = counted_request  # type: ignore[method-assign]

        from aiohttp import client

        request = client.ClientSession._request

        async def counted_client_request(session: Any, method: str, url: Any,
                                         *args: Any, **kwargs: Any) -> Any:
            from yarl import URL
            self.requests[NODE.get(), URL(url).port or 80] += 1
            return await request(session, method, url, *args, **kwargs)

        client.ClientSession._request = counted_client_request  # type: ignore[method-assign]

    def snapshot(self) -> dict[str, Any]:
        return {name: Counter(getattr(self, name)) for name in
                ("cpu", "listener_in", "listener_out", "requests_in", "sent", "received",
                 "requests", "gc", "events")}


def thread_ns(tid: int) -> int:
    """CPU nanoseconds of one thread of this process (schedstat: ns, not 10 ms ticks)."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
    except OSError:
        return 0


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- one worker process: its share of the nodes ----------------------------------


def quote_body(edge: int, k: int) -> dict[str, Any]:
    return {"ref": f"Q-{edge}-{k}", "currency": "JPY", "lines": [
        {"text": "M6x20 SUS304 hex bolt DIN 933", "qty": "500", "unit": "pcs",
         "unit_price": "12.50"},
        {"text": "構造用合板 1820×910×12mm ±0.5mm", "qty": "40", "unit": "sheet",
         "unit_price": "2480"},
        {"text": "Fresh salmon fillet, best before 2026-12-20, keep 0-4°C", "qty": "12",
         "unit": "kg", "unit_price": "3200"},
    ]}


class Worker:
    """The nodes of one process, their services and responders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meter = Meter()
        self.meter.install()
        self.nodes: dict[int, Any] = {}
        self.services: dict[int, Any] = {}
        self.threads: dict[int, tuple[int, int]] = {}  # node -> its two SQLite thread ids
        self.done: dict[tuple[int, str], asyncio.Future[None]] = {}  # (seller, thread hex)
        self.errors: list[str] = []
        self.stop = asyncio.Event()

    async def create(self, specs: list[tuple[int, str, list[str], int]]) -> dict[int, str]:
        from usagi_p2p.node import operations
        from usagi_p2p.node.home import Home

        for i, name, plugins, port in specs:
            home = Home(self.root / f"n{i:04d}")
            home.create(name, None, port=port)
            # Four processes on a shared 2-core host answer slowly at times:
            # a notice is retried for longer than the default 8 attempts (~2
            # minutes) before it is held undelivered (docs/operations.md).
            home.update_config(lambda config: setattr(config, "max_attempts", 30))
            for plugin in plugins:
                await operations.enable_plugin(operations.offline(home), plugin)
        started = await asyncio.gather(*(self._start(i) for i, *_ in specs))
        return dict(started)

    async def _start(self, i: int) -> tuple[int, str]:
        context = contextvars.copy_context()
        context.run(NODE.set, i)
        return await asyncio.get_running_loop().create_task(self._start_here(i),
                                                            context=context)

    async def _start_here(self, i: int) -> tuple[int, str]:
        from usagi_p2p.node.home import Config, Home
        from usagi_p2p.node.node import Node
        from usagi_p2p.peer.listener import Limits
        from usagi_p2p.peer.service import Service

        home = Home(self.root / f"n{i:04d}")
        for attempt in range(10):
            node = Node.load(home, None)
            await node.open()
            # Every company of the mesh connects from 127.0.0.1: the listener's
            # limits per source address (spec section 13) would count a hub's
            # partners as one caller. Each has an address of its own in truth.
            service = Service(node, limits=Limits(connections_per_address=1 << 20,
                                                  requests_per_address=1 << 20))
            try:
                await service.start()
                break
            except OSError as exc:  # the port was taken meanwhile (a shared machine)
                await service.close()
                await node.close()
                if exc.errno != errno.EADDRINUSE or attempt == 9:
                    raise
                port = free_port()

                def move(config: Config, port: int = port) -> None:
                    config.listen_port = port
                    config.endpoint = f"http://127.0.0.1:{port}"

                home.update_config(move)
        self.meter.listening.add(service.port)
        self.nodes[i], self.services[i] = node, service
        store_db = getattr(node.store, "_db", None)
        self.threads[i] = (node.ledger.db._thread.native_id,
                           store_db._thread.native_id if store_db is not None else 0)
        asyncio.create_task(self._respond(i))  # noqa: RUF006 (ends with self.stop)
        return i, node.config.endpoint

    async def _respond(self, i: int) -> None:
        """What each company's own software does on its node's event sequence."""
        from kernel.cid import CID
        from usagi_p2p.node import operations

        node = self.nodes[i]
        seq = (await operations.event_range(node))[1]
        while not self.stop.is_set():
            signal = operations.commit_signal(node)
            events = await operations.events_after(node, seq)
            for event in events:
                seq = event.seq
                data = event.data
                kind = data.get("kind")
                try:
                    if event.type == "document.received" and kind == "quote":
                        await operations.answer(node, "order", CID.parse(data["cid"]),
                                               {"ref": f"PO-{data['ref']}"})
                    elif event.type == "document.received" and kind == "order":
                        cid = CID.parse(data["cid"])
                        for answer, fields in (("order_response", {"response": "accept"}),
                                               ("delivery_note", {}), ("invoice", {})):
                            cid = (await operations.answer(node, answer, cid, fields)).cid
                    elif event.type == "document.delivered" and kind == "invoice":
                        future = self.done.get((i, data["thread"]))
                        if future is not None and not future.done():
                            future.set_result(None)
                except Exception as exc:  # noqa: BLE001 (counted and reported)
                    self.errors.append(f"node {i}: {event.type} {kind}: {exc!r}")
                    print(self.errors[-1], file=sys.stderr)
            if not events:
                await signal.wait()

    async def invite(self, items: list[tuple[int, int]]) -> dict[int, str]:
        from usagi_p2p.node import operations

        async def one(edge: int, a: int) -> tuple[int, str]:
            return edge, (await operations.invite(self.nodes[a])).text()

        return dict(await asyncio.gather(*(self._as(a, one(e, a)) for e, a in items)))

    async def add(self, items: list[tuple[int, int, str]]) -> None:
        from usagi_p2p.node import operations

        gate = asyncio.Semaphore(32)

        async def one(b: int, text: str) -> None:
            async with gate:
                await operations.add_partner(self.nodes[b], text)

        await asyncio.gather(*(self._as(b, one(b, text)) for _, b, text in items))

    def _as(self, i: int, coro: Any) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(NODE.set, i)
        return asyncio.get_running_loop().create_task(coro, context=context)

    async def trade(self, items: list[tuple[int, int, str, float, list[int]]], threads: int,
                    seconds: float) -> dict[str, Any]:
        """Run every thread of the edges this process sells on; measure meanwhile."""
        from usagi_p2p.node import operations

        wall = self._started[3]
        start = time.monotonic()
        interval = seconds / threads

        async def edge(e: int, seller: int, buyer_did: str, phase: float, ks: list[int]
                       ) -> None:
            for k in ks:
                delay = start + phase * interval + k * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                result = await operations.send(self.nodes[seller], "quote", quote_body(e, k),
                                               to=buyer_did, extract=True)
                future = self.done[seller, str(result.cid)] = \
                    asyncio.get_running_loop().create_future()
                await asyncio.wait_for(future, timeout=float(os.environ.get("MESH_TIMEOUT", 600)))

        probe = asyncio.create_task(self._probe())  # in no node's context
        await asyncio.gather(*(self._as(s, edge(e, s, did, ph, ks))
                               for e, s, did, ph, ks in items))
        self.probe_stop = True
        self.probes = await probe
        return {"wall": time.perf_counter() - wall}

    async def settle(self) -> int:
        """Wait until no node here has a notice pending (a retry of a notice whose
        answer came too late, say, may still go out after its thread is done);
        how many were pending at first."""
        from usagi_p2p.node import operations

        first = None
        while True:
            pending = sum([(await operations.outbox_counts(node))["pending"]
                           for node in self.nodes.values()])
            first = pending if first is None else first
            if not pending:
                return first
            await asyncio.sleep(0.5)

    def _counters(self) -> tuple[dict[str, Any], dict[int, tuple[int, ...]], float, float]:
        return (self.meter.snapshot(),
                {i: tuple(thread_ns(t) for t in tids) for i, tids in self.threads.items()},
                process_cpu(), time.perf_counter())

    def _used(self, since: tuple[dict[str, Any], dict[int, tuple[int, ...]], float, float]
              ) -> dict[str, Any]:
        """What the nodes used since ``since`` (:meth:`_counters`)."""
        before, threads_before, cpu_before, wall = since
        after = self.meter.snapshot()
        gc_by_tid = after["gc"] - before["gc"]
        return {"before": before, "after": after,
                # the SQLite threads' CPU, less the collections they happened to run
                "threads_ns": {i: sum(thread_ns(t) - int(gc_by_tid[t] * 1e9) for t in tids)
                               - sum(threads_before[i]) for i, tids in self.threads.items()},
                "gc": sum(gc_by_tid.values()),
                "process_cpu": process_cpu() - cpu_before,
                "wall": time.perf_counter() - wall}

    async def begin(self, freeze: bool, idle: float) -> dict[str, Any]:
        """Before trading, in every process at once: (``freeze``) move what setting up
        and pairing made into the collector's permanent generation, then measure
        ``idle`` seconds of the paired nodes doing nothing, then take the counters."""
        import gc

        if freeze:
            # 250 nodes share one heap here: a full collection walks all their
            # long-lived objects (connections, plugins, parsers), ~250 times what
            # one node's own process walks. Frozen, it walks what trading made.
            gc.collect()
            gc.freeze()
        await asyncio.sleep(2.0)  # the pairing's last deliveries end; the loops back off
        since = self._counters()
        await asyncio.sleep(idle)
        quiet = self._used(since)
        self._started = self._counters()
        return quiet

    async def _probe(self) -> list[float]:
        """CPU seconds of a fixed piece of node work (seal and open one quote), taken
        every half second while the nodes trade: how fast this process's CPU is
        under the machine's load right now (a shared, busy host runs the same
        instructions slower). The figures are divided by it to compare runs."""
        from kernel import Identity, open_envelope, seal

        a, b = Identity(b"a" * 32), Identity(b"b" * 32)
        document = {"v": 1, "kind": "quote", "from": a.did, "to": b.did,
                    "issued_at": "2026-12-06T00:00:00Z", **quote_body(0, 0)}
        samples = []
        self.probe_stop = False
        while not self.probe_stop:
            start = time.thread_time()
            for _ in range(20):
                open_envelope(seal(document, a).block, b)
            samples.append((time.thread_time() - start) / 20)
            await asyncio.sleep(0.5)
        return samples

    async def measure(self) -> dict[str, Any]:
        """What the nodes used since :meth:`trade` began (called once every process's
        trades are done: a buyer's listener may still be reading until then)."""
        return {**self._used(self._started), "errors": self.errors[:20],
                "probe": self.probes}

    async def sizes(self) -> dict[int, dict[str, Any]]:
        out = {}
        for i, node in self.nodes.items():
            home = node.home.path

            def size(name: str, home: Path = home) -> int:
                return sum((home / (name + suffix)).stat().st_size
                           for suffix in ("", "-wal") if (home / (name + suffix)).exists())

            wal = sum((home / (name + "-wal")).stat().st_size for name in ("ledger.db", "blocks.db")
                      if (home / (name + "-wal")).exists())
            for name in ("ledger.db", "blocks.db"):  # what the files hold, not the WAL's length
                with contextlib.closing(sqlite3.connect(home / name)) as con:
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with contextlib.closing(sqlite3.connect(f"file:{home / 'blocks.db'}?mode=ro",
                                                    uri=True)) as con:
                blocks = con.execute("SELECT count(*) FROM blocks").fetchone()[0]
            partners = [p.did for p in await node.ledger.partners()]
            documents = await node.ledger.documents(limit=1_000_000)
            out[i] = {"ledger": size("ledger.db"), "store": size("blocks.db"), "wal": wal,
                      "blocks": blocks, "docs": len(documents), "did": node.did,
                      "foreign": sum(1 for d in documents if d.partner not in partners)}
        return out

    async def close(self) -> None:
        self.stop.set()
        for i in list(self.services):
            await self.services[i].close()
            await self.nodes[i].close()


def worker_main(conn: Connection, root: str) -> None:
    import logging

    raise_open_files()
    # A reply sent right after the document it answers may overtake it and be
    # refused unknown_prev once, then retried (docs/spec.md section 9): counted
    # in the requests, not printed.
    logging.basicConfig(level=logging.ERROR)
    for handler in logging.getLogger().handlers:  # usagi.node logs INFO to the Meter
        handler.setLevel(logging.ERROR)

    async def serve() -> None:
        worker = Worker(Path(root))
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            try:
                if command == "close":
                    await worker.close()
                    conn.send(("ok", None))
                    return
                result = await getattr(worker, command)(*args)
                conn.send(("ok", result))
            except Exception as exc:  # noqa: BLE001 (sent to the parent)
                import traceback
                conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))

    asyncio.run(serve())


# -- the parent: one mesh ------------------------------------------------------------


class Mesh:
    def __init__(self, n: int, procs: int, root: Path) -> None:
        self.n, self.procs = n, min(procs, n)
        self.root = root
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes = []
        for w in range(self.procs):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(child, str(root / f"w{w}")),
                                  daemon=True)
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def owner(self, i: int) -> int:
        """The process of company ``i`` (the graph's hubs, its first companies,
        go to the processes in turn)."""
        return i % self.procs

    def call_all(self, command: str, per_worker: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        for w, args in per_worker.items():
            self.conns[w].send((command, args))
        results = {}
        for w in per_worker:
            status, result = self.conns[w].recv()
            if status != "ok":
                raise RuntimeError(f"worker {w}: {command}: {result}")
            results[w] = result
        return results

    def close(self) -> None:
        try:
            self.call_all("close", {w: () for w in range(self.procs)})
        finally:
            for process in self.processes:
                process.join(30)
                if process.is_alive():
                    process.kill()


def run_mesh(n: int, procs: int, threads: int, seconds: float, seed: int, freeze: bool = True,
             idle: float = 6.0) -> dict[str, Any]:
    rng = random.Random(seed)
    edges = partner_graph(n, seed=seed)
    root = Path(tempfile.mkdtemp(prefix=f"usagi-mesh-{n}-"))
    mesh = Mesh(n, procs, root)
    try:
        t0 = time.perf_counter()
        specs: dict[int, list[Any]] = defaultdict(list)
        for i in range(n):
            plugins = rng.sample(PLUGINS, rng.choice((1, 1, 2)))
            specs[mesh.owner(i)].append((i, f"Company {i:04d}", plugins, free_port()))
        endpoints: dict[int, str] = {}
        for result in mesh.call_all("create", {w: (s,) for w, s in specs.items()}).values():
            endpoints.update(result)
        port_of = {i: int(url.rsplit(":", 1)[1]) for i, url in endpoints.items()}
        node_at = {port: i for i, port in port_of.items()}
        started = time.perf_counter() - t0
        # Pairing: one invites, the other adds the invitation (and introduces itself).
        invites: dict[int, list[Any]] = defaultdict(list)
        for e, (a, _) in enumerate(edges):
            invites[mesh.owner(a)].append((e, a))
        texts: dict[int, str] = {}
        for result in mesh.call_all("invite", {w: (x,) for w, x in invites.items()}).values():
            texts.update(result)
        adds: dict[int, list[Any]] = defaultdict(list)
        for e, (_, b) in enumerate(edges):
            adds[mesh.owner(b)].append((e, b, texts[e]))
        mesh.call_all("add", {w: (x,) for w, x in adds.items()})
        paired = time.perf_counter() - t0 - started
        sizes_empty = {}
        for result in mesh.call_all("sizes", {w: () for w in range(mesh.procs)}).values():
            sizes_empty.update(result)
        did = {i: s["did"] for i, s in sizes_empty.items()}
        # Trading: the two partners of each edge take turns as the seller (role
        # symmetry: every company sells and buys); each seller drives its threads.
        sells: dict[int, list[Any]] = defaultdict(list)
        own = Counter[int]()
        for e, (a, b) in enumerate(edges):
            phase = rng.random()
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            for seller, buyer, ks in ((first, second, range(0, threads, 2)),
                                      (second, first, range(1, threads, 2))):
                if ks:
                    sells[mesh.owner(seller)].append((e, seller, did[buyer], phase, list(ks)))
            own[a] += threads
            own[b] += threads
        quiet = mesh.call_all("begin", {w: (freeze, idle) for w in range(mesh.procs)})
        load_before = os.getloadavg()[0]
        t1 = time.perf_counter()
        mesh.call_all("trade", {w: (sells.get(w, []), threads, seconds)
                                          for w in range(mesh.procs)})
        trading = time.perf_counter() - t1
        late = sum(mesh.call_all("settle", {w: () for w in range(mesh.procs)}).values())
        time.sleep(0.5)  # the last acks' connections go quiet
        results = mesh.call_all("measure", {w: () for w in range(mesh.procs)})
        window = time.perf_counter() - t1
        load_after = os.getloadavg()[0]
        t2 = time.perf_counter()
        sizes = {}
        for result in mesh.call_all("sizes", {w: () for w in range(mesh.procs)}).values():
            sizes.update(result)
        sized = time.perf_counter() - t2
    finally:
        mesh.close()
        shutil.rmtree(root, ignore_errors=True)

    # Per node: what the counters of its own process say.
    cpu: Counter[int] = Counter()
    unowned = 0.0
    process_total = 0.0
    listener_in: Counter[int] = Counter()
    listener_out: Counter[int] = Counter()
    requests_in: Counter[int] = Counter()
    sent: Counter[tuple[int, int]] = Counter()
    received: Counter[tuple[int, int]] = Counter()
    requests: Counter[tuple[int, int]] = Counter()
    errors: list[str] = []
    probes: list[float] = []
    for r in results.values():
        probes += r["probe"]
        before, after = r["before"], r["after"]
        for key, value in (after["cpu"] - before["cpu"]).items():
            if key >= 0:
                cpu[key] += value
            else:
                unowned += value
        for i, ns in r["threads_ns"].items():
            cpu[i] += ns / 1e9
        process_total += r["process_cpu"]
        listener_in.update(after["listener_in"] - before["listener_in"])
        listener_out.update(after["listener_out"] - before["listener_out"])
        requests_in.update(after["requests_in"] - before["requests_in"])
        sent.update(after["sent"] - before["sent"])
        received.update(after["received"] - before["received"])
        requests.update(after["requests"] - before["requests"])
        errors += r["errors"]
    if errors:
        raise AssertionError("responder errors:\n" + "\n".join(errors))
    gc_cpu = sum(r["gc"] for r in results.values())
    events: Counter[tuple[int, str]] = Counter()
    for r in results.values():
        events.update(r["after"]["events"] - r["before"]["events"])
    # The nodes paired and doing nothing, before trading: what a node costs a second
    # when it has no trade (its delivery loop's idle looks at its outbox).
    idle_cpu: Counter[int] = Counter()
    idle_wall = 0.0
    for q in quiet.values():
        for key, value in (q["after"]["cpu"] - q["before"]["cpu"]).items():
            if key >= 0:
                idle_cpu[key] += value
        for i, ns in q["threads_ns"].items():
            idle_cpu[i] += ns / 1e9
        idle_wall = max(idle_wall, q["wall"])
    idle_rate = sum(idle_cpu.values()) / n / idle_wall  # CPU s per node per s

    # Counting: every request and byte went between partners only, and both ends agree.
    partners = defaultdict(set)
    for a, b in edges:
        partners[a].add(b)
        partners[b].add(a)
    to_listener: Counter[int] = Counter()
    from_listener: Counter[int] = Counter()
    sent_by: Counter[int] = Counter()
    received_by: Counter[int] = Counter()
    requests_by: Counter[int] = Counter()
    requests_to: Counter[int] = Counter()
    for (client, port), count in sent.items():
        target = node_at.get(port)
        assert client >= 0 and target in partners[client], (client, port, count)
        to_listener[target] += count
        sent_by[client] += count
    for (client, port), count in received.items():
        target = node_at.get(port)
        assert client >= 0 and target in partners[client], (client, port, count)
        from_listener[target] += count
        received_by[client] += count
    for (client, port), count in requests.items():
        target = node_at.get(port)
        assert client >= 0 and target in partners[client], (client, port, count)
        requests_by[client] += count
        requests_to[target] += count
    # A client that gave up waiting (a slow hub) never reads the answer its
    # request still gets: a listener may write more than clients read, never less.
    unread = sum(listener_out.values()) - sum(from_listener.values())
    assert all(from_listener[i] <= listener_out[i] for i in from_listener), \
        "a client read bytes no partner's listener wrote"
    for counted, claimed, what in (
            (+listener_in, to_listener, "a listener read bytes no partner's client sent it"),
            (+requests_in, requests_to, "a listener answered a request no partner made")):
        wrong = {i: (counted[i], claimed[i]) for i in set(counted) | set(claimed)
                 if counted[i] != claimed[i]}
        assert not wrong, f"{what}: node: (counted there, sent by partners) {list(wrong.items())[:5]}"
    for i, s in sizes.items():
        assert s["blocks"] == DOCS_PER_THREAD * own[i], (i, s["blocks"], own[i])
        assert s["docs"] == DOCS_PER_THREAD * own[i] and s["foreign"] == 0, (i, s)

    total_trades = threads * len(edges)
    nodes = []
    for i in range(n):
        nodes.append({
            "id": i, "own": own[i], "degree": len(partners[i]), "cpu": cpu[i],
            "events": {k: v for (j, k), v in events.items() if j == i},
            "bytes_in": listener_in[i] + received_by[i],
            "bytes_out": listener_out[i] + sent_by[i],
            "requests_in": requests_in[i], "requests_out": requests_by[i],
            "ledger": sizes[i]["ledger"] - sizes_empty[i]["ledger"],
            "store": sizes[i]["store"] - sizes_empty[i]["store"],
        })
    owned = sum(x["cpu"] for x in nodes)
    per_trade = owned / total_trades  # one trade's cost, both parties
    per_own = [x["cpu"] / x["own"] for x in nodes]  # each party pays about half
    mean_per_own = owned / sum(own.values())
    for x, ratio in zip(nodes, per_own, strict=True):
        x["load"] = ratio / mean_per_own
    worst = sorted(nodes, key=lambda x: -x["load"])[:3]
    # The same without the idle cost (the mean idle rate over the window, a fixed
    # cost per node, not per trade): normalised, printed beside the raw ratio.
    busy = [max(x["cpu"] - idle_rate * window, 0.0) for x in nodes]
    busy_mean = sum(busy) / sum(own.values())
    max_busy_ratio = max(b / x["own"] for b, x in zip(busy, nodes, strict=True)) / busy_mean
    kinds: Counter[str] = Counter()
    for (_, kind), count in events.items():
        kinds[kind] += count
    return {
        "window_s": window, "sizes_s": sized, "load": (load_before, load_after),
        "gc_cpu": gc_cpu, "idle_rate": idle_rate,
        "idle_share": idle_rate * n * window / owned,
        # the mesh's processes' CPU over the trading window, in cores
        "demand": sum(r["process_cpu"] for r in results.values()) / window,
        "events": dict(kinds), "worst": worst, "freeze": freeze,
        "max_busy_ratio": max_busy_ratio,
        "wal_mean": statistics.mean(s["wal"] for s in sizes.values()),
        "wal_max": max(s["wal"] for s in sizes.values()),
        "per_trade_all": (owned + gc_cpu) / total_trades,
        "n": n, "edges": len(edges), "trades": total_trades, "docs": total_trades * 5,
        "max_degree": max(len(p) for p in partners.values()),
        "start_s": started, "pair_s": paired, "trade_s": trading, "late": late,
        "unread": unread,
        "per_trade_cpu": per_trade, "process_cpu": process_total,
        "probe": statistics.median(probes) if probes else float("nan"), "unowned_cpu": unowned,
        "max_load_ratio": max(per_own) / mean_per_own,
        "p50_load_ratio": statistics.median(per_own) / mean_per_own,
        "bytes_per_trade": sum(x["bytes_out"] for x in nodes) / total_trades,
        "requests_per_trade": sum(x["requests_out"] for x in nodes) / total_trades,
        "ledger_per_trade": sum(x["ledger"] for x in nodes) / sum(own.values()),
        "store_per_trade": sum(x["store"] for x in nodes) / sum(own.values()),
        "nodes": nodes, "edge_list": edges,
    }


# -- pictures ------------------------------------------------------------------------


def plot(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no pictures; pip install 'usagi-p2p[bench]')")
        return []
    out.mkdir(parents=True, exist_ok=True)
    made = []
    base = cost(runs[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in runs]
    ax.plot(ns, [cost(r) for r in runs], "o-", label="CPU per trade, in probes")
    ax.plot(ns, [r["per_trade_all"] / runs[0]["per_trade_all"] * base for r in runs], "x:",
            color="0.5", label="raw CPU seconds, scaled to N=10")
    ax.axhspan(base * 0.9, base * 1.1, color="green", alpha=0.12,
               label=f"±10 % of N={runs[0]['n']}")
    ax.set_xscale("log")
    ax.set_xlabel("companies in the mesh (N)")
    ax.set_ylabel("CPU per trade, both parties (probes)")
    ax.set_ylim(0, max(cost(r) for r in runs) * 1.4)
    ax.set_title("Per-trade cost against the size of the network")
    for r in runs:
        ax.annotate(f"{cost(r) / base:.2f}x", (r["n"], cost(r)),
                    textcoords="offset points", xytext=(0, 8), ha="center")
    ax.legend(loc="lower right")
    fig.tight_layout()
    made.append(out / "per-trade-cost.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)

    big = runs[-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    own = [x["own"] for x in big["nodes"]]
    mean = sum(x["cpu"] for x in big["nodes"]) / sum(own)
    axes[0].scatter(own, [x["cpu"] for x in big["nodes"]], s=8, alpha=0.6)
    top = max(own)
    axes[0].plot([0, top], [0, top * mean], "r--", lw=1, label="network mean CPU per own trade")
    axes[0].set_xlabel("the node's own trades")
    axes[0].set_ylabel("the node's CPU (s)")
    axes[0].set_title(f"N={big['n']}: each node's CPU")
    axes[0].legend()
    bytes_mean = sum(x["bytes_in"] + x["bytes_out"] for x in big["nodes"]) / sum(own)
    axes[1].scatter(own, [(x["bytes_in"] + x["bytes_out"]) / 1e6 for x in big["nodes"]],
                    s=8, alpha=0.6, color="tab:orange")
    axes[1].plot([0, top], [0, top * bytes_mean / 1e6], "r--", lw=1)
    axes[1].set_xlabel("the node's own trades")
    axes[1].set_ylabel("bytes in + out (MB)")
    axes[1].set_title(f"N={big['n']}: each node's traffic")
    fig.tight_layout()
    made.append(out / "node-load.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)

    made.append(plot_graph(plt, big, out / "partner-graph.png"))
    return made


def plot_graph(plt: Any, run: dict[str, Any], path: Path) -> Path:
    """The partner graph, laid out by a few hundred steps of a spring model."""
    import numpy as np

    n, edges = run["n"], np.array(run["edge_list"])
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(n, 2))
    degree = np.bincount(edges.ravel(), minlength=n)
    k = 1 / np.sqrt(n)
    for step in range(300):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.linalg.norm(delta, axis=2) + 1e-9
        force = (delta / dist[..., None] * (k * k / dist)[..., None]).sum(axis=1)
        d = pos[edges[:, 0]] - pos[edges[:, 1]]
        length = np.linalg.norm(d, axis=1)[:, None] + 1e-9
        pull = d / length * (length * length / k)
        np.add.at(force, edges[:, 0], -pull)
        np.add.at(force, edges[:, 1], pull)
        temp = 0.1 * (1 - step / 300) + 0.002
        norm = np.linalg.norm(force, axis=1)[:, None] + 1e-9
        pos += force / norm * np.minimum(norm, temp)
    fig, ax = plt.subplots(figsize=(7, 7))
    for a, b in edges:
        ax.plot(*zip(pos[a], pos[b], strict=True), color="0.75", lw=0.3, zorder=1)
    ax.scatter(pos[:, 0], pos[:, 1], s=4 + degree * 2.0, c=degree, cmap="viridis", zorder=2)
    ax.set_title(f"The partner graph, N={n}: {len(edges)} pairs, mean degree "
                 f"{2 * len(edges) / n:.1f}, largest hub {degree.max()} partners")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cost(run: dict[str, Any]) -> float:
    """A run's CPU per trade in probes (Worker._probe): what the same work costs on
    this machine's CPU at the time of the run, to compare runs on a busy host."""
    return float(run["per_trade_all"] / run["probe"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100],
                        help="mesh sizes (the first is the baseline); default 10 100")
    parser.add_argument("--procs", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="trade threads per edge")
    parser.add_argument("--seconds", type=float, default=None,
                        help="over how long each edge's threads are spread, the same for "
                             f"every N of the run (default: {SECONDS_PER_COMPANY} s per "
                             "company of the largest N, at least 30 s)")
    parser.add_argument("--no-freeze", dest="freeze", action="store_false",
                        help="leave what setup made in the collector's generations")
    parser.add_argument("--idle", type=float, default=6.0,
                        help="seconds of the paired nodes idle, measured before trading")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plots", type=Path, default=None,
                        help="write the PNGs here (docs/scale)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    raise_open_files()
    seconds = args.seconds or max(30.0, SECONDS_PER_COMPANY * max(args.n))
    runs = []
    for n in args.n:
        r = run_mesh(n, args.procs, args.threads, seconds, args.seed, args.freeze, args.idle)
        runs.append(r)
        base = runs[0]
        print(f"  N={n:>5}: {r['edges']} pairs (largest hub {r['max_degree']}), "
              f"{r['trades']} trades = {r['docs']} documents in {r['trade_s']:.1f} s "
              f"(start {r['start_s']:.1f} s, pairing {r['pair_s']:.1f} s, "
              f"{r['late']} notices still pending then, {r['unread']} bytes of answers "
              f"unread by clients that gave up); "
              f"CPU per trade {r['per_trade_all'] * 1e3:.1f} ms = {cost(r):.0f} probes "
              f"({cost(r) / cost(base):.2f}x of N={base['n']}; "
              f"raw CPU {r['per_trade_all'] / base['per_trade_all']:.2f}x, probe "
              f"{r['probe'] * 1e6:.0f} us; "
              f"process total {r['process_cpu'] / r['trades'] * 1e3:.1f} ms, "
              f"{r['unowned_cpu'] / r['process_cpu']:.0%} owned by no node), "
              f"{r['bytes_per_trade'] / 1e3:.1f} kB and {r['requests_per_trade']:.1f} requests "
              f"per trade, ledger +{r['ledger_per_trade'] / 1e3:.1f} kB and store "
              f"+{r['store_per_trade'] / 1e3:.1f} kB per own trade; node CPU per own trade: "
              f"median {r['p50_load_ratio']:.2f}x, max {r['max_load_ratio']:.2f}x of the mean "
              f"(less the idle rate over the window: max {r['max_busy_ratio']:.2f}x)",
              flush=True)
        per = r["trades"]
        events = ", ".join(f"{k} {v / per:.3f}" for k, v in sorted(r["events"].items()))
        print(f"         trading window {r['window_s']:.1f} s for {seconds:.0f} s of trades, "
              f"the mesh's demand {r['demand']:.2f} of {os.cpu_count()} cores, load average "
              f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}; CPU per trade {r['per_trade_all'] * 1e3:.1f} "
              f"ms = nodes {r['per_trade_cpu'] * 1e3:.1f} (idle "
              f"{r['idle_rate'] * 1e3:.2f} ms per node-second: {r['idle_share']:.0%} of it) "
              f"+ collector {r['gc_cpu'] / per * 1e3:.1f}; WAL files {r['wal_mean'] / 2**20:.1f} "
              f"MiB a node (max {r['wal_max'] / 2**20:.1f}), sizes read in {r['sizes_s']:.1f} s"
              f"{'' if r['freeze'] else ' (not frozen)'}; per trade: {events or 'no refusals or retries'}",
              flush=True)
        for x in r["worst"]:
            print(f"         node {x['id']}: {x['load']:.2f}x the mean per own trade, "
                  f"{x['degree']} partners, {x['own']} trades, CPU {x['cpu']:.2f} s, "
                  f"requests {x['requests_in']} in / {x['requests_out']} out, "
                  f"{x['events'] or 'no refusals or retries'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items()} for r in runs]))
    if args.plots:
        for path in plot(runs, args.plots):
            print(f"  wrote {path}")
    last = runs[-1]
    print(f"mesh: N={last['n']}, per-trade cost "
          f"{cost(last) / cost(runs[0]):.2f}x of N={runs[0]['n']}, "
          f"max node load / own trades {last['max_load_ratio']:.2f}x")


if __name__ == "__main__":
    main()
