"""KuboBlockStore against a real offline daemon (``kubo_url``) and against fake ones.

The contract itself is checked by tests/ipfs/test_contract.py on every store;
this module checks what only the Kubo store has: CIDs byte-identical with what
the daemon computes, pins as the daemon keeps them, CAR import/export, and
loud failures for a daemon that is down, hangs, talks nonsense or lies.
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from ipfs.blockstore import (
    BlockNotFoundError,
    PinnedError,
    StoreError,
    StoreUnavailableError,
)
from ipfs.car import CARParser, CARWriter
from ipfs.kubo import KuboBlockStore
from kernel import dagcbor
from kernel.cid import CID, DAG_CBOR, RAW

Server = Callable[[web.Application], Awaitable[object]]


@pytest.fixture
async def store(kubo_url: str) -> AsyncIterator[KuboBlockStore]:
    async with KuboBlockStore(kubo_url, timeout=20.0) as s:
        yield s


def doc(label: str) -> bytes:
    # The daemon keeps blocks for the whole session: make every block new.
    return dagcbor.encode({"label": label, "nonce": os.urandom(16)})


# -- against the real daemon -------------------------------------------------


@pytest.mark.kubo
@pytest.mark.parametrize("codec", [DAG_CBOR, RAW], ids=["dag-cbor", "raw"])
async def test_put_get_cids_byte_identical(store: KuboBlockStore, codec: int) -> None:
    block = doc("round trip")
    cid = await store.put(block, codec)
    assert cid.raw == CID.for_block(block, codec).raw
    assert str(cid) == str(CID.for_block(block, codec))
    assert await store.get(cid) == block
    assert (await store.stat(cid)).size == len(block)


@pytest.mark.kubo
async def test_pin_semantics(store: KuboBlockStore) -> None:
    block = doc("pin")
    cid = await store.put(block)
    assert not (await store.stat(cid)).pinned
    await store.pin(cid)
    assert cid in await store.pins()
    assert (await store.stat(cid)).pinned
    with pytest.raises(PinnedError):
        await store.delete(cid)
    assert await store.get(cid) == block  # the refusal removed nothing
    await store.unpin(cid)
    await store.unpin(cid)  # a no-op the second time
    assert cid not in await store.pins()
    await store.delete(cid)
    assert not await store.has(cid)
    await store.delete(cid)  # absent: a no-op
    with pytest.raises(BlockNotFoundError):
        await store.pin(cid)


@pytest.mark.kubo
async def test_blocks_report_the_codec_of_our_blocks(store: KuboBlockStore) -> None:
    cbor, raw = doc("listed"), b"\xff raw, not CBOR " + os.urandom(8)
    ours = {await store.put(cbor), await store.put(raw, RAW)}
    seen = {cid: block async for cid, block in store.blocks()}
    assert ours <= set(seen)
    assert seen[CID.for_block(cbor)] == cbor


@pytest.mark.kubo
async def test_dag_import_then_pin_root_then_export(store: KuboBlockStore,
                                                   tmp_path: Path) -> None:
    leaf = b"leaf " + os.urandom(16)
    leaf_cid = CID.for_block(leaf, RAW)
    root = dagcbor.encode({"leaf": leaf_cid, "note": "import"})
    root_cid = CID.for_block(root)
    path = tmp_path / "dag.car"
    with path.open("wb") as fp:
        writer = CARWriter(fp, [root_cid])
        writer.write(root_cid, root)
        writer.write(leaf_cid, leaf)

    assert await store.dag_import(path) == [root_cid]
    assert await store.get(leaf_cid) == leaf
    assert root_cid not in await store.pins()  # import does not pin unless asked
    await store.pin(root_cid, recursive=True)
    assert root_cid in await store.pins()
    assert (await store.stat(root_cid)).pinned
    with pytest.raises(PinnedError):
        await store.delete(leaf_cid)  # kept by the pinned DAG

    parser = CARParser()
    sections = parser.feed(await store.dag_export(root_cid))
    parser.finish()
    assert parser.roots == [root_cid]
    assert dict(sections) == {root_cid: root, leaf_cid: leaf}
    await store.unpin(root_cid)


@pytest.mark.kubo
async def test_dag_import_bytes_and_file(store: KuboBlockStore) -> None:
    block = doc("car bytes")
    buf = io.BytesIO()
    cid = CARWriter(buf, [CID.for_block(block)]).write_block(block)
    assert await store.dag_import(buf.getvalue()) == [cid]
    assert await store.dag_import(io.BytesIO(buf.getvalue()), pin_roots=True) == [cid]
    assert cid in await store.pins()
    await store.unpin(cid)


@pytest.mark.kubo
async def test_export_of_a_missing_root_raises(kubo_url: str) -> None:
    # js-ipfs answers a timed-out export with 200 and a bare CAR header.
    async with KuboBlockStore(kubo_url, timeout=3.0) as s:
        with pytest.raises(BlockNotFoundError):
            await s.dag_export(CID.for_block(doc("never stored")))


@pytest.mark.kubo
async def test_id_and_version_are_returned_as_is(store: KuboBlockStore) -> None:
    assert "ID" in await store.id()
    assert "Version" in await store.version()


# -- daemons that are down, hang, talk nonsense or lie -----------------------


async def test_daemon_down_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with KuboBlockStore(url, timeout=5.0) as s:
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            await s.put(b"x")
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            await s.has(CID.for_block(b"x"))


def fake(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_route("POST", "/api/v0/{tail:.*}", handler)
    return app


@pytest.mark.parametrize("status,body", [(200, b"<html>hello</html>"), (500, b"Internal"),
                                         (404, b"404 page not found")])
async def test_garbage_answers(aiohttp_server: Server, status: int, body: bytes) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body)

    server = await aiohttp_server(fake(handler))
    async with KuboBlockStore(str(server.make_url("/")), timeout=5.0) as s:  # type: ignore[attr-defined]
        with pytest.raises(StoreUnavailableError, match="block/put"):
            await s.put(b"x")
        with pytest.raises(StoreUnavailableError, match="pin/ls"):
            await s.pins()


async def test_hanging_daemon_times_out(aiohttp_server: Server) -> None:
    import asyncio

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="{}")

    server = await aiohttp_server(fake(handler))
    async with KuboBlockStore(str(server.make_url("/")), timeout=0.5) as s:  # type: ignore[attr-defined]
        with pytest.raises(StoreUnavailableError, match="within 0.5 s"):
            await asyncio.wait_for(s.get(CID.for_block(b"x")), timeout=5)


async def test_lying_daemon(aiohttp_server: Server) -> None:
    other = CID.for_block(b"something else")

    async def handler(request: web.Request) -> web.Response:
        if request.match_info["tail"] == "block/put":
            await request.read()
            return web.json_response({"Key": str(other), "Size": 1})
        return web.Response(body=b"not the block")  # block/get

    server = await aiohttp_server(fake(handler))
    async with KuboBlockStore(str(server.make_url("/")), timeout=5.0) as s:  # type: ignore[attr-defined]
        with pytest.raises(StoreError, match="stored the block as") as put_error:
            await s.put(b"mine")
        assert not isinstance(put_error.value, StoreUnavailableError)
        with pytest.raises(StoreError, match="do not hash"):
            await s.get(CID.for_block(b"mine"))


async def test_base58_answers_are_parsed_not_compared(aiohttp_server: Server) -> None:
    block = dagcbor.encode({"hello": "world"})

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        # js-ipfs prints base58btc on several endpoints (zdpu… for dag-cbor).
        return web.json_response({"Key": "zdpuAtX7ZibcWdSKQwiDCkPjWwRvtcKCPku9H7LhgA4qJW4Wk"})

    server = await aiohttp_server(fake(handler))
    async with KuboBlockStore(str(server.make_url("/")), timeout=5.0) as s:  # type: ignore[attr-defined]
        assert await s.put(block) == CID.for_block(block)


async def test_export_with_only_a_header_is_refused(aiohttp_server: Server) -> None:
    cid = CID.for_block(b"root")
    header = io.BytesIO()
    CARWriter(header, [cid])

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=header.getvalue())  # 200, header, no blocks

    server = await aiohttp_server(fake(handler))
    async with KuboBlockStore(str(server.make_url("/")), timeout=5.0) as s:  # type: ignore[attr-defined]
        with pytest.raises(BlockNotFoundError, match="does not hold the root"):
            await s.dag_export(cid)


@pytest.mark.kubo
async def test_the_daemon_collects_what_no_one_pinned(store: KuboBlockStore, kubo_url: str) -> None:
    """Why the store says ``collects_garbage``: the node pins what it must keep."""
    import aiohttp

    assert store.collects_garbage and store.sqlite_path is None
    kept, dropped = doc("pinned"), doc("unpinned")
    kept_cid, dropped_cid = await store.put(kept), await store.put(dropped)
    await store.pin(kept_cid)
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"{kubo_url.rstrip('/')}/api/v0/repo/gc",
                timeout=aiohttp.ClientTimeout(60)) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
        assert not await store.has(dropped_cid)
        assert await store.get(kept_cid) == kept
    finally:
        await store.unpin(kept_cid)
