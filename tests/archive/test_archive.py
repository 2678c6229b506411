"""Archive round trip, opacity, tampering, foreign archives (docs/archive.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipfs.car import CARReader
from kernel._identity import Identity
from kernel.cid import CID
from usagi_p2p.archive.archive import (
    ArchiveError,
    ForeignArchiveError,
    export_archive,
    import_archive,
    verify_archive,
)
from usagi_p2p.node.home import Home
from usagi_p2p.node.node import Node

from .conftest import SEED_A, SEED_B, SEED_C, Traded

TABLES = {
    "documents": "SELECT cid, direction, partner, kind, thread, prev, ref, issued_at, "
                 "recorded_at, status, reason, digest, signed, user FROM documents ORDER BY cid",
    "acks": "SELECT cid, raw, status, reason, at FROM acks ORDER BY cid",
    "nonces": "SELECT sender, nonce, cid, ack FROM nonces ORDER BY sender, nonce",
    "partners": "SELECT did, name, endpoint, status FROM partners ORDER BY did",
}


def dump(home: Home) -> dict[str, list[Any]]:
    with sqlite3.connect(home.ledger_path) as con:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}


async def _export(home: Home, out: Path, **kw: Any) -> Any:
    async with Node.load(home, None) as node:
        return await export_archive(node, out, **kw)


@pytest.fixture(scope="module")
def car(traded: Traded) -> Path:
    out = traded.root / "kanto.car"
    asyncio.run(_export(traded.a, out))
    return out


def test_round_trip_into_a_fresh_node(traded: Traded, car: Path, tmp_path: Path) -> None:
    fresh = Home(tmp_path / "restored")
    fresh.create("Kanto Machine Tools", None, seed=SEED_A)

    async def restore() -> Any:
        async with Node.load(fresh, None) as node:
            first = await import_archive(node, car)
            before = dump(fresh)
            again = await import_archive(node, car)  # idempotent
            assert dump(fresh) == before
            for cid in traded.cids[:1]:
                from kernel.cid import CID
                assert await node.store.has(CID.parse(cid))
            return first, again

    first, again = asyncio.run(restore())
    assert first.documents == 10 and first.acks == 10 and first.threads == 4
    original, restored = dump(traded.a), dump(fresh)
    assert restored["documents"] == original["documents"]
    assert restored["acks"] == original["acks"]
    assert restored["nonces"] == original["nonces"]
    assert restored["partners"] == original["partners"]
    # The restored node's own export verifies with its keys, threads included.
    out = tmp_path / "again.car"
    asyncio.run(_export(fresh, out))
    report = verify_archive(out, Identity(SEED_A))
    assert report.threads == 4 and report.documents == 10


def test_keyless_and_keyed_verify(car: Path) -> None:
    keyless = verify_archive(car)
    assert not keyless.keyed and keyless.pages == 1 and keyless.blocks == 13
    keyed = verify_archive(car, Identity(SEED_A))
    assert keyed.acks == 10 and keyed.by == Identity(SEED_A).did


def test_nothing_readable_for_a_third_party(traded: Traded, car: Path) -> None:
    data = car.read_bytes()
    secrets = [b"Kanto", b"Osaka", b"SUS304", b"secret-note", b"PO-0", b"JPY", b"did:key",
               b"quote", b"order", b"127.0.0.1"]
    for identity in (Identity(SEED_A), Identity(SEED_B)):
        secrets += [identity.did.encode(), identity.public_key, identity.x25519_public,
                    identity.did[-20:].encode()]
    for secret in secrets:
        assert secret not in data, secret
    with pytest.raises(ForeignArchiveError):
        verify_archive(car, Identity(SEED_C))


def test_a_standard_reader_reads_it(car: Path) -> None:
    with open(car, "rb") as fp:
        reader = CARReader(fp, allow_empty_roots=False, zero_length_as_eof=False)
        sections = list(reader)
    assert len(reader.roots) == 1 and sections[-1][0] == reader.roots[0]
    assert len({cid for cid, _ in sections}) == len(sections)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_flipped_byte_is_detected_and_named(car: Path, tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(car.read_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    bad = tmp_path / "flipped.car"
    bad.write_bytes(bytes(raw))
    for identity in (None, Identity(SEED_A)):
        with pytest.raises(ArchiveError) as info:
            verify_archive(bad, identity)
        assert str(info.value)


def test_a_flipped_block_byte_names_its_cid(car: Path, tmp_path: Path) -> None:
    raw = bytearray(car.read_bytes())
    with open(car, "rb") as fp:
        first = next(iter(CARReader(fp)))
    start = bytes(raw).index(first[1])
    raw[start + 100] ^= 1
    bad = tmp_path / "flipped.car"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="cid_mismatch"):
        verify_archive(bad)


@pytest.mark.parametrize("keep", [0, 5, 100, -1, -37])
def test_a_truncated_archive_is_detected(car: Path, tmp_path: Path, keep: int) -> None:
    raw = car.read_bytes()
    bad = tmp_path / "short.car"
    bad.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(ArchiveError):
        verify_archive(bad)


def test_another_companys_archive_is_refused(traded: Traded, tmp_path: Path) -> None:
    theirs = tmp_path / "osaka.car"
    asyncio.run(_export(traded.b, theirs))
    verify_archive(theirs)  # a sound archive …
    mine = Home(tmp_path / "kanto2")
    shutil.copytree(traded.a.path, mine.path)
    before = dump(mine)

    async def attempt() -> None:
        async with Node.load(mine, None) as node:
            await import_archive(node, theirs)

    with pytest.raises(ForeignArchiveError):  # … but not this node's
        asyncio.run(attempt())
    assert dump(mine) == before


def test_a_damaged_archive_writes_nothing(traded: Traded, car: Path, tmp_path: Path) -> None:
    fresh = Home(tmp_path / "fresh")
    fresh.create("Kanto Machine Tools", None, seed=SEED_A)
    raw = bytearray(car.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    bad = tmp_path / "bad.car"
    bad.write_bytes(bytes(raw))

    async def attempt() -> None:
        async with Node.load(fresh, None) as node:
            await import_archive(node, bad)

    with pytest.raises(ArchiveError):
        asyncio.run(attempt())
    assert dump(fresh)["documents"] == []


def test_filters(traded: Traded, tmp_path: Path) -> None:
    out = tmp_path / "osaka-only.car"
    report = asyncio.run(_export(traded.a, out, partner=Identity(SEED_B).did))
    assert report.documents == 10
    out = tmp_path / "none.car"
    report = asyncio.run(_export(traded.a, out, since=4e9))
    assert report.documents == 0
    assert verify_archive(out, Identity(SEED_A)).documents == 0
    with sqlite3.connect(traded.a.ledger_path) as con:
        times = sorted(r[0] for r in con.execute("SELECT recorded_at FROM documents"))
    out = tmp_path / "window.car"
    report = asyncio.run(_export(traded.a, out, since=times[4]))
    checked = verify_archive(out, Identity(SEED_A))
    assert checked.documents == 6 and checked.partial_threads == 1


def test_car_bytes_parse_from_memory(car: Path) -> None:
    reader = CARReader(io.BytesIO(car.read_bytes()), allow_empty_roots=False)
    assert sum(1 for _ in reader) == 13


# -- verify in worker processes: the same checks, the same first failure --------


@pytest.fixture(scope="module")
def paged_car(traded: Traded) -> Path:
    """The same history in pages of two documents: threads of three cross pages."""
    out = traded.root / "kanto-paged.car"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("usagi_p2p.archive.export.PAGE_ENTRIES", 2)
        asyncio.run(_export(traded.a, out))
    return out


def _outcome(path: Path, identity: Identity, workers: int) -> Any:
    try:
        return dataclasses.asdict(verify_archive(path, identity, workers=workers))
    except ArchiveError as exc:
        return type(exc), str(exc), exc.cid


def test_workers_give_the_same_report(traded: Traded, car: Path, paged_car: Path,
                                      tmp_path: Path) -> None:
    fives = tmp_path / "fives.car"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("usagi_p2p.archive.export.PAGE_ENTRIES", 5)
        asyncio.run(_export(traded.a, fives))
    for path in (car, paged_car, fives):
        one = _outcome(path, Identity(SEED_A), 1)
        assert _outcome(path, Identity(SEED_A), 2) == one
        assert one["documents"] == 10 and one["acks"] == 10 and one["threads"] == 4
    assert verify_archive(paged_car, Identity(SEED_A), workers=2).pages == 5
    # As the CLI and import call it: from a thread, beside a running event loop.
    threaded = asyncio.run(asyncio.to_thread(verify_archive, paged_car, Identity(SEED_A),
                                             workers=3))
    assert dataclasses.asdict(threaded) == _outcome(paged_car, Identity(SEED_A), 1)


def test_workers_name_the_same_first_failure(paged_car: Path, tmp_path: Path) -> None:
    raw = paged_car.read_bytes()
    bad = tmp_path / "flipped.car"
    for pos in range(0, len(raw), max(1, len(raw) // 80)):
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        bad.write_bytes(bytes(flipped))
        one = _outcome(bad, Identity(SEED_A), 1)
        assert type(one) is tuple, pos  # detected …
        assert _outcome(bad, Identity(SEED_A), 2) == one, pos  # … and named alike
    with pytest.raises(ForeignArchiveError):
        verify_archive(paged_car, Identity(SEED_C), workers=2)


@pytest.mark.parametrize("entries", [2, 5, 1000])
@pytest.mark.parametrize("drop", [0, 1, 4, 6, 7])
def test_workers_find_a_broken_thread_alike(traded: Traded, tmp_path: Path, drop: int,
                                            entries: int) -> None:
    """A document missing from a thread, wherever the thread sits: across pages, first,
    inside or last in one (checked in the worker, or by the parent). The archive is
    partial: what answers the missing document is reported, the rest verifies."""
    home = Home(tmp_path / "kanto")
    shutil.copytree(traded.a.path, home.path)
    with sqlite3.connect(home.ledger_path) as con:
        cid = CID.parse(traded.cids[drop]).raw
        con.execute("DELETE FROM documents WHERE cid = ?", (cid,))
        con.execute("DELETE FROM acks WHERE cid = ?", (cid,))
    out = tmp_path / "broken.car"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("usagi_p2p.archive.export.PAGE_ENTRIES", entries)
        asyncio.run(_export(home, out))
    verify_archive(out)  # keyless it is sound: only the keyed thread check sees it
    one = _outcome(out, Identity(SEED_A), 1)
    # Each thread is quote -> order -> message: what follows the missing one breaks.
    broken = traded.cids[drop + 1:drop // 3 * 3 + 3]
    assert [(str(q["cid"]), q["code"]) for q in one["quarantined"]] == \
        [(c, "invalid_thread") for c in broken]
    assert one["documents"] == 9 and one["threads"] == 4
    assert _outcome(out, Identity(SEED_A), 2) == one


def test_an_unacked_sent_document_comes_back_to_the_outbox(tmp_path: Path) -> None:
    from kernel._messages import open_notice
    from usagi_p2p.archive.archive import RESTORED_UNACKED
    from usagi_p2p.peer.service import Service

    from ..node.conftest import free_port

    seed = bytes(range(100, 132))
    a, b = Home(tmp_path / "a"), Home(tmp_path / "b")
    a.create("Kanto Machine Tools", None, seed=seed, port=free_port())
    b.create("Osaka Precision", None, port=free_port())
    fresh = Home(tmp_path / "restored")
    fresh.create("Kanto Machine Tools", None, seed=seed, port=free_port())
    out = tmp_path / "a.car"

    async def scenario() -> None:
        async with Node.load(a, None) as na, Node.load(b, None) as nb:
            osaka = nb.did
            async with Service(na), Service(nb):
                await nb.add_partner((await na.invite()).text())
            # Osaka is offline now and Kanto runs no delivery loop: the order stays queued.
            sent = await na.send("quote", "Osaka", {"ref": "Q-away", "lines": [{"text": "bolts"}]})
            await export_archive(na, out)
        async with Node.load(fresh, None) as node:
            report = await import_archive(node, out)
            assert report.documents == 1 and report.acks == 0
            row = await node.ledger.document(sent.cid)
            assert (row.status, row.reason) == ("undelivered", RESTORED_UNACKED)
            [queued] = await node.ledger.outbox("undelivered")
            assert queued.cid == sent.cid
            notice = open_notice(bytes(queued.notice))
            assert (notice.cid, notice.sender, notice.recipient) == (sent.cid, node.did, osaka)
            # Held until someone says to send; then delivered to the partner, acked once.
            assert await node.deliver_once() == 0
            async with Node.load(b, None) as nb, Service(nb):
                assert await node.ledger.retry_undelivered() == 1
                assert await node.deliver_once() == 1
                ack = await node.wait_for_ack(sent.cid, 10)
                assert ack is not None and ack[1] == "received"
                assert await nb.ledger.count_documents("in") == 1
            # Re-importing the same archive changes none of that.
            await import_archive(node, out)
            assert (await node.ledger.document(sent.cid)).status == "delivered"

    asyncio.run(scenario())


def test_a_restored_partner_yields_its_name_to_the_current_one(car: Path, tmp_path: Path) -> None:
    """The archive brings back Osaka Precision (SEED_B); since then this node paired
    another partner under that name. The current one keeps it; the restored one is
    ``name (2)``, now and after the next open (docs/spec.md section 10, "Names")."""
    fresh = Home(tmp_path / "restored")
    fresh.create("Kanto Machine Tools", None, seed=SEED_A)
    current, restored = Identity(SEED_C).did, Identity(SEED_B).did

    async def scenario() -> None:
        async with Node.load(fresh, None) as node:
            await node.ledger.add_partner(current, "osaka precision", "http://127.0.0.1:9", None)
            await import_archive(node, car)
            names = {p.did: p.name for p in await node.ledger.partners()}
            assert names == {current: "osaka precision", restored: "Osaka Precision (2)"}
            assert (await node.ledger.find_partner("Osaka Precision")).did == current  # type: ignore[union-attr]
        async with Node.load(fresh, None) as node:  # the next open renames nobody
            assert {p.did: p.name for p in await node.ledger.partners()} == names
            assert (await node.ledger.find_partner("osaka precision")).did == current  # type: ignore[union-attr]
            assert (await node.ledger.find_partner("Osaka Precision (2)")).did == restored  # type: ignore[union-attr]

    asyncio.run(scenario())
