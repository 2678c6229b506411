"""Trustless gateway server and client, over real HTTP on 127.0.0.1 with a real SQLite store."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipfs.blockstore import BlockNotFoundError, BlockTooLargeError
from ipfs.car import CARReader, encode_header, encode_section
from ipfs.gateway import (
    CAR_TYPE,
    RAW_TYPE,
    GatewayClient,
    GatewayDenied,
    GatewayUnavailableError,
    gateway_routes,
)
from ipfs.sqlite import SQLiteBlockStore
from kernel.cid import CID, RAW
from kernel.errors import CIDMismatchError

BLOCK = b"\xa1dnameesealed envelope bytes" * 10


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteBlockStore]:
    async with SQLiteBlockStore(tmp_path / "gw.db") as s:
        yield s


def app_for(store: SQLiteBlockStore, **options: Any) -> web.Application:
    app = web.Application()
    app.add_routes(gateway_routes(store, **options))
    return app


@pytest.fixture
async def client(aiohttp_client: Any, store: SQLiteBlockStore) -> Any:
    return await aiohttp_client(app_for(store))


async def test_raw_by_format(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK)
    r = await client.get(f"/ipfs/{cid}?format=raw")
    assert r.status == 200
    assert await r.read() == BLOCK
    assert r.headers["Content-Type"] == RAW_TYPE
    assert r.headers["ETag"] == f'"{cid}.raw"'
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "public, max-age=29030400, immutable"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{cid}.bin"'
    assert "Content-Location" not in r.headers


async def test_raw_by_accept(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK, RAW)
    r = await client.get(f"/ipfs/{cid}", headers={"Accept": RAW_TYPE})
    assert r.status == 200 and await r.read() == BLOCK
    assert r.headers["Content-Location"] == f"/ipfs/{cid}?format=raw"


async def test_format_takes_precedence_over_accept(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK)
    r = await client.get(f"/ipfs/{cid}?format=raw", headers={"Accept": CAR_TYPE})
    assert r.headers["Content-Type"] == RAW_TYPE


@pytest.mark.parametrize("ask", [{"query": "?format=car"}, {"accept": CAR_TYPE},
                                 {"query": "?format=car&dag-scope=block"},
                                 {"accept": f"{RAW_TYPE};q=0.5, {CAR_TYPE};version=1"}])
async def test_car(client: Any, store: SQLiteBlockStore, ask: dict[str, str]) -> None:
    cid = await store.put(BLOCK)
    headers = {"Accept": ask["accept"]} if "accept" in ask else {}
    r = await client.get(f"/ipfs/{cid}{ask.get('query', '')}", headers=headers)
    assert r.status == 200
    assert r.headers["Content-Type"].startswith(f"{CAR_TYPE}; version=1")
    assert r.headers["ETag"].startswith(f'"{cid}.car.')
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    body = await r.read()
    assert body == encode_header([cid]) + encode_section(cid, BLOCK)
    reader = CARReader(io.BytesIO(body))
    assert reader.roots == [cid]
    assert list(reader) == [(cid, BLOCK)]


async def test_car_etag_depends_on_scope(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK)
    block = await client.get(f"/ipfs/{cid}?format=car&dag-scope=block")
    everything = await client.get(f"/ipfs/{cid}?format=car")
    assert block.headers["ETag"] != everything.headers["ETag"]


async def test_head(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK)
    r = await client.head(f"/ipfs/{cid}?format=raw")
    assert r.status == 200
    assert r.headers["Content-Length"] == str(len(BLOCK))
    assert await r.read() == b""
    r = await client.head(f"/ipfs/{CID.for_block(b'absent')}?format=raw")
    assert r.status == 404


async def test_if_none_match(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK)
    r = await client.get(f"/ipfs/{cid}?format=raw", headers={"If-None-Match": f'"{cid}.raw"'})
    assert r.status == 304


async def error(r: Any, status: int, code: str) -> None:
    assert r.status == status
    assert r.headers["Content-Type"].startswith("application/json")
    assert (await r.json())["error"] == code


async def test_unknown_cid_is_404(client: Any) -> None:
    await error(await client.get(f"/ipfs/{CID.for_block(b'absent')}?format=raw"),
                404, "block_not_found")
    await error(await client.get(f"/ipfs/{CID.for_block(b'absent')}?format=car"),
                404, "block_not_found")


async def test_only_if_cached(client: Any) -> None:
    r = await client.get(f"/ipfs/{CID.for_block(b'absent')}?format=raw",
                         headers={"Cache-Control": "only-if-cached"})
    assert r.status == 412


@pytest.mark.parametrize("text", ["nonsense", "bafy", "b" + "a" * 60, "QmNotACid"])
async def test_malformed_cid_is_400(client: Any, text: str) -> None:
    await error(await client.get(f"/ipfs/{text}?format=raw"), 400, "malformed")


async def test_missing_format_is_400(client: Any, store: SQLiteBlockStore) -> None:
    cid = await store.put(BLOCK)
    await error(await client.get(f"/ipfs/{cid}", headers={"Accept": "*/*"}), 400,
                "missing_format")
    await error(await client.get(f"/ipfs/{cid}?format=dag-json"), 400, "unsupported_format")
    await error(await client.get(f"/ipfs/{cid}?format=car&dag-scope=everything"), 400,
                "unsupported_dag_scope")


@pytest.mark.parametrize("accept", ["text/html", "application/json, text/plain",
                                    f"{RAW_TYPE};q=0", f"{CAR_TYPE};version=2"])
async def test_deserialized_responses_are_406(client: Any, store: SQLiteBlockStore,
                                               accept: str) -> None:
    cid = await store.put(BLOCK)
    await error(await client.get(f"/ipfs/{cid}", headers={"Accept": accept}), 406,
                "not_acceptable")


def deny(status: int = 403, conceal: bool = False) -> Any:
    async def authorize(request: web.Request, cid: CID) -> None:
        if request.headers.get("X-Party") != "buyer":
            raise GatewayDenied("not a party to this trade", status=status, conceal=conceal)
    return authorize


async def test_authorize_allows_and_denies(aiohttp_client: Any, store: SQLiteBlockStore) -> None:
    client = await aiohttp_client(app_for(store, authorize=deny()))
    cid = await store.put(BLOCK)
    allowed = await client.get(f"/ipfs/{cid}?format=raw", headers={"X-Party": "buyer"})
    assert allowed.status == 200 and await allowed.read() == BLOCK
    await error(await client.get(f"/ipfs/{cid}?format=raw"), 403, "forbidden")


async def test_denial_carries_its_status(aiohttp_client: Any, store: SQLiteBlockStore) -> None:
    client = await aiohttp_client(app_for(store, authorize=deny(status=401)))
    cid = await store.put(BLOCK)
    assert (await client.get(f"/ipfs/{cid}?format=raw")).status == 401


@pytest.mark.parametrize("where", ["handler", "exception"])
async def test_concealed_denial_looks_like_not_found(aiohttp_client: Any,
                                                     store: SQLiteBlockStore, where: str) -> None:
    if where == "handler":
        app = app_for(store, authorize=deny(), conceal=True)
    else:
        app = app_for(store, authorize=deny(conceal=True))
    client = await aiohttp_client(app)
    held = await store.put(BLOCK)
    absent = CID.for_block(b"absent")
    answers = []
    for cid, party in [(held, "stranger"), (absent, "buyer")]:
        r = await client.get(f"/ipfs/{cid}?format=raw", headers={"X-Party": party})
        body = (await r.read()).replace(str(cid).encode(), b"<cid>")
        answers.append((r.status, r.headers["Content-Type"], body))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404


# -- client ------------------------------------------------------------------


@pytest.fixture
async def server(aiohttp_server: Any, store: SQLiteBlockStore) -> Any:
    return await aiohttp_server(app_for(store))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def base(server: Any) -> str:
    return str(server.make_url("/"))


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.binary(max_size=8192))
async def test_client_round_trip(server: Any, session: aiohttp.ClientSession,
                                 store: SQLiteBlockStore, block: bytes) -> None:
    cid = await store.put(block)
    gateway = GatewayClient(session)
    assert await gateway.get_block(base(server), cid) == block
    assert await gateway.get_car(base(server), cid) == [(cid, block)]


async def test_client_not_found(server: Any, session: aiohttp.ClientSession) -> None:
    gateway = GatewayClient(session)
    with pytest.raises(BlockNotFoundError):
        await gateway.get_block(base(server), CID.for_block(b"absent"))
    with pytest.raises(BlockNotFoundError):
        await gateway.get_car(base(server), CID.for_block(b"absent"))


async def test_client_sends_headers_and_maps_denial(
    aiohttp_server: Any, store: SQLiteBlockStore, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(app_for(store, authorize=deny()))
    cid = await store.put(BLOCK)
    gateway = GatewayClient(session)
    assert await gateway.get_block(base(server), cid, headers={"X-Party": "buyer"}) == BLOCK
    with pytest.raises(GatewayUnavailableError) as info:
        await gateway.get_block(base(server), cid)
    assert info.value.status == 403


async def test_client_unreachable(session: aiohttp.ClientSession, unused_tcp_port: int) -> None:
    gateway = GatewayClient(session, timeout=5)
    with pytest.raises(GatewayUnavailableError) as info:
        await gateway.get_block(f"http://127.0.0.1:{unused_tcp_port}", CID.for_block(b"x"))
    assert info.value.status is None


def lying_app(body: bytes, *, chunked: bool = False) -> web.Application:
    """A gateway that answers every request with ``body``, whatever was asked."""
    async def handle(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type=RAW_TYPE)
        response = web.StreamResponse()  # no Content-Length: the client must count
        await response.prepare(request)
        await response.write(body)
        return response
    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handle)
    return app


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_client_rejects_tampered_block(aiohttp_server: Any,
                                             session: aiohttp.ClientSession,
                                             data: st.DataObject) -> None:
    block = data.draw(st.binary(min_size=1, max_size=512))
    index = data.draw(st.integers(0, len(block) - 1))
    bad = bytearray(block)
    bad[index] ^= 0x01
    server = await aiohttp_server(lying_app(bytes(bad)))
    with pytest.raises(CIDMismatchError):
        await GatewayClient(session).get_block(base(server), CID.for_block(block))
    await server.close()


async def test_client_rejects_tampered_car(aiohttp_server: Any,
                                           session: aiohttp.ClientSession) -> None:
    cid = CID.for_block(BLOCK)
    tampered = encode_header([cid]) + encode_section(cid, BLOCK[:-1] + b"!")
    server = await aiohttp_server(lying_app(tampered))
    with pytest.raises(CIDMismatchError):
        await GatewayClient(session).get_car(base(server), cid)


async def test_client_rejects_car_without_the_root(aiohttp_server: Any,
                                                   session: aiohttp.ClientSession) -> None:
    other = CID.for_block(b"other")
    server = await aiohttp_server(lying_app(encode_header([other])
                                            + encode_section(other, b"other")))
    with pytest.raises(GatewayUnavailableError):
        await GatewayClient(session).get_car(base(server), CID.for_block(BLOCK))


@pytest.mark.parametrize("chunked", [False, True])
async def test_client_size_cap(aiohttp_server: Any, session: aiohttp.ClientSession,
                               chunked: bool) -> None:
    huge = b"z" * 5000
    server = await aiohttp_server(lying_app(huge, chunked=chunked))
    with pytest.raises(BlockTooLargeError):
        await GatewayClient(session, max_block=4096).get_block(base(server),
                                                               CID.for_block(huge))
    # At the limit exactly, the block is accepted.
    server2 = await aiohttp_server(lying_app(huge[:4096], chunked=chunked))
    assert await GatewayClient(session, max_block=4096).get_block(
        base(server2), CID.for_block(huge[:4096])) == huge[:4096]


async def test_error_bodies_are_json(client: Any) -> None:
    r = await client.get("/ipfs/nonsense?format=raw")
    assert set(json.loads(await r.read())) == {"error", "message"}
