"""Keyed requests: an ``Idempotency-Key`` makes a send happen once however often it is asked.

Part of ``usagi_p2p.node.operations`` (see there); the local API's
``POST /api/v1/documents`` uses it (docs/api.md, "Idempotency-Key", which
also says why each step is safe). A key belongs to one token (its id) and
names one request (a hash of it the face computes):

1. :func:`claim_request` claims the key in one conditional statement
   (``Ledger.claim_key``): a new key, or one whose earlier attempt was
   abandoned (its lease ran out) for the same request. Otherwise the key's
   state decides: the same request done is its recorded answer
   (:class:`Replay`), still being answered is ``idempotency_in_progress``,
   another request is ``idempotency_key_reused``.
2. The document is sent with the claim: the ledger records it and gives the
   key its CID in one transaction, and only while the claim holds the key.
   A crash before that commit leaves a key without a CID (nothing was sent:
   the next attempt sends); after it, a key with its CID (the next attempt
   answers with that document and sends nothing).
3. :func:`finish_request` records the answer; :func:`release_request`
   forgets a key whose request failed before anything was sent.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Final

from kernel.cid import CID

from ..errors import (
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    IdempotencyKeysExhaustedError,
)
from ..ledger import KeyClaim
from ..node import Node

__all__ = ["KEY_TTL", "KEYS_PER_TOKEN", "LEASE", "Claimed", "Replay", "claim_request",
           "finish_request", "release_request"]

#: Seconds a key is kept from its first use: a retry within a day gets the first answer.
KEY_TTL: Final = 24 * 3600.0
#: Keys one token may hold at once (within :data:`KEY_TTL`).
KEYS_PER_TOKEN: Final = 10_000
#: Seconds an attempt holds its key beyond the time it may wait for an ack;
#: an attempt still pending after that was abandoned (its process died).
LEASE: Final = 30.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """This attempt holds the key. ``cid``: the document an abandoned attempt sent
    already (answer with it, send nothing); None: send."""

    claim: KeyClaim
    cid: CID | None
    #: Every document the abandoned attempt sent (a batch's, in order); () if none.
    cids: tuple[CID, ...] = ()


@dataclass(frozen=True, slots=True)
class Replay:
    """The key's request was answered: this is its answer, to give again."""

    status: int
    answer: str
    cid: CID | None


async def claim_request(node: Node, token: str, token_name: str, key: str, request: bytes,
                        *, hold: float) -> Claimed | Replay:
    """Claim ``key`` of ``token`` for the request hashed ``request``, for at most
    ``hold`` seconds of work plus :data:`LEASE`; or its recorded answer.

    Raises IdempotencyKeyReusedError (another request under this key),
    IdempotencyInProgressError (an attempt holds it now) or
    IdempotencyKeysExhaustedError (a new key, and the token holds too many).
    """
    now = node.clock()
    claim = KeyClaim(token, key, secrets.token_bytes(16))
    row = await node.ledger.claim_key(claim, token_name, request,
                                      lease_until=now + hold + LEASE,
                                      expire_before=now - KEY_TTL, per_token=KEYS_PER_TOKEN)
    if row is None:
        raise IdempotencyKeysExhaustedError(
            f"this token holds {KEYS_PER_TOKEN} Idempotency-Keys of the last "
            f"{KEY_TTL / 3600:g} hours; send without one, or later")
    if row.request != request:
        raise IdempotencyKeyReusedError("this Idempotency-Key was sent with another request; "
                                        "use a new key for a new request")
    if row.claim == claim.claim:
        cids: tuple[CID, ...] = (row.cid,) if row.cid is not None else ()
        if row.cid is not None and row.state == "pending" and row.answer is not None:
            # a batch: the ledger listed its documents with the first one's CID
            cids = tuple(CID.parse(text) for text in json.loads(row.answer))
        return Claimed(claim, row.cid, cids)
    if row.state == "done" and row.status is not None and row.answer is not None:
        return Replay(row.status, row.answer, row.cid)
    raise IdempotencyInProgressError("the request with this Idempotency-Key is still being "
                                     "answered; retry in a moment")


async def finish_request(node: Node, claim: KeyClaim, status: int, answer: str) -> None:
    """Record the answer of a claimed request: a retry gets it again."""
    await node.ledger.finish_key(claim, status, answer)


async def release_request(node: Node, claim: KeyClaim) -> None:
    """Forget a claimed key whose request sent nothing (it failed): it may be
    tried again. A key that names a document is kept (its attempt is then
    taken over once its lease runs out)."""
    await node.ledger.release_key(claim)
