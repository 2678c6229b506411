"""Fault injection: crashes, a partner that is away, a full disk, a hostile network.

Four scenarios (docs/reliability.md shows the figures and the commands):

a. ``sigkill``: both nodes are real ``usagi serve`` processes; N documents are
   queued; the receiver is SIGKILLed at a random point, restarted, then the
   sender is SIGKILLed at a random point and restarted. After recovery we
   count documents lost, duplicated and unacknowledged, and acks whose bytes
   differ between the two ledgers (a document processed twice would show as
   two different acks). Target 0 / 0 / 0 / 0.
b. ``unreachable``: the partner's port is closed; a simulated clock drives the
   outbox: the retries are bounded, the documents become ``undelivered``, and
   they are delivered once the partner returns (automatically while within
   the retry budget, after ``outbox retry`` beyond it).
c. ``diskfull``: the receiver runs as a child process whose file-size limit
   (RLIMIT_FSIZE, set from outside with ``prlimit``) is lowered mid-exchange,
   so every write that would grow a file fails as on a full disk (EFBIG; no
   root, no mount needed). We check the answer the sender gets, that no ack
   exists for a document the receiver has not stored, ``PRAGMA
   integrity_check`` on every database, and delivery after the limit is lifted.
d. ``proxy``: an asyncio TCP proxy on 127.0.0.1 between the nodes that drops,
   delays and truncates connections (request or response side): nothing lost
   or duplicated.

Everything listens on 127.0.0.1; every wait is bounded; child processes are
terminated by pid in ``finally``.

    python bench/faults.py [--quick] [--docs N] [--trials T] [--only a,b,c,d] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import Node  # noqa: E402
from usagi_p2p.peer.service import Service  # noqa: E402

SELLER, BUYER = "Kanto Machine Tools", "Osaka Precision"
BODY: dict[str, Any] = {"ref": "PO-F", "currency": "JPY",
                        "lines": [{"text": "M6x20 SUS304 hex bolt DIN 933", "qty": "500",
                                   "unit": "pcs", "unit_price": "12.50"}]}

# -- small helpers ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_home(path: Path, name: str, **config: Any) -> Home:
    """A node home on a free loopback port; ``config`` overrides config.json fields."""
    home = Home(path)
    home.create(name, None, port=free_port())
    if config:
        data = json.loads(home.config_path.read_text())
        data.update(config)
        home.config_path.write_text(json.dumps(data))
    return home


def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """Read a ledger from outside the node (read-only; WAL lets us while it writes)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return list(conn.execute(sql, args).fetchall())


def scalar(db: Path, sql: str) -> int:
    return int(query(db, sql)[0][0])


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(str(db), timeout=30)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


class Clock:
    """A settable clock for Node(clock=...)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Child:
    """``usagi serve`` on a home, as a real child process."""

    home: Home
    proc: subprocess.Popen[bytes] | None = None
    log: list[Path] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> None:
        (self.home.path / "serve.json").unlink(missing_ok=True)  # stale after a SIGKILL
        log = self.home.path / f"serve-{len(self.log)}.log"
        self.log.append(log)
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "usagi_p2p", "-v", "--home", str(self.home.path), "serve"],
                stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        deadline = time.monotonic() + timeout
        while not (self.home.path / "serve.json").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"usagi serve exited: {log.read_text()[-6000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("usagi serve did not start")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


async def pair_homes(seller: Home, buyer: Home) -> None:
    """The seller invites; the buyer adds it (the seller's serve must be running)."""
    async with Node.load(seller, None) as node:
        invitation = await node.invite()
    async with Node.load(buyer, None) as node:
        await node.add_partner(invitation.text())


async def queue(home: Home, n: int, batch: int = 250, partner: str = "Osaka") -> None:
    async with Node.load(home, None) as node:
        for i in range(0, n, batch):
            await node.send_many([("order", partner, BODY, None)] * min(batch, n - i))


async def kick(home: Home) -> None:
    from usagi_p2p.company.api.client import kick as wake

    await wake(home.path)


def audit(seller: Home, buyer: Home) -> dict[str, int]:
    """Lost, duplicated, unacked and ack-mismatched documents between two ledgers."""
    sent = {r[0] for r in query(seller.ledger_path,
                                "SELECT cid FROM documents WHERE direction = 'out'")}
    received = [r[0] for r in query(buyer.ledger_path,
                                    "SELECT cid FROM documents WHERE direction = 'in'")]
    seller_acks = dict(query(seller.ledger_path, "SELECT cid, raw FROM acks"))
    buyer_acks = dict(query(buyer.ledger_path, "SELECT cid, raw FROM acks"))
    blocks = {r[0] for r in query(buyer.blocks_path, "SELECT cid FROM blocks")}
    delivered = {r[0] for r in query(seller.ledger_path,
                                     "SELECT cid FROM outbox WHERE state = 'delivered'")}
    return {
        "sent": len(sent),
        "lost": len(sent - set(received)) + len(set(received) - blocks),
        "duplicated": len(received) - len(set(received)) + len(set(received) - sent),
        "unacked": len(sent - delivered) + len(sent - set(seller_acks)),
        # An ack held by the sender that the receiver does not hold byte for
        # byte means the receiver acknowledged something twice, differently.
        "ack_mismatch": sum(1 for cid, raw in seller_acks.items() if buyer_acks.get(cid) != raw),
    }


# -- (a) SIGKILL --------------------------------------------------------------


async def sigkill_trial(root: Path, n: int, rng: random.Random, timeout: float = 300.0
                        ) -> dict[str, Any]:
    """One trial: kill the receiver at a random point, then the sender; recover; audit."""
    # Short backoff so a restart is noticed within a second or two; a large
    # budget so the crash itself never turns a document 'undelivered'.
    fast = {"retry_base": 0.05, "retry_cap": 1.0, "max_attempts": 1000}
    seller, buyer = make_home(root / "kanto", SELLER, **fast), make_home(root / "osaka", BUYER, **fast)
    children = {"sender": Child(seller), "receiver": Child(buyer)}
    points: list[int] = []
    received = lambda: scalar(buyer.ledger_path, "SELECT count(*) FROM documents")  # noqa: E731
    try:
        for child in children.values():
            child.start()
        await pair_homes(seller, buyer)
        queuing = asyncio.create_task(queue(seller, n))
        for victim, (low, high) in (("receiver", (0.05, 0.4)), ("sender", (0.1, 0.45))):
            target = min(int(received() + rng.uniform(low, high) * n), n - 1)
            await wait_until(lambda t=target: received() >= t or queuing.done() and  # type: ignore[misc]
                             received() >= n, timeout, f"{target} documents received")
            points.append(received())
            children[victim].kill()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            # In a thread: start() polls until the node is up, and the queuing task
            # in this event loop may be inside a ledger transaction that the
            # restarting node has to wait for (found: a blocked loop held the
            # sender's write lock past the node's 10 s busy timeout).
            await asyncio.to_thread(children[victim].start)
            await kick(seller)
        await queuing
        await kick(seller)
        delivered = lambda: scalar(  # noqa: E731
            seller.ledger_path, "SELECT count(*) FROM outbox WHERE state = 'delivered'")
        await wait_until(lambda: delivered() >= n, timeout, "every document to be acknowledged")
    finally:
        for child in children.values():
            child.stop()
    result: dict[str, Any] = audit(seller, buyer)
    result["killed_at"] = points
    result["integrity"] = all(integrity(db) == "ok" for db in
                              (seller.ledger_path, seller.blocks_path,
                               buyer.ledger_path, buyer.blocks_path))
    return result


async def run_sigkill(n: int, trials: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for t in range(trials):
        root = Path(tempfile.mkdtemp(prefix="usagi-faults-a-"))
        start = time.perf_counter()
        try:
            row = await sigkill_trial(root, n, rng)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        row["trial"] = t + 1
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"  trial {t + 1:2d}: kill receiver at {row['killed_at'][0]:5d}, sender at "
              f"{row['killed_at'][1]:5d} | lost {row['lost']} dup {row['duplicated']} "
              f"unacked {row['unacked']} ack-mismatch {row['ack_mismatch']} "
              f"integrity {'ok' if row['integrity'] else 'BAD'} | {row['seconds']:.1f} s",
              flush=True)
    return rows


# -- (b) the partner away for a long stretch (simulated clock) ----------------


@contextlib.asynccontextmanager
async def in_process_pair(root: Path, clock: Callable[[], float] = time.time
                          ) -> AsyncIterator[tuple[Node, Node, Service]]:
    """Seller and buyer nodes in this process on one clock, paired; the buyer's
    service runs (the seller drives its own delivery)."""
    seller_home, buyer_home = make_home(root / "kanto", SELLER), make_home(root / "osaka", BUYER)
    seller, buyer = Node.load(seller_home, None, clock=clock), Node.load(buyer_home, None, clock=clock)
    await seller.open()
    await buyer.open()
    buyer_service = Service(buyer)
    seller_service = Service(seller)
    try:
        await seller_service.start()
        await buyer_service.start()
        invitation = await seller.invite()
        await buyer.add_partner(invitation.text())
        await seller_service.close()  # the caller drives delivery itself
        yield seller, buyer, buyer_service
    finally:
        await buyer_service.close()
        await seller.close()
        await buyer.close()


async def _round(node: Node, clock: Clock) -> int:
    """Move the clock to when every pending notice is due, and deliver once."""
    pending = await node.ledger.outbox("pending")
    if pending:
        clock.now = max(clock.now, max(r.next_attempt for r in pending))
    return await node.deliver_once()


async def _statuses(node: Node, results: list[Any]) -> tuple[dict[str, int], list[str]]:
    """How many of ``results`` are in each document status, and the reasons given."""
    statuses: dict[str, int] = {}
    reasons: set[str] = set()
    for result in results:
        row = await node.ledger.document(result.cid)
        assert row is not None
        statuses[row.status] = statuses.get(row.status, 0) + 1
        if row.reason:
            reasons.add(row.reason)
    return statuses, sorted(reasons)


async def run_unreachable(root: Path, n: int = 20, outage: float = 3 * 86400.0,
                          max_attempts: int = 8) -> dict[str, Any]:
    """The partner is down for ``outage`` simulated seconds (default three days).

    Both nodes read the same simulated clock, as two real nodes read the same
    real time: when the partner comes back, the days have passed for it too.
    """
    clock = Clock(time.time())
    async with in_process_pair(root, clock) as (seller, buyer, service):
        # Case 1: a short outage, within the retry budget: delivered with no operator.
        await service.close()
        short = await seller.send_many([("order", "Osaka", BODY, None)] * n)
        for _ in range(3):
            await _round(seller, clock)
        await service.start()
        for _ in range(max_attempts):
            if not await seller.ledger.outbox("pending"):
                break
            await _round(seller, clock)
        auto = (await _statuses(seller, short))[0].get("delivered", 0)

        # Case 2: a long outage.
        await service.close()
        seller.max_attempts = max_attempts
        start = clock.now
        long = await seller.send_many([("order", "Osaka", BODY, None)] * n)
        rounds = 0
        # Bounded: more rounds than the budget would show as rounds > max_attempts.
        for _ in range(max_attempts * 4):
            if not await seller.ledger.outbox("pending"):
                break
            await _round(seller, clock)
            rounds += 1
        gave_up_after = clock.now - start
        undelivered = (await _statuses(seller, long))[0].get("undelivered", 0)
        # Still away: nothing more is sent until someone asks.
        clock.now = start + outage
        sent_while_away = await seller.deliver_once()
        # The partner returns; the operator runs 'usagi outbox retry'.
        await service.start()
        requeued = await seller.ledger.retry_undelivered()
        for _ in range(max_attempts):
            if not await seller.ledger.outbox("pending"):
                break
            await _round(seller, clock)
        statuses, reasons = await _statuses(seller, long)
        received = await buyer.ledger.count_documents("in")
    return {"docs": n, "delivered_after_short_outage": auto, "rounds": rounds,
            "max_attempts": max_attempts, "gave_up_after_s": gave_up_after,
            "undelivered": undelivered, "sent_while_away": sent_while_away, "requeued": requeued,
            "delivered_after_retry": statuses.get("delivered", 0), "after_retry": statuses,
            "reason": reasons[0][:200] if reasons else None, "received": received}


# -- (c) disk full under the receiver -------------------------------------------


def set_fsize(pid: int, limit: int) -> None:
    """Lower (or lift, with RLIM_INFINITY) the soft file-size limit of another process.

    A write past the limit fails with EFBIG instead of killing the process:
    Python ignores SIGXFSZ at start-up. SQLite sees a failed write, exactly as
    on a full disk (where the errno would be ENOSPC).
    """
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


async def run_diskfull(root: Path, n: int = 600, timeout: float = 120.0) -> dict[str, Any]:
    fast = {"retry_base": 0.05, "retry_cap": 0.5, "max_attempts": 100_000}
    seller_home = make_home(root / "kanto", SELLER, **fast)
    buyer_home = make_home(root / "osaka", BUYER)
    receiver = Child(buyer_home)
    seller_child = Child(seller_home)
    try:
        receiver.start()
        seller_child.start()
        await pair_homes(seller_home, buyer_home)
        await queue(seller_home, n // 3)
        received = lambda: scalar(buyer_home.ledger_path, "SELECT count(*) FROM documents")  # noqa: E731
        await wait_until(lambda: received() >= n // 3, timeout, "the first third")
        # The disk fills up: no file of the receiver may grow past 64 KiB, and
        # both of its databases are already larger than that.
        set_fsize(receiver.pid, 64 * 1024)
        before = received()
        await queue(seller_home, n - n // 3)
        await kick(seller_home)
        # Let the sender retry against the full disk for a while.
        await wait_until(lambda: bool(query(seller_home.ledger_path,
                         "SELECT count(*) FROM outbox WHERE attempts >= 3")[0][0]),
                         timeout, "the sender to retry three times")
        during = received()
        errors = [r[0] for r in query(seller_home.ledger_path,
                  "SELECT DISTINCT last_error FROM outbox WHERE last_error IS NOT NULL")]
        # Every ack the sender holds must name a document the receiver stored.
        sender_acked = {r[0] for r in query(seller_home.ledger_path, "SELECT cid FROM acks")}
        stored = {r[0] for r in query(buyer_home.ledger_path, "SELECT cid FROM documents")}
        stored_blocks = {r[0] for r in query(buyer_home.blocks_path, "SELECT cid FROM blocks")}
        acked_not_stored = len(sender_acked - stored) + len(sender_acked - stored_blocks)
        alive_during = receiver.proc is not None and receiver.proc.poll() is None
        check_during = {p.name: integrity(p) for p in (buyer_home.ledger_path, buyer_home.blocks_path)}
        # Space comes back.
        set_fsize(receiver.pid, resource.RLIM_INFINITY)
        await kick(seller_home)
        delivered = lambda: scalar(  # noqa: E731
            seller_home.ledger_path, "SELECT count(*) FROM outbox WHERE state = 'delivered'")
        recovered = True
        try:
            await wait_until(lambda: delivered() >= n, timeout, "delivery after the disk frees up")
        except TimeoutError:
            recovered = False
    finally:
        receiver.stop()
        seller_child.stop()
    log = "".join(p.read_text(errors="replace") for p in receiver.log)
    result: dict[str, Any] = audit(seller_home, buyer_home)
    result.update(
        received_before=before, received_during=during - before, acked_not_stored=acked_not_stored,
        receiver_alive=alive_during, recovered=recovered,
        integrity_during=check_during,
        integrity_after={p.name: integrity(p) for p in (buyer_home.ledger_path, buyer_home.blocks_path,
                                                        seller_home.ledger_path)},
        sender_saw=sorted({e.split(":")[0] + ": " + e.split(":", 2)[-1].strip()[:120]
                           for e in errors})[:4],
        receiver_log_errors=sorted({line.strip()[:160] for line in log.splitlines()
                                    if "Error" in line and ":" in line})[:6],
    )
    return result


async def run_ledger_locked(root: Path, n: int = 200, hold: float = 25.0,
                            timeout: float = 120.0) -> dict[str, Any]:
    """The receiver's ledger cannot be written (another process holds its write
    lock, as a careless backup tool would) while its block store can: the
    ledger's own failure path, which a full disk reaches only by chance."""
    fast = {"retry_base": 0.05, "retry_cap": 0.5, "max_attempts": 100_000}
    seller_home = make_home(root / "kanto", SELLER, **fast)
    buyer_home = make_home(root / "osaka", BUYER)
    receiver, sender = Child(buyer_home), Child(seller_home)
    try:
        receiver.start()
        sender.start()
        await pair_homes(seller_home, buyer_home)
        lock = sqlite3.connect(str(buyer_home.ledger_path), timeout=30, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            await queue(seller_home, n)
            await kick(seller_home)
            await asyncio.sleep(hold)
            errors = [r[0] for r in query(seller_home.ledger_path,
                      "SELECT DISTINCT last_error FROM outbox WHERE last_error IS NOT NULL")]
            sender_acked = {r[0] for r in query(seller_home.ledger_path, "SELECT cid FROM acks")}
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        await kick(seller_home)
        delivered = lambda: scalar(  # noqa: E731
            seller_home.ledger_path, "SELECT count(*) FROM outbox WHERE state = 'delivered'")
        recovered = True
        try:
            await wait_until(lambda: delivered() >= n, timeout, "delivery after the lock is gone")
        except TimeoutError:
            recovered = False
    finally:
        receiver.stop()
        sender.stop()
    result: dict[str, Any] = audit(seller_home, buyer_home)
    result.update(acked_while_locked=len(sender_acked), recovered=recovered,
                  sender_saw=sorted({e[:160] for e in errors})[:4],
                  integrity_after={p.name: integrity(p) for p in (buyer_home.ledger_path,
                                                                  buyer_home.blocks_path)})
    return result


# -- (d) a hostile proxy ----------------------------------------------------------


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 that misbehaves on a share of the requests.

    aiohttp keeps connections alive, so faults are chosen per request, not per
    connection: each time the client starts sending after the server has
    answered, a seeded RNG picks one of pass, delay (the request held up to
    ``max_delay`` s), drop (the connection closed before anything is
    forwarded), cut_request (the request forwarded only up to a random byte,
    then both sides aborted) or cut_response (the response cut after a random
    byte). The last is the hard one for the protocol: the receiver has stored
    and acknowledged, and the sender never hears it.
    """

    KINDS = ("pass", "delay", "drop", "cut_request", "cut_response")

    def __init__(self, target_port: int, rng: random.Random, fault_rate: float = 0.5,
                 max_delay: float = 0.3) -> None:
        self.target_port = target_port
        self.rng = rng
        self.fault_rate = fault_rate
        self.max_delay = max_delay
        self.port = 0
        self.counts: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Abort the connections rather than cancel their tasks: asyncio's
        # start_server logs a cancelled handler as an error.
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)
        await self._server.wait_closed()

    def _choose(self) -> str:
        if self.rng.random() >= self.fault_rate:
            return "pass"
        return self.rng.choice(self.KINDS[1:])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        # Shared by both directions: the fault of the current request, and how
        # many response bytes may still pass before a cut_response.
        state: dict[str, Any] = {"new_request": True, "response_budget": None}
        self._writers.add(writer)
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(upstream)
            await asyncio.gather(self._requests(reader, upstream, writer, state),
                                 self._responses(up_reader, writer, upstream, state))
        except (ConnectionError, OSError, TimeoutError, _Cut):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)
            self._tasks.discard(task)

    async def _requests(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                        client: asyncio.StreamWriter, state: dict[str, Any]) -> None:
        while data := await asyncio.wait_for(src.read(65536), timeout=60):
            if state["new_request"]:
                state["new_request"] = False
                kind = self._choose()
                self.counts[kind] += 1
                if kind == "drop":
                    raise _Cut
                if kind == "delay":
                    await asyncio.sleep(self.rng.uniform(0, self.max_delay))
                if kind == "cut_request":
                    dst.write(data[:self.rng.randint(0, len(data) - 1)])
                    await dst.drain()
                    raise _Cut
                if kind == "cut_response":
                    state["response_budget"] = self.rng.randint(0, 2048)
            dst.write(data)
            await dst.drain()
        raise _Cut  # the client closed: close the server side too

    async def _responses(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                         server: asyncio.StreamWriter, state: dict[str, Any]) -> None:
        while data := await asyncio.wait_for(src.read(65536), timeout=60):
            budget = state["response_budget"]
            if budget is not None:
                if len(data) >= budget:
                    dst.write(data[:budget])
                    await dst.drain()
                    raise _Cut
                state["response_budget"] = budget - len(data)
            dst.write(data)
            await dst.drain()
            state["new_request"] = True
        raise _Cut


class _Cut(Exception):
    """Raised inside the proxy to abort both sides of a connection."""


async def run_proxy(root: Path, n: int = 2000, seed: int = 7, fault_rate: float = 0.5,
                    timeout: float = 300.0) -> dict[str, Any]:
    """The seller reaches the buyer only through a FaultyProxy; both in this process."""
    seller_home = make_home(root / "kanto", SELLER)
    buyer_home = make_home(root / "osaka", BUYER)
    seller, buyer = Node.load(seller_home, None), Node.load(buyer_home, None)
    await seller.open()
    await buyer.open()
    # Quick retries and a budget no fault sequence exhausts: the test is
    # about loss and duplication, not about giving up.
    seller.retry_base, seller.retry_cap, seller.max_attempts = 0.02, 0.5, 1_000_000
    buyer_service, seller_service = Service(buyer), Service(seller)
    await buyer_service.start()
    await seller_service.start()
    start = time.perf_counter()
    try:
        invitation = await seller.invite()
        await buyer.add_partner(invitation.text())
        async with FaultyProxy(buyer_service.port, random.Random(seed), fault_rate) as proxy:
            # Every notice (and the gateway fetch, if a block were not pushed)
            # now goes through the proxy.
            await seller.ledger.db.execute("UPDATE partners SET endpoint = ? WHERE did = ?",
                                           (f"http://127.0.0.1:{proxy.port}", buyer.did))
            await seller.ledger.db.commit()
            for i in range(0, n, 200):
                await seller.send_many([("order", "Osaka", BODY, None)] * min(200, n - i))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                counts = await seller.ledger.outbox_counts()
                if counts.get("delivered", 0) >= n:
                    break
                seller.wake.set()
                await asyncio.sleep(0.05)
            faults = dict(proxy.counts)
    finally:
        await seller_service.close()
        await buyer_service.close()
        await seller.close()
        await buyer.close()
    result: dict[str, Any] = audit(seller_home, buyer_home)
    result["connections"] = faults
    result["seconds"] = time.perf_counter() - start
    return result


# -- the command line -----------------------------------------------------------------


def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [" | ".join(k.ljust(widths[k]) for k in keys),
             "-|-".join("-" * widths[k] for k in keys)]
    lines += [" | ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    only = set(args.only.split(","))
    failures: list[str] = []
    if "a" in only:
        print(f"(a) SIGKILL receiver then sender, {args.docs} documents, {args.trials} trials, "
              f"seed {args.seed}", flush=True)
        rows = await run_sigkill(args.docs, args.trials, args.seed)
        print(_table(rows, ["trial", "sent", "killed_at", "lost", "duplicated", "unacked",
                            "ack_mismatch", "integrity"]))
        totals = {k: sum(r[k] for r in rows) for k in ("lost", "duplicated", "unacked", "ack_mismatch")}
        print(f"sigkill: {len(rows)} trials x {args.docs} docs: lost {totals['lost']}, duplicated "
              f"{totals['duplicated']}, unacked {totals['unacked']}, ack mismatch "
              f"{totals['ack_mismatch']}, integrity {'ok' if all(r['integrity'] for r in rows) else 'BAD'}")
        if any(totals.values()) or not all(r["integrity"] for r in rows):
            failures.append("sigkill")
    with tempfile.TemporaryDirectory(prefix="usagi-faults-") as tmp:
        if "b" in only:
            r = await run_unreachable(Path(tmp) / "b")
            print(f"(b) partner away 3 days (simulated clock): {json.dumps(r)}")
            print(f"unreachable: short outage {r['delivered_after_short_outage']}/{r['docs']} delivered "
                  f"automatically; long outage: {r['rounds']} attempts in {r['gave_up_after_s']:.0f} s "
                  f"simulated, {r['undelivered']}/{r['docs']} undelivered, {r['sent_while_away']} sent "
                  f"while away, {r['delivered_after_retry']}/{r['docs']} delivered after 'outbox retry' "
                  f"3 days later ({r['reason']})")
            if r["undelivered"] != r["docs"] or r["rounds"] != r["max_attempts"] or \
                    r["delivered_after_retry"] != r["docs"] or \
                    r["delivered_after_short_outage"] != r["docs"]:
                failures.append("unreachable")
        if "c" in only:
            r = await run_diskfull(Path(tmp) / "c", n=args.diskfull_docs)
            print(f"(c) disk full under the receiver: {json.dumps(r, default=str)}")
            print(f"diskfull: stored during the fault {r['received_during']}, acked-not-stored "
                  f"{r['acked_not_stored']}, integrity {r['integrity_after']}, recovered "
                  f"{r['recovered']}, lost {r['lost']} dup {r['duplicated']} unacked {r['unacked']}")
            if r["acked_not_stored"] or not r["recovered"] or r["lost"] or r["duplicated"] or \
                    any(v != "ok" for v in r["integrity_after"].values()):
                failures.append("diskfull")
        if "c" in only:
            r = await run_ledger_locked(Path(tmp) / "c2")
            print(f"(c2) receiver ledger write-locked: {json.dumps(r)}")
            print(f"ledger-locked: acked while locked {r['acked_while_locked']}, recovered "
                  f"{r['recovered']}, lost {r['lost']} dup {r['duplicated']} unacked {r['unacked']}, "
                  f"integrity {r['integrity_after']}")
            if r["acked_while_locked"] or not r["recovered"] or r["lost"] or r["duplicated"]:
                failures.append("ledger-locked")
        if "d" in only:
            r = await run_proxy(Path(tmp) / "d", n=args.proxy_docs, seed=args.seed)
            print(f"(d) faulty proxy: {json.dumps(r)}")
            print(f"proxy: {r['sent']} docs through {sum(r['connections'].values())} requests "
                  f"({r['connections']}): lost {r['lost']}, duplicated {r['duplicated']}, unacked "
                  f"{r['unacked']}, ack mismatch {r['ack_mismatch']}, {r['seconds']:.1f} s")
            if r["lost"] or r["duplicated"] or r["unacked"] or r["ack_mismatch"]:
                failures.append("proxy")
    print(f"faults: {'FAIL ' + ','.join(failures) if failures else 'all targets met'} "
          f"(peak RSS of this process {vm_hwm_mb():.0f} MB)")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=5000, help="documents per SIGKILL trial")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--proxy-docs", type=int, default=3000)
    parser.add_argument("--diskfull-docs", type=int, default=900)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--only", default="a,b,c,d", help="scenarios to run, e.g. a,d")
    parser.add_argument("--quick", action="store_true", help="500 docs x 3 trials, 500 via the proxy")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.trials, args.proxy_docs, args.diskfull_docs = 500, 3, 500, 300
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
