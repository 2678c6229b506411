"""Content-addressed storage for usagi-p2p: block stores, CAR v1, the trustless gateway.

May import the kernel, aiohttp and aiosqlite; never the node or the plugins.
"""

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

__all__ = [
    "DEFAULT_MAX_BLOCK",
    "BlockNotFoundError",
    "BlockStat",
    "BlockStore",
    "BlockTooLargeError",
    "PinnedError",
    "StoreError",
    "StoreUnavailableError",
]
