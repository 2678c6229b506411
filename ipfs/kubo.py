"""The BlockStore contract over the Kubo RPC API (docs/operations.md, "Kubo").

:class:`KuboBlockStore` keeps blocks in a Kubo daemon (or any server of the
Kubo RPC API ``/api/v0/...``, such as js-ipfs 0.66 used by the tests). The
store never trusts the daemon: ``put`` compares the CID the daemon answers with
``CID.for_block`` and every block handed out is checked against its CID.

One ``aiohttp.ClientSession`` per store (connections are reused); every call is
a POST (Kubo refuses GET on the RPC API) with a client-side timeout, and every
call that may look for a block also carries a server-side ``timeout=`` and
``offline=true`` so a missing block fails instead of being searched for.

Where js-ipfs differs from Kubo (tools/ipfs-daemon/README; both are handled,
behaviour is never gated on version strings):

1. ``block/put``: js-ipfs ignores ``cid-codec`` and reads ``format``; Kubo
   refuses ``format`` together with a ``cid-codec`` other than raw. So we send
   ``format`` (plus ``cid-codec=raw`` for raw, accepted by both) and compare
   the answered CID with our own. js-ipfs answers 413 for bodies over 1 MiB.
2. js-ipfs prints base58btc CIDs (``zdpu…``) on several endpoints: CIDs are
   parsed (any multibase), never compared as strings; ``cid-base=base32`` is sent.
3. ``dag/get`` is not dag-json on js-ipfs: only ``block/get`` is used.
4. A missing block waits for peers even offline: ``timeout=`` always.
5. A timed-out ``dag/export`` answers 200 with only the CAR header: the export is
   parsed and must hold the root block.
6. ``id``/``version`` name js-ipfs 0.18.1: they are returned, never interpreted.

Also: ``refs/local`` lists blocks by multihash (raw-codec CIDs), ``block/rm``
on js-ipfs does not refuse pinned blocks (we check pins first), and
``dag/import`` names its roots only when it pins them (we read the CAR header).

Errors: daemon unreachable, hanging or answering something that is not the
Kubo RPC API raise :class:`StoreUnavailableError` naming the URL and endpoint;
a block the daemon hashes differently raises :class:`StoreError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final

import aiohttp

from kernel import dagcbor
from kernel.cid import CID, DAG_CBOR, DAG_JSON, DAG_PB, RAW
from kernel.errors import CIDMismatchError, UsagiError

from .blockstore import (
    DEFAULT_MAX_BLOCK,
    BlockNotFoundError,
    BlockStat,
    BlockStore,
    BlockTooLargeError,
    PinnedError,
    StoreError,
    StoreUnavailableError,
)
from .car import CARParser

__all__ = ["KuboBlockStore"]

_CODEC_NAMES: Final = {DAG_CBOR: "dag-cbor", RAW: "raw", DAG_PB: "dag-pb", DAG_JSON: "dag-json"}
# Daemon messages meaning "no such block here" (Kubo offline, Kubo, js-ipfs after timeout=).
_ABSENT: Final = ("not found", "could not find", "timed out", "deadline exceeded")
_NOT_PINNED: Final = "not pinned"


def _api_base(url: str) -> str:
    """``http://host:port`` from a URL (with or without ``/api/v0``) or a ``/ip4/…/tcp/…``."""
    url = url.strip()
    if url.startswith(("/ip4/", "/ip6/", "/dns")):
        parts = url.strip("/").split("/")
        host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
        return f"http://{host}:{parts[3]}"
    url = url.rstrip("/")
    return url.removesuffix("/api/v0")


def _duration(seconds: float) -> str:
    return f"{max(1, int(seconds * 1000))}ms"


class KuboBlockStore(BlockStore):
    """Blocks kept by a Kubo-RPC daemon at ``api_url`` (e.g. ``http://127.0.0.1:5001``).

    ``timeout`` bounds every call; ``lookup_timeout`` is how long the daemon may
    look for a block before it counts as absent (Kubo is asked offline and
    answers at once; js-ipfs always waits this long for a missing block).
    ``session`` may be shared; then the caller closes it.
    """

    def __init__(
        self,
        api_url: str,
        *,
        timeout: float = 30.0,
        max_block: int = DEFAULT_MAX_BLOCK,
        session: aiohttp.ClientSession | None = None,
        lookup_timeout: float = 2.0,
    ) -> None:
        self.url = _api_base(api_url)
        self.timeout = timeout
        self.lookup_timeout = min(lookup_timeout, timeout)
        self.max_block = max_block
        self._session = session
        self._own_session = session is None

    # -- plumbing -----------------------------------------------------------

    async def open(self) -> None:
        self._http()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(raise_for_status=False)
            self._own_session = True
        return self._session

    def _unavailable(self, endpoint: str, why: str) -> StoreUnavailableError:
        return StoreUnavailableError(f"IPFS daemon at {self.url} ({endpoint}): {why}")

    def _error(self, endpoint: str, status: int, body: bytes) -> StoreError:
        """The typed error for a non-200 answer; garbage means the daemon is not usable."""
        if status == 413:
            return BlockTooLargeError(f"{endpoint}: the daemon at {self.url} refused the size")
        try:
            doc = json.loads(body)
            message = doc["Message"]
            if not isinstance(message, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            snippet = body[:120].decode("utf-8", "replace")
            return self._unavailable(
                endpoint, f"HTTP {status} that is not a Kubo RPC answer: {snippet!r}")
        if status == 404:
            return self._unavailable(endpoint, f"no such endpoint ({message})")
        return StoreError(f"{endpoint} failed on {self.url}: {message}")

    async def _call(self, endpoint: str, params: Mapping[str, str] | None = None, *,
                    data: Any = None, limit: float | None = None) -> bytes:
        """POST ``/api/v0/{endpoint}``; the whole body of a 200, else a typed error."""
        limit = limit or self.timeout
        try:
            async with self._http().post(
                f"{self.url}/api/v0/{endpoint}", params=params, data=data,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:  # asyncio.TimeoutError is this one since 3.11
            raise self._unavailable(endpoint, f"no answer within {limit:g} s") from None
        except aiohttp.ClientError as exc:
            raise self._unavailable(endpoint, f"unreachable ({exc})") from None
        if status != 200:
            raise self._error(endpoint, status, body)
        return body

    async def _json(self, endpoint: str, params: Mapping[str, str] | None = None, *,
                    data: Any = None, limit: float | None = None) -> Any:
        body = await self._call(endpoint, params, data=data, limit=limit)
        try:
            return json.loads(body)
        except ValueError:
            raise self._unavailable(endpoint, f"not JSON: {body[:120]!r}") from None

    async def _ndjson(self, endpoint: str, params: Mapping[str, str] | None = None, *,
                      data: Any = None, limit: float | None = None) -> list[dict[str, Any]]:
        body = await self._call(endpoint, params, data=data, limit=limit)
        try:
            docs = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            raise self._unavailable(endpoint, f"not JSON lines: {body[:120]!r}") from None
        if not all(isinstance(doc, dict) for doc in docs):
            raise self._unavailable(endpoint, f"not JSON objects: {body[:120]!r}")
        return docs

    def _cid(self, endpoint: str, value: object) -> CID:
        try:
            if isinstance(value, str):
                return CID.parse(value)
        except UsagiError:
            pass
        raise self._unavailable(endpoint, f"answered {value!r} where a CID belongs")

    def _lookup(self, cid: CID, **extra: str) -> dict[str, str]:
        return {"arg": str(cid), "offline": "true", "timeout": _duration(self.lookup_timeout),
                **extra}

    @staticmethod
    def _absent(exc: StoreError) -> bool:
        return type(exc) is StoreError and any(m in str(exc).lower() for m in _ABSENT)

    # -- the BlockStore contract --------------------------------------------

    async def put(self, block: bytes, codec: int = DAG_CBOR) -> CID:
        self._check_size(block)
        expected = CID.for_block(block, codec)
        name = _CODEC_NAMES.get(codec)
        if name is None:
            raise StoreError(f"codec 0x{codec:x} has no Kubo block/put name")
        # js-ipfs reads only `format`; Kubo refuses `format` with a cid-codec other than raw.
        params = {"format": name, "mhtype": "sha2-256", "pin": "false"}
        if codec == RAW:
            params["cid-codec"] = "raw"
        form = aiohttp.FormData()
        form.add_field("file", block, filename="block", content_type="application/octet-stream")
        answer = await self._json("block/put", params, data=form)
        got = self._cid("block/put", answer.get("Key") if isinstance(answer, dict) else None)
        if got != expected:
            raise StoreError(
                f"IPFS daemon at {self.url} stored the block as {got}, but it is {expected}: "
                "the daemon ignored the codec or hashed other bytes; not using it")
        return expected

    async def put_many(self, blocks: Iterable[bytes], codec: int = DAG_CBOR) -> list[CID]:
        # Refuse the whole batch before storing any block of it, as the embedded store does.
        batch = list(blocks)
        for block in batch:
            self._check_size(block)
        return [await self.put(block, codec) for block in batch]

    async def get(self, cid: CID) -> bytes:
        try:
            block = await self._call("block/get", self._lookup(cid))
        except StoreError as exc:
            if self._absent(exc):
                raise BlockNotFoundError(f"{cid} is not in the IPFS daemon at {self.url}") from None
            raise
        try:
            cid.verify(block)
        except CIDMismatchError:
            raise StoreError(
                f"IPFS daemon at {self.url} returned {len(block)} bytes that do not hash to {cid}"
            ) from None
        return block

    async def _size(self, cid: CID) -> int | None:
        try:
            answer = await self._json("block/stat", self._lookup(cid, **{"cid-base": "base32"}))
        except StoreError as exc:
            if self._absent(exc):
                return None
            raise
        size = answer.get("Size") if isinstance(answer, dict) else None
        if not isinstance(size, int):
            raise self._unavailable("block/stat", f"no Size in {answer!r}")
        return size

    async def has(self, cid: CID) -> bool:
        return await self._size(cid) is not None

    async def stat(self, cid: CID) -> BlockStat:
        size = await self._size(cid)
        if size is None:
            raise BlockNotFoundError(f"{cid} is not in the IPFS daemon at {self.url}")
        return BlockStat(cid, size, await self._pin_type(cid) in ("direct", "recursive"))

    async def _pin_type(self, cid: CID) -> str | None:
        """``direct``, ``recursive``, ``indirect`` (kept by a pinned DAG) or None."""
        try:
            answer = await self._json("pin/ls", {"arg": str(cid), "type": "all",
                                                 "cid-base": "base32"})
        except StoreError as exc:
            if _NOT_PINNED in str(exc).lower():
                return None
            raise
        keys = answer.get("Keys") if isinstance(answer, dict) else None
        if not isinstance(keys, dict):
            raise self._unavailable("pin/ls", f"no Keys in {answer!r}")
        for key, info in keys.items():
            if self._cid("pin/ls", key).digest == cid.digest:
                kind = str(info.get("Type", "")) if isinstance(info, dict) else ""
                return kind.split()[0] if kind else "direct"
        return None

    async def pin(self, cid: CID, *, recursive: bool = False) -> None:
        """Pin the block (direct: this block only), or the DAG under it with ``recursive``."""
        try:
            await self._json("pin/add", self._lookup(
                cid, recursive=str(recursive).lower(), **{"cid-base": "base32"}))
        except StoreError as exc:
            if self._absent(exc):
                raise BlockNotFoundError(f"cannot pin {cid}: not in the daemon at {self.url}") \
                    from None
            raise

    async def unpin(self, cid: CID) -> None:
        try:
            # recursive=true removes a direct pin as well (Kubo and js-ipfs).
            await self._json("pin/rm", {"arg": str(cid), "recursive": "true"})
        except StoreError as exc:
            if _NOT_PINNED not in str(exc).lower():
                raise

    async def pins(self) -> list[CID]:
        found: list[CID] = []
        for kind in ("recursive", "direct"):
            answer = await self._json("pin/ls", {"type": kind, "cid-base": "base32"})
            keys = answer.get("Keys") if isinstance(answer, dict) else None
            if not isinstance(keys, dict):
                raise self._unavailable("pin/ls", f"no Keys in {answer!r}")
            found += [self._cid("pin/ls", key) for key in keys]
        return found

    async def delete(self, cid: CID) -> None:
        # js-ipfs removes pinned blocks without a word: check the pins ourselves first.
        kind = await self._pin_type(cid)
        if kind is not None:
            raise PinnedError(f"{cid} is pinned ({kind}) in the daemon at {self.url}")
        for doc in await self._ndjson("block/rm", {"arg": str(cid), "force": "true"}):
            error = str(doc.get("Error") or "")
            if "pinned" in error.lower():
                raise PinnedError(f"{cid}: {error}")
            if error and "not found" not in error.lower():
                raise StoreError(f"block/rm failed on {self.url}: {error}")

    async def blocks(self) -> AsyncIterator[tuple[CID, bytes]]:
        refs = await self._ndjson("refs/local")
        for doc in refs:
            if doc.get("Err"):
                raise StoreError(f"refs/local failed on {self.url}: {doc['Err']}")
            listed = self._cid("refs/local", doc.get("Ref"))
            try:
                block = await self.get(listed)
            except BlockNotFoundError:
                continue  # deleted while we iterate
            yield self._with_codec(listed, block), block

    @staticmethod
    def _with_codec(listed: CID, block: bytes) -> CID:
        """The CID to report for a listed block.

        The daemon keys blocks by multihash and lists them as raw CIDs: the codec
        they were put with is gone. Canonical DAG-CBOR is reported as dag-cbor
        (what our blocks are); anything else stays raw.
        """
        if listed.codec != RAW or listed.hash_code != 0x12:
            return listed
        try:
            dagcbor.decode(block)
        except UsagiError:
            return listed
        return CID.for_block(block, DAG_CBOR)

    # -- beyond the contract --------------------------------------------------

    async def dag_import(self, car: bytes | str | os.PathLike[str] | IO[bytes], *,
                         pin_roots: bool = False) -> list[CID]:
        """Import a CAR v1 (bytes, a path or a binary file); return its header's roots.

        The roots come from the header we read, because the daemon names them only
        when it pins them. On a public Kubo node, importing announces every CID.
        """
        if isinstance(car, bytes):
            return await self._import(car, car, pin_roots)
        if isinstance(car, str | os.PathLike):
            with open(Path(car), "rb") as fp:  # noqa: ASYNC230 - a header read, then streamed
                return await self._import(fp.read(1 << 16), fp, pin_roots)
        return await self._import(car.read(1 << 16), car, pin_roots)

    async def _import(self, head: bytes, body: bytes | IO[bytes], pin_roots: bool) -> list[CID]:
        parser = CARParser(verify=False)
        try:
            parser.feed(head)
        except UsagiError as exc:
            raise StoreError(f"not a CAR v1 file: {exc}") from None
        if not parser.header_read:
            raise StoreError("not a CAR v1 file: no complete header in the first 64 KiB")
        if not isinstance(body, bytes):
            body.seek(0)
        form = aiohttp.FormData()
        form.add_field("file", body, filename="import.car",
                       content_type="application/vnd.ipld.car")
        docs = await self._ndjson("dag/import", {"pin-roots": str(pin_roots).lower()}, data=form)
        for doc in docs:
            root = doc.get("Root")
            if isinstance(root, dict) and root.get("PinErrorMsg"):
                raise StoreError(f"dag/import could not pin a root: {root['PinErrorMsg']}")
        return list(parser.roots)

    async def dag_export(self, cid: CID) -> bytes:
        """The CAR v1 of the DAG under ``cid``, checked block by block."""
        server_limit = _duration(self.timeout * 0.9)  # answer before our own timeout fires
        car = await self._call("dag/export", self._lookup(cid, timeout=server_limit))
        parser = CARParser()
        try:
            sections = parser.feed(car)
            parser.finish()
        except UsagiError as exc:
            raise StoreError(f"dag/export of {cid} from {self.url} is not valid CAR: {exc}") \
                from None
        # js-ipfs answers a timed-out export with 200 and a bare header.
        if parser.roots != [cid] or not any(found == cid for found, _ in sections):
            raise BlockNotFoundError(
                f"dag/export of {cid} from {self.url} does not hold the root block "
                f"({len(sections)} blocks): missing or timed out")
        return car

    async def id(self) -> dict[str, Any]:
        """The daemon's ``id`` answer, as is (js-ipfs and Kubo differ: do not interpret)."""
        return dict(await self._json("id", limit=min(self.timeout, 10.0)))

    async def version(self) -> dict[str, Any]:
        """The daemon's ``version`` answer, as is; never gate behaviour on it."""
        return dict(await self._json("version", limit=min(self.timeout, 10.0)))

