"""Hypothesis-driven fuzzing of every decoder entry point (docs/reliability.md, "Fuzzing").

Targets: ``kernel.dagcbor.decode``, ``kernel._envelope.open_envelope`` and
``open_plaintext``, ``kernel._messages.open_notice`` and ``open_ack``,
``ipfs.car.CARParser`` (fed in random chunks, then ``finish``),
``usagi_p2p.node.invitation.parse_invitation`` (text and bytes) and the HTTP body
handler ``Node.receive`` of an in-process node with one partner.

Inputs are mutations of valid seeds (bit flips, truncations, splices with
another seed, length-byte bumps, deleted and duplicated ranges, stacked up
to four deep) plus plain random bytes. Seeds: structures made here with
fixed keys, the 128 DAG-CBOR files of ``../shared/fixtures/ipld-codec-fixtures``
and the CAR files of ``../shared/fixtures/car`` when present.

The contract under test: every input either decodes or raises a typed
``UsagiError``; anything else (IndexError, RecursionError, MemoryError, ...)
is a failure, shrunk by Hypothesis and printed. Peak RSS of the process is
reported at the end, and a target fails if it pushes RSS over ``--max-rss``.

    python bench/fuzz.py [--inputs 100000] [--only dagcbor,car] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ipfs.car import CARParser, CARWriter  # noqa: E402
from kernel import _envelope as kenvelope  # noqa: E402
from kernel import dagcbor  # noqa: E402
from kernel._identity import Identity  # noqa: E402
from kernel._messages import make_ack, make_notice, open_ack, open_notice  # noqa: E402
from kernel._rotation import make_rotation, open_rotation  # noqa: E402
from kernel.cid import CID  # noqa: E402
from kernel.errors import UsagiError  # noqa: E402
from usagi_p2p.node.invitation import make_invitation, parse_invitation  # noqa: E402

SHARED = ROOT.parent / "shared" / "fixtures"
NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
SELLER = Identity(bytes(range(32)))
BUYER = Identity(bytes(range(1, 33)))
MAX_INPUT = 1 << 16  # random inputs up to 64 KiB; mutated seeds may be larger


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- seeds ----------------------------------------------------------------------------


def _document(i: int = 0) -> dict[str, Any]:
    return {"v": 1, "kind": "order", "from": SELLER.did, "to": BUYER.did, "ref": f"PO-{i}",
            "issued_at": "2026-11-22T05:00:00Z", "currency": "JPY", "note": "納品は平日午前",
            "lines": [{"text": f"M6x{20 + j} SUS304 hex bolt", "qty": "500", "unit": "pcs",
                       "unit_price": "12.50"} for j in range(3)]}


@dataclass
class Seeds:
    blocks: list[bytes] = field(default_factory=list)
    notices: list[bytes] = field(default_factory=list)
    acks: list[bytes] = field(default_factory=list)
    cbor: list[bytes] = field(default_factory=list)
    cars: list[bytes] = field(default_factory=list)
    invitations: list[bytes] = field(default_factory=list)
    batches: list[bytes] = field(default_factory=list)
    rotations: list[bytes] = field(default_factory=list)


def make_seeds() -> Seeds:
    s = Seeds()
    for i in range(4):
        sealed = kenvelope.seal(_document(i), SELLER)
        notice = make_notice(SELLER, sealed.cid, BUYER.did, NOW, nonce=bytes([i]) * 16)
        s.blocks.append(sealed.block)
        s.notices.append(notice)
        s.acks.append(make_ack(BUYER, cid=sealed.cid, to=SELLER.did, nonce=bytes([i]) * 16,
                               status="received", at=NOW, digest=sealed.digest))
        s.batches.append(dagcbor.encode({"notices": [notice], "blocks": [sealed.block]}))
    s.acks.append(make_ack(BUYER, cid=CID.for_block(s.blocks[0]), to=SELLER.did, nonce=b"\x09" * 16,
                           status="rejected", at=NOW, reason="decryption_failed"))
    s.batches.append(dagcbor.encode({"notices": s.notices}))
    for i in range(2):
        s.rotations.append(make_rotation(SELLER, Identity(bytes([40 + i]) * 32), NOW,
                                         NOW + timedelta(days=30 * (i + 1))))
    s.cbor = [dagcbor.encode(_document()), *s.blocks[:1], *s.notices[:1], *s.acks[:1],
              *s.rotations[:1]]
    fixtures = SHARED / "ipld-codec-fixtures" / "fixtures"
    if fixtures.is_dir():
        s.cbor += [p.read_bytes() for p in sorted(fixtures.glob("*/*.dag-cbor"))
                   if p.stat().st_size <= MAX_INPUT]
    for intro in ("invitation", "introduction"):
        s.invitations.append(make_invitation(SELLER, "Kanto Machine Tools", "http://127.0.0.1:8470",
                                             NOW, type=intro, nonce=b"\x05" * 16).raw)
    import io

    buf = io.BytesIO()
    writer = CARWriter(buf, [CID.for_block(s.blocks[0])])
    for block in s.blocks:
        writer.write_block(block)
    s.cars.append(buf.getvalue())
    if (SHARED / "car").is_dir():
        # The ~480 KB Filecoin samples are left to the reader tests: as fuzz seeds
        # every mutation copies half a megabyte, and Hypothesis keeps the inputs
        # it shrinks, so the harness (not the parser) grew past a gigabyte.
        s.cars += [p.read_bytes() for p in sorted((SHARED / "car").rglob("*.car"))
                   if p.stat().st_size <= 200_000]
    return s


# -- mutations ----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed with 1-4 stacked mutations: flip, truncate, splice, bump, delete, duplicate."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "bump", "delete", "dup", "byte"]))
        n = len(data)
        at = draw(st.integers(0, max(0, n - 1)))
        if op == "flip" and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(corpus))
            start = draw(st.integers(0, max(0, len(other) - 1)))
            data[at:at + draw(st.integers(0, 64))] = other[start:start + draw(st.integers(1, 256))]
        elif op == "bump" and n:
            # A CBOR head: bump the length/argument by a little or a lot, the
            # classic way to make a parser over-read or over-allocate.
            data[at] = (data[at] + draw(st.sampled_from([1, -1, 8, 24, 0x1f]))) & 0xFF
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 32))]
        elif op == "dup":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def inputs(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(corpus), mutated(corpus), mutated(corpus),
                     st.binary(max_size=MAX_INPUT))


# -- targets ------------------------------------------------------------------------


class Target:
    """One decoder entry point: ``check(data)`` returns normally or raises UsagiError."""

    def __init__(self, name: str, corpus: list[bytes], check: Callable[[bytes], None]) -> None:
        self.name, self.corpus, self.check = name, corpus, check


def _car_check(data: bytes) -> None:
    parser = CARParser()
    rng = random.Random(len(data))  # chunking varies with the input, reproducibly
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 7, 64, 4096, len(data)])
        parser.feed(data[pos:pos + step])
        pos += step
    parser.finish()


def _invitation_check(data: bytes) -> None:
    import base64

    # The pasted text forms first (a typed refusal of one must not hide the
    # others): the prefixed base64url of the bytes, and the bytes as text.
    for text in ("usagi1:" + base64.urlsafe_b64encode(data).decode().rstrip("="),
                 data.decode("latin-1")):
        try:
            parse_invitation(text, now=NOW)
        except UsagiError:
            pass
    parse_invitation(data, now=NOW)


def _codec_differential(data: bytes) -> None:
    """The C codec against the cbor2 reference: same accept/refuse, same value, same bytes."""
    try:
        ref: Any = ("ok", dagcbor.reference_decode(data))
    except UsagiError as exc:
        ref = ("error", exc)
    if dagcbor.IMPLEMENTATION != "c":
        if ref[0] == "error":
            raise ref[1]
        return
    try:
        ours: Any = ("ok", dagcbor.decode(data))
    except UsagiError as exc:
        ours = ("error", exc)
    if ref[0] != ours[0]:
        raise AssertionError(f"reference {ref!r} but C {ours!r} for {data.hex()}")
    if ref[0] == "error":
        raise ref[1]
    if dagcbor.encode(ours[1]) != data or ours[1] != ref[1]:
        raise AssertionError(f"C and reference values or bytes differ for {data.hex()}")


def kernel_targets(seeds: Seeds) -> list[Target]:
    def open_checked(data: bytes) -> None:
        # With the CID of the mutated bytes, so the check goes past the hash.
        kenvelope.open_envelope(data, BUYER, CID.for_block(data))

    return [
        Target("dagcbor.decode", seeds.cbor + seeds.blocks + seeds.batches, lambda d: dagcbor.decode(d)),
        Target("dagcbor.c-vs-reference", seeds.cbor + seeds.blocks + seeds.batches, _codec_differential),
        Target("envelope.open", seeds.blocks, open_checked),
        Target("envelope.open_plaintext", seeds.blocks, lambda d: kenvelope.open_plaintext(d, BUYER)),
        Target("messages.open_notice", seeds.notices,
               lambda d: open_notice(d, me=BUYER.did, now=NOW)),
        Target("messages.open_ack", seeds.acks, lambda d: open_ack(d)),
        Target("rotation.open_rotation", seeds.rotations, lambda d: open_rotation(d)),
        Target("car.CARParser", seeds.cars, _car_check),
        Target("invitation.parse_invitation", seeds.invitations, _invitation_check),
    ]


class ReceiveTarget:
    """``Node.receive`` on an in-process node whose one partner is SELLER.

    The node lives in a temporary home and its own event loop; its clock is
    fixed at NOW so seeded notices stay inside the time window however long
    the run takes. The partner's endpoint is a closed loopback port, so a
    notice whose block is not pushed costs one refused connection.
    """

    def __init__(self, seeds: Seeds) -> None:
        self.seeds = seeds
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory(prefix="usagi-fuzz-")
        self.node = self.loop.run_until_complete(self._open())

    async def _open(self) -> Any:
        from usagi_p2p.node.home import Home
        from usagi_p2p.node.node import Node

        home = Home(Path(self.tmp.name) / "osaka")
        home.create("Osaka Precision", None, seed=bytes(range(1, 33)), port=9)
        node = Node.load(home, None, clock=lambda: NOW.timestamp())
        await node.open()
        await node.ledger.add_partner(SELLER.did, "Kanto", "http://127.0.0.1:9", None)
        return node

    def check(self, data: bytes) -> None:
        self.loop.run_until_complete(self.node.receive(data))

    def close(self) -> None:
        self.loop.run_until_complete(self.node.close())
        self.loop.close()
        self.tmp.cleanup()


# -- the runner -----------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    inputs: int
    seconds: float
    accepted: int
    failure: str | None
    rss_mb: float

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def fuzz(target: Target, n: int, rng_seed: int = 0, max_rss_mb: float = 1024.0) -> Outcome:
    """Run ``n`` Hypothesis inputs through ``target``; the first untyped exception fails."""
    count = {"inputs": 0, "accepted": 0}
    # Over the memory bound, the remaining inputs are skipped and the run fails
    # after Hypothesis returns: an exception raised here would depend on when
    # the bound was crossed, and Hypothesis would report it as flaky.
    over: list[float] = []

    @seed(rng_seed)
    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink], print_blob=True)
    @given(inputs(target.corpus))
    def run(data: bytes) -> None:
        if over:
            return
        count["inputs"] += 1
        try:
            target.check(data)
            count["accepted"] += 1
        except UsagiError:
            pass  # the contract: a typed error
        if count["inputs"] % 1000 == 0 and (rss := vm_rss_mb()) > max_rss_mb:
            over.append(rss)

    start = time.perf_counter()
    failure = None
    try:
        run()
    except Exception as exc:  # noqa: BLE001 (reported, not hidden: this is the finding)
        failure = f"{type(exc).__name__}: {exc}"[:2000]
    if failure is None and over:
        failure = f"MemoryError: RSS {over[0]:.0f} MB over the {max_rss_mb:.0f} MB bound"
    return Outcome(target.name, count["inputs"], time.perf_counter() - start, count["accepted"],
                   failure, vm_hwm_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--only", default="", help="comma-separated substrings of target names")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--max-rss", type=float, default=1024.0, help="MB")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        sys.exit(run_children(args))
    seeds = make_seeds()
    receive = ReceiveTarget(seeds)
    targets = [*kernel_targets(seeds), Target("Node.receive", seeds.batches, receive.check)]
    if args.child:  # one exact name ("envelope.open" is also a prefix of another target)
        targets = [t for t in targets if t.name == args.only]
    elif args.only:
        targets = [t for t in targets if any(k in t.name for k in args.only.split(","))]
    outcomes = []
    try:
        for target in targets:
            out = fuzz(target, args.inputs, args.seed, args.max_rss)
            outcomes.append(out)
            print(f"{out.name:28s} {out.inputs:8d} inputs {out.rate:8.0f}/s accepted {out.accepted:6d} "
                  f"peak RSS {out.rss_mb:5.0f} MB  {'FAIL ' + out.failure if out.failure else 'ok'}",
                  flush=True)
    finally:
        receive.close()
    failed = [o for o in outcomes if o.failure]
    total = sum(o.inputs for o in outcomes)
    print(f"fuzz: {len(outcomes)} targets, {total} inputs, {len(failed)} failing, "
          f"peak RSS {vm_hwm_mb():.0f} MB")
    sys.exit(1 if failed else 0)


TARGET_NAMES = ("dagcbor.decode", "dagcbor.c-vs-reference", "envelope.open", "envelope.open_plaintext",
                "messages.open_notice", "messages.open_ack", "rotation.open_rotation", "car.CARParser",
                "invitation.parse_invitation", "Node.receive")


def run_children(args: argparse.Namespace) -> int:
    """Each target in its own process: its peak RSS is its own, not the last one's."""
    names = [n for n in TARGET_NAMES
             if not args.only or any(k in n for k in args.only.split(","))]
    lines, failed, total = [], 0, 0
    for name in names:
        proc = subprocess.run(  # noqa: S603 (this script, our interpreter)
            [sys.executable, __file__, "--child", "--only", name, "--inputs", str(args.inputs),
             "--seed", str(args.seed), "--max-rss", str(args.max_rss)],
            capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(name)), None)
        if line is None:
            line = f"{name:28s} FAIL: the child exited {proc.returncode}: {proc.stderr[-500:]}"
        print(line, flush=True)
        lines.append(line)
        failed += proc.returncode != 0
        total += int(line.split()[1]) if line.split()[1].isdigit() else 0
    print(f"fuzz: {len(names)} targets, {total} inputs, {failed} failing, each in its own process")
    return 1 if failed else 0


if __name__ == "__main__":
    main()
