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
import hashlib
import itertools
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ipfs.gateway import GatewayClient
from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._document import format_time
from kernel._identity import Identity
from kernel._messages import make_notice, open_ack, open_notice
from kernel._signed import sign, sign_bytes
from kernel.cid import BLAKE2B_256, CID, RAW, encode_varint
from kernel.errors import CIDMismatchError
from usagi_p2p.archive.archive import export_archive, verify_archive
from usagi_p2p.company.views import thread_documents, verify_document
from usagi_p2p.node.httpsig import sign_request
from usagi_p2p.node.ledger import DocumentRow, Ledger
from usagi_p2p.node.node import NOTICES_PATH, Node

from .conftest import free_port, make_home, paired, start

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


# -- finding 6: foreign CIDs --------------------------------------------------------


def foreign_cid(block: bytes, form: str) -> CID:
    if form == "blake2b-256":
        return CID.from_bytes(b"\x01\x71" + encode_varint(BLAKE2B_256) + b"\x20"
                              + hashlib.blake2b(block, digest_size=32).digest())
    if form == "raw":
        return CID.for_block(block, RAW)
    return CID.from_bytes(b"\x12\x20" + hashlib.sha256(block).digest())  # CIDv0


@pytest.mark.parametrize("form", ["blake2b-256", "raw", "v0"])
async def test_a_notice_naming_its_block_by_a_foreign_cid_is_refused(
        tmp_path: Path, form: str) -> None:
    """The block hashes to the foreign CID, and Mallory's own gateway serves it
    under that CID; the notice is still refused (400 malformed), before any
    fetch, so no document is recorded under a CID the store files elsewhere."""
    async with scene(tmp_path) as s:
        osaka, mallory = s.osaka, s.mallory
        sealed = kenvelope.seal(document(mallory, osaka), mallory.identity)
        foreign = foreign_cid(sealed.block, form)
        # Mallory files the block under the foreign CID in its own node, so that
        # its gateway serves it to Osaka under that name.
        with sqlite3.connect(mallory.home.blocks_path) as db:
            db.execute("INSERT INTO blocks (cid, data) VALUES (?, ?)", (foreign.raw, sealed.block))
        row = DocumentRow(foreign, "out", osaka.did, "quote", foreign, None,
                          format_time(mallory.now()), 0.0, "queued", None, sealed.digest,
                          sealed.signed, None)
        await mallory.ledger.write([Ledger._insert_document(row, b"\x80")])
        path = f"/ipfs/{foreign}"
        async with aiohttp.ClientSession() as session:
            served = await GatewayClient(session).get_block(
                mallory.config.endpoint, foreign,
                headers=sign_request(osaka.identity, "GET", path, "format=raw",
                                     created=int(osaka.clock())))
        assert served == sealed.block  # what the old receiver fetched and recorded

        before = await held(osaka)
        body = {"cid": foreign, "from": mallory.did, "to": osaka.did,
                "nonce": os.urandom(16), "sent_at": format_time(mallory.now())}
        notice = sign(mallory.identity, "notice", body)
        for blocks in (None, [sealed.block]):
            status, answer = await post(osaka, [notice], blocks)
            assert (status, answer["error"]) == (400, "malformed"), answer
            assert "CIDv1 dag-cbor sha2-256" in answer["message"]
        # The same envelope under its own CID is a document like any other.
        status, answer = await post(osaka, [make_notice(mallory.identity, sealed.cid, osaka.did,
                                                        mallory.now())], [sealed.block])
        assert acks_of(answer) == [("received", None)]
        after = await held(osaka)
        assert {k: v for k, v in after.items() if k not in ("documents", "acks", "nonces",
                                                             "blocks")} == \
            {k: v for k, v in before.items() if k not in ("documents", "acks", "nonces",
                                                           "blocks")}
        assert set(before["documents"]) <= set(after["documents"])
        assert set(before["blocks"]) <= set(after["blocks"])
        assert await osaka.ledger.document(foreign) is None
        await assert_sound(osaka, tmp_path)


async def test_the_ledger_never_names_a_block_the_store_files_elsewhere(tmp_path: Path) -> None:
    """The node's one put path for recorded blocks compares the CID the store
    files each block under with the CID the ledger will carry."""
    async with scene(tmp_path) as s:
        osaka = s.osaka
        sealed = kenvelope.seal(document(s.mallory, osaka), s.mallory.identity)
        before = await held(osaka)
        with pytest.raises(CIDMismatchError):
            await osaka.put_recorded([(foreign_cid(sealed.block, "blake2b-256"), sealed.block)])
        assert await held(osaka) == before  # the block it did file is taken back out
        await assert_sound(osaka, tmp_path)


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


# -- finding 11: one signed document, two envelopes ---------------------------------


async def test_one_signed_document_in_two_envelopes_is_recorded_once(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        osaka, mallory = s.osaka, s.mallory
        signed = signed_document(mallory, document(mallory, osaka))
        first, second = (kenvelope.seal_signed(signed, [mallory.did, osaka.did])
                         for _ in range(2))
        assert first.cid != second.cid and first.digest == second.digest

        def notice(cid: CID) -> bytes:
            return make_notice(mallory.identity, cid, osaka.did, mallory.now())

        status, answer = await post(osaka, [notice(first.cid)], [first.block])
        assert acks_of(answer) == [("received", None)]
        stored = await held(osaka)
        again = notice(second.cid)
        for _ in range(2):  # a rejection is not an answer kept: the same again
            status, answer = await post(osaka, [again], [second.block])
            assert acks_of(answer) == [("rejected", "duplicate")]
            assert await held(osaka) == stored
        # Two new envelopes of another signed document in one batch: the first
        # is recorded, the second refused.
        other = signed_document(mallory, document(mallory, osaka, ref="Q-evil-2"))
        third, fourth = (kenvelope.seal_signed(other, [osaka.did, mallory.did]) for _ in range(2))
        status, answer = await post(osaka, [notice(third.cid), notice(fourth.cid)],
                                    [third.block, fourth.block])
        assert acks_of(answer) == [("received", None), ("rejected", "duplicate")]
        # And in two batches at once: whichever commits first is recorded.
        last = signed_document(mallory, document(mallory, osaka, ref="Q-evil-3"))
        racing = [kenvelope.seal_signed(last, [osaka.did, mallory.did]) for _ in range(4)]
        answers = await asyncio.gather(*[post(osaka, [notice(e.cid)], [e.block])
                                         for e in racing])
        outcomes = sorted(acks_of(a)[0] for _, a in answers)
        assert outcomes == [("received", None)] + [("rejected", "duplicate")] * 3
        rows = await osaka.ledger.documents(direction="in", limit=1000)
        digests = [r.digest for r in rows]
        assert len(digests) == len(set(digests)) == 4  # Kanto's quote and three of Mallory's
        cids = {r.cid for r in rows}
        assert first.cid in cids and third.cid in cids
        assert not {second.cid, fourth.cid} & cids
        assert sum(e.cid in cids for e in racing) == 1
        blocks = {cid async for cid, _ in osaka.store.blocks()}
        assert not {second.cid, fourth.cid} & blocks  # nothing of a duplicate is kept
        assert sum(e.cid in blocks for e in racing) == 1
        await assert_sound(osaka, tmp_path)


async def test_an_honest_sender_never_seals_one_signed_document_twice(tmp_path: Path) -> None:
    """Two identical documents sent in one tick of a stopped clock still differ
    (issued_at moves on by a microsecond), so both are received."""
    async with scene(tmp_path) as s:
        kanto = s.kanto
        stopped = kanto.clock()
        kanto.clock = lambda: stopped
        sent = await kanto.send_many([("message", "Osaka", {"note": "same"}, None)] * 3)
        assert len({r.digest for r in sent}) == 3
        for result in sent:
            got = await kanto.wait_for_ack(result.cid, timeout=15)
            assert got is not None and got[1] == "received", got


# -- finding 12: envelopes the spec forbids -----------------------------------------


def by_hand(signed: bytes, recipients: list[str], padded_size: int | None = None) -> bytes:
    """An envelope from the kernel's primitives, padded to any length."""
    from nacl import bindings as sodium

    from kernel._envelope import _associated_data, bucket, pad, wrap
    from kernel._identity import party

    key, nonce = os.urandom(32), os.urandom(24)
    slots = wrap(key, [party(did).x25519_public for did in recipients])
    size = padded_size or bucket(len(signed))
    body = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        pad(signed, size), _associated_data(nonce, slots), nonce, key)
    return dagcbor.encode({"c": body, "n": nonce, "s": slots, "v": 1})


async def test_envelopes_the_spec_forbids_are_refused(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        osaka, mallory, kanto = s.osaka, s.mallory, s.kanto
        signed = signed_document(mallory, document(mallory, osaka))
        natural = kenvelope.bucket(len(signed))
        crafted = {
            # Kanto sealed in as a third reader, which Osaka could not see.
            "three slots": by_hand(signed, [mallory.did, osaka.did, kanto.did]),
            "one slot": by_hand(signed, [osaka.did]),
            "sixteen slots": by_hand(signed, [mallory.did, osaka.did,
                                              *(Identity.generate().did for _ in range(14))]),
            "padding no bucket has": by_hand(signed, [mallory.did, osaka.did], natural + 100),
            "padding past its bucket": by_hand(signed, [mallory.did, osaka.did], 4 * natural),
        }
        # Each one opens for Osaka with the general opener: only v1's rules refuse it.
        for name, block in crafted.items():
            if "padding" not in name:
                assert kenvelope.open_plaintext(block, osaka.identity) == signed, name
        before = await held(osaka)
        blocks = list(crafted.values())
        notices = [make_notice(mallory.identity, CID.for_block(b), osaka.did, mallory.now())
                   for b in blocks]
        status, answer = await post(osaka, notices, blocks)
        assert status == 200
        assert acks_of(answer) == [("rejected", "malformed")] * len(crafted)
        assert await held(osaka) == before
        # The same signed document, sealed as v1 says, is taken.
        good = by_hand(signed, [osaka.did, mallory.did])
        status, answer = await post(osaka, [make_notice(mallory.identity, CID.for_block(good),
                                                        osaka.did, mallory.now())], [good])
        assert acks_of(answer) == [("received", None)]
        await assert_sound(osaka, tmp_path)


# -- finding 15 (receive path): a nonce belongs to its sender ------------------------


async def test_a_nonce_is_only_unique_with_its_sender(tmp_path: Path) -> None:
    """Mallory reuses the nonce of Kanto's notice (in one batch with it): it
    gets its own answer, never the ack Osaka gave Kanto."""
    async with scene(tmp_path) as s:
        osaka, mallory, kanto = s.osaka, s.mallory, s.kanto
        kanto_notice = next(r.notice for r in await kanto.ledger.outbox()
                            if r.cid == s.history[0])
        nonce = open_notice(kanto_notice).nonce
        answered = await osaka.ledger.seen_nonce(kanto.did, nonce)
        assert answered is not None
        kanto_ack = answered[1]
        sealed = kenvelope.seal(document(mallory, osaka), mallory.identity)
        mine = make_notice(mallory.identity, sealed.cid, osaka.did, mallory.now(), nonce)
        for order in ((kanto_notice, mine), (mine, kanto_notice)):
            status, answer = await post(osaka, list(order), [sealed.block])
            assert status == 200
            by_sender = dict(zip((open_notice(n).sender for n in order), answer["acks"],
                                 strict=True))
            assert by_sender[kanto.did] == kanto_ack  # Kanto's replay: its own answer
            ack = open_ack(by_sender[mallory.did])
            assert (ack.status, ack.cid, ack.to) == ("received", sealed.cid, mallory.did)
        assert await osaka.ledger.document(sealed.cid) is not None
        # One notice twice in a batch (one nonce, two blocks): one answer, one document.
        a = kenvelope.seal(document(mallory, osaka, ref="Q-a"), mallory.identity)
        b = kenvelope.seal(document(mallory, osaka, ref="Q-b"), mallory.identity)
        twice = os.urandom(16)
        notices = [make_notice(mallory.identity, e.cid, osaka.did, mallory.now(), twice)
                   for e in (a, b)]
        status, answer = await post(osaka, notices, [a.block, b.block])
        assert answer["acks"][0] == answer["acks"][1]
        assert open_ack(answer["acks"][0]).cid == a.cid
        assert await osaka.ledger.document(b.cid) is None
        await assert_sound(osaka, tmp_path)


# -- spec 11.1: temporary refusals are retried, final ones are answers ----------------


async def test_a_temporary_refusal_is_sent_again_and_a_final_one_is_not(
        tmp_path: Path) -> None:
    """Osaka cannot fetch Kanto's block for a while (its record of Kanto's
    endpoint is wrong): it refuses with store_unavailable and keeps no record;
    Kanto keeps the notice queued and, once Osaka can fetch, delivers it."""
    async with scene(tmp_path) as s:
        osaka, kanto = s.osaka, s.kanto
        kanto.config.push_blocks = False
        endpoint = (await osaka.ledger.partner(kanto.did)).endpoint  # type: ignore[union-attr]
        moved = ("UPDATE partners SET endpoint = ? WHERE did = ?")
        await osaka.ledger.write([(moved, (f"http://127.0.0.1:{free_port()}", kanto.did))])
        sent = await kanto.send("quote", "Osaka", {"ref": "Q-2", "lines": LINES})
        for _ in range(300):  # until the first attempt is answered (bounded)
            rows = [r for r in await kanto.ledger.outbox() if r.cid == sent.cid]
            if rows and rows[0].attempts:
                break
            await asyncio.sleep(0.02)
        assert rows[0].state == "pending" and "store_unavailable" in (rows[0].last_error or "")
        assert (await kanto.ledger.document(sent.cid)).status == "queued"  # type: ignore[union-attr]
        assert await kanto.ledger.ack(sent.cid) is None
        assert await osaka.ledger.document(sent.cid) is None
        assert not await osaka.ledger.db.execute_fetchall(
            "SELECT 1 FROM nonces WHERE cid = ?", (sent.cid.raw,))
        await osaka.ledger.write([(moved, (endpoint, kanto.did))])
        got = await kanto.wait_for_ack(sent.cid, timeout=20)
        assert got is not None and got[1] == "received"
        assert (await kanto.ledger.document(sent.cid)).status == "delivered"  # type: ignore[union-attr]
        await assert_sound(osaka, tmp_path)


async def test_a_batch_holds_at_most_its_fetch_budget_and_the_rest_comes_later(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Blocks fetched for a batch are held until it is stored: past the budget the
    rest is refused for now (``overloaded``, temporary), so a partner's batch of
    large blocks costs bounded memory, and an honest sender delivers them all."""
    async with scene(tmp_path) as s:
        osaka, kanto = s.osaka, s.kanto
        osaka.fetch_budget = 3 << 20  # three blocks of the largest size at once
        kanto.config.push_blocks = False  # every block is fetched from Kanto's gateway
        big = [{"text": f"{n}: " + "六角ナット M6 SUS304 " * 500} for n in range(30)]
        caplog.set_level(logging.INFO, logger="usagi.activity")
        sent = await kanto.send_many([("quote", "Osaka", {"ref": f"Q-big-{i}", "lines": big},
                                       None) for i in range(6)])
        for result in sent:
            assert len(await kanto.store.get(result.cid)) > 256 << 10
        for result in sent:
            got = await kanto.wait_for_ack(result.cid, timeout=60)
            assert got is not None and got[1] == "received"
        refusals = [r.getMessage() for r in caplog.records
                    if r.name == "usagi.activity" and "overloaded" in r.getMessage()]
        assert refusals, "the first batch was taken whole: the budget held nothing back"
        await assert_sound(osaka, tmp_path)


async def test_two_envelopes_of_one_document_in_concurrent_batches_store_one(
        tmp_path: Path) -> None:
    """Batches in flight at once, one with two notices for envelope E1, one with
    envelope E2 of the same signed document: exactly one envelope is stored, every
    'received' ack names it (no receipt for what is not held), and the quota
    counts one document."""
    async with scene(tmp_path) as s:
        osaka, mallory = s.osaka, s.mallory
        doc = document(mallory, osaka)
        e1, e2 = (kenvelope.seal(doc, mallory.identity) for _ in range(2))
        assert e1.cid != e2.cid and e1.digest == e2.digest
        now = mallory.now()
        a = dagcbor.encode({"notices": [make_notice(mallory.identity, e1.cid, osaka.did, now)
                                        for _ in range(2)], "blocks": [e1.block]})
        b = dagcbor.encode({"notices": [make_notice(mallory.identity, e2.cid, osaka.did, now)],
                            "blocks": [e2.block]})
        answers = await asyncio.gather(osaka.receive(b), osaka.receive(a))
        stored = [c for c in (e1.cid, e2.cid) if await osaka.ledger.document(c) is not None]
        assert len(stored) == 1
        for ack in (open_ack(raw) for answer in answers for raw in answer):
            assert (ack.status, ack.reason) in (("received", None), ("rejected", "duplicate"))
            assert ack.status != "received" or ack.cid == stored[0]
        usage = (await osaka.ledger.quota_usage())[mallory.did]
        assert usage[1] == 1
