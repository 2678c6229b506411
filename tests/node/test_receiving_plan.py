"""The rules of receiving a batch, on values: no node, no socket, no database, no loop.

usagi_p2p/node/receiving.py decides what a batch of notices is answered and
what is stored (docs/spec.md 11.1, 9, 12); these tests give it a batch, a time
and a snapshot of what a ledger would know, and read the exact error codes and
answers it returns. (The same rules, carried out by real nodes on loopback:
test_hostile_partner.py, test_malicious_envelopes.py, test_thread_injection.py.)
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._document import format_time
from kernel._identity import Identity
from kernel._messages import Notice, make_notice, open_notice
from kernel._thread import Held
from kernel.cid import CID
from kernel.errors import UsagiError
from usagi_p2p.node import receiving
from usagi_p2p.node.ledger import Partner
from usagi_p2p.node.plugin_host import PluginHost
from usagi_p2p.node.receiving import (
    Reanswered,
    Received,
    Refused,
    Rejected,
    Repeated,
    Replayed,
    Taken,
    Triage,
)

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SKEW = timedelta(minutes=10)
ME = Identity(bytes([1]) * 32)  # the receiving node
KANTO = Identity(bytes([2]) * 32)  # a partner
MALLORY = Identity(bytes([3]) * 32)  # another partner
STRANGER = Identity(bytes([4]) * 32)  # no partner
LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]
NO_PLUGINS = PluginHost({}, {})


def document(sender: Identity, *, minutes: int = 0, **fields: Any) -> dict[str, Any]:
    doc = {"v": 1, "kind": "quote", "from": sender.did, "to": ME.did, "ref": "Q-1",
           "issued_at": format_time(NOW + timedelta(minutes=minutes)), "lines": LINES}
    doc.update(fields)
    return doc


def notice_for(sender: Identity, sealed: kenvelope.Sealed, nonce: bytes | None = None) -> Notice:
    return open_notice(make_notice(sender, sealed.cid, ME.did, NOW, nonce=nonce), now=NOW,
                       skew=SKEW)


def partner(identity: Identity, status: str = "active", valid_until: float | None = None
            ) -> Partner:
    return Partner(identity.did, "Kanto", "http://127.0.0.1:1", status, 0.0,
                   valid_until=valid_until)


def opened_batch(items: list[tuple[Identity, kenvelope.Sealed]]
                 ) -> tuple[list[Notice], list[tuple[int, receiving.Outcome]]]:
    """Notices for each (sender, envelope), every block opened as the intake would."""
    notices = [notice_for(sender, sealed) for sender, sealed in items]
    taken = [(i, receiving.open_block(n, items[i][1].block, [ME], {}, NO_PLUGINS))
             for i, n in enumerate(notices)]
    return notices, taken


def planned(notices: list[Notice], taken: list[tuple[int, receiving.Outcome]], *,
            held: dict[CID, Held] | None = None, already: dict[CID, bytes] | None = None,
            answered: dict[CID, tuple[str, str | None]] | None = None,
            storing: dict[bytes, CID] | None = None,
            seen: dict[tuple[str, bytes], bytes] | None = None) -> receiving.Plan:
    """What the intake does between its reads: triage, the link rule, the plan."""
    triaged = receiving.triage(notices, seen or {})
    fresh = [(i, o) for i, o in taken if i in triaged.fresh]
    judged = receiving.judge_links(notices, fresh, already or {}, held or {}, {})
    return receiving.plan(notices, triaged, judged, already or {}, answered or {}, storing or {})


def codes(plan: receiving.Plan) -> list[str | None]:
    return [a.error.code if isinstance(a, Rejected) else None for a in plan.answers]


# -- the batch as a whole -------------------------------------------------------------


@pytest.mark.parametrize(("body", "code"), [
    (dagcbor.encode([]), "malformed"),
    (dagcbor.encode({"notices": [], "extra": 1}), "malformed"),
    (dagcbor.encode({"notices": []}), "too_large"),
    (dagcbor.encode({"notices": [b"x"] * 257}), "limit_exceeded"),
    (dagcbor.encode({"notices": [b"x"], "blocks": ["text"]}), "malformed"),
    (b"\x00" * (receiving.MAX_BODY + 1), "too_large"),
])
def test_a_body_that_is_no_batch_is_refused_whole(body: bytes, code: str) -> None:
    with pytest.raises(UsagiError) as caught:
        receiving.read_batch(body)
    assert caught.value.code == code


def test_an_unknown_sender_refuses_the_batch() -> None:
    sealed = kenvelope.seal(document(STRANGER), STRANGER)
    notice = receiving.read_notice(make_notice(STRANGER, sealed.cid, ME.did, NOW), NOW, SKEW,
                                   {ME.did})
    refusal = receiving.sender_refusal(notice.sender, None, NOW.timestamp())
    assert refusal is not None and refusal.code == "unknown_sender"
    assert "not an active partner" in str(refusal)
    assert receiving.sender_refusal(KANTO.did, partner(KANTO), NOW.timestamp()) is None
    suspended = receiving.sender_refusal(KANTO.did, partner(KANTO, "suspended"), NOW.timestamp())
    assert suspended is not None and suspended.code == "unknown_sender"


def test_a_rotated_key_is_refused_once_its_overlap_has_ended() -> None:
    now = NOW.timestamp()
    assert receiving.sender_refusal(KANTO.did, partner(KANTO, "rotated", now + 1), now) is None
    ended = receiving.sender_refusal(KANTO.did, partner(KANTO, "rotated", now - 1), now)
    assert ended is not None and ended.code == "unknown_sender"
    assert "overlap has ended" in str(ended)


def test_a_notice_for_another_node_or_outside_the_window_refuses_the_batch() -> None:
    sealed = kenvelope.seal(document(KANTO), KANTO)
    raw = make_notice(KANTO, sealed.cid, ME.did, NOW)
    with pytest.raises(UsagiError) as caught:
        receiving.read_notice(raw, NOW, SKEW, {MALLORY.did})
    assert caught.value.code == "wrong_recipient"
    with pytest.raises(UsagiError) as caught:
        receiving.read_notice(raw, NOW + SKEW + timedelta(seconds=1), SKEW, {ME.did})
    assert caught.value.code == "expired"
    with pytest.raises(UsagiError) as caught:
        receiving.read_notice("text", NOW, SKEW, {ME.did})
    assert caught.value.code == "malformed"


def test_a_pushed_block_no_notice_names_refuses_the_batch() -> None:
    named = kenvelope.seal(document(KANTO), KANTO)
    other = kenvelope.seal(document(KANTO, ref="Q-2"), KANTO)
    notices = [notice_for(KANTO, named)]
    receiving.check_pushed({named.cid: named.block}, notices)
    with pytest.raises(UsagiError) as caught:
        receiving.check_pushed({other.cid: other.block}, notices)
    assert caught.value.code == "cid_mismatch"


# -- replays --------------------------------------------------------------------------


def test_a_replayed_nonce_gets_the_ack_already_given_and_a_repeat_its_first_answer() -> None:
    first = kenvelope.seal(document(KANTO), KANTO)
    second = kenvelope.seal(document(KANTO, ref="Q-2"), KANTO)
    replayed = notice_for(KANTO, first)
    new = notice_for(KANTO, second)
    # The same nonce from another partner is another notice.
    mallorys = notice_for(MALLORY, kenvelope.seal(document(MALLORY), MALLORY),
                          nonce=replayed.nonce)
    notices = [replayed, new, new, mallorys]
    triaged = receiving.triage(notices, {(KANTO.did, replayed.nonce): b"the ack given"})
    assert triaged == Triage({0: b"the ack given"}, ((2, 1),), (1, 3))
    taken = [(i, receiving.open_block(notices[i], block, [ME], {}, NO_PLUGINS))
             for i, block in ((1, second.block), (3, kenvelope.seal(
                 document(MALLORY), MALLORY).block))]
    plan = receiving.plan(notices, triaged, taken, {}, {}, {})
    assert plan.answers[0] == Replayed(b"the ack given")
    assert plan.answers[1] == Received(second.digest)
    assert plan.answers[2] == Repeated(1)
    # Notice 3 names another envelope than the block given for it: refused, not stored.
    assert codes(plan)[3] == "cid_mismatch"
    assert [e.index for e in plan.store] == [1]


def test_a_block_held_before_is_answered_again_for_the_new_notice() -> None:
    sealed = kenvelope.seal(document(KANTO), KANTO)
    notices, taken = opened_batch([(KANTO, sealed)])
    plan = planned(notices, taken, already={sealed.cid: sealed.digest},
                   answered={sealed.cid: ("received", None)})
    assert plan.answers == (Reanswered("received", sealed.digest, None),)
    assert plan.store == ()


# -- one block ------------------------------------------------------------------------


def test_each_way_a_block_fails_to_open_has_its_code() -> None:
    notice = notice_for(KANTO, kenvelope.seal(document(KANTO), KANTO))

    def code(block: bytes, notice: Notice = notice) -> str:
        outcome = receiving.open_block(notice, block, [ME], {}, NO_PLUGINS)
        assert isinstance(outcome, Refused)
        return outcome.error.code

    # Signed by Mallory, noticed by Kanto.
    by_mallory = kenvelope.seal(document(MALLORY), MALLORY)
    assert code(by_mallory.block, notice_for(KANTO, by_mallory)) == "wrong_signer"
    # Not sealed to this node at all.
    foreign = kenvelope.seal(document(KANTO, to=MALLORY.did), KANTO)
    assert code(foreign.block, notice_for(KANTO, foreign)) == "not_recipient"
    # A kind no enabled plugin declares.
    odd = kenvelope.seal(document(KANTO, kind="food.recall"), KANTO)
    assert code(odd.block, notice_for(KANTO, odd)) == "unknown_kind"
    # The block another notice names.
    assert code(by_mallory.block) == "cid_mismatch"


def test_a_retired_key_still_opens_and_a_rotated_signer_is_its_successor() -> None:
    successor = Identity(bytes([5]) * 32)
    sealed = kenvelope.seal(document(KANTO), KANTO)
    resent = open_notice(make_notice(successor, sealed.cid, ME.did, NOW), now=NOW, skew=SKEW)
    refused = receiving.open_block(resent, sealed.block, [ME], {}, NO_PLUGINS)
    assert isinstance(refused, Refused) and refused.error.code == "wrong_signer"
    taken = receiving.open_block(resent, sealed.block, [ME], {KANTO.did: successor.did},
                                 NO_PLUGINS)
    assert isinstance(taken, Taken) and taken.opened.signer == KANTO.did
    new_me = Identity(bytes([6]) * 32)
    assert isinstance(receiving.open_block(resent, sealed.block, [new_me, ME],
                                           {KANTO.did: successor.did}, NO_PLUGINS), Taken)


# -- the thread rule ------------------------------------------------------------------


def test_a_reply_to_what_is_neither_held_nor_in_the_batch_is_unknown_prev() -> None:
    nowhere = CID.for_block(b"a document this node never held")
    reply = kenvelope.seal(document(KANTO, kind="order", thread=nowhere, prev=[nowhere]), KANTO)
    notices, taken = opened_batch([(KANTO, reply)])
    assert receiving.links_to_read(notices, taken, {}) == [nowhere]
    plan = planned(notices, taken)
    assert codes(plan) == ["unknown_prev"]
    assert plan.store == () and plan.reserve == {}


def test_a_reply_into_another_partners_thread_reads_like_one_to_nothing() -> None:
    theirs = CID.for_block(b"a quote this node sent to Mallory")
    reply = kenvelope.seal(document(KANTO, kind="order", thread=theirs, prev=[theirs]), KANTO)
    notices, taken = opened_batch([(KANTO, reply)])
    held = {theirs: Held(MALLORY.did, theirs, format_time(NOW - timedelta(days=1)))}
    judged = receiving.judge_links(notices, taken, {}, held, {})
    [(_, outcome)] = judged
    assert isinstance(outcome, Refused)
    assert outcome.error.code == "unknown_prev"
    assert outcome.cause is not None and outcome.cause.code == "foreign_thread"
    # Held with Kanto, the same reply is taken.
    held = {theirs: Held(KANTO.did, theirs, format_time(NOW - timedelta(days=1)))}
    assert codes(planned(notices, taken, held=held)) == [None]


def test_a_reply_may_answer_a_document_of_its_own_batch_unless_that_one_is_refused() -> None:
    quote = kenvelope.seal(document(KANTO), KANTO)
    reply = kenvelope.seal(document(KANTO, kind="order", minutes=1, thread=quote.cid,
                                    prev=[quote.cid]), KANTO)
    notices, taken = opened_batch([(KANTO, quote), (KANTO, reply)])
    plan = planned(notices, taken)
    assert codes(plan) == [None, None]
    assert [e.cid for e in plan.store] == [quote.cid, reply.cid]
    assert plan.store[1].links == {quote.cid}
    # The quote is being stored by another batch under another envelope: refused as a
    # duplicate, and the reply that answers it is left out with it.
    other = CID.for_block(b"another envelope of the same quote")
    plan = planned(notices, taken, storing={quote.digest: other})
    assert codes(plan) == ["duplicate", "unknown_prev"]
    assert plan.store == ()
    assert [i for i, _ in plan.rejected] == [0, 1]


def test_a_reply_older_than_what_it_answers_is_invalid_thread() -> None:
    quote = kenvelope.seal(document(KANTO), KANTO)
    reply = kenvelope.seal(document(KANTO, kind="order", minutes=-1, thread=quote.cid,
                                    prev=[quote.cid]), KANTO)
    notices, taken = opened_batch([(KANTO, quote), (KANTO, reply)])
    assert codes(planned(notices, taken)) == [None, "invalid_thread"]


# -- one signed document, one record ----------------------------------------------------


def test_two_envelopes_of_one_document_in_a_batch_store_the_first() -> None:
    doc = document(KANTO)
    first, second = kenvelope.seal(doc, KANTO), kenvelope.seal(doc, KANTO)
    assert first.cid != second.cid and first.digest == second.digest
    notices, taken = opened_batch([(KANTO, first), (KANTO, second)])
    plan = planned(notices, taken)
    assert codes(plan) == [None, "duplicate"]
    assert [e.cid for e in plan.store] == [first.cid]
    assert plan.reserve == {first.digest: first.cid}


def test_one_block_named_twice_is_stored_once_and_answered_twice() -> None:
    sealed = kenvelope.seal(document(KANTO), KANTO)
    notices = [notice_for(KANTO, sealed), notice_for(KANTO, sealed)]
    taken = [(i, receiving.open_block(n, sealed.block, [ME], {}, NO_PLUGINS))
             for i, n in enumerate(notices)]
    plan = planned(notices, taken)
    assert plan.answers == (Received(sealed.digest), Received(sealed.digest))
    assert [(e.index, e.cid, e.partner) for e in plan.store] == [
        (0, sealed.cid, KANTO.did), (1, sealed.cid, KANTO.did)]
    assert receiving.cost(plan.store[0], {}) == (
        KANTO.did, sealed.cid, len(sealed.block) + len(sealed.signed))


def test_what_the_write_finds_recorded_elsewhere_is_a_duplicate_and_takes_its_replies() -> None:
    quote = kenvelope.seal(document(KANTO), KANTO)
    reply = kenvelope.seal(document(KANTO, kind="order", minutes=1, thread=quote.cid,
                                    prev=[quote.cid]), KANTO)
    notices, taken = opened_batch([(KANTO, quote), (KANTO, reply)])
    plan = planned(notices, taken)
    elsewhere = CID.for_block(b"the envelope the ledger holds it under")
    kept, duplicates = receiving.recorded_elsewhere(plan.store, {quote.digest: elsewhere})
    assert [(i, e.code) for i, e in duplicates] == [(0, "duplicate")]
    kept, dangling = receiving.drop_dangling(kept, plan.opened_here, plan.already)
    assert kept == [] and [(i, e.code) for i, e in dangling] == [(1, "unknown_prev")]


# -- the module stays on values ---------------------------------------------------------


def test_the_rules_import_no_io() -> None:
    """receiving.py imports nothing that does I/O or reads the clock (its
    TYPE_CHECKING imports name types only)."""
    path = Path(receiving.__file__)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # if TYPE_CHECKING: types only
            continue
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0] if not node.level else "." + node.module)
    assert not imported & {"asyncio", "aiohttp", "aiosqlite", "sqlite3", "socket", "time",
                           "os", "ipfs", ".ledger", ".intake", ".node", ".quota"}, imported
