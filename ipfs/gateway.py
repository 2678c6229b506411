"""Trustless Gateway: serve and fetch verifiable blocks over HTTP.

Implements the subset of the IPFS Trustless Gateway specification
(https://specs.ipfs.tech/http-gateways/trustless-gateway/) a partner needs to
fetch one of our blocks by CID:

* ``GET|HEAD /ipfs/{cid}`` with ``?format=raw`` or ``Accept:
  application/vnd.ipld.raw``: the block itself ("The Body hash MUST match the
  Multihash from the requested CID").
* ``?format=car`` or ``Accept: application/vnd.ipld.car``: a CAR v1 stream
  whose root and only block is the requested one. This gateway is
  non-recursive: our blocks are sealed envelopes with no links to follow, so
  ``dag-scope`` ``block``, ``entity`` and ``all`` all return the root block.
* No deserialized responses, ever: a request naming no format is a 400 ("A
  Gateway SHOULD return HTTP 400 ... when running in strict trustless mode and
  Accept header is missing"), one accepting neither type a 406.

``format`` takes precedence over ``Accept`` ("When both ... are present,
format SHOULD take precedence"). Errors are JSON ``{"error", "message"}`` with
the codes of ``docs/spec.md``.

An optional ``authorize(request, cid)`` hook runs before the store is asked;
it raises :class:`GatewayDenied` to refuse. With ``conceal`` (on the handler or
the exception) a refusal is answered byte for byte like an unknown CID, so a
stranger cannot learn which CIDs we hold.

:class:`GatewayClient` is the other side: it asks for ``format=raw`` (or car),
reads at most ``max_block + 1`` bytes and checks every block against its CID;
a gateway is never trusted.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import aiohttp
from aiohttp import web

from kernel.cid import CID
from kernel.errors import MalformedError

from .blockstore import (
    DEFAULT_MAX_BLOCK,
    BlockNotFoundError,
    BlockStore,
    BlockTooLargeError,
    StoreError,
    StoreUnavailableError,
)
from .car import AsyncCARReader, encode_header, encode_section

__all__ = [
    "RAW_TYPE",
    "CAR_TYPE",
    "AuthorizeHook",
    "GatewayDenied",
    "GatewayUnavailableError",
    "GatewayHandler",
    "gateway_routes",
    "GatewayClient",
]

RAW_TYPE: Final = "application/vnd.ipld.raw"
CAR_TYPE: Final = "application/vnd.ipld.car"
#: Our CAR responses: v1, one block, so trivially depth-first and without duplicates.
_CAR_CONTENT_TYPE: Final = f"{CAR_TYPE}; version=1; order=dfs; dups=n"
#: A block under a CID never changes; path-gateway recommends a year-ish immutable cache.
_IMMUTABLE: Final = "public, max-age=29030400, immutable"
_SCOPES: Final = frozenset({"block", "entity", "all"})

AuthorizeHook = Callable[[web.Request, CID], Awaitable[None]]


class GatewayDenied(StoreError):
    """The gateway refuses to serve this block to this caller."""

    code = "forbidden"

    def __init__(self, message: str | None = None, *, status: int = 403, conceal: bool = False):
        super().__init__(message)
        self.status = status
        #: Answer exactly as for an unknown CID (404), revealing nothing.
        self.conceal = conceal


class GatewayUnavailableError(StoreUnavailableError):
    """The gateway could not be reached or did not answer with the block."""

    def __init__(self, message: str | None = None, *, status: int | None = None):
        super().__init__(message)
        #: The HTTP status the gateway answered with; None if it never answered.
        self.status = status


def _error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"error": code, "message": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json")


def _not_found(cid: CID) -> web.Response:
    # The one answer for "absent" and for a concealed refusal: keep it free of
    # anything that could differ between the two.
    return _error(404, BlockNotFoundError.code, f"{cid} is not available here")


def _accepted(accept: str) -> tuple[str | None, bool]:
    """Pick raw or car from an Accept header (RFC 9110 §12.5.1); (choice, any listed).

    Returns the preferred acceptable type (highest q, earlier wins ties) and
    whether the header named any type at all (an empty or ``*/*`` Accept names
    none: it is a client that did not ask for a verifiable response).
    """
    best: tuple[float, str] | None = None
    named = False
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        media = media.lower()
        if not media or media == "*/*":
            continue
        named = True
        if media not in (RAW_TYPE, CAR_TYPE):
            continue
        q = 1.0
        acceptable = True
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key == "version" and media == CAR_TYPE and value != "1":
                acceptable = False  # we only write CAR v1
        if acceptable and q > 0 and (best is None or q > best[0]):
            best = (q, "raw" if media == RAW_TYPE else "car")
    return (best[1] if best else None), named


class GatewayHandler:
    """aiohttp handler for ``/ipfs/{cid}`` serving blocks from a :class:`BlockStore`."""

    def __init__(
        self,
        store: BlockStore,
        *,
        authorize: AuthorizeHook | None = None,
        conceal: bool = False,
    ) -> None:
        self.store = store
        self.authorize = authorize
        #: Answer every refusal as 404, identical to an unknown CID.
        self.conceal = conceal

    def routes(self) -> list[web.RouteDef]:
        """``GET /ipfs/{cid}``; aiohttp adds HEAD with the same handler."""
        return [web.get("/ipfs/{cid}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            cid = CID.parse(request.match_info["cid"])
        except MalformedError as exc:
            return _error(400, MalformedError.code, str(exc))

        fmt = request.query.get("format")
        if fmt is not None:
            if fmt not in ("raw", "car"):
                return _error(400, "unsupported_format",
                              f"format={fmt!r}: this trustless gateway serves raw and car only")
        else:
            fmt, named = _accepted(request.headers.get("Accept", ""))
            if fmt is None:
                if named:
                    return _error(406, "not_acceptable",
                                  f"this trustless gateway serves only {RAW_TYPE} and {CAR_TYPE}")
                return _error(400, "missing_format",
                              f"ask for ?format=raw or car, or Accept: {RAW_TYPE}")
        scope = request.query.get("dag-scope", "all")
        if fmt == "car":
            if scope not in _SCOPES:
                return _error(400, "unsupported_dag_scope", f"dag-scope={scope!r}")
            if request.query.get("car-version", "1") != "1":
                return _error(400, "unsupported_car_version", "only CAR version 1 is served")

        if self.authorize is not None:
            try:
                await self.authorize(request, cid)
            except GatewayDenied as denied:
                if self.conceal or denied.conceal:
                    return _not_found(cid)
                return _error(denied.status, denied.code, str(denied))

        try:
            block = await self.store.get(cid)
        except BlockNotFoundError:
            if "only-if-cached" in request.headers.get("Cache-Control", ""):
                return _error(412, "not_cached", f"{cid} is not in this gateway's store")
            return _not_found(cid)
        # A CIDMismatchError (our own store damaged) propagates: a 500, never bad bytes.

        if fmt == "raw":
            etag = f'"{cid}.raw"'
            content_type, filename = RAW_TYPE, f"{cid}.bin"
        else:
            etag = f'"{cid}.car.{scope}"'
            content_type, filename = _CAR_CONTENT_TYPE, f"{cid}.car"
        headers = {
            "Content-Type": content_type,
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": _IMMUTABLE,
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Ipfs-Path": f"/ipfs/{cid}",
            "Vary": "Accept",
        }
        if "format" not in request.query:
            headers["Content-Location"] = f"/ipfs/{cid}?format={fmt}"
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)

        if fmt == "raw":
            parts = [block]
        else:
            parts = [encode_header([cid]), encode_section(cid, block)]
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(p) for p in parts)
        await response.prepare(request)
        if request.method != "HEAD":
            # Written in parts: the block is not copied into one CAR buffer.
            for part in parts:
                await response.write(part)
        await response.write_eof()
        return response


def gateway_routes(
    store: BlockStore, *, authorize: AuthorizeHook | None = None, conceal: bool = False
) -> list[web.RouteDef]:
    """Routes to add to an aiohttp app: ``app.add_routes(gateway_routes(store))``."""
    return GatewayHandler(store, authorize=authorize, conceal=conceal).routes()


class GatewayClient:
    """Fetch blocks from a trustless gateway, verifying every byte against its CID."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 30.0,
        max_block: int = DEFAULT_MAX_BLOCK,
        max_car: int = 64 << 20,
    ) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_block = max_block
        self.max_car = max_car

    @staticmethod
    def _url(base_url: str, cid: CID) -> str:
        return f"{base_url.rstrip('/')}/ipfs/{cid}"

    @staticmethod
    def _check_status(response: aiohttp.ClientResponse, cid: CID) -> None:
        if response.status == 404:
            raise BlockNotFoundError(f"{cid} is not available at {response.url}")
        if response.status != 200:
            raise GatewayUnavailableError(
                f"gateway answered {response.status} for {cid}", status=response.status
            )

    async def get_block(
        self, base_url: str, cid: CID, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """The block named ``cid``, hash-checked (CIDMismatchError if the gateway lies)."""
        request_headers = {"Accept": RAW_TYPE, **(headers or {})}
        try:
            async with self.session.get(
                self._url(base_url, cid), params={"format": "raw"},
                headers=request_headers, timeout=self.timeout, allow_redirects=False,
            ) as response:
                self._check_status(response, cid)
                if (response.content_length or 0) > self.max_block:
                    raise BlockTooLargeError(
                        f"gateway announces {response.content_length} bytes for {cid}"
                        f" (limit {self.max_block})"
                    )
                # Read at most one byte past the limit: enough to know it is too big.
                data = bytearray()
                while len(data) <= self.max_block:
                    chunk = await response.content.read(self.max_block + 1 - len(data))
                    if not chunk:
                        break
                    data += chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise GatewayUnavailableError(f"cannot fetch {cid}: {exc!r}") from exc
        if len(data) > self.max_block:
            raise BlockTooLargeError(f"gateway sent more than {self.max_block} bytes for {cid}")
        block = bytes(data)
        cid.verify(block)
        return block

    async def get_car(
        self,
        base_url: str,
        cid: CID,
        headers: Mapping[str, str] | None = None,
        *,
        dag_scope: str = "all",
    ) -> list[tuple[CID, bytes]]:
        """The blocks of a CAR response for ``cid``, each verified; the root must be among them.

        The CAR ``roots`` field is ignored, as the spec tells clients to.
        """
        request_headers = {"Accept": f"{CAR_TYPE}; version=1", **(headers or {})}
        blocks: list[tuple[CID, bytes]] = []
        received = 0
        try:
            async with self.session.get(
                self._url(base_url, cid), params={"format": "car", "dag-scope": dag_scope},
                headers=request_headers, timeout=self.timeout, allow_redirects=False,
            ) as response:
                self._check_status(response, cid)
                reader = AsyncCARReader(
                    response.content.iter_chunked(1 << 16),
                    max_section=self.max_block + 256,  # the block plus its CID
                )
                async for section in reader:
                    received += len(section[0].raw) + len(section[1])
                    if received > self.max_car:
                        raise BlockTooLargeError(f"CAR for {cid} exceeds {self.max_car} bytes")
                    blocks.append(section)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise GatewayUnavailableError(f"cannot fetch {cid}: {exc!r}") from exc
        if not any(found == cid for found, _ in blocks):
            raise GatewayUnavailableError(f"the CAR for {cid} does not contain it", status=200)
        return blocks

