"""Overload: many partners sending at once to one node (docs/reliability.md, "Overload").

One receiver runs as a real ``usagi serve`` child process on 127.0.0.1. S
sender nodes (default 50), each a real Node with its own home, key, ledger
and block store, run in this process; each queues D documents (default 200)
and runs its delivery loop, all at the same time. The receiver admits
MAX_INFLIGHT (8) batches at once and sheds the rest with 503 +
``Retry-After: 1`` (usagi_p2p/peer/app.py); a sender honours Retry-After and a
503 costs no attempt from its budget (usagi_p2p/node/node.py). We report

* throughput: documents stored and acknowledged per second, end to end;
* 503s: how many batch POSTs were shed (counted from the senders' logs);
* the receiver's peak RSS (VmHWM) and the slowest answer to ``GET /``
  probed every 0.2 s during the storm (does it stay responsive?);
* that every document is delivered exactly once in the end.

Then the internet stranger (docs/reliability.md, "Hostile strangers"), with no
key, against the same kind of receiver child:

* ``slow``: S slow connections from 127.0.0.2..9 (default 240), each
  announcing a body (1 MiB to ``/usagi/v1/notices``, 8000 bytes to
  ``/usagi/v1/introduce``) or a header and trickling it a byte at a time,
  reconnecting whenever the receiver closes or answers; meanwhile one honest
  partner on 127.0.0.1 sends D documents one after another (default 200). We
  report its delivery latency (send to stored ack), p50 and p99, without and
  with the strangers, and what the strangers got (503, 408, closed).
* ``bodies``: R rounds of N strangers (default 3 x 600) from 127.0.0.2..9, each
  POSTing a ~1 MiB body (half with Content-Length, half chunked) to every
  endpoint in turn, all at once. We report the answers (status and code) and
  the receiver's resident memory before, at its peak, and after.

    python bench/overload.py [--senders 50] [--docs 200] [--quick] [--only overload,slow,bodies]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from usagi_p2p.node.node import Node  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from faults import BODY, Child, audit, make_home, query, vm_hwm_mb  # noqa: E402

#: Where strangers come from: loopback addresses other than the honest partner's.
STRANGERS = [f"127.0.0.{i}" for i in range(2, 10)]


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


# -- hostile strangers ---------------------------------------------------------------


def vm_rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process now (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _slow_head(kind: str) -> bytes:
    """What a slow stranger sends before trickling (its kind: what it holds open)."""
    if kind == "notices":
        return (b"POST /usagi/v1/notices HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/cbor\r\nContent-Length: 1048576\r\n\r\n")
    if kind == "introduce":
        return (b"POST /usagi/v1/introduce HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/cbor\r\nContent-Length: 8000\r\n\r\n")
    return b"POST /usagi/v1/notices HTTP/1.1\r\nHost: x\r\nX-Slow: "  # headers never end


async def slow_stranger(port: int, local: str, kind: str, stop: asyncio.Event,
                        tally: Counter[str], every: float = 0.5) -> None:
    """One slow connection after another from ``local``: send the head, then a byte every
    ``every`` seconds until the receiver answers or closes; tally what it did."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(local, 0))
        except OSError:
            tally["connect failed"] += 1
            await asyncio.sleep(every)
            continue
        tally["connections"] += 1
        try:
            writer.write(_slow_head(kind))
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), every)
                except TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
                    continue
                if not data:
                    tally[f"{kind}: closed by the receiver"] += 1
                else:
                    head, _, body = data.partition(b"\r\n\r\n")
                    status = head.split(b" ", 2)[1].decode()
                    try:
                        code = json.loads(body)["error"]
                    except (ValueError, KeyError, TypeError):
                        code = "(not JSON)"
                    tally[f"{kind}: {status} {code}"] += 1
                break
        except OSError:
            tally[f"{kind}: reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(every)  # a stranger told to go away comes back, slowly


@contextlib.asynccontextmanager
async def _receiver_and_sender(root: Path) -> AsyncIterator[tuple[Child, Node, str]]:
    """A receiver ``usagi serve`` child and an honest sender Node paired with it."""
    receiver_home = make_home(root / "receiver", "Osaka Precision")
    receiver = Child(receiver_home)
    sender: Node | None = None
    try:
        receiver.start()
        url = receiver_home.load_config().endpoint
        async with Node.load(receiver_home, None) as inviter:
            invitation = await inviter.invite()
        sender = Node.load(make_home(root / "sender", "Kanto Machine Tools"), None)
        await sender.open()
        await sender.add_partner(invitation.text())
        yield receiver, sender, url
    finally:
        if sender is not None:
            await sender.close()
        receiver.stop()


async def _honest(sender: Node, docs: int, timeout: float, pace: float = 0.0
                  ) -> tuple[list[float], int]:
    """Send ``docs`` documents one after another, one every ``pace`` seconds at most;
    the latency of each (send to stored ack)."""
    latencies: list[float] = []
    missing = 0
    stop = asyncio.Event()
    loop = asyncio.create_task(sender.delivery_loop(stop))
    try:
        for _ in range(docs):
            start = time.perf_counter()
            result = await sender.send("order", "Osaka", BODY)
            if await sender.wait_for_ack(result.cid, timeout=timeout) is None:
                missing += 1
            else:
                latencies.append(time.perf_counter() - start)
            await asyncio.sleep(pace - (time.perf_counter() - start))
    finally:
        stop.set()
        sender.wake.set()
        await loop
    return latencies, missing


async def slow_strangers(port: int, slow: int, stop: asyncio.Event, every: float = 0.5,
                        locals_: list[str] = STRANGERS) -> Counter[str]:
    """``slow`` slow strangers (notice bodies, introduction bodies, headers) until ``stop``."""
    kinds = ["notices", "notices", "introduce", "headers"]
    tally: Counter[str] = Counter()
    await asyncio.gather(*(slow_stranger(port, locals_[i % len(locals_)], kinds[i % len(kinds)],
                                         stop, tally, every) for i in range(slow)))
    return tally


def _strangers_child(port: int, slow: int, every: float) -> None:
    """``--strangers-child``: run the slow strangers until stdin closes; print the tally."""

    async def main() -> Counter[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(slow_strangers(port, slow, stop, every))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        stop.set()
        return await task

    print(json.dumps(asyncio.run(main())))


async def run_slow(root: Path, slow: int = 240, docs: int = 240, every: float = 0.5,
                   pace: float = 0.25, timeout: float = 60.0) -> dict[str, Any]:
    """An honest partner's latency while strangers hold ``slow`` slow connections.

    The honest partner sends one document every ``pace`` seconds (240 take a
    minute: longer than the header and body deadlines, so the strangers are
    cut off and come back during the measurement). The strangers run in a
    process of their own, so that they do not slow the honest sender's event
    loop: what is measured is the receiver.
    """
    async with _receiver_and_sender(root) as (receiver, sender, url):
        port = int(url.rsplit(":", 1)[1])
        quiet, quiet_missing = await _honest(sender, max(20, docs // 4), timeout, pace)
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--strangers-child", str(port), str(slow), str(every),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.sleep(2 * every + 1)  # every stranger connected and trickling
            latencies, missing = await _honest(sender, docs, timeout, pace)
        finally:
            out, _ = await child.communicate(b"")  # closes its stdin: the strangers stop
        tally = json.loads(out or b"{}")
        stored = query(receiver.home.ledger_path, "SELECT count(*) FROM documents")[0][0]
        rss = vm_hwm_mb(receiver.pid)
    return {"slow": slow, "docs": docs, "acked": len(latencies), "missing": missing,
            "stored": stored, "expected": len(quiet) + quiet_missing + docs,
            "quiet_p50_ms": _percentile(quiet, 0.5) * 1000,
            "quiet_p99_ms": _percentile(quiet, 0.99) * 1000,
            "p50_ms": _percentile(latencies, 0.5) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "strangers": tally, "receiver_rss_mb": rss}


#: (method, path or None for a held CID, body cap the receiver applies) per endpoint.
_ENDPOINTS = [("POST", "/usagi/v1/notices"), ("POST", "/usagi/v1/introduce"),
              ("POST", "/usagi/v1/rotate"), ("GET", "/ipfs/{cid}"), ("GET", "/")]


async def _chunks(body: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


async def _one_body(session: aiohttp.ClientSession, url: str, method: str, path: str,
                    body: bytes, chunked: bool, tally: Counter[str]) -> None:
    data: Any = _chunks(body) if chunked else body
    try:
        async with session.request(method, url + path, data=data,
                                   headers={"Content-Type": "application/cbor"},
                                   timeout=aiohttp.ClientTimeout(60)) as resp:
            raw = await resp.read()
            try:
                code = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                code = "(not JSON)"
            tally[f"{method} {path.split('/b', 1)[0]} {resp.status} {code}"] += 1
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tally[f"{method} {path.split('/b', 1)[0]} no answer: {type(exc).__name__}"] += 1


async def run_bodies(root: Path, strangers: int = 600, rounds: int = 3,
                     size: int = 1_000_000) -> dict[str, Any]:
    """Strangers' ~1 MiB bodies on every endpoint at once; the receiver's memory."""
    body = b"\xa1" + bytes(size - 1)  # starts like a CBOR map, then junk
    big = body + bytes(size // 2)  # over the largest cap (1 MiB)
    tally: Counter[str] = Counter()
    async with _receiver_and_sender(root) as (receiver, sender, url):
        # A real block for GET /ipfs/{cid} to name.
        result = await sender.send("order", "Osaka", BODY)
        await sender.deliver_once()
        paths = [p.replace("{cid}", str(result.cid)) for _, p in _ENDPOINTS]
        await asyncio.sleep(0.5)
        before = vm_rss_mb(receiver.pid)
        after_rounds: list[float] = []
        sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, local_addr=(local, 0))) for local in STRANGERS]
        start = time.perf_counter()
        try:
            for _ in range(rounds):
                jobs = []
                for i in range(strangers):
                    method = _ENDPOINTS[i % len(_ENDPOINTS)][0]
                    jobs.append(_one_body(sessions[i % len(sessions)], url, method,
                                          paths[i % len(paths)], big if i % 7 == 0 else body,
                                          chunked=bool(i // len(_ENDPOINTS) % 2), tally=tally))
                await asyncio.gather(*jobs)
                await asyncio.sleep(1.0)
                after_rounds.append(vm_rss_mb(receiver.pid))
        finally:
            for session in sessions:
                await session.close()
        elapsed = time.perf_counter() - start
        peak = vm_hwm_mb(receiver.pid)
        serving = False
        async with aiohttp.ClientSession() as session, session.get(url + "/") as resp:
            serving = resp.status == 200
        ledger = receiver.home.ledger_path
        stored = {table: query(ledger, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
                  for table in ("documents", "partners", "invitations")}
    return {"stored": stored, "strangers": strangers, "rounds": rounds, "requests": strangers * rounds,
            "bytes_sent_mb": strangers * rounds * size / 1e6, "seconds": elapsed,
            "answers": dict(tally), "rss_before_mb": before, "rss_peak_mb": peak,
            "rss_after_mb": after_rounds, "serving_after": serving}


def _overload(args: argparse.Namespace) -> bool:
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
    return r["stored"] == r["docs"] and not (r["lost"] or r["duplicated"] or r["unacked"]
                                             or r["undelivered"] or r["ack_mismatch"])


def _slow(args: argparse.Namespace) -> bool:
    root = Path(tempfile.mkdtemp(prefix="usagi-slow-"))
    try:
        r = asyncio.run(run_slow(root, args.slow, args.honest))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(r)
    print(f"slow strangers: {r['slow']} slow connections from {len(STRANGERS)} addresses; honest "
          f"partner {r['acked']}/{r['docs']} acked, {r['stored']}/{r['expected']} stored; "
          f"latency p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms (quiet: p50 "
          f"{r['quiet_p50_ms']:.1f} ms p99 {r['quiet_p99_ms']:.1f} ms); receiver peak RSS "
          f"{r['receiver_rss_mb']:.0f} MB")
    return r["acked"] == r["docs"] and r["stored"] == r["expected"]


def _bodies(args: argparse.Namespace) -> bool:
    root = Path(tempfile.mkdtemp(prefix="usagi-bodies-"))
    try:
        r = asyncio.run(run_bodies(root, args.strangers, args.rounds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(r)
    after = " / ".join(f"{x:.0f}" for x in r["rss_after_mb"])
    print(f"stranger bodies: {r['rounds']} rounds x {r['strangers']} strangers x ~1 MiB on "
          f"{len(_ENDPOINTS)} endpoints ({r['bytes_sent_mb']:.0f} MB sent in "
          f"{r['seconds']:.0f} s); receiver RSS {r['rss_before_mb']:.0f} MB before, peak "
          f"{r['rss_peak_mb']:.0f} MB, after each round {after} MB; answers {r['answers']}")
    typed = all("no answer" not in k and " 500 " not in k and "(not JSON)" not in k
                for k in r["answers"])
    return typed and r["serving_after"]


def main() -> None:
    if sys.argv[1:2] == ["--strangers-child"]:
        _strangers_child(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--docs", type=int, default=200, help="documents per sender")
    parser.add_argument("--quick", action="store_true",
                        help="20 senders x 50 documents; 60 slow strangers; 1 x 300 bodies")
    parser.add_argument("--slow", type=int, default=240, help="slow stranger connections")
    parser.add_argument("--honest", type=int, default=240,
                        help="documents the honest partner sends among the slow strangers")
    parser.add_argument("--strangers", type=int, default=600, help="stranger bodies per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="overload,slow,bodies")
    args = parser.parse_args()
    if args.quick:
        args.senders, args.docs = 20, 50
        args.slow, args.honest, args.strangers, args.rounds = 60, 40, 300, 1
    runs = {"overload": _overload, "slow": _slow, "bodies": _bodies}
    ok = True
    for name in args.only.split(","):
        ok = runs[name](args) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
