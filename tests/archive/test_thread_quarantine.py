"""A ledger holding replies a malicious partner hung on another partner's thread
(stored before nodes refused them): every lookup stays scoped to one partner pair,
and its archive still restores every good document (docs/archive.md, "Quarantine").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._document import format_time
from kernel._identity import Identity
from kernel._messages import make_ack, make_notice, open_notice
from kernel.cid import CID
from usagi_p2p.archive.archive import export_archive, verify_archive
from usagi_p2p.company.views import thread_documents, verify_document
from usagi_p2p.node.home import Home
from usagi_p2p.node.ledger import DocumentRow
from usagi_p2p.node.node import Node
from usagi_p2p.node.plugin_host import findings_json

from ..node.conftest import REPO, free_port, start

SEED = bytes(range(200, 232))
LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]


def usagi(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("USAGI_PASSPHRASE", None)
    return subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=120)


@contextlib.asynccontextmanager
async def running(homes: dict[str, Home]) -> AsyncIterator[dict[str, Node]]:
    """Each home's node serving on loopback; all closed after."""
    started = {name: await start(home) for name, home in homes.items()}
    try:
        yield {name: node for name, (node, _) in started.items()}
    finally:
        for _, service in started.values():
            await service.close()
        for node, _ in started.values():
            await node.close()


async def record_the_old_way(seller: Node, sender: Node, doc: dict[str, Any]) -> CID:
    """Store a reply as receive() did before it judged links: block, document, ack, nonce."""
    sealed = kenvelope.seal(doc, sender.identity)
    notice = open_notice(make_notice(sender.identity, sealed.cid, seller.did, seller.now()))
    opened = seller.open_envelope(sealed.block, sealed.cid)
    ack = make_ack(seller.identity, cid=sealed.cid, to=sender.did, nonce=notice.nonce,
                   status="received", at=seller.now(), digest=opened.digest)
    row = DocumentRow(sealed.cid, "in", sender.did, doc["kind"], doc["thread"], doc.get("ref"),
                      doc["issued_at"], seller.clock(), "received", None, opened.digest,
                      opened.signed, None, findings_json([]))
    await seller.store.put_many([sealed.block])
    await seller.ledger.record_received_many([(row, dagcbor.encode(doc["prev"]), ack, "received",
                                               format_time(seller.now()), sender.did,
                                               notice.nonce)])
    return sealed.cid


def test_foreign_replies_in_a_ledger_break_no_other_trade(tmp_path: Path) -> None:
    homes = {name: Home(tmp_path / name) for name in ("kanto", "osaka", "mallory")}
    homes["kanto"].create("Kanto Machine Tools", None, seed=SEED, port=free_port())
    homes["osaka"].create("Osaka Precision", None, port=free_port())
    homes["mallory"].create("Mallory", None, port=free_port())
    out = tmp_path / "kanto.car"

    async def trade() -> dict[str, CID]:
        async with running(homes) as nodes:
            seller, buyer, mallory = (nodes[n] for n in ("kanto", "osaka", "mallory"))
            await buyer.add_partner((await seller.invite()).text())
            await mallory.add_partner((await seller.invite()).text())
            quote = await seller.send("quote", "Osaka", {"ref": "Q-1", "lines": LINES})
            assert await seller.wait_for_ack(quote.cid, 15)
            order = await buyer.send("order", "Kanto", {"ref": "PO-1", "lines": LINES},
                                     reply_to=quote.cid)
            assert await buyer.wait_for_ack(order.cid, 15)
            note = await seller.send("message", "Osaka", {"note": "ships Monday"},
                                     reply_to=order.cid)
            assert await seller.wait_for_ack(note.cid, 15)
            own = await mallory.send("order", "Kanto", {"ref": "PO-M", "lines": LINES})
            assert await mallory.wait_for_ack(own.cid, 15)
            base = {"v": 1, "kind": "order", "from": mallory.did, "to": seller.did,
                    "issued_at": format_time(mallory.now()), "lines": LINES}
            hung = await record_the_old_way(seller, mallory, {
                **base, "thread": quote.cid, "prev": [order.cid]})
            crossed = await record_the_old_way(seller, mallory, {
                **base, "thread": own.cid, "prev": [own.cid, note.cid]})
            cids = {"quote": quote.cid, "order": order.cid, "note": note.cid, "own": own.cid,
                    "hung": hung, "crossed": crossed}
            # Scoped lookups: the honest thread verifies, the hung reply does not.
            for name in ("quote", "order", "note", "own"):
                report = await verify_document(seller, cids[name])
                assert report["ok"], (name, report)
            assert [r["cid"] for r in await thread_documents(seller, note.cid)] == \
                [str(cids[n]) for n in ("quote", "order", "note")]
            for name in ("hung", "crossed"):
                report = await verify_document(seller, cids[name])
                assert not report["ok"] and [c["name"] for c in report["checks"]
                                             if not c["ok"]] == ["thread"], report
            await export_archive(seller, out)
            return cids

    cids = asyncio.run(trade())
    good = {cids[n] for n in ("quote", "order", "note", "own")}

    # verify --keys reports the two replies and passes the rest: a partial archive.
    report = verify_archive(out, Identity(SEED))
    assert report.documents == 6
    assert len(report.quarantined) == 2 and {q.cid: q.code for q in report.quarantined} == {
        cids["hung"]: "foreign_thread", cids["crossed"]: "invalid_thread"}
    for workers in (1, 2):
        assert verify_archive(out, Identity(SEED), workers=workers) == report
    proc = usagi(homes["kanto"].path, "--json", "archive", "verify", str(out))
    assert proc.returncode == 3, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["ok"] is False and shown["documents"] == 6
    assert {q["cid"] for q in shown["quarantined"]} == {str(cids["hung"]), str(cids["crossed"])}
    proc = usagi(homes["kanto"].path, "archive", "verify", str(out))
    assert proc.returncode == 3 and str(cids["hung"]) in proc.stdout and "foreign_thread" in \
        proc.stdout

    # import restores every good document and keeps the two apart.
    fresh = Home(tmp_path / "restored")
    fresh.create("Kanto Machine Tools", None, seed=SEED, port=free_port())
    for _ in range(2):  # a second import changes nothing
        proc = usagi(fresh.path, "--json", "archive", "import", str(out))
        assert proc.returncode == 3, proc.stderr
        assert json.loads(proc.stdout)["documents"] == 4
        with sqlite3.connect(fresh.ledger_path) as con:
            restored = {CID.from_bytes(r[0]) for r in con.execute("SELECT cid FROM documents")}
            apart = {CID.from_bytes(r[0]): r[1] for r in con.execute(
                "SELECT cid, code FROM quarantine")}
            acks = con.execute("SELECT count(*) FROM acks").fetchone()[0]
        assert restored == good and acks == 4
        assert apart == {cids["hung"]: "foreign_thread", cids["crossed"]: "invalid_thread"}
    with sqlite3.connect(fresh.blocks_path) as con:
        stored = {CID.from_bytes(r[0]) for r in con.execute("SELECT cid FROM blocks")}
    assert stored == good | {cids["hung"], cids["crossed"]}  # nothing of the archive is lost
    for name in ("quote", "order", "note", "own"):
        proc = usagi(fresh.path, "verify", str(cids[name]))
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
    proc = usagi(fresh.path, "show", str(cids["hung"]))
    assert proc.returncode != 0  # not a document of the node


def test_a_partner_that_rotated_mid_thread_is_still_the_same_party(tmp_path: Path) -> None:
    """Not every document that changes keys is foreign: the archive carries the
    rotations, so an honest rotation quarantines nothing (and restores whole)."""
    from datetime import timedelta

    homes = {name: Home(tmp_path / name) for name in ("kanto", "osaka")}
    homes["kanto"].create("Kanto Machine Tools", None, seed=SEED, port=free_port())
    homes["osaka"].create("Osaka Precision", None, port=free_port())
    out = tmp_path / "kanto.car"

    async def trade() -> list[CID]:
        async with running(homes) as nodes:
            seller, buyer = nodes["kanto"], nodes["osaka"]
            await buyer.add_partner((await seller.invite()).text())
            quote = await seller.send("quote", "Osaka", {"ref": "Q-1", "lines": LINES})
            assert await seller.wait_for_ack(quote.cid, 15)
            await buyer.rotate(None, timedelta(days=1))
            order = await buyer.send("order", "Kanto", {"ref": "PO-1", "lines": LINES},
                                     reply_to=quote.cid)
            assert await buyer.wait_for_ack(order.cid, 15)
            note = await seller.send("message", "Osaka", {"note": "ships Monday"},
                                     reply_to=order.cid)
            assert (await seller.wait_for_ack(note.cid, 15) or ("", ""))[1] == "received"
            await export_archive(seller, out)
            return [quote.cid, order.cid, note.cid]

    cids = asyncio.run(trade())
    report = verify_archive(out, Identity(SEED))
    assert (report.documents, report.acks, report.threads, report.quarantined) == (3, 3, 1, [])
    fresh = Home(tmp_path / "restored")
    fresh.create("Kanto Machine Tools", None, seed=SEED, port=free_port())
    proc = usagi(fresh.path, "--json", "archive", "import", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["documents"] == 3
    proc = usagi(fresh.path, "--json", "thread", str(cids[2]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["cid"] for r in json.loads(proc.stdout)] == [str(c) for c in cids]


def test_this_node_that_rotated_its_own_key_restores_whole(tmp_path: Path) -> None:
    """What was sealed to this node's old key opens with its keyring: an archive made
    after its own rotation verifies and restores whole, nothing quarantined."""
    import shutil
    from datetime import timedelta

    homes = {name: Home(tmp_path / name) for name in ("kanto", "osaka")}
    homes["kanto"].create("Kanto Machine Tools", None, seed=SEED, port=free_port())
    homes["osaka"].create("Osaka Precision", None, port=free_port())
    out = tmp_path / "kanto.car"

    async def trade() -> tuple[list[CID], list[Identity]]:
        async with running(homes) as nodes:
            seller, buyer = nodes["kanto"], nodes["osaka"]
            await buyer.add_partner((await seller.invite()).text())
            quote = await seller.send("quote", "Osaka", {"ref": "Q-1", "lines": LINES})
            assert await seller.wait_for_ack(quote.cid, 15)
            order = await buyer.send("order", "Kanto", {"ref": "PO-1", "lines": LINES},
                                     reply_to=quote.cid)
            assert await buyer.wait_for_ack(order.cid, 15)
            await seller.rotate(None, timedelta(days=1), fast_kdf=True)
            note = await seller.send("message", "Osaka", {"note": "ships Monday"},
                                     reply_to=order.cid)
            assert (await seller.wait_for_ack(note.cid, 15) or ("", ""))[1] == "received"
            await export_archive(seller, out)
            return [quote.cid, order.cid, note.cid], [seller.identity, *seller.retired]

    cids, keys = asyncio.run(trade())
    assert keys[1].did == Identity(SEED).did
    # The current key alone cannot open what was sealed before the rotation.
    # (The note answers them, so it is set aside with them.)
    alone = {q.cid: q.code for q in verify_archive(out, keys[0]).quarantined}
    assert alone == {cids[0]: "not_recipient", cids[1]: "not_recipient",
                     cids[2]: "invalid_thread"}
    report = verify_archive(out, keys)
    assert (report.documents, report.acks, report.threads, report.quarantined) == (3, 3, 1, [])
    proc = usagi(homes["kanto"].path, "--json", "archive", "verify", "--keys", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = usagi(homes["kanto"].path, "--json", "thread", str(cids[2]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A restored home: the company's key files, a fresh ledger and store.
    fresh = Home(tmp_path / "restored")
    fresh.create("Kanto Machine Tools", None, seed=SEED, port=free_port())
    shutil.copy2(homes["kanto"].key_path, fresh.key_path)
    shutil.copytree(homes["kanto"].keyring_path, fresh.keyring_path)
    proc = usagi(fresh.path, "--json", "archive", "import", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["documents"] == 3
    proc = usagi(fresh.path, "--json", "thread", str(cids[2]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["cid"] for r in json.loads(proc.stdout)] == [str(c) for c in cids]
