"""Receiving a batch of notices, decided on values (docs/spec.md §11.1, §9, §12).

This module holds the rules; :mod:`usagi_p2p.node.intake` does the I/O. Nothing
here reads a socket, a file, the database or the clock, and nothing awaits:
each function takes the batch, the time and what the ledger knew when it was
read (a snapshot), and returns a value, so each rule is tested on values
(tests/node/test_receiving_plan.py) with no node running.

The steps, in the order of §11.1:

1. :func:`read_batch`, :func:`read_notice`, :func:`sender_refusal`,
   :func:`check_pushed`: what refuses the whole batch (raised: the batch is
   answered with an HTTP error and nothing is processed);
2. :func:`triage`: which notices were answered before (replays, §11.1 step 4),
   which repeat a notice of the same batch, which are new;
3. :func:`open_block`: one block checked and opened (step 5), a :class:`Taken`
   or a :class:`Refused`, never an exception;
4. :func:`links_to_read` and :func:`judge_links`: the thread rule on the
   batch's replies (§9), against what the ledger holds;
5. :func:`plan`: each notice's :data:`Answer` and the documents to store
   (:class:`Plan`), given the acks already given and the digests other
   batches in flight are storing;
6. between the writes of step 6: :func:`cost` (what a document charges its
   sender's quota, §12), :func:`recorded_elsewhere` and :func:`drop_dangling`
   (what is left out once a write found a duplicate or the quota was full).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from kernel import Held, Identity, Notice, Opened, canonical, check_links, dagcbor, open_envelope, open_notice
from kernel.cid import CID
from kernel.errors import (
    CIDMismatchError,
    ForeignThreadError,
    MalformedError,
    NotRecipientError,
    ThreadError,
    UnknownPrevError,
    UnknownSenderError,
    UsagiError,
    WrongRecipientError,
    WrongSignerError,
)
from kernel.plugin import Finding

from .errors import BodyTooLargeError, DuplicateError

if TYPE_CHECKING:  # types only: this module calls neither
    from .ledger import Partner
    from .plugin_host import PluginHost

__all__ = [
    "MAX_BATCH", "MAX_BODY", "BATCH_LIMITS", "RawBatch", "Known", "Triage", "Taken", "Refused",
    "Outcome", "Store", "Replayed", "Repeated", "Rejected", "Reanswered", "Received", "Answer",
    "Plan", "read_batch", "read_notice", "sender_refusal", "check_pushed", "nonces_by_sender",
    "triage", "open_sealed", "open_block", "links_to_read", "judge_links", "plan", "cost",
    "recorded_elsewhere", "drop_dangling",
]

MAX_BATCH: Final = 256
MAX_BODY: Final = 1 << 20
BATCH_LIMITS: Final = dagcbor.Limits(max_size=MAX_BODY, max_depth=3, max_length=MAX_BATCH)

#: A refusal with the index of the notice it answers.
Refusal = tuple[int, UsagiError]


# -- the batch as a whole (§11.1 steps 1-3) ---------------------------------------


@dataclass(frozen=True, slots=True)
class RawBatch:
    """A batch decoded and of the right shape: its signed notices, not yet read, and
    the blocks pushed with them, by the CID they hash to."""

    notices: tuple[object, ...]
    pushed: Mapping[CID, bytes]


def read_batch(body: bytes) -> RawBatch:
    """Step 1: decode strictly; raise for a body that is no batch."""
    if len(body) > MAX_BODY:
        raise BodyTooLargeError(f"batch body of {len(body)} bytes (limit {MAX_BODY})")
    batch = dagcbor.decode(body, BATCH_LIMITS)
    if (type(batch) is not dict or "notices" not in batch
            or not set(batch) <= {"notices", "blocks"} or type(batch["notices"]) is not list
            or type(batch.get("blocks", [])) is not list):
        raise MalformedError('a batch is {"notices": [notice], ? "blocks": [block]}')
    raws = batch["notices"]
    if not raws or len(raws) > MAX_BATCH:
        raise BodyTooLargeError(f"a batch holds 1..{MAX_BATCH} notices")
    pushed: dict[CID, bytes] = {}
    for block in batch.get("blocks", []):
        if type(block) is not bytes:
            raise MalformedError("each pushed block is a byte string")
        pushed[CID.for_block(block)] = block
    return RawBatch(tuple(raws), pushed)


def read_notice(raw: object, now: datetime, skew: timedelta, mine: Set[str]) -> Notice:
    """Step 2, one notice: signed by its sender, inside the time window, for one of
    ``mine`` (this node's keys). Raises for a notice that fails."""
    if type(raw) is not bytes:
        raise MalformedError("each notice is a byte string")
    notice = open_notice(raw, now=now, skew=skew)
    if notice.recipient not in mine:
        raise WrongRecipientError(f"notice is for {notice.recipient}, not for this node")
    return notice


def sender_refusal(did: str, partner: Partner | None, now: float) -> UnknownSenderError | None:
    """Step 2, one sender (``partner``: the ledger's record of ``did``): why it may not
    send, or None when it may."""
    if partner is not None and partner.accepted_at(now):
        return None
    why = ("its key was rotated and the overlap has ended"
           if partner is not None and partner.status == "rotated"
           else "it is not an active partner")
    return UnknownSenderError(f"{did} refused: {why}")


def check_pushed(pushed: Mapping[CID, bytes], notices: Sequence[Notice]) -> None:
    """Step 3: only blocks that hash to a CID a signed notice names are taken;
    anything else is refused with the whole batch."""
    if not pushed.keys() <= {notice.cid for notice in notices}:
        raise CIDMismatchError("a pushed block hashes to no CID named in the batch")


# -- replays (§11.1 step 4) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Known:
    """What the ledger knew of a batch's notices, read in one round trip
    (``Ledger.receiving``): the acks already given, by (sender, nonce); the
    rotation aliases (old key -> new key); the digests of the noticed documents
    it holds. The batch is judged against this one snapshot throughout."""

    seen: Mapping[tuple[str, bytes], bytes]
    aliases: Mapping[str, str]
    already: Mapping[CID, bytes]


def nonces_by_sender(notices: Sequence[Notice]) -> dict[str, list[bytes]]:
    """What to ask the ledger for replays: each sender's nonces."""
    nonces: dict[str, list[bytes]] = {}
    for notice in notices:
        nonces.setdefault(notice.sender, []).append(notice.nonce)
    return nonces


@dataclass(frozen=True, slots=True)
class Triage:
    """Which notices were answered before (index -> the ack given), which repeat a
    notice earlier in the batch ((i, j): notice i is notice j again), which are new."""

    replayed: Mapping[int, bytes]
    copies: tuple[tuple[int, int], ...]
    fresh: tuple[int, ...]


def triage(notices: Sequence[Notice], seen: Mapping[tuple[str, bytes], bytes]) -> Triage:
    """A nonce identifies a notice only with its sender: another partner's nonce
    never matches, and one notice twice in a batch gets one answer."""
    replayed: dict[int, bytes] = {}
    first_of: dict[tuple[str, bytes], int] = {}
    copies: list[tuple[int, int]] = []
    fresh: list[int] = []
    for i, notice in enumerate(notices):
        key = (notice.sender, notice.nonce)
        if key in seen:
            replayed[i] = seen[key]  # a replay gets the answer already given
        elif key in first_of:
            copies.append((i, first_of[key]))
        else:
            first_of[key] = i
            fresh.append(i)
    return Triage(replayed, tuple(copies), tuple(fresh))


# -- one block (§11.1 step 5) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taken:
    """A block that opened to a document this node may take (so far)."""

    opened: Opened
    block: bytes
    findings: tuple[Finding, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A notice answered ``rejected`` with ``error.code``. ``cause`` is what the log
    names when the answer says less (a foreign thread is answered ``unknown_prev``)."""

    error: UsagiError
    cause: UsagiError | None = None


Outcome = Taken | Refused


def open_sealed(block: bytes, keys: Sequence[Identity], cid: CID | None = None
                ) -> Opened:
    """Open with ``keys[0]`` (the current key), else with a retired one (documents
    sealed before a rotation, or by a partner during its overlap). Raises the
    current key's NotRecipientError when none opens it."""
    try:
        return open_envelope(block, keys[0], cid)
    except NotRecipientError:
        for old in keys[1:]:
            try:
                return open_envelope(block, old, cid)
            except NotRecipientError:
                continue
        raise


def open_block(notice: Notice, block: bytes, keys: Sequence[Identity],
               aliases: Mapping[str, str], plugins: PluginHost) -> Outcome:
    """Check and open the block ``notice`` names, with this node's ``keys`` (the
    current one first): what the node takes, or why not."""
    try:
        opened = open_sealed(block, keys, notice.cid)
        # A sender that rotated its key after sealing re-signs the notice with
        # its new key: the document's signer is then its predecessor.
        if opened.signer != notice.sender and canonical(opened.signer, aliases) != notice.sender:
            raise WrongSignerError("the document is signed by someone other than the notice's sender")
        if opened.document["to"] not in {key.did for key in keys}:
            raise WrongSignerError("the document is not addressed to this node")
        # A kind no enabled plugin declares is refused here, on receipt, and
        # never judged again: a stored document verifies whatever plugins are
        # enabled later (spec section 12).
        plugins.check_kind(opened.document)
        # The whole company's plugins judge what arrives (the document's "user"
        # is the sender's employee, not one of ours).
        return Taken(opened, block, tuple(plugins.check(opened.document)))
    except UsagiError as exc:
        return Refused(exc)


# -- the thread rule (§9, §11.1 step 5) -------------------------------------------


def _replies(notices: Sequence[Notice], taken: Sequence[tuple[int, Outcome]],
             already: Mapping[CID, bytes]) -> dict[CID, tuple[Opened, str]]:
    """The replies to judge, with their senders: not those refused already, nor those
    recorded (and judged) before."""
    return {o.opened.cid: (o.opened, notices[i].sender) for i, o in taken
            if isinstance(o, Taken) and "thread" in o.opened.document
            and o.opened.cid not in already}


def _links(opened: Opened) -> tuple[CID, ...]:
    return (opened.document["thread"], *opened.document["prev"])


def links_to_read(notices: Sequence[Notice], taken: Sequence[tuple[int, Outcome]],
                  already: Mapping[CID, bytes]) -> list[CID]:
    """What the ledger is asked about (``Ledger.held``) to judge the batch's replies:
    every link that is not itself a reply of the batch; none without replies."""
    replies = _replies(notices, taken, already)
    links = {link for opened, _ in replies.values() for link in _links(opened)}
    return [cid for cid in links if cid not in replies]


def judge_links(notices: Sequence[Notice], taken: Sequence[tuple[int, Outcome]],
                already: Mapping[CID, bytes], held: Mapping[CID, Held],
                aliases: Mapping[str, str]) -> list[tuple[int, Outcome]]:
    """``taken`` with the replies that link what is not theirs to link refused.

    A reply's ``thread`` and ``prev`` must name documents this node holds with
    the same partner (``held``: what the ledger said of :func:`links_to_read`),
    or documents of this batch that are taken (a sender may answer its own
    document in the batch that carries it). A link to a document with another
    partner is answered exactly like a link to one not held (``unknown_prev``,
    which the sender retries): the sender learns nothing of this node's other
    trades; the refusal's ``cause`` names ``foreign_thread`` for the log.
    """
    replies = _replies(notices, taken, already)
    if not replies:
        return list(taken)
    # The first documents of this batch: a reply in it may answer them.
    known = {o.opened.cid: Held(notices[i].sender, o.opened.cid, o.opened.document["issued_at"])
             for i, o in taken if isinstance(o, Taken)
             and "thread" not in o.opened.document and o.opened.cid not in already}
    known.update(held)
    refused: dict[CID, Refused] = {}
    pending = dict(replies)
    while pending:
        # A reply waits for the replies of this batch it answers to be judged.
        ready = [cid for cid, (opened, _) in pending.items()
                 if not any(link in pending for link in _links(opened))]
        for cid in ready or list(pending):  # none ready: a cycle, which no hash allows
            opened, sender = pending.pop(cid)
            try:
                if not ready:
                    raise UnknownPrevError(f"{cid} answers a document that answers it")
                check_links(opened.document, sender, known, aliases)
                known[cid] = Held(sender, opened.document["thread"], opened.document["issued_at"])
            except ForeignThreadError as exc:
                refused[cid] = Refused(UnknownPrevError(f"{cid}: {exc}"), exc)
            except ThreadError as exc:
                refused[cid] = Refused(exc)
    return [(i, refused.get(o.opened.cid, o) if isinstance(o, Taken) else o) for i, o in taken]


# -- the plan (§11.1 steps 5-6) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    """A notice whose document is stored with this batch, answered ``received``.

    ``partner`` is the document's other party: the sender of the first notice of
    the batch naming it (a block named twice is one document). ``links`` are its
    ``thread`` and ``prev`` (none for a first document).
    """

    index: int
    notice: Notice
    opened: Opened
    block: bytes
    findings: tuple[Finding, ...]
    partner: str
    links: frozenset[CID]

    @property
    def cid(self) -> CID:
        return self.opened.cid

    @property
    def digest(self) -> bytes:
        return self.opened.digest


@dataclass(frozen=True, slots=True)
class Replayed:
    """Answered before: the ack already given (step 4)."""

    ack: bytes


@dataclass(frozen=True, slots=True)
class Repeated:
    """The same (sender, nonce) as notice ``of`` of this batch: that one's answer."""

    of: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A signed ``rejected`` ack with ``error.code`` as its reason."""

    error: UsagiError


@dataclass(frozen=True, slots=True)
class Reanswered:
    """A block recorded before under another notice: stored once, and answered with the
    stored ack's status, digest and reason for this notice's nonce (step 6), which is
    recorded as answered."""

    status: str
    digest: bytes
    reason: str | None


@dataclass(frozen=True, slots=True)
class Received:
    """Stored with this batch (a :class:`Store` names it): a ``received`` ack."""

    digest: bytes


Answer = Replayed | Repeated | Rejected | Reanswered | Received


@dataclass(frozen=True, slots=True)
class Plan:
    """What to answer to each notice of a batch and what to store.

    ``answers`` has one answer per notice, in order. ``store`` lists the notices
    whose documents are stored, in the order their quota is charged.
    ``rejected`` names each refusal in the order it was decided (the log names
    the first). ``reserve`` maps the signed-document digests this batch stores
    to their CIDs: taken at once, so a batch in flight at the same time does
    not record the same signed document under another envelope.
    ``opened_here`` and ``already`` are what :func:`drop_dangling` needs later.
    """

    answers: tuple[Answer, ...]
    store: tuple[Store, ...]
    rejected: tuple[Refusal, ...]
    reserve: Mapping[bytes, CID]
    opened_here: frozenset[CID]
    already: Mapping[CID, bytes]


def plan(notices: Sequence[Notice], triaged: Triage, taken: Sequence[tuple[int, Outcome]],
         already: Mapping[CID, bytes], answered: Mapping[CID, tuple[str, str | None]],
         storing: Mapping[bytes, CID]) -> Plan:
    """The answers and the documents to store, from the outcomes of
    :func:`judge_links` and three snapshots: ``already``, the digests of the
    noticed documents the ledger holds; ``answered``, the status and reason of the
    ack given for each of them; ``storing``, digest -> CID of what batches in
    flight are storing.

    One signed document, one record: two envelopes of it in this batch, or one
    in this batch while another batch stores the other, are refused
    (``duplicate``); one recorded before is found by the write itself
    (:func:`recorded_elsewhere`). A reply that answers a document of this batch
    that is not stored with it is refused too (:func:`drop_dangling`).
    """
    answers: dict[int, Answer] = {i: Replayed(ack) for i, ack in triaged.replayed.items()}
    rejected: list[Refusal] = []

    def refuse(i: int, error: UsagiError) -> None:
        answers[i] = Rejected(error)
        rejected.append((i, error))

    holders: dict[bytes, CID] = {}
    first: dict[CID, Store] = {}
    entries: list[Store] = []
    for i, outcome in taken:
        notice = notices[i]
        if isinstance(outcome, Refused):
            refuse(i, outcome.error)
            continue
        opened = outcome.opened
        if opened.cid in already and opened.cid in answered:
            # The same block under a new notice: the same answer, for this notice.
            status, reason = answered[opened.cid]
            answers[i] = Reanswered(status, opened.digest, reason)
            continue
        if opened.cid in first:  # named twice in this batch: one document, and each
            # notice its own ack (a sender takes an ack only for its nonce)
            entries.append(replace(first[opened.cid], index=i, notice=notice,
                                   block=outcome.block))
            answers[i] = Received(opened.digest)
            continue
        holder = holders.get(opened.digest)
        if holder is not None and holder != opened.cid:
            refuse(i, DuplicateError(f"the signed document in {opened.cid} is recorded "
                                     f"already, as {holder}"))
            continue
        holders[opened.digest] = opened.cid
        document = opened.document
        links = (frozenset({document["thread"], *document.get("prev", ())})
                 if "thread" in document else frozenset[CID]())
        entry = Store(i, notice, opened, outcome.block, outcome.findings, notice.sender, links)
        first[opened.cid] = entry
        entries.append(entry)
        answers[i] = Received(opened.digest)
    # A batch in flight at the same time may be storing the same signed document
    # under another envelope: the caller reserves ``reserve`` with no await
    # between its read of ``storing`` and the reservation.
    reserve: dict[bytes, CID] = {}
    kept: list[Store] = []
    for entry in entries:
        holder = storing.get(entry.digest)
        if holder is None:
            holder = reserve.get(entry.digest)
        if holder is not None and holder != entry.cid:
            refuse(entry.index, DuplicateError(f"the signed document in {entry.cid} is being "
                                               f"recorded as {holder}"))
            continue
        if holder is None:
            reserve[entry.digest] = entry.cid
        kept.append(entry)
    opened_here = frozenset(o.opened.cid for _, o in taken if isinstance(o, Taken))
    kept, dangling = drop_dangling(kept, opened_here, already)
    for i, error in dangling:
        refuse(i, error)
    for i, j in triaged.copies:
        answers[i] = Repeated(j)
    return Plan(tuple(answers[i] for i in range(len(notices))), tuple(kept), tuple(rejected),
                reserve, opened_here, already)


# -- between the writes (§11.1 step 6, §12 "Quotas") -------------------------------


def cost(entry: Store, aliases: Mapping[str, str]) -> tuple[str, CID, int]:
    """What storing ``entry`` charges: its sender's quota (under the sender's current
    key), the document, and its bytes (the block and the signed document)."""
    return (canonical(entry.partner, aliases), entry.cid,
            len(entry.block) + len(entry.opened.signed))


def recorded_elsewhere(entries: Sequence[Store], held: Mapping[bytes, CID]
                       ) -> tuple[list[Store], list[Refusal]]:
    """The entries whose signed documents the write found recorded under another CID
    (``held``: digest -> that CID) refused as duplicates; the rest kept."""
    kept: list[Store] = []
    refused: list[Refusal] = []
    for entry in entries:
        if entry.digest in held:
            refused.append((entry.index, DuplicateError(
                f"the signed document in {entry.cid} is recorded already, as "
                f"{held[entry.digest]}")))
        else:
            kept.append(entry)
    return kept, refused


def drop_dangling(entries: Sequence[Store], opened_here: Set[CID], already: Mapping[CID, bytes]
                  ) -> tuple[list[Store], list[Refusal]]:
    """Drop the replies that link a document of this batch that is not stored with
    them (refused, or left out by the quota), until none is left: a stored reply
    never names what this node does not hold (docs/spec.md 9)."""
    kept = list(entries)
    refused: list[Refusal] = []
    while True:
        storing = {entry.cid for entry in kept}
        dangling = {entry.cid for entry in kept
                    if any(link in opened_here and link not in already and link not in storing
                           for link in entry.links)}
        if not dangling:
            return kept, refused
        refused += [(entry.index, UnknownPrevError(f"{entry.cid} answers a document of its "
                                                   "batch that is not stored now"))
                    for entry in kept if entry.cid in dangling]
        kept = [entry for entry in kept if entry.cid not in dangling]
