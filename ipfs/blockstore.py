"""The BlockStore contract: one async interface, several stores (docs/operations.md).

A block store keeps content-addressed blocks. The store computes every CID
itself (``put`` returns it; the caller is never trusted on one) and checks
every block it hands out against its CID. Blocks are bounded in size.

Implementations: :class:`ipfs.sqlite.SQLiteBlockStore` (embedded, default) and
:class:`ipfs.kubo.KuboBlockStore` (a Kubo-compatible RPC daemon). Both pass the
same contract suite (``tests/ipfs/test_contract.py``).

Callers ask a store what it can do, never which class it is:

* :attr:`BlockStore.collects_garbage`: the store may drop a block no one
  pinned (Kubo's garbage collector), so a caller that must keep a block pins
  it, and unpins it before deleting it. The embedded store keeps every block.
* :attr:`BlockStore.sqlite_path`: the blocks are rows of a SQLite file that a
  reader may attach read-only (:func:`ipfs.sqlite.attach_blocks`) and read in
  the same snapshot as its own tables (an archive export reads each document
  with its block in one statement); ``None`` where they are not.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Final

from kernel.cid import CID, DAG_CBOR
from kernel.errors import UsagiError

__all__ = [
    "BlockStore",
    "BlockStat",
    "StoreError",
    "BlockTooLargeError",
    "BlockNotFoundError",
    "PinnedError",
    "StoreUnavailableError",
    "DEFAULT_MAX_BLOCK",
]

#: Our default block limit. Kubo's own hard cap is 2 MiB; js-ipfs refuses > 1 MiB bodies.
DEFAULT_MAX_BLOCK: Final = 1 << 20


class StoreError(UsagiError):
    """The block store failed."""

    code = "store_error"


class BlockTooLargeError(StoreError):
    """The block is larger than the store's limit."""

    code = "block_too_large"


class BlockNotFoundError(StoreError):
    """No block with this CID is in the store."""

    code = "block_not_found"


class PinnedError(StoreError):
    """The block is pinned; unpin it before deleting it."""

    code = "pinned"


class StoreUnavailableError(StoreError):
    """The store (or the daemon behind it) cannot be reached or answered nonsense."""

    code = "store_unavailable"


@dataclass(frozen=True, slots=True)
class BlockStat:
    cid: CID
    size: int
    pinned: bool


class BlockStore(abc.ABC):
    """Async content-addressed block storage. Use as ``async with store:``."""

    max_block: int = DEFAULT_MAX_BLOCK
    #: Whether a block no one pinned may disappear (see the module docstring).
    collects_garbage: bool = True

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file holding the blocks, to attach read-only; None if there is none."""
        return None

    async def __aenter__(self) -> BlockStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect or create what the store needs."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def _check_size(self, block: bytes) -> None:
        if len(block) > self.max_block:
            raise BlockTooLargeError(f"block of {len(block)} bytes (limit {self.max_block})")

    @abc.abstractmethod
    async def put(self, block: bytes, codec: int = DAG_CBOR) -> CID:
        """Store ``block`` durably; return its CIDv1 (sha2-256) under ``codec``."""

    async def put_many(self, blocks: Iterable[bytes], codec: int = DAG_CBOR) -> list[CID]:
        """Store many blocks (in one transaction where the store has them)."""
        return [await self.put(block, codec) for block in blocks]

    @abc.abstractmethod
    async def get(self, cid: CID) -> bytes:
        """The block's bytes, checked against ``cid``; BlockNotFoundError if absent."""

    @abc.abstractmethod
    async def has(self, cid: CID) -> bool:
        """Whether the block is in the store."""

    @abc.abstractmethod
    async def stat(self, cid: CID) -> BlockStat:
        """Size and pin state; BlockNotFoundError if absent."""

    @abc.abstractmethod
    async def pin(self, cid: CID) -> None:
        """Keep the block (BlockNotFoundError if absent)."""

    @abc.abstractmethod
    async def unpin(self, cid: CID) -> None:
        """Stop keeping the block (a no-op when it was not pinned)."""

    @abc.abstractmethod
    async def pins(self) -> list[CID]:
        """Every directly pinned CID."""

    @abc.abstractmethod
    async def delete(self, cid: CID) -> None:
        """Remove the block; PinnedError if pinned, a no-op if absent."""

    @abc.abstractmethod
    def blocks(self) -> AsyncIterator[tuple[CID, bytes]]:
        """Every block in the store, each checked against its CID.

        The CID's multihash identifies the block; its codec may differ from the
        one the block was put with on stores that key blocks by hash alone
        (Kubo reports such blocks as raw).
        """
