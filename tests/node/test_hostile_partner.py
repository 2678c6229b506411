"""A malicious partner: a real key, a real pairing, and answers no honest node gives.

The node under attack ("the victim") is real: its peer API on 127.0.0.1, its
ledger and store on disk. The attacker holds its own real Identity, pairs
through the victim's real invitation, and runs its own aiohttp server on
127.0.0.1 speaking the wire protocol: what it answers is crafted. Each test
also checks that nothing the victim already held was lost or changed.
(docs/spec.md sections 8 and 10; issue 14, findings 4, 7, 13, 14, 15.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._identity import Identity
from kernel._messages import check_ack, make_ack, make_notice, open_ack, open_notice
from kernel._signed import sign
from kernel.cid import CID
from kernel.errors import UsagiError
from usagi_p2p.node.home import Home
from usagi_p2p.node.invitation import make_invitation
from usagi_p2p.node.node import INTRODUCE_PATH, NOTICES_PATH, Node
from usagi_p2p.peer.app import make_app

from .conftest import Pair, free_port, make_home

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the parties ----------------------------------------------------------------------------


@dataclass
class Victim:
    node: Node
    url: str  # where its peer API listens (its configured endpoint may say otherwise)


@contextlib.asynccontextmanager
async def victim(home: Home) -> AsyncIterator[Victim]:
    """A real node serving its peer API, without a delivery loop: the test delivers
    (``deliver_once``), so what happens to each notice is decided, not raced."""
    node = Node.load(home, None)
    await node.open()
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False)
    await runner.setup()
    port = node.config.listen_port
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Victim(node, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        await node.close()


@dataclass
class Server:
    """The attacker's own HTTP server on 127.0.0.1; ``hits`` lists the paths asked."""

    url: str
    routes: dict[str, Handler]
    hits: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def server(routes: dict[str, Handler] | None = None) -> AsyncIterator[Server]:
    """Answers ``routes`` (path -> handler); any other request is a 404. Every request
    is recorded, so a server no request may reach is a canary. ``routes`` may change
    while it runs."""
    port = free_port()
    srv = Server(f"http://127.0.0.1:{port}", {} if routes is None else routes)

    async def any_request(request: web.Request) -> web.StreamResponse:
        srv.hits.append(request.path)
        handler = srv.routes.get(request.path)
        return await handler(request) if handler else web.Response(status=404)

    app = web.Application(client_max_size=4 << 20)
    app.router.add_route("*", "/{tail:.*}", any_request)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield srv
    finally:
        await runner.cleanup()


def introduction(identity: Identity, nonce: bytes, *, endpoint: str, name: str = "Mallory KK",
                 expires: datetime, type: str = "introduction") -> bytes:
    """An introduction signed by ``identity``, built by hand: any field may be one an
    honest node never writes (make_invitation checks what it makes)."""
    return sign(identity, "invitation", {
        "v": 1, "type": type, "name": name, "did": identity.did, "endpoint": endpoint,
        "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "nonce": nonce,
    })


async def post(url: str, body: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            url, data=body, headers={"Content-Type": "application/cbor"}) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if resp.content_type == "application/json" else raw


async def introduce(v: Victim, identity: Identity, endpoint: str, *, name: str = "Mallory KK",
                    nonce: bytes | None = None, valid_for: timedelta = timedelta(minutes=10)
                    ) -> tuple[int, Any]:
    """POST an introduction answering a fresh invitation of the victim (or ``nonce``)."""
    if nonce is None:
        nonce = (await v.node.invite()).nonce
    body = introduction(identity, nonce, endpoint=endpoint, name=name,
                        expires=v.node.now() + valid_for)
    return await post(v.url + INTRODUCE_PATH, body)


async def snapshot(node: Node) -> tuple[Any, ...]:
    """Everything the victim holds: every ledger row, every stored block."""
    tables = []
    for table in ("partners", "invitations", "documents", "acks", "nonces", "outbox"):
        rows = await node.ledger.db.execute_fetchall(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608
        tables.append(sorted(tuple(r) for r in rows))
    blocks = sorted([cid.raw async for cid, _ in node.store.blocks()])
    return tuple(tables), blocks


def document(sender: Identity, to: str) -> dict[str, Any]:
    return {"v": 1, "kind": "quote", "from": sender.did, "to": to,
            "issued_at": "2026-11-22T05:00:00Z", "ref": "Q-evil", "lines": LINES}


def public_home(path: Path, name: str) -> Home:
    """A node whose own endpoint is public (it still listens on 127.0.0.1 for the test):
    by default it sends partner requests only to public addresses."""
    home = make_home(path, name)
    config = home.load_config()
    config.endpoint = "https://kanto.example.com/usagi"
    home.save_config(config)
    return home


def resolves_to_loopback(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(info[4][0].startswith("127.") for info in infos)


# -- 15: endpoints ----------------------------------------------------------------------------


BAD_ENDPOINTS = [
    "http://[x",                      # was a 500 with a traceback
    "http://[x]:80/",
    "http://user:secret@127.0.0.1:9/",
    "http://127.0.0.1:9/?to=elsewhere",
    "http://127.0.0.1:9/#fragment",
    "ftp://127.0.0.1:9/",
    "javascript:alert(1)",
    "http://0.0.0.0:9/",              # connects to the machine itself
    "http://2130706433:9/",           # 127.0.0.1 as one number
    "http://127.1:9/",
    "http://[fe80::1%25eth0]:9/",
    "http://127.0.0.1:0/",
    "http://127.0.0.1:65536/",
    "http://evil_host.example/",
    "http://127.0.0.1:9/\x1b[32m",
    "http://" + "a" * 500 + ".example/",
]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
async def test_an_introduction_with_a_bad_endpoint_is_a_typed_400(tmp_path: Path,
                                                                  endpoint: str) -> None:
    async with victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        invitation = await v.node.invite()
        before = await snapshot(v.node)
        status, answer = await introduce(v, Identity.generate(), endpoint, nonce=invitation.nonce)
        assert (status, answer["error"]) == (400, "invalid_invitation"), answer
        assert await snapshot(v.node) == before
        # The invitation was not used up by the refused introduction.
        status, answer = await introduce(v, Identity.generate(), "http://127.0.0.1:9",
                                         nonce=invitation.nonce)
        assert status == 200, answer


PRIVATE_ENDPOINTS = ["http://127.0.0.1:9/", "http://10.0.0.8/", "http://192.168.1.20:8470/",
                     "http://169.254.169.254/latest/meta-data", "http://[::1]:9/",
                     "http://[::ffff:127.0.0.1]:9/", "http://[fd00::5]/", "http://localhost:9/",
                     "http://api.localhost/"]


async def test_a_node_on_a_public_endpoint_pairs_with_no_private_address(tmp_path: Path) -> None:
    async with victim(public_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        for endpoint in PRIVATE_ENDPOINTS:
            before = await snapshot(v.node)
            status, answer = await introduce(v, Identity.generate(), endpoint)
            assert (status, answer["error"]) == (400, "invalid_invitation"), (endpoint, answer)
            assert "allow_private_endpoints" in answer["message"]
            tables, blocks = await snapshot(v.node)
            assert tables[0] == before[0][0] and blocks == before[1]  # no partner
        # A public name is taken (what it resolves to is judged when it is dialled).
        status, answer = await introduce(v, Identity.generate(), "https://osaka.example.com")
        assert status == 200, answer


async def test_the_config_switch_allows_private_endpoints(tmp_path: Path) -> None:
    home = public_home(tmp_path / "kanto", "Kanto Machine Tools")
    config = home.load_config()
    config.allow_private_endpoints = True
    home.save_config(config)
    async with victim(home) as v:
        status, answer = await introduce(v, Identity.generate(), "http://10.0.0.8/")
        assert status == 200, answer
    # And a loopback node refuses private addresses when told to.
    home = make_home(tmp_path / "osaka", "Osaka Precision")
    config = home.load_config()
    config.allow_private_endpoints = False
    home.save_config(config)
    async with victim(home) as v:
        status, answer = await introduce(v, Identity.generate(), "http://127.0.0.1:9/")
        assert (status, answer["error"]) == (400, "invalid_invitation")


@pytest.mark.parametrize("allow", [False, True])
async def test_a_name_that_resolves_to_loopback_is_not_dialled(tmp_path: Path,
                                                               allow: bool) -> None:
    name = socket.gethostname()
    if not resolves_to_loopback(name):
        pytest.skip(f"{name} does not resolve to loopback here")
    home = public_home(tmp_path / "kanto", "Kanto Machine Tools")
    config = home.load_config()
    config.allow_private_endpoints = allow
    home.save_config(config)
    async with server() as canary, victim(home) as v:
        port = canary.url.rsplit(":", 1)[1]
        status, answer = await introduce(v, Identity.generate(), f"http://{name}:{port}")
        assert status == 200, answer
        sent = await v.node.send("quote", "Mallory", {"ref": "Q-1", "lines": LINES})
        assert await v.node.deliver_once() == 0
        [row] = await v.node.ledger.outbox()
        assert row.cid == sent.cid and row.attempts == 1
        if allow:  # the control: with the switch on, the same name is dialled
            assert canary.hits == ["/usagi/v1/notices"]
        else:
            assert canary.hits == []
            assert "resolves to no address" in (row.last_error or ""), row.last_error


async def test_no_redirect_from_a_partner_is_followed(tmp_path: Path) -> None:
    """Every request to a partner: notices, gateway fetch, rotation, introduction."""
    mallory = Identity.generate()
    async with server() as canary:
        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(canary.url + "/internal/admin")

        routes = {"/usagi/v1/notices": redirect, "/usagi/v1/rotate": redirect,
                  "/usagi/v1/introduce": redirect}
        async with server(routes) as evil, \
                victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
            status, answer = await introduce(v, mallory, evil.url)
            assert status == 200, answer
            sent = await v.node.send("quote", "Mallory", {"ref": "Q-1", "lines": LINES})
            assert await v.node.deliver_once() == 0
            [row] = await v.node.ledger.outbox()
            assert row.cid == sent.cid and "307" in (row.last_error or ""), row.last_error
            # Mallory's notice for a block only its gateway has: the fetch is redirected.
            sealed = kenvelope.seal(document(mallory, v.node.did), mallory)
            notice = make_notice(mallory, sealed.cid, v.node.did, v.node.now())
            evil.routes[f"/ipfs/{sealed.cid}"] = redirect
            status, answer = await post(v.url + NOTICES_PATH,
                                        dagcbor.encode({"notices": [notice]}))
            assert status == 200
            ack = open_ack(dagcbor.decode(answer)["acks"][0])
            assert (ack.status, ack.reason) == ("rejected", "store_unavailable")
            _, told = await v.node.rotate(None, fast_kdf=True)
            assert told["Mallory KK"].startswith("307"), told
            assert evil.hits == ["/usagi/v1/notices", f"/ipfs/{sealed.cid}", "/usagi/v1/rotate"]
    assert canary.hits == []


# -- 4: answers without end -------------------------------------------------------------------

HUGE = 200 << 20  # what the hostile partner offers to send
BOUND = 64 << 20  # what it may cost the victim, at most (an honest answer is < 1 MiB)


def peak_rss() -> int | None:
    """This process's peak resident memory (bytes) since :func:`reset_peak`, if Linux says."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


@contextlib.contextmanager
def memory_bound(limit: int) -> Any:
    """Assert the process's peak memory grew less than ``limit`` inside the block."""
    measured = reset_peak()
    before = peak_rss()
    yield
    after = peak_rss()
    if measured and before is not None and after is not None:
        print(f"peak memory grew by {(after - before) / (1 << 20):.1f} MiB")
        assert after - before < limit, f"peak memory grew by {(after - before) >> 20} MiB"


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about a thousandth of that)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(size >> 20)) + packer.flush()


@dataclass
class Flood:
    """A handler streaming ``HUGE`` bytes with ``status``; ``sent`` counts what got out."""

    status: int = 200
    announce: bool = False
    gzip: bool = False
    sent: int = 0
    done: bool = False

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=self.status)
        resp.content_type = "application/cbor"
        body = gzip_bomb(HUGE) if self.gzip else None
        if body is not None:
            resp.headers["Content-Encoding"] = "gzip"
            resp.content_length = len(body)
        elif self.announce:
            resp.content_length = HUGE
        await resp.prepare(request)
        chunk = bytes(1 << 16)
        try:
            if body is not None:
                await resp.write(body)
                self.sent = HUGE
            while body is None and self.sent < HUGE:
                await resp.write(chunk)
                self.sent += len(chunk)
            self.done = True
        except (ConnectionError, RuntimeError):  # the victim hung up: what we wanted
            pass
        return resp


@contextlib.asynccontextmanager
async def paired_with(tmp_path: Path, routes: dict[str, Handler]
                      ) -> AsyncIterator[tuple[Victim, Server, Identity]]:
    """The victim, Mallory's server answering ``routes``, Mallory paired with the victim."""
    mallory = Identity.generate()
    async with server(routes) as evil, \
            victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        status, answer = await introduce(v, mallory, evil.url)
        assert status == 200, answer
        yield v, evil, mallory


FLOODS = {"streamed": Flood(), "announced": Flood(announce=True), "gzip bomb": Flood(gzip=True)}


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_an_endless_answer_to_a_batch_costs_bounded_memory(tmp_path: Path,
                                                                kind: str) -> None:
    flood = Flood(announce=FLOODS[kind].announce, gzip=FLOODS[kind].gzip)
    async with paired_with(tmp_path, {"/usagi/v1/notices": flood}) as (v, evil, _):
        sent = await v.node.send("quote", "Mallory", {"ref": "Q-1", "lines": LINES})
        before = await snapshot(v.node)
        with memory_bound(BOUND):
            assert await v.node.deliver_once() == 0
        [row] = await v.node.ledger.outbox()
        assert (row.cid, row.state, row.attempts) == (sent.cid, "pending", 1)
        assert (row.last_error or "").startswith("too_large: Mallory KK's answer"), row.last_error
        assert not flood.done or flood.gzip  # the victim stopped reading long before the end
        assert evil.hits == ["/usagi/v1/notices"]
        tables, blocks = await snapshot(v.node)
        # Only the outbox row moved (one attempt, a retry scheduled).
        assert tables[:5] == before[0][:5] and blocks == before[1]


async def test_an_endless_error_answer_is_read_only_in_part(tmp_path: Path) -> None:
    flood = Flood(status=500)
    async with paired_with(tmp_path, {"/usagi/v1/notices": flood}) as (v, _, _):
        await v.node.send("quote", "Mallory", {"ref": "Q-1", "lines": LINES})
        with memory_bound(BOUND):
            assert await v.node.deliver_once() == 0
        [row] = await v.node.ledger.outbox()
        assert (row.last_error or "").startswith("Mallory KK answered 500: ")
        assert len(row.last_error or "") < 400 and not flood.done


async def test_key_rotate_reads_no_endless_answer(tmp_path: Path) -> None:
    routes: dict[str, Handler] = {"/usagi/v1/rotate": Flood(status=500)}
    async with paired_with(tmp_path, routes) as (v, _, _):
        with memory_bound(BOUND):
            _, told = await v.node.rotate(None, fast_kdf=True)
        assert told["Mallory KK"].startswith("500 ") and len(told["Mallory KK"]) < 400
        routes["/usagi/v1/rotate"] = Flood()  # a 200 is enough: its body is not read
        rotation = (await v.node.ledger.own_rotations())[0][3]
        with memory_bound(BOUND):
            assert await v.node.announce_rotation(rotation) == {"Mallory KK": "ok"}


@pytest.mark.parametrize("status", [200, 403])
async def test_partner_add_reads_no_endless_answer(tmp_path: Path, status: int) -> None:
    mallory = Identity.generate()
    flood = Flood(status=status)
    async with server({"/usagi/v1/introduce": flood}) as evil, \
            victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        invitation = make_invitation(mallory, "Mallory KK", evil.url, v.node.now())
        with memory_bound(BOUND), pytest.raises(UsagiError) as raised:
            await v.node.add_partner(invitation.text())
        expected = "too_large" if status == 200 else "peer_error"
        assert raised.value.code == expected and len(str(raised.value)) < 600
        assert not flood.done


# -- 13: acks that answer something else ------------------------------------------------------


def forger(mallory: Identity, how: str) -> Handler:
    """Mallory's notices endpoint: it opens each notice and block for real, then
    answers with an ack bent ``how``."""
    stranger = Identity.generate()

    async def answer(request: web.Request) -> web.StreamResponse:
        batch = dagcbor.decode(await request.read())
        blocks = {CID.for_block(b): b for b in batch.get("blocks", [])}
        acks = []
        for raw in batch["notices"]:
            notice = open_notice(raw)
            digest = kenvelope.open_envelope(blocks[notice.cid], mallory).digest
            fields: dict[str, Any] = {"cid": notice.cid, "to": notice.sender,
                                      "nonce": notice.nonce, "status": "received",
                                      "at": datetime.now(UTC), "digest": digest}
            signer = mallory
            if how == "another nonce":
                fields["nonce"] = os.urandom(16)
            elif how == "another nonce, rejected":
                fields.update(nonce=os.urandom(16), status="rejected", digest=None,
                              reason="decryption_failed")
            elif how == "another signer":
                signer = stranger
            elif how == "another CID":
                fields["cid"] = CID.for_block(b"another block")
            elif how == "another digest":
                fields["digest"] = b"\x12\x20" + bytes(32)
            acks.append(make_ack(signer, **fields))
        return web.Response(body=dagcbor.encode({"acks": acks}), content_type="application/cbor")

    return answer


BENT = {"another nonce": "ack_nonce_mismatch", "another nonce, rejected": "ack_nonce_mismatch",
        "another signer": "ack_wrong_signer", "another CID": "ack_cid_mismatch",
        "another digest": "digest_mismatch"}


@pytest.mark.parametrize("how", ["honest", *BENT])
async def test_an_ack_is_taken_only_for_the_notice_sent(tmp_path: Path, how: str) -> None:
    async with paired_with(tmp_path, {}) as (v, evil, mallory):
        evil.routes["/usagi/v1/notices"] = forger(mallory, how)
        sent = await v.node.send("quote", "Mallory", {"ref": "Q-1", "lines": LINES})
        before = await snapshot(v.node)
        delivered = await v.node.deliver_once()
        [row] = await v.node.ledger.outbox()
        if how == "honest":  # the control: the same forger, honest, is taken
            assert delivered == 1 and row.state == "delivered"
            assert (await v.node.ledger.document(sent.cid)).status == "delivered"
            return
        assert delivered == 0 and (row.state, row.attempts) == ("pending", 1)
        assert (row.last_error or "").startswith(BENT[how] + ": "), row.last_error
        assert await v.node.ledger.ack(sent.cid) is None
        doc = await v.node.ledger.document(sent.cid)
        assert (doc.status, doc.reason) == ("queued", None)
        tables, blocks = await snapshot(v.node)
        assert tables[1:5] == before[0][1:5] and blocks == before[1]


async def test_a_block_under_a_new_notice_gets_an_ack_for_that_notice(pair: Pair) -> None:
    """The receiver's side of the nonce rule: a document it holds, announced again under
    a new notice (e.g. after the sender restored an archive), is answered for that notice."""
    seller, buyer = pair.seller, pair.buyer
    sent = await buyer.send("order", "Kanto", {"ref": "PO-1", "lines": LINES})
    first = await buyer.wait_for_ack(sent.cid, 15)
    assert first is not None and first[1] == "received"
    before = await snapshot(seller)
    again = make_notice(buyer.identity, sent.cid, seller.did, buyer.now())
    status, answer = await post(pair.seller_service.url + NOTICES_PATH,
                                dagcbor.encode({"notices": [again]}))
    assert status == 200
    ack = open_ack(dagcbor.decode(answer)["acks"][0])
    check_ack(ack, cid=sent.cid, by=seller.did, digest=sent.digest, nonce=open_notice(again).nonce)
    assert ack.status == "received"
    tables, blocks = await snapshot(seller)
    assert tables[2:4] == before[0][2:4] and blocks == before[1]  # stored once, ack kept
    assert len(tables[4]) == len(before[0][4]) + 1  # the new nonce is remembered


# -- 7, 14: pairing -----------------------------------------------------------------------------


async def pair_osaka(v: Victim) -> Identity:
    """An honest partner, "Osaka Precision", paired the ordinary way."""
    osaka = Identity.generate()
    status, answer = await introduce(v, osaka, "http://127.0.0.1:9", name="Osaka Precision")
    assert status == 200, answer
    return osaka


@pytest.mark.parametrize("state", ["suspended", "removed"])
async def test_a_partner_set_aside_cannot_introduce_itself_back(tmp_path: Path,
                                                                state: str) -> None:
    mallory = Identity.generate()
    async with victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        await pair_osaka(v)
        invitation = await v.node.invite()
        status, _ = await introduce(v, mallory, "http://127.0.0.1:9", nonce=invitation.nonce)
        assert status == 200
        await v.node.ledger.set_partner(mallory.did, status=state)
        fresh = await v.node.invite()
        before = await snapshot(v.node)
        # The same introduction again, then one renaming itself, then a fresh invitation.
        for nonce, name in ((invitation.nonce, "Mallory KK"),
                            (invitation.nonce, "Osaka Precision"),
                            (fresh.nonce, "Osaka Precision")):
            status, answer = await introduce(v, mallory, "http://127.0.0.1:9", name=name,
                                             nonce=nonce)
            assert (status, answer["error"]) == (403, "unknown_partner"), answer
            assert state in answer["message"]
        assert await snapshot(v.node) == before  # status, name, the fresh invitation: unused
        assert (await v.node.ledger.partner(mallory.did)).status == state  # type: ignore[union-attr]
        assert (await v.node.resolve_partner("Osaka Precision")).name == "Osaka Precision"


async def test_an_active_partner_cannot_rename_itself_by_introducing_again(tmp_path: Path) -> None:
    mallory = Identity.generate()
    async with victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        osaka = await pair_osaka(v)
        invitation = await v.node.invite()
        status, _ = await introduce(v, mallory, "http://127.0.0.1:9", nonce=invitation.nonce)
        assert status == 200
        before = await snapshot(v.node)
        for nonce in (invitation.nonce, (await v.node.invite()).nonce):
            status, answer = await introduce(v, mallory, "http://127.0.0.1:7/elsewhere",
                                             name="Osaka Precision", nonce=nonce)
            assert status == 200, answer  # nothing new: answered as before
        tables, blocks = await snapshot(v.node)
        assert tables[0] == before[0][0] and blocks == before[1]  # name, endpoint, status kept
        assert (await v.node.resolve_partner("Osaka Precision")).did == osaka.did


async def test_a_new_partner_cannot_take_a_name_in_use(tmp_path: Path) -> None:
    async with victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        osaka = await pair_osaka(v)
        before = await snapshot(v.node)
        stored = []
        for name in ("osaka precision", "ＯＳＡＫＡ PRECISION", "Osaka Precision (2)"):
            newcomer = Identity.generate()
            status, answer = await introduce(v, newcomer, "http://127.0.0.1:9", name=name)
            assert status == 200, answer
            stored.append((await v.node.ledger.partner(newcomer.did)).name)  # type: ignore[union-attr]
        assert stored == ["osaka precision (2)", "ＯＳＡＫＡ PRECISION (3)", "Osaka Precision (2) (2)"]
        # The first Osaka keeps its name, its row, and the name still finds it.
        assert (await v.node.resolve_partner("Osaka Precision")).did == osaka.did
        assert (await v.node.resolve_partner("osaka precision (2)")).name == stored[0]
        tables, _ = await snapshot(v.node)
        assert set(before[0][0]) <= set(tables[0])
        sent = await v.node.send("quote", "Osaka Precision", {"ref": "Q-1", "lines": LINES})
        assert sent.partner == osaka.did


async def test_one_invitation_admits_one_key_even_at_once(tmp_path: Path) -> None:
    """Introductions racing with one nonce, from different keys: exactly one is taken."""
    async with victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        for _ in range(8):
            invitation = await v.node.invite()
            before = len(await v.node.ledger.partners())
            keys = [Identity.generate() for _ in range(3)]
            answers = await asyncio.gather(*[
                introduce(v, key, "http://127.0.0.1:9", name="Racer KK", nonce=invitation.nonce)
                for key in keys])
            assert sorted(status for status, _ in answers) == [200, 403, 403], answers
            winner = keys[[status for status, _ in answers].index(200)]
            partners = await v.node.ledger.partners()
            assert len(partners) == before + 1
            assert {p.did for p in partners} & {k.did for k in keys} == {winner.did}
            [used_by] = await v.node.ledger.db.execute_fetchall(
                "SELECT used_by FROM invitations WHERE nonce = ?", (invitation.nonce,))
            assert used_by[0] == winner.did
        # Racing for one name with different invitations: all taken, each its own name.
        answers = await asyncio.gather(*[
            introduce(v, Identity.generate(), "http://127.0.0.1:9", name="Same Name KK")
            for _ in range(4)])
        assert [status for status, _ in answers] == [200] * 4
        names = sorted(p.name for p in await v.node.ledger.partners() if "Same" in p.name)
        assert names == ["Same Name KK", "Same Name KK (2)", "Same Name KK (3)",
                         "Same Name KK (4)"]


@pytest.mark.parametrize(("valid_for", "taken"), [
    (timedelta(minutes=10), True),
    (timedelta(minutes=15), True),   # within the clock allowance of notices (10 minutes)
    (timedelta(minutes=21), False),
    (timedelta(hours=24), False),
])
async def test_an_introduction_is_valid_ten_minutes_at_most(tmp_path: Path, valid_for: timedelta,
                                                          taken: bool) -> None:
    async with victim(make_home(tmp_path / "kanto", "Kanto Machine Tools")) as v:
        invitation = await v.node.invite()
        before = await snapshot(v.node)
        status, answer = await introduce(v, Identity.generate(), "http://127.0.0.1:9",
                                         nonce=invitation.nonce, valid_for=valid_for)
        if taken:
            assert status == 200, answer
            return
        assert (status, answer["error"]) == (400, "invalid_invitation"), answer
        assert await snapshot(v.node) == before  # no partner, the invitation unused


def bad_answer(status: int, body: bytes) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type="application/json")
    return answer


@pytest.mark.parametrize("how", ["unreachable", "refused", "not ok", "not json", "endless"])
async def test_partner_add_stores_nothing_the_partner_did_not_accept(tmp_path: Path,
                                                                     how: str) -> None:
    mallory = Identity.generate()
    routes: dict[str, Handler] = {
        "refused": {INTRODUCE_PATH: bad_answer(403, b'{"error": "unknown_partner"}')},
        "not ok": {INTRODUCE_PATH: bad_answer(200, b'{"ok": false}')},
        "not json": {INTRODUCE_PATH: bad_answer(200, b"[" * 4000)},
        "endless": {INTRODUCE_PATH: Flood()},
    }.get(how, {})
    async with server(routes) as evil, \
            victim(make_home(tmp_path / "osaka", "Osaka Precision")) as v:
        endpoint = f"http://127.0.0.1:{free_port()}" if how == "unreachable" else evil.url
        invitation = make_invitation(mallory, "Mallory KK", endpoint, v.node.now())
        before = await snapshot(v.node)
        with pytest.raises(UsagiError) as raised:
            await v.node.add_partner(invitation.text())
        assert raised.value.code == ("too_large" if how == "endless" else "peer_error")
        assert await snapshot(v.node) == before
        assert await v.node.ledger.partner(mallory.did) is None


async def test_partner_add_again_once_the_partner_is_back(tmp_path: Path) -> None:
    """The honest case of the rule above: a paste that could not be delivered is run again."""
    kanto_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    async with victim(make_home(tmp_path / "osaka", "Osaka Precision")) as osaka:
        kanto = Node.load(kanto_home, None)
        async with kanto:
            text = (await kanto.invite()).text()
        with pytest.raises(UsagiError) as raised:  # Kanto is not serving
            await osaka.node.add_partner(text)
        assert raised.value.code == "peer_error" and "nothing stored" in str(raised.value)
        assert await osaka.node.ledger.partners() == []
        async with victim(kanto_home) as k:
            partner = await osaka.node.add_partner(text)
            assert (partner.name, partner.status) == ("Kanto Machine Tools", "active")
            assert (await k.node.ledger.partner(osaka.node.did)).status == "active"  # type: ignore[union-attr]
            # And once more: nothing new on either side.
            before = await snapshot(k.node), await snapshot(osaka.node)
            assert await osaka.node.add_partner(text) == partner
            assert (await snapshot(k.node), await snapshot(osaka.node)) == before


def test_an_invitation_text_is_base64url_and_nothing_else() -> None:
    from usagi_p2p.node.errors import InvitationError
    from usagi_p2p.node.invitation import PREFIX, parse_invitation

    now = datetime.now(UTC)
    invitation = make_invitation(Identity.generate(), "Osaka Precision", "http://127.0.0.1:9", now)
    text = invitation.text()
    encoded = text[len(PREFIX):]
    # (issued times vary in length: when no padding is due, "==" is refused all the same)
    padded = PREFIX + encoded + ("=" * (-len(encoded) % 4) or "==")
    # White space anywhere is dropped (a mail-wrapped paste); nothing else is (spec 10.1).
    for good in (text, f"  {text}\n", text[:20] + "\n " + text[20:]):
        assert parse_invitation(good, now=now).raw == invitation.raw
    for bad in (text[:20] + "$" + text[20:], text[:20] + "+" + text[21:], padded,
                text + "===", PREFIX + "A"):
        with pytest.raises(InvitationError):
            parse_invitation(bad, now=now)
