"""A malicious partner's notices and envelopes (issue 14: findings 6, 10, 11, 12, 15).

Three real nodes on 127.0.0.1. Osaka is attacked; Kanto, an honest partner,
has traded with it first; Mallory is a partner too, paired with Osaka through
the real invitation and introduction, and its real key crafts what an honest
node never sends, with the kernel's own primitives, POSTed as batches to
``/usagi/v1/notices``. Each attack gets its typed answer, nothing Osaka held
before changes, and every document Osaka holds still verifies and exports to
an archive that verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel import dagcbor
from kernel import envelope as kenvelope
from kernel.cid import CID
from kernel.document import format_time
from kernel.messages import make_notice, open_ack
from kernel.signed import sign_bytes
from usagi_p2p.archive import export_archive, verify_archive
from usagi_p2p.inspect import thread_documents, verify_document
from usagi_p2p.node import NOTICES_PATH, Node

from .conftest import make_home, paired, start

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs"}]
_archives = itertools.count()


@dataclass
class Scene:
    osaka: Node       # the node attacked
    kanto: Node       # an honest partner of Osaka
    mallory: Node     # a partner of Osaka that turned malicious
    history: list[CID]
    tmp: Path


@contextlib.asynccontextmanager
async def scene(tmp: Path, *, osaka_plugins: Sequence[str] = (),
                kanto_plugins: Sequence[str] = ()) -> AsyncIterator[Scene]:
    homes = {name: make_home(tmp / name.split()[0].lower(), name)
             for name in ("Kanto Machine Tools", "Osaka Precision", "Mallory Trading")}
    for name, plugins in (("Kanto Machine Tools", kanto_plugins),
                          ("Osaka Precision", osaka_plugins)):
        config = homes[name].load_config()
        config.plugins = list(plugins)
        homes[name].save_config(config)
    async with paired(homes["Kanto Machine Tools"], homes["Osaka Precision"]) as pair:
        kanto, osaka = pair.seller, pair.buyer
        mallory, mallory_service = await start(homes["Mallory Trading"])
        try:
            await mallory.add_partner((await osaka.invite()).text())
            # An honest thread first: what Osaka holds that no attack may change.
            quote = await kanto.send("quote", "Osaka", {"ref": "Q-1", "lines": LINES})
            assert await kanto.wait_for_ack(quote.cid, timeout=15)
            order = await osaka.send("order", "Kanto", {"ref": "PO-1", "lines": LINES},
                                     reply_to=quote.cid)
            assert await osaka.wait_for_ack(order.cid, timeout=15)
            yield Scene(osaka, kanto, mallory, [quote.cid, order.cid], tmp)
        finally:
            await mallory_service.close()
            await mallory.close()


async def held(node: Node) -> dict[str, list[str]]:
    """Every row of every table an attack could touch, and every block."""
    out = {}
    for table in ("documents", "acks", "nonces", "outbox", "partners"):
        rows = await node.ledger.db.execute_fetchall(f"SELECT * FROM {table}")  # noqa: S608
        out[table] = sorted(map(repr, rows))
    out["blocks"] = sorted([repr((cid.raw, block)) async for cid, block in node.store.blocks()])
    return out


async def assert_sound(node: Node, tmp: Path) -> None:
    """What no attack may break: every document verifies (block, signature,
    thread, ack), and the whole history exports to an archive that verifies."""
    rows = await node.ledger.documents(limit=100_000)
    assert rows
    for row in rows:
        report = await verify_document(node, row.cid)
        assert report["ok"], report
        assert await thread_documents(node, row.cid)
    path = tmp / f"archive-{next(_archives)}.car"
    exported = await export_archive(node, path)
    assert exported.documents == len(rows)
    checked = await asyncio.to_thread(verify_archive, path, node.identity)
    assert checked.documents == len(rows)


async def post(node: Node, notices: list[bytes], blocks: list[bytes] | None = None
               ) -> tuple[int, Any]:
    body: dict[str, Any] = {"notices": notices}
    if blocks:
        body["blocks"] = blocks
    async with aiohttp.ClientSession() as session, session.post(
            node.config.endpoint + NOTICES_PATH, data=dagcbor.encode(body),
            headers={"Content-Type": "application/cbor"}) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, json.loads(raw)
        return resp.status, dagcbor.decode(raw)


def document(sender: Node, to: Node, kind: str = "quote", **extra: Any) -> dict[str, Any]:
    doc = {"v": 1, "kind": kind, "from": sender.did, "to": to.did,
           "issued_at": format_time(sender.now()), "ref": "Q-evil", "lines": LINES}
    doc.update(extra)
    return doc


def signed_document(sender: Node, doc: dict[str, Any]) -> bytes:
    return sign_bytes(sender.identity, "document", dagcbor.encode(doc))


def acks_of(answer: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(ack.status, ack.reason) for ack in map(open_ack, answer["acks"])]


# -- finding 10: kinds that change meaning later ------------------------------------


@pytest.mark.parametrize("plugins", [[], ["food"]], ids=["no plugin", "food"])
async def test_a_kind_no_enabled_plugin_declares_is_refused_on_receipt(
        tmp_path: Path, plugins: list[str]) -> None:
    """Without this, a node with no plugin took any namespaced kind, and the
    plugin enabled later made the stored document fail verification."""
    async with scene(tmp_path, osaka_plugins=plugins) as s:
        osaka, mallory = s.osaka, s.mallory
        before = await held(osaka)
        blocks, notices = [], []
        for kind, ext in (("evil.anything", {}),
                          ("machinery.design_spec", {"machinery": {"drawing": "D-1"}})):
            sealed = kenvelope.seal(document(mallory, osaka, kind, ext=ext) if ext
                                    else document(mallory, osaka, kind), mallory.identity)
            blocks.append(sealed.block)
            notices.append(make_notice(mallory.identity, sealed.cid, osaka.did, mallory.now()))
        status, answer = await post(osaka, notices, blocks)
        assert status == 200
        assert acks_of(answer) == [("rejected", "unknown_kind")] * 2
        assert await held(osaka) == before
        await assert_sound(osaka, tmp_path)


async def test_what_was_received_verifies_whatever_plugins_are_enabled_later(
        tmp_path: Path) -> None:
    """A food.recall Osaka took in with food enabled still verifies (document,
    thread, archive) with no plugin, with another plugin, with more plugins."""
    async with scene(tmp_path, osaka_plugins=["food"], kanto_plugins=["food"]) as s:
        osaka, kanto = s.osaka, s.kanto
        recall = await kanto.send("food.recall", "Osaka", {
            "ref": "R-1", "lines": LINES, "ext": {"food": {"lot": "L-77", "reason": "label"}}},
            reply_to=s.history[1])
        got = await kanto.wait_for_ack(recall.cid, timeout=15)
        assert got is not None and got[1] == "received"
        for plugins in ([], ["machinery"], ["food", "medical", "construction"]):
            config = osaka.home.load_config()
            config.plugins = plugins
            # What 'usagi verify' and 'usagi archive export' load after the
            # operator changed the plugins (the serving node runs on).
            later = Node(osaka.home, osaka.home.load_identity(None), config)
            await later.open()
            try:
                await assert_sound(later, tmp_path)
                thread = await thread_documents(later, recall.cid)
                assert [d["kind"] for d in thread] == ["quote", "order", "food.recall"]
            finally:
                await later.close()


async def test_an_unknown_kind_is_a_final_answer_to_an_honest_sender(tmp_path: Path) -> None:
    """Kanto (food enabled) sends a food.recall to Osaka (no food): a final
    refusal, stored as Kanto's answer and not sent again; Osaka stores nothing."""
    async with scene(tmp_path, kanto_plugins=["food"]) as s:
        osaka, kanto = s.osaka, s.kanto
        before = await held(osaka)
        recall = await kanto.send("food.recall", "Osaka", {
            "lines": LINES, "ext": {"food": {"lot": "L-77", "reason": "label"}}})
        got = await kanto.wait_for_ack(recall.cid, timeout=15)
        assert got is not None and (got[1], got[2]) == ("rejected", "unknown_kind")
        assert (await kanto.ledger.document(recall.cid)).status == "rejected"  # type: ignore[union-attr]
        assert [r.state for r in await kanto.ledger.outbox() if r.cid == recall.cid] == ["delivered"]
        assert await held(osaka) == before
        await assert_sound(osaka, tmp_path)
