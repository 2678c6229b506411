"""Delivery: the outbox sent to partners, and their answers checked (docs/spec.md §8, §11.1, §12).

The delivery loop claims due notices from the ledger (leased, so two
processes on one home never send one notice at once), POSTs them to each
partner in batches of up to ``SEND_BATCH`` with up to ``PIPELINE`` batches in
flight, and takes an ack as a receipt only when :func:`judge_acks` finds it
signed by the partner, for the notice's own nonce and the digest of what was
sealed. A failure is retried with bounded exponential backoff and jitter; a
temporary refusal (§11.1) is no answer and is retried the same way.

A partner's answer is read only as far as an honest one can go
(:func:`read_capped`, :func:`read_prefix`): a partner answering gigabytes
costs this node the limit, not the gigabytes.

About 700 lines: the delivery loop, its rules for gathering and ordering
batches, the batches themselves and the waiters for acks share one state
(what is in flight, gathering, unanswered, settled); split in two, each half
would reach into the other's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import aiohttp

from ipfs.blockstore import BlockStore
from kernel import (
    MESSAGE_LIMITS,
    Ack,
    Identity,
    canonical,
    check_ack,
    dagcbor,
    format_time,
    make_notice,
    notice_nonce,
    open_ack,
    open_signed,
)
from kernel.cid import CID
from kernel.errors import MalformedError, UsagiError, WrongSignerError

from .errors import TEMPORARY, BodyTooLargeError
from .home import Config
from .invitation import check_endpoint
from .ledger import Ledger, OutboxRow
from .receiving import BATCH_LIMITS, MAX_BODY
from .terminal import printable

__all__ = ["Delivery", "DeliveringNode", "AckCheck", "judge_acks", "acks_answer_limit",
           "read_capped", "read_prefix", "NOTICES_PATH", "CONTENT_TYPE", "SEND_BATCH",
           "PIPELINE", "GATHER", "ORDER_WAIT", "IDLE_MAX", "ACK_POLL"]

log = logging.getLogger("usagi.node")
#: One line per delivery: what 'usagi serve' shows by default.
activity = logging.getLogger("usagi.activity")

NOTICES_PATH: Final = "/usagi/v1/notices"
CONTENT_TYPE: Final = "application/cbor"
SEND_BATCH: Final = 100
PIPELINE: Final = 4  # batches in flight at once
#: Seconds at most that notices claimed for a partner wait, as a batch smaller
#: than SEND_BATCH, for the partner's batch in flight to end (see Delivery.loop).
GATHER: Final = 0.02
#: Seconds at most that a smaller batch waits for the batch in flight to the
#: same partner to end (see Delivery.loop, "In order"); well inside a claim's
#: 30 s lease.
ORDER_WAIT: Final = 10.0
#: The longest an idle delivery loop waits between two looks at the outbox
#: (seconds): notices another process queues without waking this one (a
#: lease that ran out, a ``usagi send`` that could not reach the local API)
#: go out within it.
IDLE_MAX: Final = 2.0
#: How often a wait for an ack looks in the ledger for an ack (or a give-up)
#: stored by another process on this home, in seconds: the first look after
#: this, doubling up to the second. This process's own delivery hands its
#: acks and give-ups to the waiters at once (a future, woken, not polled), so
#: the look is for the rare ack another process stores (a second delivery of
#: a notice whose lease ran out): its waiter hears of it within a second.
ACK_POLL: Final = (0.2, 1.0)
RESIGN_AFTER: Final = 60.0  # seconds; well inside the receiver's ±10 minute window
#: Acks this process's delivery verified and handed to a waiter, kept opened
#: for the waiter's caller (Delivery.opened_ack) so it need not verify them
#: again; the oldest are dropped past this many.
OPENED_KEEP: Final = 4096
#: What is read of a partner's error answer (its start only; the rest is never read).
ERROR_PREFIX: Final = 4096

#: (cid, ack, status, reason, acked at): an ack taken as the answer to a notice.
Answered = tuple[CID, bytes, str, str | None, str]


def acks_answer_limit(notices: int) -> int:
    """The largest honest answer to a batch of ``notices``: that many acks, each at most
    the 4 KiB of a message, with their CBOR heads, in a one-entry map."""
    return 16 + notices * (MESSAGE_LIMITS.max_size + 5)


async def read_capped(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """A partner's answer body, at most ``limit`` bytes; BodyTooLargeError beyond it.

    Reads one byte past the limit at most (enough to know it is too big), so a
    partner answering gigabytes, announced or streamed, costs ``limit`` bytes
    of memory; the rest is never read (the connection is closed, not reused).
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise BodyTooLargeError(f"{what} announces {resp.content_length} bytes (limit {limit})")
    data = bytearray()
    while len(data) <= limit:
        chunk = await resp.content.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) > limit:
        raise BodyTooLargeError(f"{what} is over {limit} bytes")
    return bytes(data)


async def read_prefix(resp: aiohttp.ClientResponse, limit: int = ERROR_PREFIX) -> str:
    """The start of a partner's error answer, as text: the message, never all of it."""
    data = bytearray()
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data[:300].decode("utf-8", "replace")


# -- the acks of one batch, judged on values ------------------------------------------


@dataclass(slots=True)
class AckCheck:
    """What a partner's acks to one batch say.

    ``delivered``: receipts (and final refusals) to store; ``later``: temporary
    refusals, sent again later; ``bad``: error code -> the rows whose ack is no
    receipt, and the first message; ``signer_unknown``: acks signed by a key not
    known when the batch left (judged again once the aliases are read again);
    ``opened``: each delivered ack as signed -> opened (its signature checked).
    """

    delivered: list[Answered] = field(default_factory=list)
    later: list[tuple[OutboxRow, str]] = field(default_factory=list)
    bad: dict[str, tuple[list[OutboxRow], str]] = field(default_factory=dict)
    signer_unknown: list[tuple[OutboxRow, object, bytes]] = field(default_factory=list)
    opened: dict[bytes, Ack] = field(default_factory=dict)


def judge_acks(pending: Sequence[tuple[OutboxRow, object, bytes]], *, did: str, current: str,
               digests: dict[CID, bytes], last_try: bool, into: AckCheck) -> AckCheck:
    """Judge each (row, ack as answered, nonce sent) into ``into``.

    An ack is a receipt only when it is a byte string that opens, signed by the
    partner (``did``, or ``current``: its key now, after a rotation), for the
    row's CID, the nonce sent (spec section 8) and the digest of what was
    sealed. A wrong signer before ``last_try`` is kept aside: the partner may
    have rotated its key meanwhile.
    """
    for row, raw, nonce in pending:
        try:
            if type(raw) is not bytes:
                raise MalformedError("an ack is a byte string")
            ack = open_ack(raw)
            check_ack(ack, cid=row.cid, by=current if ack.by == current else did,
                      digest=digests.get(row.cid, b""), nonce=nonce)
        except WrongSignerError as exc:
            if not last_try:
                into.signer_unknown.append((row, raw, nonce))
                continue
            _no_receipt(into, row, exc)
            continue
        except UsagiError as exc:
            _no_receipt(into, row, exc)
            continue
        if not ack.ok and ack.reason in TEMPORARY:
            into.later.append((row, ack.reason))
            continue
        into.delivered.append((row.cid, raw, ack.status, ack.reason, format_time(ack.at)))
        into.opened[raw] = ack
    return into


def _no_receipt(check: AckCheck, row: OutboxRow, exc: UsagiError) -> None:
    log.warning("ack for %s is not a receipt: %s", row.cid, exc)
    check.bad.setdefault(exc.code, ([], str(exc)))[0].append(row)


# -- the I/O ----------------------------------------------------------------------------


class DeliveringNode(Protocol):
    """What delivery uses of its node."""

    identity: Identity
    config: Config
    ledger: Ledger
    store: BlockStore
    clock: Callable[[], float]
    wake: asyncio.Event
    endpoint_scopes: frozenset[str]
    max_attempts: int

    @property
    def session(self) -> aiohttp.ClientSession: ...

    def now(self) -> datetime: ...

    def backoff(self, attempts: int) -> float: ...

    async def canonical(self, did: str) -> str: ...

    def take_recent(self, cid: CID) -> bytes | None: ...


#: Set to (ack, status, reason) once the ack is stored, or None once given up.
AckWaiter = asyncio.Future[tuple[bytes, str, str | None] | None]


class Delivery:
    """The outbox of one node: sends due notices and takes their acks."""

    def __init__(self, node: DeliveringNode) -> None:
        self.node = node
        self._delivering = asyncio.Lock()
        # Futures for acks awaited in this process (wait_for_ack), set by this
        # process's delivery; what other processes on the same home store is
        # polled for (ACK_POLL). cid -> a future set to (ack, status, reason)
        # once the ack is stored, or to None once the document is given up.
        self._ack_waiters: dict[CID, AckWaiter] = {}
        # Acks this delivery stored, as signed -> opened (OPENED_KEEP at most).
        self._opened: OrderedDict[bytes, Ack] = OrderedDict()
        # What this delivery settled lately, waited for or not: cid -> (ack,
        # status, reason) as stored, or None (given up); OPENED_KEEP at most. A
        # wait for a document this process has just recorded looks here, not in
        # the ledger (wait_for_ack, ``fresh``).
        self._settled: OrderedDict[CID, tuple[bytes, str, str | None] | None] = OrderedDict()
        # Per partner, the documents of batches posted by the loop and not yet
        # answered (Delivery.loop, "In order"); set when one is answered.
        self._unanswered: dict[str, set[CID]] = {}
        self._answered = asyncio.Event()
        # When each notice gathering in the loop was claimed (its own wait, GATHER
        # or ORDER_WAIT, counts from it).
        self._claimed_at: dict[CID, float] = {}
        # The notices of the loop's batches not yet settled (answered, acks stored).
        self._in_flight: set[CID] = set()

    async def deliver_once(self, limit: int = 1000) -> int:
        """Send every due notice once; return how many were acknowledged."""
        async with self._delivering:
            due = await self.node.ledger.claim_due(self.node.clock(), limit)
            if not due:
                return 0
            by_partner: dict[str, list[OutboxRow]] = {}
            for row in due:
                by_partner.setdefault(row.partner, []).append(row)
            results = await asyncio.gather(*[
                self._deliver_all(did, rows) for did, rows in by_partner.items()
            ])
            return sum(results)

    async def _deliver_all(self, did: str, rows: list[OutboxRow]) -> int:
        # One batch in flight per partner: a partner is never flooded by us,
        # and its acks come back in the order its work was done.
        done = 0
        for i in range(0, len(rows), SEND_BATCH):
            done += await self.deliver_to(did, rows[i:i + SEND_BATCH])
        return done

    async def deliver_to(self, did: str, rows: list[OutboxRow]) -> int:
        """POST one batch to partner ``did``; return how many were acknowledged."""
        try:
            return await self._deliver_to(did, rows)
        finally:
            self._answered_batch(did, rows)
            self._in_flight.difference_update(row.cid for row in rows)

    async def _deliver_to(self, did: str, rows: list[OutboxRow]) -> int:
        node = self.node
        # One round trip: the partner, what we sent it (digests), rotations.
        partner, digests, aliases = await node.ledger.delivering(did, [r.cid for r in rows])
        if partner is None or not partner.accepted_at(node.clock()):
            state = partner.status if partner else "removed"
            await self._failed(rows, f"partner is {state}")
            return 0
        try:
            url = check_endpoint(partner.endpoint, scopes=node.endpoint_scopes)
        except UsagiError as exc:  # stored before the policy changed (config)
            await self._failed(rows, f"{exc.code}: {exc}")
            return 0
        url = url.rstrip("/") + NOTICES_PATH
        batch = await self._batch_body(rows)
        body = dagcbor.encode(batch)
        try:
            async with node.session.post(url, data=body, headers={"Content-Type": CONTENT_TYPE},
                                         timeout=aiohttp.ClientTimeout(total=60),
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    retry_after = resp.headers.get("Retry-After", "")
                    busy = resp.status in (429, 503)
                    await self._failed(rows, f"{partner.name} answered {resp.status}: "
                                             f"{await read_prefix(resp)}",
                                       retry_after=float(retry_after) if retry_after.isdigit()
                                       else None, count=not busy)
                    return 0
                # At most what ``len(rows)`` acks can be: a partner answering
                # gigabytes costs this much memory, and the batch is retried.
                payload = await read_capped(resp, acks_answer_limit(len(rows)),
                                            f"{partner.name}'s answer")
            # Answered: what waits behind this batch may go now (Delivery.loop, "In
            # order"), while its acks are checked and stored.
            self._answered_batch(did, rows)
        except BodyTooLargeError as exc:
            await self._failed(rows, f"{exc.code}: {exc}")
            return 0
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await self._failed(rows, f"cannot reach {partner.name} at {url}: {exc!r}")
            return 0
        try:
            answer = dagcbor.decode(payload, BATCH_LIMITS)
            acks = answer["acks"]
            if type(acks) is not list or len(acks) != len(rows):
                raise ValueError("wrong number of acks")
        except (UsagiError, KeyError, TypeError, ValueError) as exc:
            await self._failed(rows, f"{partner.name} answered nonsense: {exc}")
            return 0
        # A partner that rotated its key acks with its new one.
        current = canonical(did, aliases)
        # Each ack must answer its own notice: the nonce we sent (spec section 8).
        nonces = [notice_nonce(raw) for raw in batch["notices"]]
        check = judge_acks(list(zip(rows, acks, nonces, strict=True)), did=did, current=current,
                           digests=digests, last_try=False, into=AckCheck())
        if check.signer_unknown:
            # Signed by a key we did not know when the batch left: the partner
            # may have announced a rotation meanwhile. Read the aliases again.
            pending, check.signer_unknown = check.signer_unknown, []
            judge_acks(pending, did=did, current=await node.canonical(did), digests=digests,
                       last_try=True, into=check)
        delivered = check.delivered
        # What is stored may be another process's ack for the same notice
        # (OR IGNORE): waiters get the stored one.
        stored = await node.ledger.mark_delivered(delivered)
        refused = [(cid, reason) for cid, _raw, status, reason, _at in delivered
                   if status == "rejected"]
        if refused:
            activity.warning("%s rejected %d document(s), e.g. %s: %s", printable(partner.name),
                             len(refused), refused[0][0], printable(refused[0][1] or "no reason"))
        if len(delivered) > len(refused):
            received = len(delivered) - len(refused)
            activity.info("delivered %d document(s) to %s%s", received, printable(partner.name),
                          f" ({delivered[0][0]})" if len(delivered) == 1 else "")
        for cid, *_ in delivered:  # stored: hand it to whoever waits
            if cid in stored:
                if (opened := check.opened.get(stored[cid][0])) is not None:
                    self._opened[stored[cid][0]] = opened
                self._settle(cid, stored[cid])
            else:
                self._ack_waiters.pop(cid, None)
        while len(self._opened) > OPENED_KEEP:
            self._opened.popitem(last=False)
        for code, (failed, message) in check.bad.items():
            await self._failed(failed, f"{code}: the partner's ack is not a receipt ({message})")
        if check.later:
            # Not an answer yet: the partner keeps no record of these notices and
            # takes them again (same nonce), an attempt later.
            await self._failed([row for row, _ in check.later],
                               f"{partner.name} cannot take it now: {check.later[0][1]}")
        return len(delivered)

    async def _batch_body(self, rows: list[OutboxRow]) -> dict[str, Any]:
        """The notices, and (``push_blocks``) as many of their blocks as fit.

        Pushing the ciphertext along saves the partner a round trip per
        document; it changes nothing it checks, since a block is accepted only
        when it hashes to a CID named by a signed notice. Blocks that do not
        fit are fetched by the partner from our gateway.
        """
        body: dict[str, Any] = {"notices": [await self._fresh_notice(r) for r in rows]}
        if self.node.config.push_blocks:
            budget = MAX_BODY - 64 * 1024 - sum(len(r.notice) + 8 for r in rows)
            blocks = []
            for row in rows:
                block = self.node.take_recent(row.cid)
                if block is None:
                    try:
                        block = await self.node.store.get(row.cid)
                    except UsagiError:
                        continue  # the partner will ask the gateway and get a clear answer
                if len(block) + 8 > budget:
                    break
                budget -= len(block) + 8
                blocks.append(block)
            if blocks:
                body["blocks"] = blocks
        return body

    async def _fresh_notice(self, row: OutboxRow) -> bytes:
        """The notice to send now. A notice queued a while ago (a retry, a partner that
        was away) is signed again with the same nonce and a fresh ``sent_at``, so it
        stays inside the receiver's time window; the nonce still identifies it, and
        a receiver that answered it before answers with the same ack. It is signed by
        our current key and addressed to the partner's current key (rotation)."""
        node = self.node
        if node.clock() - row.created < RESIGN_AFTER:
            return bytes(row.notice)
        old = open_signed(row.notice, "notice", "from", MESSAGE_LIMITS).body
        to = await node.canonical(row.partner)
        return make_notice(node.identity, row.cid, to, node.now(), nonce=old["nonce"])

    async def _failed(self, rows: list[OutboxRow], error: str, retry_after: float | None = None,
                      count: bool = True) -> None:
        """Schedule a retry. A busy partner (429/503) costs no attempt from the budget."""
        node = self.node
        now = node.clock()
        when = [now + max(node.backoff(r.attempts), retry_after or 0.0) for r in rows]
        given_up = await node.ledger.mark_failed([r.cid for r in rows], error, when,
                                                 node.max_attempts, count=count)
        log.info("delivery failed (%d notices): %s", len(rows), error)
        for cid in given_up:
            log.warning("%s undelivered: %s", cid, error)
            self._settle(cid, None)  # no ack will come: whoever waits hears it now

    def _settle(self, cid: CID, answer: tuple[bytes, str, str | None] | None) -> None:
        """``cid``'s ack as stored (or None: given up), handed to whoever waits for
        it and kept for a wait that starts a moment later (``fresh``)."""
        waiter = self._ack_waiters.pop(cid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)
        self._settled[cid] = answer
        if len(self._settled) > OPENED_KEEP:
            self._settled.popitem(last=False)

    async def loop(self, stop: asyncio.Event, idle: float = 0.25) -> None:
        """Deliver until ``stop`` is set, keeping up to PIPELINE batches in flight.

        Woken early when something is queued (``wake``) or a batch finishes, so
        a partner is never idle while we have work for it, and never flooded.

        **Small batches gather.** A full batch (SEND_BATCH notices) goes at
        once, up to PIPELINE in flight. A smaller one goes at once only when
        no batch to the same partner is in flight; otherwise its notices wait
        for that batch to end (GATHER seconds at most), and the notices queued
        meanwhile join them: one POST, one commit on each side and one
        ``mark_delivered`` for all. Documents sent one by one by concurrent
        callers (the local API's clients each waiting for an ack) then travel
        in batches of several instead of one each, with the same latency for a
        lone document (nothing is in flight, it goes at once).

        **In order.** A reply whose document it answers (``prev``) travels in
        a batch the partner has not answered yet waits for that answer, and for
        ORDER_WAIT at most after its own claim; so does a reply to such a reply.
        Sent at once, a reply queued while the document it answers travels (an
        order response, then its delivery note, a moment apart) would reach the
        partner while that document is still being stored there, be refused
        ``unknown_prev`` (spec section 9) and be sent again a backoff later.
        The partner answers a batch only once it is stored, so what follows
        the answer finds it: the answer (``_answered``) lets what waits go
        while this side still checks and stores the acks. Notices are claimed
        in the order they were queued, and a notice claimed again while its
        batch is still in flight here (slower than its lease) is left to that
        batch. Documents that answer nothing in flight (a new order, a reply to
        the partner's own document) do not wait: batches of them follow each
        other up to PIPELINE in flight, so the partner works on one while the
        next is gathered. The partner checks every link as before; this only
        spares an honest partner a refusal.
        """
        node = self.node
        inflight: dict[asyncio.Task[int], str] = {}  # batch -> the partner it goes to
        # Claimed (leased) notices waiting for their partner's batch in flight:
        # partner -> (claimed at, notices).
        gathering: dict[str, tuple[float, list[OutboxRow]]] = {}
        claim = True  # whether this round asks the ledger for due notices
        last_claim = node.clock()
        quiet = 0  # rounds in a row that found nothing at all to do
        pause = idle
        while not stop.is_set():
            woke = node.wake.is_set()
            node.wake.clear()
            waiting = sum(len(rows) for _, rows in gathering.values())
            room = PIPELINE - len(inflight)
            more = False
            rows: list[OutboxRow] = []
            # An idle look (quiet, nothing here, not woken by a queued notice)
            # first reads when the next notice may be claimed, and claims only
            # when one may: one read instead of a claim (a write transaction)
            # and that read (docs/scale.md: an idle node's cost).
            idle_look = quiet > 0 and not woke and not inflight and not gathering
            due: float | None = None
            try:
                if room > 0 and claim and room * SEND_BATCH > waiting:
                    last_claim = node.clock()
                    if idle_look:
                        due = await node.ledger.next_due()
                        idle_look = due is None or due > last_claim
                    if not idle_look:
                        rows = await node.ledger.claim_due(last_claim,
                                                           room * SEND_BATCH - waiting)
                    more = len(rows) >= room * SEND_BATCH - waiting
                    for row in rows:
                        if row.cid in self._in_flight:
                            # Claimed again while its batch is still in flight here
                            # (a batch slower than the lease): that batch settles it.
                            continue
                        self._claimed_at[row.cid] = last_claim
                        gathering.setdefault(row.partner, (last_claim, []))[1].append(row)
                else:
                    idle_look = False
                self._start_batches(inflight, gathering, stop.is_set())
                # A batch in flight wakes the loop when it ends, and the wait is
                # at most ``idle`` anyway: the next due time matters only when
                # nothing is in flight (a retry due sooner than ``idle``).
                next_due = (due if idle_look
                            else None if inflight else await node.ledger.next_due())
            except Exception:  # the loop must survive any single failure
                log.exception("delivery round failed")
                next_due = None
                more = True
            # A node with nothing queued, gathering, in flight or due polls less
            # and less often, up to IDLE_MAX (docs/scale.md: a thousand idle nodes
            # cost 1.6 ms CPU a second each at a steady 0.25 s); what is queued
            # here wakes it at once, a retry's due time bounds the wait.
            quiet = (quiet + 1 if claim and not rows and not inflight and not gathering
                     and next_due is None else 0)
            pause = min(max(idle, IDLE_MAX), idle * 2 ** min(quiet, 16))
            wait = pause if next_due is None else min(pause, max(0.0, next_due - node.clock()))
            if len(inflight) < PIPELINE:  # room for more: claim at least every ``pause``
                wait = min(wait, max(0.0, last_claim + pause - node.clock()))
            if gathering:  # notices gathering go at the latest GATHER after their
                # claim, or ORDER_WAIT after it behind their partner's unanswered
                # batch (whose answer wakes the loop: ``_answered``)
                first = min(self._gathered_until(did, at, rows)
                            for did, (at, rows) in gathering.items())
                wait = min(wait, max(0.0, first - node.clock()))
            woken = asyncio.ensure_future(node.wake.wait())
            waits = {woken, *inflight}
            if gathering:  # a batch answered may let what waits behind it go
                self._answered.clear()
                answered = asyncio.ensure_future(self._answered.wait())
                waits.add(answered)
            done, _ = await asyncio.wait(waits, timeout=max(wait, 0.001),
                                         return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            by_answer = False
            if gathering:
                answered.cancel()
                by_answer = answered in done
                done.discard(answered)
            for task in done - {woken}:
                inflight.pop(task, None)
                if not task.cancelled() and task.exception() is not None:
                    log.error("delivery batch failed", exc_info=task.exception())
            # Claim again when something was queued here (wake; read from the
            # event, which a batch ending in the same turn cannot hide), the
            # wait ran out, the last claim filled the room or there was no
            # room, or ``pause`` has passed since the last claim (a retry came
            # due, or another process queued notices, while batches kept
            # ending). A batch that merely ended or was answered makes nothing
            # due: its failures are rescheduled for later (and what waited behind
            # it goes in the next round's _start_batches without a claim).
            claim = (more or room <= 0 or node.wake.is_set() or (not done and not by_answer)
                     or node.clock() - last_claim >= pause)
        self._start_batches(inflight, gathering, True)  # what was claimed goes now
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)

    def _start_batches(self, inflight: dict[asyncio.Task[int], str],
                       gathering: dict[str, tuple[float, list[OutboxRow]]], now: bool) -> None:
        """Start a batch for each partner whose gathered notices may go (see
        :meth:`loop`): a full batch, a partner with nothing unanswered, notices
        that waited GATHER, replies whose documents were answered or that waited
        ORDER_WAIT, or ``now``; up to PIPELINE batches in flight, and past it for
        notices that waited so (they hold a lease: they are not kept waiting on
        other partners' batches)."""
        clock = self.node.clock()
        for did in list(gathering):
            since, rows = gathering[did]
            while rows:
                unanswered = self._unanswered.get(did, set())
                # Replies that have waited ORDER_WAIT since their own claim go,
                # answered or not (behind what still waits here, in order).
                waited_out = {row.cid for row in rows if now or clock >= self._claimed_at.get(
                    row.cid, since) + ORDER_WAIT}
                ready, _ = _in_order(rows, unanswered, waited_out)
                if not ready:  # replies only, to documents not yet answered
                    break
                waited = now or clock >= since + GATHER
                if not (waited or len(inflight) < PIPELINE):
                    break
                if len(ready) < SEND_BATCH and unanswered and not waited:
                    break  # more will join it while the partner works
                batch = ready[:SEND_BATCH]
                taken = {row.cid for row in batch}
                rows = [row for row in rows if row.cid not in taken]
                for cid in taken:
                    self._claimed_at.pop(cid, None)
                self._unanswered.setdefault(did, set()).update(taken)
                self._in_flight.update(taken)
                inflight[asyncio.create_task(self.deliver_to(did, batch))] = did
            if rows:
                gathering[did] = (since, rows)
            else:
                del gathering[did]

    def _answered_batch(self, did: str, rows: Sequence[OutboxRow]) -> None:
        """``rows`` (a batch to ``did``) are answered, or will not be: what waits
        behind them may go."""
        unanswered = self._unanswered.get(did)
        if unanswered:
            unanswered.difference_update(row.cid for row in rows)
            if not unanswered:
                del self._unanswered[did]
            self._answered.set()

    def opened_ack(self, signed: bytes) -> Ack:
        """An ack as signed, opened: the one this delivery verified as it stored it
        (not verified twice), else opened now (verified)."""
        opened = self._opened.pop(signed, None)
        return opened if opened is not None else open_ack(signed)

    def _gathered_until(self, did: str, since: float, rows: Sequence[OutboxRow]) -> float:
        """When some of the notices claimed since ``since`` for partner ``did`` go at
        the latest: GATHER after ``since``, or, for replies waiting behind a batch
        not yet answered (:func:`_in_order`), ORDER_WAIT after the first one's claim."""
        ready, behind = _in_order(rows, self._unanswered.get(did, set()), set())
        if ready:
            return since + GATHER
        return min(self._claimed_at.get(row.cid, since) for row in behind) + ORDER_WAIT

    async def wait_for_ack(self, cid: CID, timeout: float = 30.0, *, fresh: bool = False
                           ) -> tuple[bytes, str, str | None] | None:
        """The ack once it is stored, or None on timeout or when given up.

        ``fresh``: this process recorded ``cid`` a moment ago, so an ack stored
        since was stored by this delivery (and is kept in ``_settled``): the
        first look in the ledger is skipped. Another process's delivery of it is
        still found by the look after ACK_POLL."""
        if fresh and cid in self._settled:
            return self._settled[cid]
        deadline = time.monotonic() + timeout
        waiter = self._ack_waiters.setdefault(cid, asyncio.get_running_loop().create_future())
        try:
            return await self._wait_for_ack(cid, waiter, deadline, look=not fresh)
        finally:
            if self._ack_waiters.get(cid) is waiter:
                del self._ack_waiters[cid]

    async def _wait_for_ack(self, cid: CID, waiter: AckWaiter, deadline: float, look: bool
                            ) -> tuple[bytes, str, str | None] | None:
        poll = ACK_POLL[0]
        while True:
            # First (unless ``fresh``), and after each quiet ``poll``: the ack may
            # have been stored before we waited, or by another process (a `serve`
            # on this home).
            if look:
                ack, status = await self.node.ledger.ack_or_status(cid)
                if ack is not None:
                    return ack
                if status == "undelivered":
                    break
            look = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # This process's delivery hands over the ack it has just stored
                # (or None: given up).
                return await asyncio.wait_for(asyncio.shield(waiter),
                                              timeout=min(poll, remaining))
            except TimeoutError:
                poll = min(poll * 2, ACK_POLL[1])
        return None


def _in_order(rows: Sequence[OutboxRow], unanswered: Set[CID], waited_out: Set[CID]
              ) -> tuple[list[OutboxRow], list[OutboxRow]]:
    """``rows`` (one partner's, in the order queued) as (those that may go now,
    those that wait): a row waits when a document it answers is ``unanswered``
    (in a batch posted to the partner and not yet answered) unless the row has
    ``waited_out`` (ORDER_WAIT), or when a document it answers waits itself."""
    if not unanswered:
        return list(rows), []
    ready: list[OutboxRow] = []
    behind: list[OutboxRow] = []
    waiting: set[CID] = set()
    for row in rows:
        if any(link in waiting or (link in unanswered and row.cid not in waited_out)
               for link in row.prev):
            behind.append(row)
            waiting.add(row.cid)
        else:
            ready.append(row)
    return ready, behind
