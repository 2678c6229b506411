"""Issue 14, finding 8: a paired partner floods a node with large valid documents.

Real nodes on 127.0.0.1. The flooder is a real node with its own key, ledger,
store and peer API (its gateway serves the blocks the victim fetches); it
POSTs batches of notices for ~250 KiB documents straight to the victim's
notice endpoint, ignoring what an honest sender would do. The victim has a
per-partner quota in its config; everything runs on one injectable clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kernel import dagcbor
from kernel._messages import MESSAGE_LIMITS, make_notice, open_ack
from kernel._signed import open_signed
from kernel.cid import CID
from usagi_p2p.node.errors import ConfigError, QuotaExceededError
from usagi_p2p.node.home import Config, Home
from usagi_p2p.node.node import NOTICES_PATH, Node
from usagi_p2p.node.quota import format_size, parse_size
from usagi_p2p.peer.app import make_app

from .conftest import REPO, free_port, make_home, start

MiB = 1 << 20
LINE = "M6x20 SUS304 hex bolt DIN 933, drawing rev. C, " * 80  # ~3.8 KB of text


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def big(i: int) -> dict[str, Any]:
    """A valid order of ~250 KiB: stored twice (block + signed), ~500 KiB."""
    return {"ref": f"FLOOD-{i}", "lines": [{"text": f"{i}-{j} {LINE}"[:3990]} for j in range(64)]}


def home_size(home: Home) -> int:
    return sum(p.stat().st_size for p in home.path.rglob("*") if p.is_file())


@asynccontextmanager
async def peer_api_only(node: Node) -> AsyncIterator[None]:
    """The node's real peer API (notices, gateway) without its delivery loop:
    the test decides what it sends and when."""
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, node.config.listen_host, node.config.listen_port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def post(url: str, notices: list[bytes]) -> tuple[int, dict[str, str], Any]:
    """One batch on the wire, no pushed blocks (the victim fetches them)."""
    async with aiohttp.ClientSession() as session, session.post(
            url + NOTICES_PATH, data=dagcbor.encode({"notices": notices}),
            headers={"Content-Type": "application/cbor"}) as resp:
        body = await resp.read()
        answer = dagcbor.decode(body) if resp.status == 200 else json.loads(body)
        return resp.status, dict(resp.headers), answer


def set_partner_quota(home: Home, did: str, **quota: int) -> None:
    """What 'usagi partner quota' writes: config.json, read again by a running node."""
    config = home.load_config()
    config.partner_quotas[did] = quota
    home.save_config(config)
    # A second edit within one mtime tick would look unchanged; these tests make one.


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Osaka (the victim, serving), Evil (a partner, peer API only), Kanto (an
    honest partner, serving); all paired with Osaka, all on one clock."""
    clock = Clock(time.time())
    osaka, osaka_service = await start(make_home(tmp_path / "osaka", "Osaka Precision"),
                                       clock=clock)
    evil = Node.load(make_home(tmp_path / "evil", "Evil Trading"), None, clock=clock)
    await evil.open()
    kanto, kanto_service = await start(make_home(tmp_path / "kanto", "Kanto Machine Tools"),
                                       clock=clock)
    try:
        async with peer_api_only(evil):
            await evil.add_partner((await osaka.invite()).text())
            await kanto.add_partner((await osaka.invite()).text())
            yield {"osaka": osaka, "evil": evil, "kanto": kanto, "clock": clock,
                   "url": osaka_service.url}
    finally:
        await kanto_service.close()
        await osaka_service.close()
        for node in (kanto, evil, osaka):
            await node.close()


async def test_a_flood_stops_at_the_quota_and_honest_retries_pass_after_the_window(
        nodes: dict[str, Any]) -> None:
    osaka, evil, kanto, clock = nodes["osaka"], nodes["evil"], nodes["kanto"], nodes["clock"]
    quota = 3 * MiB
    set_partner_quota(osaka.home, evil.did, bytes=quota)
    results = await evil.send_many([("order", "Osaka", big(i), None) for i in range(16)])
    notices = [row.notice for row in await evil.ledger.outbox()]
    before = home_size(osaka.home)

    # The flood: batches of 2 until refused.
    accepted: list[CID] = []
    refusal = None
    for i in range(0, len(notices), 2):
        status, headers, answer = await post(nodes["url"], notices[i:i + 2])
        if status != 200:
            refusal = status, headers, answer
            break
        for raw in answer["acks"]:
            ack = open_ack(raw)
            assert ack.status == "received"
            accepted.append(ack.cid)
    assert refusal is not None, "the flood was never refused"
    status, headers, answer = refusal
    assert status == 429 and answer["error"] == "quota_exceeded"
    window_end = (clock() // 86400 + 1) * 86400
    assert 0 < int(headers["Retry-After"]) <= window_end - clock() + 1
    assert accepted  # the quota is not zero: some of the flood was taken
    # What is stored: the batches answered 200, and any documents of the
    # refused batch that still fitted (acked when the sender retries).
    stored = [r.cid for r in await osaka.ledger.documents(direction="in", partners=[evil.did])]
    assert set(accepted) <= set(stored)
    used = (await osaka.ledger.quota_usage())[evil.did]
    assert used[1] == len(stored) and used[2] <= quota
    at_refusal = home_size(osaka.home)

    # Everything else it floods is refused, and the disk does not grow. Refused
    # before any fetch: Osaka cannot reach the flooder's gateway now, and a
    # fetch would have answered 200 with 'rejected' acks (block not found).
    endpoint = (await osaka.ledger.partner(evil.did)).endpoint
    await osaka.ledger.write([("UPDATE partners SET endpoint = ? WHERE did = ?",
                               (f"http://127.0.0.1:{free_port()}", evil.did))])
    quiet = home_size(osaka.home)
    for i in range(len(stored), len(notices), 4):
        status, _, answer = await post(nodes["url"], notices[i:i + 1])
        assert status == 429 and answer["error"] == "quota_exceeded"
        status, _, answer = await post(nodes["url"], notices[i:i + 4])
        assert status == 429 and answer["error"] == "quota_exceeded"
    assert home_size(osaka.home) == quiet
    await osaka.ledger.write([("UPDATE partners SET endpoint = ? WHERE did = ?",
                               (endpoint, evil.did))])
    # Stored twice (block + signed document), plus SQLite's pages, indexes and WAL.
    assert at_refusal - before <= 2 * quota + 2 * MiB, (before, at_refusal)

    # What was accepted before is intact, block and document.
    for cid in stored:
        row = await osaka.ledger.document(cid)
        assert row is not None and row.status == "received"
        opened = osaka.open_envelope(await osaka.store.get(cid), cid)
        assert opened.signed == row.signed and opened.document["from"] == evil.did

    # An honest partner still gets through (its own, default quota).
    sent = await kanto.send("quote", "Osaka", {"ref": "Q-1", "lines": [{"text": "bolts"}]})
    ack = await kanto.wait_for_ack(sent.cid, timeout=15)
    assert ack is not None and open_ack(ack[0]).status == "received"

    # The flooder, now behaving as an honest node: refused as busy, no attempt spent...
    assert await evil.deliver_once() == 0
    rows = await evil.ledger.outbox()
    assert all(r.state == "pending" and r.attempts == 0 for r in rows)
    assert all("429" in (r.last_error or "") and "quota_exceeded" in (r.last_error or "")
               for r in rows)
    assert min(r.next_attempt for r in rows) >= window_end - 1
    # ...and delivered once the window has passed.
    clock.now = max(r.next_attempt for r in rows)
    for _ in range(5):
        await evil.deliver_once()
        if not await evil.ledger.pending_count():
            break
        clock.now = max(r.next_attempt for r in await evil.ledger.outbox("pending"))
    for result in results:
        ack = await evil.ledger.ack(result.cid)
        assert ack is not None and open_ack(ack[0]).status == "received"
        row = await osaka.ledger.document(result.cid)
        assert row is not None and row.digest == result.digest
    assert await osaka.ledger.count_documents("in") == 16 + 1


async def test_a_partner_at_its_document_quota_is_refused_before_any_fetch(
        nodes: dict[str, Any], tmp_path: Path) -> None:
    osaka, evil, kanto = nodes["osaka"], nodes["evil"], nodes["kanto"]
    # Set with the CLI, while Osaka serves: it applies without a restart.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "usagi_p2p", "--home", str(osaka.home.path), "--json",
        "partner", "quota", "Evil", "--docs", "3",
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    shown = json.loads(out)
    assert (shown["docs"], shown["docs_quota"], shown["own"]) == (0, 3, True)
    assert osaka.home.load_config().partner_quotas == {evil.did: {"docs": 3}}

    await evil.send_many([("order", "Osaka", {"ref": f"S-{i}", "lines": [{"text": "nuts"}]},
                           None) for i in range(5)])
    notices = [row.notice for row in await evil.ledger.outbox()]
    statuses = [(await post(nodes["url"], [n]))[0] for n in notices[:4]]
    assert statuses == [200, 200, 200, 429]
    # Osaka can no longer reach the flooder's gateway: a used-up quota is refused
    # before any fetch (else this would be a 'rejected' ack, block not found).
    endpoint = (await osaka.ledger.partner(evil.did)).endpoint
    await osaka.ledger.write([("UPDATE partners SET endpoint = ? WHERE did = ?",
                               (f"http://127.0.0.1:{free_port()}", evil.did))])
    status, _, answer = await post(nodes["url"], notices[4:])
    await osaka.ledger.write([("UPDATE partners SET endpoint = ? WHERE did = ?",
                               (endpoint, evil.did))])
    assert status == 429 and answer["error"] == "quota_exceeded"
    # A replay of an accepted notice is still answered with its ack.
    status, _, answer = await post(nodes["url"], notices[:1])
    assert status == 200 and open_ack(answer["acks"][0]).status == "received"

    # The honest partner's default quota is its own.
    for i in range(5):
        await kanto.send("quote", "Osaka", {"ref": f"Q-{i}", "lines": [{"text": "bolts"}]})
    for _ in range(100):
        if await kanto.ledger.pending_count() == 0:
            break
        await asyncio.sleep(0.05)
    assert (await kanto.ledger.outbox_counts()) == {"delivered": 5}

    # The count is in the ledger: a node started again on this home knows it.
    again = Node.load(osaka.home, None, clock=nodes["clock"])
    await again.open()
    try:
        usage = await again.ledger.quota_usage()
        assert usage[evil.did][1] == 3 and usage[kanto.did][1] == 5
        with pytest.raises(QuotaExceededError):
            await again.quotas.check([evil.did], again.clock())
    finally:
        await again.close()

    # 'usagi status' shows each partner's use against its quota.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "usagi_p2p", "--home", str(osaka.home.path), "--json", "status",
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    quotas = {q["partner"]: q for q in json.loads(out)["quotas"]}
    assert (quotas["Evil Trading"]["docs"], quotas["Evil Trading"]["docs_quota"]) == (3, 3)
    assert (quotas["Kanto Machine Tools"]["docs"],
            quotas["Kanto Machine Tools"]["docs_quota"]) == (5, 100_000)
    assert quotas["Kanto Machine Tools"]["bytes_quota"] == 1 << 30


async def test_two_batches_at_once_cannot_share_the_last_room(nodes: dict[str, Any]) -> None:
    """The check and the reservation are one step: of two concurrent batches that
    each fit alone but not together, one is stored and the other only as far
    as the room goes."""
    osaka, evil = nodes["osaka"], nodes["evil"]
    set_partner_quota(osaka.home, evil.did, docs=4)
    await evil.send_many([("order", "Osaka", big(i), None) for i in range(6)])
    notices = [row.notice for row in await evil.ledger.outbox()]
    first, second = await asyncio.gather(post(nodes["url"], notices[0:3]),
                                         post(nodes["url"], notices[3:6]))
    assert sorted([first[0], second[0]]) == [200, 429]
    # The refused batch's first document took the last room; never more.
    assert await osaka.ledger.count_documents("in") == 4
    assert (await osaka.ledger.quota_usage())[evil.did][1] == 4


async def test_what_fits_is_stored_and_acked_on_the_retry_after_the_window(
        nodes: dict[str, Any]) -> None:
    """A batch over quota stores what fits (here: a window's first document, though
    alone larger than the byte quota) and answers 429; the same batch sent after
    the window gets the stored document's ack as a replay, and the rest stored."""
    osaka, evil, clock = nodes["osaka"], nodes["evil"], nodes["clock"]
    set_partner_quota(osaka.home, evil.did, bytes=100_000)
    results = await evil.send_many([("order", "Osaka", big(i), None) for i in range(2)])
    notices = [row.notice for row in await evil.ledger.outbox()]
    status, headers, answer = await post(nodes["url"], notices)
    assert status == 429 and answer["error"] == "quota_exceeded"
    first = await osaka.ledger.document(results[0].cid)
    assert first is not None and await osaka.ledger.document(results[1].cid) is None
    acked = await osaka.ledger.ack(results[0].cid)
    assert acked is not None
    clock.now += int(headers["Retry-After"])  # the next window
    # The same notices (same nonces), signed again now, as a sender's retry is.
    again = [make_notice(evil.identity, r.cid, osaka.did, evil.now(),
                         nonce=open_signed(r.notice, "notice", "from", MESSAGE_LIMITS).body["nonce"])
             for r in await evil.ledger.outbox()]
    status, _, answer = await post(nodes["url"], again)
    assert status == 200
    assert answer["acks"][0] == acked[0]  # the ack given when it was stored
    assert open_ack(answer["acks"][1]).status == "received"
    assert (await osaka.ledger.document(results[0].cid)).signed == first.signed  # type: ignore[union-attr]


async def test_a_new_key_is_not_a_new_quota(nodes: dict[str, Any]) -> None:
    """A partner that rotates its key keeps its quota and what it used under the old key."""
    osaka, evil = nodes["osaka"], nodes["evil"]
    set_partner_quota(osaka.home, evil.did, docs=2)
    await evil.send_many([("order", "Osaka", {"ref": f"R-{i}", "lines": [{"text": "nuts"}]},
                           None) for i in range(2)])
    status, _, _ = await post(nodes["url"], [r.notice for r in await evil.ledger.outbox()])
    assert status == 200
    old = evil.did
    _, told = await evil.rotate(None, timedelta(days=1), fast_kdf=True)
    assert told == {"Osaka Precision": "ok"} and evil.did != old
    late = await evil.send("order", "Osaka", {"ref": "R-new-key", "lines": [{"text": "nuts"}]})
    notices = [r.notice for r in await evil.ledger.outbox() if r.cid == late.cid]
    status, _, answer = await post(nodes["url"], notices)
    assert status == 429 and answer["error"] == "quota_exceeded"
    assert await osaka.ledger.document(late.cid) is None
    report = await osaka.quotas.report(await osaka.ledger.partners(), osaka.clock(),
                                       await osaka.ledger.aliases())
    mine = [r for r in report if r["did"] == evil.did]
    assert [(r["docs"], r["docs_quota"], r["own"]) for r in mine] == [(2, 2, True)]


async def test_counts_under_two_keys_add_up_after_a_restart(nodes: dict[str, Any]) -> None:
    """What a partner stored under its old key and its new one is one count, also
    for a node started again (a fresh count read from the ledger): 2 before the
    rotation and 1 after fill a quota of 3."""
    from usagi_p2p.node.quota import Quotas

    osaka, evil = nodes["osaka"], nodes["evil"]
    set_partner_quota(osaka.home, evil.did, docs=3)
    await evil.send_many([("order", "Osaka", {"ref": f"R-{i}", "lines": [{"text": "nuts"}]},
                           None) for i in range(2)])
    status, _, _ = await post(nodes["url"], [r.notice for r in await evil.ledger.outbox()])
    assert status == 200
    await evil.rotate(None, timedelta(days=1), fast_kdf=True)
    late = await evil.send("order", "Osaka", {"ref": "R-new-key", "lines": [{"text": "nuts"}]})
    status, _, _ = await post(nodes["url"], [r.notice for r in await evil.ledger.outbox()
                                             if r.cid == late.cid])
    assert status == 200
    # A restarted serve: its count is read again from the ledger's rows.
    osaka.quotas = Quotas(osaka.home, osaka.home.load_config(), osaka.ledger)
    report = await osaka.quotas.report(await osaka.ledger.partners(), osaka.clock(),
                                       await osaka.ledger.aliases())
    assert [(r["docs"], r["docs_quota"]) for r in report if r["did"] == evil.did] == [(3, 3)]
    more = await evil.send("order", "Osaka", {"ref": "R-over", "lines": [{"text": "nuts"}]})
    status, _, answer = await post(nodes["url"], [r.notice for r in await evil.ledger.outbox()
                                                  if r.cid == more.cid])
    assert status == 429 and answer["error"] == "quota_exceeded"
    assert await osaka.ledger.document(more.cid) is None


def test_quota_settings_are_checked_and_sizes_read() -> None:
    base = {"name": "Osaka", "did": "did:key:z6Mk"}
    assert Config.from_json(base).quota_bytes == 1 << 30
    for bad in ({"quota_docs": -1}, {"quota_period": 0}, {"quota_bytes": 1.5},
                {"partner_quotas": {"did:key:z": {"docs": "ten"}}},
                {"partner_quotas": {"did:key:z": {"files": 3}}},
                {"partner_quotas": {"did:key:z": {}}}):
        with pytest.raises(ConfigError):
            Config.from_json({**base, **bad})
    assert parse_size("500MiB") == 500 * MiB and parse_size("2G") == 2 << 30
    assert parse_size("1.5 GB") == 1_500_000_000 and parse_size("300000") == 300_000
    for bad_size in ("lots", "-1M", "3 parsecs", "nan"):
        with pytest.raises(ValueError):
            parse_size(bad_size)
    assert format_size(812) == "812 B" and format_size(3 * MiB // 2) == "1.5 MiB"
