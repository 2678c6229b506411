"""Disk flood: a paired partner sends large valid documents as fast as a node takes them
(docs/reliability.md, "Disk flood"; issue 14, finding 8).

The victim is a real ``usagi serve`` child process on 127.0.0.1. The flooder
is a real node in this process with its own key, paired with the victim, and
serving its peer API (its gateway hands out the blocks). It seals D valid
orders of ~960 KiB each (the block just under the 1 MiB limit), then, for S
seconds, POSTs batches of 255 freshly signed notices for the documents not yet
taken, two batches at a time, no blocks pushed: the victim fetches each block
from the flooder's gateway, as in the report of the finding. It ignores 429
and ``Retry-After`` (an honest node would wait).

The same victim (one home, copied before either run) is flooded twice: once
with quotas out of the way (2^62 documents and bytes: what a node without
quotas did) and once with the default quota (100,000 documents and 1 GiB per
UTC day, docs/spec.md section 12; ``--quota-mib`` sets another byte quota for
the flooder). Printed: the size of the victim's home folder over time in
both runs, what was stored, the answers the flooder got, and the victim's
peak RSS.

    python bench/flood.py [--seconds 40] [--docs 1200] [--quota-mib 1024] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kernel import dagcbor  # noqa: E402
from kernel._messages import make_notice, open_ack  # noqa: E402
from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import NOTICES_PATH, Node  # noqa: E402
from usagi_p2p.peer.app import make_app  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from faults import Child, make_home, query, vm_hwm_mb  # noqa: E402

MB = 1_000_000
BATCH = 255
IN_FLIGHT = 2
LINE = "M6x20 SUS304 hex bolt DIN 933, drawing rev. C, " * 84
UNLIMITED = {"quota_docs": 1 << 62, "quota_bytes": 1 << 62}


def big(i: int) -> dict[str, Any]:
    """A valid order of ~930 KiB signed (240 lines of 3,990 characters)."""
    return {"ref": f"FLOOD-{i:05d}", "lines": [{"text": f"{i}-{j} {LINE}"[:3990]}
                                               for j in range(240)]}


def home_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def flood(flooder: Node, url: str, victim_did: str, cids: list[Any], seconds: float,
                home: Path) -> dict[str, Any]:
    """POST batches of fresh notices for the documents not yet taken, for ``seconds``."""
    taken: set[Any] = set()
    answers: dict[str, int] = {}
    retry_after: list[int] = []
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    stop = asyncio.Event()
    cursor = 0

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - start, home_size(home)))
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
        samples.append((time.monotonic() - start, home_size(home)))

    inflight: set[Any] = set()

    def next_batch() -> list[Any]:
        # Never a document that the other batch in flight carries: a document
        # in two batches at once is stored once but counted by both.
        nonlocal cursor
        left = [c for c in cids if c not in taken and c not in inflight]
        if not left:
            return []
        cursor %= len(left)
        batch = (left[cursor:] + left[:cursor])[:BATCH]
        cursor += BATCH
        inflight.update(batch)
        return batch

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() - start < seconds:
            batch = next_batch()
            if not batch:
                return
            now = flooder.now()
            body = dagcbor.encode({"notices": [make_notice(flooder.identity, cid, victim_did, now)
                                               for cid in batch]})
            try:
                async with session.post(url + NOTICES_PATH, data=body,
                                        headers={"Content-Type": "application/cbor"},
                                        timeout=aiohttp.ClientTimeout(total=300)) as resp:
                    payload = await resp.read()
                    key = str(resp.status)
                    if resp.status == 200:
                        for raw in dagcbor.decode(payload)["acks"]:
                            ack = open_ack(raw)
                            if ack.status == "received":
                                taken.add(ack.cid)
                    elif resp.status == 429:
                        retry_after.append(int(resp.headers.get("Retry-After", "0")))
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            inflight.difference_update(batch)
            answers[key] = answers.get(key, 0) + 1

    sampler = asyncio.create_task(sample())
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(IN_FLIGHT)))
    elapsed = time.monotonic() - start
    stop.set()
    await sampler
    return {"taken": len(taken), "answers": answers, "samples": samples, "seconds": elapsed,
            "retry_after": (min(retry_after), max(retry_after)) if retry_after else None}


async def run(root: Path, docs: int, seconds: float, quota: int) -> dict[str, Any]:
    base = make_home(root / "osaka", "Osaka Precision")
    flooder_home = make_home(root / "evil", "Evil Trading")
    victim = Child(base)
    flooder = Node.load(flooder_home, None)
    await flooder.open()
    runner = web.AppRunner(make_app(flooder), access_log=None, handle_signals=False)
    results: dict[str, Any] = {}
    try:
        # The flooder's peer API (its gateway) without its delivery loop: it
        # sends what this harness decides.
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", flooder.config.listen_port).start()
        victim.start()
        url = base.load_config().endpoint
        async with Node.load(base, None) as inviter:
            invitation = await inviter.invite()
            victim_did = inviter.did
        await flooder.add_partner(invitation.text())
        victim.stop()
        t0 = time.monotonic()
        cids = []
        for i in range(0, docs, 20):
            sent = await flooder.send_many([("order", "Osaka", big(j), None)
                                            for j in range(i, min(docs, i + 20))])
            cids += [s.cid for s in sent]
        sealed_s = time.monotonic() - t0
        limited = {} if quota == 1 << 30 else {"quota_bytes": quota}
        for label, config in (("no quota", UNLIMITED), ("quota", limited)):
            home = Home(root / label.replace(" ", "-"))
            shutil.copytree(base.path, home.path)
            (home.path / "serve.json").unlink(missing_ok=True)
            if config:
                data = home.load_config()
                for key, value in config.items():
                    setattr(data, key, value)
                home.save_config(data)
            child = Child(home)
            child.start()
            try:
                before = home_size(home.path)
                result = await flood(flooder, url, victim_did, cids, seconds, home.path)
                result["rss_mb"] = vm_hwm_mb(child.pid)
            finally:
                child.stop()
            result["before"] = before
            result["stored"] = query(home.ledger_path, "SELECT count(*) FROM documents")[0][0]
            usage = query(home.ledger_path, "SELECT docs, bytes FROM quota_usage")
            result["counted"] = usage[0] if usage else (0, 0)
            result["after"] = home_size(home.path)
            results[label] = result
            shutil.rmtree(home.path, ignore_errors=True)
        results["sealed_s"] = sealed_s
    finally:
        victim.stop()
        await runner.cleanup()
        await flooder.close()
    return results


def _at(samples: list[tuple[float, int]], t: float) -> int | None:
    """The home size sampled last at or before ``t`` (None after the run ended)."""
    if t > samples[-1][0] + 0.5:
        return None
    return max((s for s in samples if s[0] <= t), default=samples[0])[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="flood for this long")
    parser.add_argument("--docs", type=int, default=1200, help="documents the flooder seals")
    parser.add_argument("--quota-mib", type=int, default=1024,
                        help="the flooder's byte quota in MiB (default: the node's default, 1024)")
    parser.add_argument("--quick", action="store_true",
                        help="300 documents, 15 s, a 256 MiB quota")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.seconds, args.quota_mib = 300, 15.0, 256
    quota = args.quota_mib << 20
    root = Path(tempfile.mkdtemp(prefix="usagi-flood-"))
    try:
        r = asyncio.run(run(root, args.docs, args.seconds, quota))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    runs = ("no quota", "quota")
    name = "default quota" if quota == 1 << 30 else f"quota {args.quota_mib} MiB"
    print(f"flooder: {args.docs} documents of ~960 KiB sealed in {r['sealed_s']:.0f} s; "
          f"batches of {BATCH} notices, {IN_FLIGHT} in flight, for up to {args.seconds:.0f} s")
    print(f"t (s) | home, no quota (MB) | home, {name} (MB)")
    print("------|---------------------|" + "-" * (len(name) + 12))
    step = max(1, round(args.seconds / 20))
    for t in range(0, int(args.seconds) + step, step):
        cells = [_at(r[k]["samples"], t) for k in runs]
        print(f"{t:5d} | " + " | ".join(f"{c / MB:19.0f}" if c is not None else f"{'(done)':>19}"
                                       for c in cells))
    ok = True
    for label in runs:
        x = r[label]
        sizes = [s for _, s in x["samples"]]
        title = name if label == "quota" else label
        print(f"{title}: home {x['before'] / MB:.1f} -> {x['after'] / MB:.0f} MB in "
              f"{x['seconds']:.0f} s; {x['stored']} documents stored ({x['counted'][1] / MB:.0f} MB "
              f"counted); answers {x['answers']}"
              + (f" (Retry-After {x['retry_after'][0]}-{x['retry_after'][1]} s)"
                 if x["retry_after"] else "")
              + f"; victim peak RSS {x['rss_mb']:.0f} MB; "
              f"largest home {max(sizes) / MB:.0f} MB")
    q = r["quota"]
    growth = q["after"] - q["before"]
    free = r["no quota"]
    print(f"flood: without a quota the home grew {(free['after'] - free['before']) / MB:.0f} MB; "
          f"with the {name} it stopped at +{growth / MB:.0f} MB "
          f"({quota / MB:.0f} MB of blocks + signed documents allowed, "
          f"{q['counted'][1] / MB:.0f} MB counted)")
    # The quota counts blocks + signed documents; the files add SQLite pages,
    # indexes and the WAL. More than twice over is a failure.
    if q["counted"][1] > quota or growth > 2 * quota:
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
