"""``GET /api/v1/events``: the event sequence over Server-Sent Events, against real nodes.

A document sent A→B is ``document.received`` on B's stream and ``document.sent``
then ``document.delivered`` on A's; a client that goes away and comes back with
``Last-Event-ID`` gets every event committed meanwhile, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from usagi_p2p.company.api.events import MAX_STREAMS
from usagi_p2p.node import operations

from .conftest import PROBLEM, Api, api_node, wait_until


@dataclass
class Two:
    a: Api
    b: Api


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    async with api_node(tmp_path / "kanto", "Kanto Machine Tools") as a, \
            api_node(tmp_path / "osaka", "Osaka Precision") as b:
        await operations.add_partner(b.node, (await operations.invite(a.node)).text())
        yield Two(a, b)


@dataclass
class Sse:
    seq: int
    type: str
    data: dict[str, Any]


class Stream:
    """One SSE connection, read event by event (a real HTTP client, no SSE library)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments = 0

    async def next(self, timeout: float = 30.0) -> Sse:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.resp.content.readline()).decode()
                if not line:
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if line == "":
                    if "event" in fields:
                        return Sse(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                    fields = {}
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")

    async def until(self, kind: str, cid: str | None = None) -> list[Sse]:
        """Events up to and including the first of ``kind`` (for ``cid``)."""
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if event.type == kind and (cid is None or event.data.get("cid") == cid):
                return seen


@contextlib.asynccontextmanager
async def stream(api: Api, *, token: str | None = None, last: int | None = None,
                 query: str = "") -> AsyncIterator[Stream]:
    headers = {"Authorization": f"Bearer {token or api.tokens['read']}"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{api.local.port}/api/v1/events{query}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        yield Stream(resp)


async def send(a: Api, ref: str) -> str:
    result = await operations.send(a.node, "quote", {"ref": ref, "lines": [{"text": "bolts"}]},
                                   to="Osaka")
    a.node.wake.set()  # the service delivers now
    return str(result.cid)


async def test_a_document_is_received_on_one_stream_and_delivered_on_the_other(two: Two) -> None:
    async with stream(two.a) as a_events, stream(two.b) as b_events:
        cid = await send(two.a, "Q-1")
        received = (await b_events.until("document.received", cid))[-1]
        assert received.data["kind"] == "quote" and received.data["ref"] == "Q-1"
        assert received.data["partner"]["name"] == "Kanto Machine Tools"
        assert received.data["status"] == "received"
        seen = await a_events.until("document.delivered", cid)
        assert [e.type for e in seen if e.data.get("cid") == cid] == [
            "document.sent", "document.delivered"]
        assert seen[-1].data["partner"]["name"] == "Osaka Precision"
        seqs = [e.seq for e in seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_a_client_that_comes_back_misses_nothing_and_gets_nothing_twice(two: Two) -> None:
    async with stream(two.b) as events:
        first = await send(two.a, "Q-1")
        last_seen = (await events.until("document.received", first))[-1].seq
    # Away: three documents arrive and are committed.
    away = [await send(two.a, f"Q-{i}") for i in (2, 3, 4)]

    async def all_in() -> bool:
        got = {e.data.get("cid") for e in await operations.events_after(two.b.node, last_seen)}
        return set(away) <= got

    await wait_until(all_in, "the documents sent while the client was away")
    committed = await operations.events_after(two.b.node, last_seen)
    async with stream(two.b, last=last_seen) as events:
        backlog = [await events.next() for _ in committed]
        assert [(e.seq, e.type) for e in backlog] == [(e.seq, e.type) for e in committed]
        assert [e.seq for e in backlog] == list(range(last_seen + 1, last_seen + 1 + len(backlog)))
        assert {e.data["cid"] for e in backlog if e.type == "document.received"} == set(away)
        # Then live: the next one, once, right after the backlog.
        live = await send(two.a, "Q-5")
        after = await events.until("document.received", live)
        assert after[0].seq == backlog[-1].seq + 1
        assert not {e.seq for e in after} & {e.seq for e in backlog}
    # ?after= is the same resume point as the header.
    async with stream(two.b, query=f"?after={last_seen}") as events:
        assert (await events.next()).seq == last_seen + 1


async def test_a_resume_from_pruned_events_is_told_so(api: Api) -> None:
    node = api.node
    for i in range(4):
        await node.ledger.add_partner(f"did:key:z6MkP{i}", f"P{i}", "http://127.0.0.1:9", None)
    assert await node.ledger.prune_events(before=0.0, keep=2) == 2
    async with stream(api, last=0) as events:
        lost = await events.next()
        assert (lost.type, lost.seq, lost.data["after"], lost.data["first"]) == (
            "events.lost", 2, 0, 3)
        assert [(e.seq, e.type) for e in (await events.next(), await events.next())] == [
            (3, "partner.added"), (4, "partner.added")]


async def test_types_filter_the_stream(api: Api) -> None:
    node = api.node
    await node.ledger.add_partner("did:key:z6MkP0", "P0", "http://127.0.0.1:9", None)
    await node.ledger.set_partner("did:key:z6MkP0", status="suspended")
    async with stream(api, last=0, query="?types=partner.changed") as events:
        event = await events.next()
        assert (event.seq, event.type, event.data["change"]) == (2, "partner.changed",
                                                                 "suspended")


async def test_bad_resume_points_and_types_are_problems(api: Api) -> None:
    token = api.tokens["read"]
    for headers, path in (({"Last-Event-ID": "x1"}, "/api/v1/events"),
                          ({}, "/api/v1/events?after=-3"),
                          ({}, "/api/v1/events?types=document.eaten")):
        status, got, body = await api.call("GET", path, token=token, headers=headers)
        assert status == 422 and got["Content-Type"].startswith(PROBLEM), body
        assert body["code"] == "validation_failed"
    status, _, body = await api.call("GET", "/api/v1/events")
    assert (status, body["code"]) == (401, "unauthorized")


async def test_a_token_holds_a_bounded_number_of_streams(api: Api) -> None:
    async with contextlib.AsyncExitStack() as held:
        for _ in range(MAX_STREAMS):
            await held.enter_async_context(stream(api))
        status, _, body = await api.call("GET", "/api/v1/events", token=api.tokens["read"])
        assert (status, body["code"]) == (503, "overloaded")
        # Another token is not held back by this one's streams.
        async with stream(api, token=api.tokens["admin"]):
            pass
    # Closed streams are given back.
    async def freed() -> bool:
        try:
            async with stream(api):
                return True
        except AssertionError:
            return False

    await wait_until(freed, "a stream slot given back")
