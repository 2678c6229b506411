"""kernel.thread: a trade's history as one hash-linked chain between two parties."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kernel.cid import CID
from kernel.envelope import Opened, open, seal
from kernel.errors import ThreadError
from kernel.identity import Identity
from kernel.thread import verify_thread

from ._support import BUYER, SELLER, STRANGER, order


def sealed_and_opened(doc: dict[str, Any], sender: Identity) -> Opened:
    receiver = SELLER if sender is BUYER else BUYER
    sealed = seal(doc, sender, [doc["from"], doc["to"]])
    return open(
        sealed.block, receiver if receiver.did in (doc["from"], doc["to"]) else sender, sealed.cid
    )


def reply(
    sender: Identity, to: Identity, thread: CID, prev: list[CID], at: str, **changes: Any
) -> Opened:
    doc = order(
        **{
            "from": sender.did,
            "to": to.did,
            "thread": thread,
            "prev": prev,
            "issued_at": at,
            **changes,
        }
    )
    return sealed_and_opened(doc, sender)


@pytest.fixture(scope="module")
def chain() -> list[Opened]:
    root = sealed_and_opened(
        order(
            kind="quote", **{"from": SELLER.did, "to": BUYER.did}, issued_at="2025-04-01T09:00:00Z"
        ),
        SELLER,
    )
    o = reply(BUYER, SELLER, root.cid, [root.cid], "2025-04-01T10:00:00Z")
    r = reply(
        SELLER,
        BUYER,
        root.cid,
        [o.cid],
        "2025-04-01T11:00:00Z",
        kind="order_response",
        response="accept",
    )
    m = reply(BUYER, SELLER, root.cid, [root.cid], "2025-04-01T10:30:00Z", kind="message")
    d = reply(SELLER, BUYER, root.cid, [r.cid, m.cid], "2025-04-02T08:00:00Z", kind="delivery_note")
    return [root, o, m, r, d]


def test_valid_chain_in_causal_order(chain: list[Opened]) -> None:
    for seed in range(5):
        shuffled = chain[:]
        random.Random(seed).shuffle(shuffled)
        assert [x.cid for x in verify_thread(shuffled)] == [x.cid for x in chain]


def test_single_root_is_a_thread(chain: list[Opened]) -> None:
    assert verify_thread([chain[0]]) == [chain[0]]


def test_empty_and_duplicates(chain: list[Opened]) -> None:
    with pytest.raises(ThreadError):
        verify_thread([])
    with pytest.raises(ThreadError):
        verify_thread(chain + [chain[1]])


def test_missing_prev(chain: list[Opened]) -> None:
    root, o, m, r, d = chain
    with pytest.raises(ThreadError):
        verify_thread([root, o, m, d])  # d answers r, which is missing
    dangling = reply(BUYER, SELLER, root.cid, [CID.for_block(b"nowhere")], "2025-04-01T12:00:00Z")
    with pytest.raises(ThreadError):
        verify_thread([root, dangling])


def test_other_parties(chain: list[Opened]) -> None:
    root = chain[0]
    doc = order(
        **{
            "from": STRANGER.did,
            "to": SELLER.did,
            "thread": root.cid,
            "prev": [root.cid],
            "issued_at": "2025-04-01T12:00:00Z",
        }
    )
    sealed = seal(doc, STRANGER)
    intruder = open(sealed.block, SELLER, sealed.cid)
    with pytest.raises(ThreadError):
        verify_thread([root, intruder])


def test_time_going_backwards(chain: list[Opened]) -> None:
    root, o = chain[0], chain[1]
    early = reply(SELLER, BUYER, root.cid, [o.cid], "2025-04-01T09:59:59Z", kind="message")
    with pytest.raises(ThreadError):
        verify_thread([root, o, early])
    same_time = reply(SELLER, BUYER, root.cid, [o.cid], "2025-04-01T10:00:00Z", kind="message")
    assert verify_thread([root, o, same_time])[-1] is same_time


def test_wrong_thread(chain: list[Opened]) -> None:
    root, o = chain[0], chain[1]
    stray = reply(
        SELLER,
        BUYER,
        CID.for_block(b"another thread"),
        [o.cid],
        "2025-04-01T12:00:00Z",
        kind="message",
    )
    with pytest.raises(ThreadError):
        verify_thread([root, o, stray])
    # naming a non-root member of the thread as the thread is wrong too
    off = reply(SELLER, BUYER, o.cid, [o.cid], "2025-04-01T12:00:00Z", kind="message")
    with pytest.raises(ThreadError):
        verify_thread([root, o, off])


def test_two_roots(chain: list[Opened]) -> None:
    other_root = sealed_and_opened(order(issued_at="2025-04-01T09:00:01Z"), BUYER)
    with pytest.raises(ThreadError):
        verify_thread(chain + [other_root])
    with pytest.raises(ThreadError):
        verify_thread(chain[1:])  # no root at all
