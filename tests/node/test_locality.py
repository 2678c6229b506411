"""Locality, by counting: no node receives a byte, a request or a block of a trade
it is not a party to (docs/scale.md; DESIGN.md, "Scale").

Seven real nodes on loopback (the same Node and Service as ``usagi serve``)
pair along a small graph with a hub, through real invitations, and trade one
whole thread (quote -> order -> order_response -> delivery_note -> invoice)
on every edge, all edges at once. Every byte each node's listener reads is
kept, per connection, and parsed back into HTTP requests afterwards; each
notice batch is decoded (its notices opened, its pushed blocks hashed) and
each gateway request read for its CID. Then:

* every byte a listener read belongs to a request that was parsed (nothing
  is left over), and every request at a node names only CIDs of its own
  trades, sent by the partner of that trade;
* each trade's documents reached the listeners of its two parties only;
* each node's block store holds exactly the blocks of its own trades, and
  its ledger documents with its own partners only.

bench/mesh.py asserts the same per node and per listener port on meshes of
up to 1,000 nodes; this test follows each CID.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kernel import dagcbor, open_notice
from kernel.cid import CID
from usagi_p2p.node import operations
from usagi_p2p.node.node import INTRODUCE_PATH, NOTICES_PATH, Node
from usagi_p2p.peer import listener
from usagi_p2p.peer.service import Service

from .conftest import make_home, start

#: A hub (0) with four partners, two pairs among them, one company (6) on the edge.
EDGES = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (3, 5), (5, 6)]
N = 7
KINDS = ("quote", "order", "order_response", "delivery_note", "invoice")


class Tap:
    """Every byte each listener reads, per connection (monkeypatched onto PeerHandler)."""

    def __init__(self) -> None:
        self.streams: dict[tuple[int, int], bytearray] = defaultdict(bytearray)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = listener.PeerHandler.data_received
        tap = self

        def data_received(handler: Any, data: bytes) -> None:
            local = handler.transport.get_extra_info("sockname")
            tap.streams[local[1], id(handler)] += data
            original(handler, data)

        monkeypatch.setattr(listener.PeerHandler, "data_received", data_received)

    def requests(self) -> dict[int, list[tuple[str, str, bytes, int]]]:
        """Per listener port: (method, path, body, bytes on the wire) of every request."""
        out: dict[int, list[tuple[str, str, bytes, int]]] = defaultdict(list)
        for (port, _), stream in self.streams.items():
            data = bytes(stream)
            while data:
                head, sep, rest = data.partition(b"\r\n\r\n")
                assert sep, f"a request with no end of headers at port {port}: {data[:80]!r}"
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, v in (line.split(":", 1) for line in lines[1:])}
                assert "transfer-encoding" not in headers, headers
                length = int(headers.get("content-length", 0))
                body, data = rest[:length], rest[length:]
                assert len(body) == length, "a request cut short"
                out[port].append((method, path, body, len(head) + 4 + length))
        return out


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[tuple[list[Node], list[Service], Tap]]:
    tap = Tap()
    tap.install(monkeypatch)
    nodes, services = [], []
    try:
        for i in range(N):
            node, service = await start(make_home(tmp_path / f"c{i}", f"Company {i}"))
            nodes.append(node)
            services.append(service)
        for a, b in EDGES:  # pairing through real invitations
            await operations.add_partner(nodes[b], (await operations.invite(nodes[a])).text())
        yield nodes, services, tap
    finally:
        for service in services:
            await service.close()
        for node in nodes:
            await node.close()


async def trade(seller: Node, buyer: Node, ref: str) -> list[CID]:
    """One whole thread; each document acknowledged before it is answered."""
    lines = [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs",
              "unit_price": "12.50"}]
    sent = await operations.send(seller, "quote", {"ref": ref, "currency": "JPY", "lines": lines},
                                 to=buyer.did)
    cids = [sent.cid]
    authors = {"order": buyer}
    for done, kind in zip(KINDS, KINDS[1:], strict=False):
        delivered = await operations.await_ack(authors.get(done, seller), cids[-1])
        assert delivered.status == "received", (done, delivered)
        fields = {"response": "accept"} if kind == "order_response" else {}
        cids.append((await operations.answer(authors.get(kind, seller), kind, cids[-1],
                                             fields)).cid)
    assert (await operations.await_ack(seller, cids[-1])).status == "received"
    return cids


async def test_no_node_receives_what_is_not_its_trade(
        mesh: tuple[list[Node], list[Service], Tap]) -> None:
    nodes, services, tap = mesh
    port_of = {i: s.port for i, s in enumerate(services)}
    node_at = {port: i for i, port in port_of.items()}
    did_of = {i: n.did for i, n in enumerate(nodes)}

    # Pairing reached exactly the inviting side of each edge: one introduction each.
    intros: dict[int, int] = defaultdict(int)
    for port, requests in tap.requests().items():
        for method, path, _, _ in requests:
            assert (method, path) == ("POST", INTRODUCE_PATH), (port, method, path)
            intros[node_at[port]] += 1
    assert dict(intros) == {a: sum(1 for x, _ in EDGES if x == a) for a in {a for a, _ in EDGES}}
    tap.streams.clear()

    threads = await asyncio.gather(*(trade(nodes[a], nodes[b], f"Q-{a}-{b}")
                                     for a, b in EDGES))
    trade_of: dict[CID, tuple[int, int]] = {}
    receiver: dict[CID, int] = {}
    for (a, b), cids in zip(EDGES, threads, strict=True):
        assert len(set(cids)) == len(KINDS)
        for kind, cid in zip(KINDS, cids, strict=True):
            trade_of[cid] = (a, b)
            receiver[cid] = a if kind == "order" else b

    reached: dict[CID, set[int]] = defaultdict(set)
    wire: dict[int, int] = defaultdict(int)
    parsed: dict[int, int] = defaultdict(int)
    for (port, _), stream in tap.streams.items():
        wire[node_at[port]] += len(stream)
    for port, requests in tap.requests().items():
        me = node_at[port]
        assert requests, "a listener that read bytes has requests"
        for method, path, body, size in requests:
            parsed[me] += size
            if (method, path) == ("POST", NOTICES_PATH):
                batch = dagcbor.decode(body)
                named = []
                for raw in batch["notices"]:
                    notice = open_notice(raw)
                    assert notice.recipient == did_of[me]
                    sender = next(i for i, d in did_of.items() if d == notice.sender)
                    assert set(trade_of[notice.cid]) == {me, sender}, (me, sender)
                    named.append(notice.cid)
                named += [CID.for_block(block) for block in batch.get("blocks", [])]
            elif method in ("GET", "HEAD") and path.startswith("/ipfs/"):
                named = [CID.parse(path.split("/")[2].split("?")[0])]
            else:
                raise AssertionError(f"unexpected request at node {me}: {method} {path}")
            for cid in named:
                assert me in trade_of[cid], f"node {me} received {cid} of trade {trade_of[cid]}"
                reached[cid].add(me)
    # Every byte read was part of a request, and each request was one of its trades'.
    assert parsed == wire
    # Each document reached its receiver (at least), and never anyone else.
    for cid, (a, b) in trade_of.items():
        assert receiver[cid] in reached[cid] and reached[cid] <= {a, b}
    # Stored: each node holds the blocks of its own trades, and nothing else.
    for i, node in enumerate(nodes):
        own = {cid for cid, t in trade_of.items() if i in t}
        held = {cid async for cid, _ in node.store.blocks()}
        assert held == own, (i, len(held), len(own))
        partners = {p.did for p in await operations.partners(node)}
        documents = (await operations.list_documents(node, "in", limit=100)
                     + await operations.list_documents(node, "out", limit=100))
        assert {d.cid for d in documents} == own
        assert all(d.partner in partners for d in documents)
