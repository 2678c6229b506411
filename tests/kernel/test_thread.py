"""kernel._thread: a trade's history as one hash-linked chain between two parties;
a reply judged on receipt (check_links); what of a broken thread holds (split_thread)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kernel._envelope import Opened, open_envelope, seal
from kernel._identity import Identity
from kernel._thread import Held, check_links, split_thread, verify_thread
from kernel.cid import CID
from kernel.errors import ForeignThreadError, ThreadError, UnknownPrevError

from ._support import BUYER, SELLER, STRANGER, order


def sealed_and_opened(doc: dict[str, Any], sender: Identity) -> Opened:
    receiver = SELLER if sender is BUYER else BUYER
    sealed = seal(doc, sender, [doc["from"], doc["to"]])
    return open_envelope(
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
    intruder = open_envelope(sealed.block, SELLER, sealed.cid)
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


# -- a reply judged on receipt: check_links --------------------------------------


def _held(*members: tuple[Opened, Identity]) -> dict[CID, Held]:
    """What the buyer's node holds: each member with its other party (not the buyer)."""
    return {o.cid: Held(partner.did, o.document.get("thread", o.cid), o.document["issued_at"])
            for o, partner in members}


def test_check_links_accepts_a_reply_within_the_pair(chain: list[Opened]) -> None:
    root, o, m, r, d = chain
    held = _held(*((x, SELLER) for x in (root, o, m, r)))
    check_links(d.document, SELLER.did, held)
    check_links(root.document, STRANGER.did, {})  # a first document links nothing


def test_check_links_refuses_a_link_into_another_pairs_thread(chain: list[Opened]) -> None:
    root, o, m, r, d = chain
    # The buyer holds the thread with the seller; the stranger answers into it.
    held = _held(*((x, SELLER) for x in (root, o, m, r)))
    with pytest.raises(ForeignThreadError):
        check_links(d.document, STRANGER.did, held)
    # A foreign prev in the stranger's own thread is foreign too.
    own = CID.for_block(b"the stranger's own thread")
    held[own] = Held(STRANGER.did, own, "2025-04-01T08:00:00Z")
    with pytest.raises(ForeignThreadError):
        check_links({**d.document, "thread": own, "prev": [own, r.cid]}, STRANGER.did, held)


def test_check_links_unknown_and_invalid(chain: list[Opened]) -> None:
    root, o, m, r, d = chain
    held = _held(*((x, SELLER) for x in (root, o, m)))
    with pytest.raises(UnknownPrevError):  # d answers r, not (yet) held
        check_links(d.document, SELLER.did, held)
    held = _held(*((x, SELLER) for x in (root, o, m, r)))
    with pytest.raises(ThreadError) as info:  # the thread is not a first document
        check_links({**d.document, "thread": o.cid}, SELLER.did, held)
    assert info.value.code == "invalid_thread"
    other = CID.for_block(b"another thread of the pair")
    held[other] = Held(SELLER.did, other, "2025-04-01T08:00:00Z")
    with pytest.raises(ThreadError) as info:  # a prev of another thread of the pair
        check_links({**d.document, "thread": other, "prev": [other, r.cid]}, SELLER.did, held)
    assert info.value.code == "invalid_thread"
    with pytest.raises(ThreadError) as info:  # older than what it answers
        check_links({**d.document, "issued_at": "2025-04-01T10:59:59Z"}, SELLER.did, held)
    assert info.value.code == "invalid_thread"


def test_check_links_follows_key_rotations(chain: list[Opened]) -> None:
    root, o, m, r, d = chain
    rotated = Identity(bytes.fromhex("44" * 32))
    held = _held(*((x, SELLER) for x in (root, o, m, r)))
    with pytest.raises(ForeignThreadError):
        check_links(d.document, rotated.did, held)
    check_links(d.document, rotated.did, held, {SELLER.did: rotated.did})


# -- what of a thread holds: split_thread -----------------------------------------


def test_split_thread_equals_verify_thread_when_all_hold(chain: list[Opened]) -> None:
    for seed in range(3):
        shuffled = chain[:]
        random.Random(seed).shuffle(shuffled)
        assert split_thread(chain[0].cid, shuffled) == (verify_thread(shuffled), [])


def test_split_thread_sets_aside_what_does_not_hold(chain: list[Opened]) -> None:
    root, o, m, r, d = chain
    doc = order(**{"from": STRANGER.did, "to": SELLER.did, "thread": root.cid,
                   "prev": [o.cid], "issued_at": "2025-04-01T12:00:00Z"})
    sealed = seal(doc, STRANGER)
    intruder = open_envelope(sealed.block, SELLER, sealed.cid)
    # One foreign document: everything else still holds.
    good, bad = split_thread(root.cid, [*chain, intruder])
    assert good == verify_thread(chain)
    assert [(x.cid, e.code) for x, e in bad] == [(intruder.cid, "foreign_thread")]
    # r missing: d, which answers it, goes too; m and o stay.
    good, bad = split_thread(root.cid, [root, o, m, d])
    assert [x.cid for x in good] == [root.cid, o.cid, m.cid]
    assert [(x.cid, e.code) for x, e in bad] == [(d.cid, "invalid_thread")]
    # The first document missing: nothing holds.
    good, bad = split_thread(root.cid, [o, m, r, d])
    assert good == [] and {x.cid for x, _ in bad} == {o.cid, m.cid, r.cid, d.cid}
    # Older than what it answers, and what answers that.
    early = reply(SELLER, BUYER, root.cid, [o.cid], "2025-04-01T09:59:59Z", kind="message")
    later = reply(BUYER, SELLER, root.cid, [early.cid], "2025-04-01T13:00:00Z", kind="message")
    good, bad = split_thread(root.cid, [*chain, early, later])
    assert good == verify_thread(chain)
    assert [x.cid for x, _ in bad] == [early.cid, later.cid]
    # Another thread's first document, and a duplicate.
    other = sealed_and_opened(order(issued_at="2025-04-01T09:00:01Z"), BUYER)
    good, bad = split_thread(root.cid, [*chain, other, o])
    assert good == verify_thread(chain) and [x.cid for x, _ in bad] == [o.cid, other.cid]
