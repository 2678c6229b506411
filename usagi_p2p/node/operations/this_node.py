"""This node itself: its status at a glance, its key and rotations, its outbox.

Part of ``usagi_p2p.node.operations`` (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..errors import NodeError
from ..node import Node
from .documents import SERVE_STATE
from .partners import QuotaUsage, quota_usage

__all__ = ["KeyInfo", "KeyRotation", "NodeStatus", "Rotation", "node_status", "key_info",
           "rotate_key", "announce_key", "resume_outbox"]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """This node at a glance (``usagi status``)."""

    name: str
    did: str
    endpoint: str
    store: str
    partners: int
    sent: int
    received: int
    outbox: dict[str, int]
    serving: bool
    quotas: tuple[QuotaUsage, ...]


@dataclass(frozen=True, slots=True)
class Rotation:
    old: str
    new: str
    overlap_until: float


@dataclass(frozen=True, slots=True)
class KeyInfo:
    did: str
    retired: tuple[str, ...]
    rotations: tuple[Rotation, ...]


@dataclass(frozen=True, slots=True)
class KeyRotation:
    old: str
    new: str
    #: Per partner name: "ok", or why it could not be told.
    partners: dict[str, str]


# -- this node ----------------------------------------------------------------


async def node_status(node: Node) -> NodeStatus:
    """This node: identity, endpoint, store, partners, documents, outbox, quotas."""
    listed = await node.ledger.partners()
    return NodeStatus(
        name=node.config.name, did=node.did, endpoint=node.config.endpoint,
        store=node.config.kubo_url or str(node.home.blocks_path),
        partners=len(listed),
        sent=await node.ledger.count_documents("out"),
        received=await node.ledger.count_documents("in"),
        outbox=await node.ledger.outbox_counts(),
        serving=(node.home.path / SERVE_STATE).exists(),
        # What each partner stored in this quota period, against its quota.
        quotas=await quota_usage(node, listed, await node.ledger.aliases()))


async def key_info(node: Node) -> KeyInfo:
    """The current DID, the retired keys kept to open old documents, the rotations."""
    rotations = await node.ledger.own_rotations()
    return KeyInfo(node.did, tuple(i.did for i in node.retired),
                   tuple(Rotation(old, new, until) for old, new, until, _ in rotations))


async def rotate_key(node: Node, passphrase: str | None,
                     overlap: timedelta = timedelta(days=14)) -> KeyRotation:
    """Move to a new key and tell every active partner (docs/spec.md section 10.3)."""
    old = node.did
    _, told = await node.rotate(passphrase, overlap)
    return KeyRotation(old, node.did, told)


async def announce_key(node: Node) -> dict[str, str]:
    """Tell partners again about this node's latest rotation: per partner, "ok" or why not."""
    # (A rotation restored from an archive keeps no statement to announce.)
    rotations = [r for r in await node.ledger.own_rotations() if r[1] == node.did and r[3]]
    if not rotations:
        raise NodeError("this node has no rotation statement to announce")
    told: dict[str, str] = await node.announce_rotation(rotations[0][3])
    return told


async def resume_outbox(node: Node) -> None:
    """Before a delivery loop starts: leases a stopped process held on the outbox
    are released, so its documents are delivered again."""
    await node.ledger.release_leases()

