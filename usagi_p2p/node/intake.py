"""Receiving a batch of notices: the I/O around the rules (docs/spec.md §11.1, §12).

:mod:`usagi_p2p.node.receiving` decides; this module reads the ledger,
fetches blocks, writes, signs and logs, in this order:

1. read the batch and its notices, asking the ledger about each new sender
   (the first one refused refuses the batch: no more is read for it);
2. one ledger round trip for what the notices need (:class:`~.receiving.Known`:
   replays, rotation aliases, documents held), then the quota check;
3. open the pushed blocks, fetch the others (at most ``FETCH_CONCURRENCY``
   at once and ``fetch_budget`` bytes held);
4. one ledger read for what the replies link, then the plan;
5. store: blocks, then documents + acks + nonces in one transaction; only
   then do the acks leave.

Everything a batch learns stays in the batch's own variables, passed as
arguments: two batches in flight at once never see each other's snapshot.
The one thing shared between batches is on purpose: the signed-document
digests being stored (``Intake.storing``), so that two envelopes of one
document in two concurrent batches are recorded once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, Protocol

from kernel import MAX_BLOCK, Identity, Notice, canonical, dagcbor, format_time, make_ack
from kernel.cid import CID
from kernel.errors import ForeignThreadError, UsagiError

from . import receiving
from .errors import DuplicateError, OverloadedError
from .ledger import DocumentRow, Ledger
from .plugin_host import PluginHost, findings_json
from .quota import Charge, Quotas
from .receiving import (
    Outcome,
    Plan,
    Reanswered,
    Received,
    Refusal,
    Refused,
    Rejected,
    Repeated,
    Replayed,
    Store,
    Taken,
)
from .terminal import printable

__all__ = ["Intake", "ReceivingNode", "FETCH_BUDGET", "FETCH_CONCURRENCY", "log_batch"]

log = logging.getLogger("usagi.node")
#: One line per received batch: what 'usagi serve' shows by default.
activity = logging.getLogger("usagi.activity")

FETCH_CONCURRENCY: Final = 16
#: Bytes of blocks one batch may fetch from the sender's gateway. They are held
#: until the batch is stored, so this bounds a batch's memory (a partner's batch
#: of 255 notices for 1 MiB blocks would hold 255 MiB); what is past it is
#: answered ``overloaded``, a temporary reason: the sender sends it again.
FETCH_BUDGET: Final = 32 << 20


class ReceivingNode(Protocol):
    """What the intake uses of its node."""

    identity: Identity
    retired: list[Identity]
    ledger: Ledger
    quotas: Quotas
    plugins: PluginHost
    clock: Callable[[], float]
    skew: timedelta
    #: Bytes of blocks one received batch may fetch and hold (FETCH_BUDGET).
    fetch_budget: int

    def now(self) -> datetime: ...

    def my_dids(self, now: float | None = None) -> set[str]: ...

    async def fetch_block(self, notice: Notice) -> bytes: ...

    async def put_recorded(self, blocks: Sequence[tuple[CID, bytes]]) -> None: ...

    async def discard(self, cids: list[CID]) -> None: ...


def log_batch(what: str, preposition: str, rows: list[tuple[DocumentRow, str]]) -> None:
    """One activity line per document for a small batch, one line for a large one."""
    if not activity.isEnabledFor(logging.INFO):
        return
    if len(rows) <= 5:
        for row, name in rows:
            activity.info("%s %s %s %s %s (%s)", what, row.kind, printable(row.ref or ""),
                          preposition, printable(name), row.cid)
    else:
        partners = sorted({printable(name) for _, name in rows})
        activity.info("%s %d documents %s %s", what, len(rows), preposition, ", ".join(partners))


def _rejecting(notice: Notice, error: UsagiError) -> None:
    log.info("rejecting %s from %s: %s", notice.cid, notice.sender, error)


class Intake:
    """Receives the batches of notices partners post to one node."""

    def __init__(self, node: ReceivingNode) -> None:
        self.node = node
        #: signed-document digest -> the CID a batch in flight is storing it under:
        #: one signed document is recorded once, also across concurrent batches.
        self.storing: dict[bytes, CID] = {}

    async def receive(self, body: bytes) -> list[bytes]:
        """Handle one POSTed batch of notices; return the acks in order.

        Raises a typed error (mapped to an HTTP status by the peer API) when
        the batch itself is bad; then nothing at all is processed or stored.
        """
        node = self.node
        batch = receiving.read_batch(body)
        log.debug("batch of %d notice(s), %d pushed block(s)", len(batch.notices),
                  len(batch.pushed))
        now = node.now()
        now_ts = now.timestamp()
        mine = node.my_dids(now_ts)
        notices: list[Notice] = []
        names: dict[str, str] = {}  # the batch's senders, checked, with their names
        for raw in batch.notices:
            notice = receiving.read_notice(raw, now, node.skew, mine)
            if notice.sender not in names:
                partner = await node.ledger.partner(notice.sender)
                refusal = receiving.sender_refusal(notice.sender, partner, now_ts)
                if refusal is not None:
                    raise refusal
                assert partner is not None
                names[notice.sender] = partner.name
            notices.append(notice)
        receiving.check_pushed(batch.pushed, notices)
        # One round trip for what the batch needs read: the answers already
        # given (replays), the rotation aliases, and which blocks we hold.
        known = receiving.Known(*await node.ledger.receiving(
            receiving.nonces_by_sender(notices), [n.cid for n in notices]))
        aliases = dict(known.aliases)
        triaged = receiving.triage(notices, known.seen)
        # A partner whose quota is used up is refused before anything is fetched.
        await node.quotas.check({canonical(notices[i].sender, aliases) for i in triaged.fresh},
                                now_ts, aliases)
        taken, fetched = await self._take(notices, triaged.fresh, batch.pushed, aliases)
        already = known.already
        if fetched:
            # Fetching took a while: read again which documents are stored.
            already = await node.ledger.digests(
                [o.opened.cid for _, o in taken if isinstance(o, Taken)])
        taken = await self._judge_links(notices, taken, already, aliases)
        # One time for the batch's acks, signed into each and stored beside it.
        acked_at = node.now()
        answered: dict[CID, tuple[str, str | None]] = {}
        for _, outcome in taken:
            cid = outcome.opened.cid if isinstance(outcome, Taken) else None
            if cid is not None and cid in already and cid not in answered:
                old = await node.ledger.ack(cid)
                if old is not None:
                    answered[cid] = old[1], old[2]
        plan = receiving.plan(notices, triaged, taken, already, answered, self.storing)
        # No await since ``self.storing`` was read: the reservation is one step.
        self.storing.update(plan.reserve)
        try:
            return await self._carry_out(plan, notices, names, aliases, acked_at, now_ts)
        finally:
            for digest in plan.reserve:
                self.storing.pop(digest, None)

    async def _take(self, notices: list[Notice], fresh: Sequence[int],
                    pushed: Mapping[CID, bytes], aliases: dict[str, str]
                    ) -> tuple[list[tuple[int, Outcome]], bool]:
        """Open each new notice's block: pushed, or fetched. Also whether any was fetched."""
        node = self.node

        def opened(i: int, block: bytes) -> Outcome:
            outcome = receiving.open_block(notices[i], block, [node.identity, *node.retired],
                                           aliases, node.plugins)
            if isinstance(outcome, Refused):
                _rejecting(notices[i], outcome.error)
            return outcome

        semaphore = asyncio.Semaphore(FETCH_CONCURRENCY)
        # Fetched blocks are held until the batch is stored: what they may take is
        # bounded by ``fetch_budget``, a block in flight counted at the largest size.
        fetched_bytes = 0
        in_flight = 0

        async def fetch(i: int) -> tuple[int, Outcome]:
            nonlocal fetched_bytes, in_flight
            async with semaphore:
                if fetched_bytes + (in_flight + 1) * MAX_BLOCK > node.fetch_budget:
                    return i, Refused(OverloadedError(
                        f"this batch holds {fetched_bytes} bytes of fetched blocks (at most "
                        f"{node.fetch_budget}); the rest is taken when it is sent again"))
                in_flight += 1
                try:
                    block = await node.fetch_block(notices[i])
                except UsagiError as exc:
                    _rejecting(notices[i], exc)
                    return i, Refused(exc)
                finally:
                    in_flight -= 1
                outcome = opened(i, block)
                if isinstance(outcome, Taken):
                    fetched_bytes += len(outcome.block)
                return i, outcome

        # Pushed blocks are opened right here; only missing ones cost a task
        # (and a fetch from the sender's gateway).
        taken = [(i, opened(i, pushed[notices[i].cid])) for i in fresh if notices[i].cid in pushed]
        missing = [fetch(i) for i in fresh if notices[i].cid not in pushed]
        if missing:
            taken += await asyncio.gather(*missing)
        return taken, bool(missing)

    async def _judge_links(self, notices: list[Notice], taken: list[tuple[int, Outcome]],
                           already: Mapping[CID, bytes], aliases: dict[str, str]
                           ) -> list[tuple[int, Outcome]]:
        """The thread rule on the batch's replies: one ledger read, none without replies."""
        links = receiving.links_to_read(notices, taken, already)
        held = await self.node.ledger.held(links) if links else {}
        judged = receiving.judge_links(notices, taken, already, held, aliases)
        for (i, before), (_, after) in zip(taken, judged, strict=True):
            if after is before or not isinstance(after, Refused):
                continue
            notice = notices[i]
            if isinstance(after.cause, ForeignThreadError):
                activity.warning("refused %s from %s: foreign_thread (%s)", notice.cid,
                                 notice.sender, after.cause)
            else:
                _rejecting(notice, after.error)
        return judged

    def _sign(self, notice: Notice, status: str, at: datetime, *, digest: bytes | None = None,
              reason: str | None = None) -> bytes:
        return make_ack(self.node.identity, cid=notice.cid, to=notice.sender, nonce=notice.nonce,
                        status=status, at=at, digest=digest, reason=reason)

    async def _carry_out(self, plan: Plan, notices: list[Notice], names: dict[str, str],
                         aliases: dict[str, str], acked_at: datetime, now_ts: float
                         ) -> list[bytes]:
        """Record the re-answers, charge the quotas, store durably, and answer the batch."""
        node = self.node
        answers = list(plan.answers)
        rejected: list[tuple[CID, UsagiError]] = [(notices[i].cid, e) for i, e in plan.rejected]

        def refuse(refusals: list[Refusal]) -> None:
            for i, error in refusals:
                answers[i] = Rejected(error)
                rejected.append((notices[i].cid, error))

        acks: list[bytes | None] = [None] * len(notices)
        receipts: dict[int, bytes] = {}  # the received acks, stored with their documents
        for i, answer in enumerate(answers):
            notice = notices[i]
            if isinstance(answer, Reanswered):
                # The same answer (status, digest), for this notice: a sender takes
                # an ack only for the nonce it sent (spec section 8).
                ack = acks[i] = self._sign(notice, answer.status, acked_at,
                                           digest=answer.digest, reason=answer.reason)
                await node.ledger.record_nonce(notice.sender, notice.nonce, notice.cid, ack)
            elif isinstance(answer, Received):
                receipts[i] = self._sign(notice, "received", acked_at, digest=answer.digest)
        rows = self._rows(plan.store)
        charge, entries, lost = await self._store(plan, rows, receipts, aliases,
                                                  format_time(acked_at), now_ts, refuse)
        log_batch("received", "from", [(rows[e.cid][0], names.get(e.notice.sender,
                                                                   e.notice.sender))
                                       for e in {e.cid: e for e in entries}.values()
                                       if e.cid not in lost])
        if rejected:
            sender = printable(", ".join(sorted(names.values())))
            first_cid, first = rejected[0]
            activity.warning("rejected %d document(s) from %s, e.g. %s: %s (%s)", len(rejected),
                             sender, first_cid, first.code, printable(first))
        for i, answer in enumerate(answers):
            if isinstance(answer, Replayed):
                acks[i] = answer.ack
            elif isinstance(answer, Received):
                acks[i] = receipts[i]
            elif isinstance(answer, Rejected):
                acks[i] = self._sign(notices[i], "rejected", acked_at, reason=answer.error.code)
        for i, answer in enumerate(answers):
            if isinstance(answer, Repeated):
                acks[i] = acks[answer.of]
        if charge.refusal is not None:
            # Once per partner and window: later batches are refused by the check before.
            activity.warning("%s: %s", printable(", ".join(sorted(names.values()))),
                             charge.refusal)
            # What fit is stored; its acks go out when the sender retries (replays).
            raise charge.refusal
        return [a for a in acks if a is not None]

    def _rows(self, entries: Sequence[Store]) -> dict[CID, tuple[DocumentRow, bytes]]:
        """Each document's ledger row and its ``prev`` list (DAG-CBOR), made once."""
        rows: dict[CID, tuple[DocumentRow, bytes]] = {}
        for entry in entries:
            if entry.cid in rows:
                continue
            document = entry.opened.document
            rows[entry.cid] = (
                DocumentRow(entry.cid, "in", entry.partner, document["kind"],
                            document.get("thread", entry.cid), document.get("ref"),
                            document["issued_at"], self.node.clock(), "received", None,
                            entry.digest, entry.opened.signed, document.get("user"),
                            findings_json(list(entry.findings))),
                dagcbor.encode(list(document.get("prev", []))))
        return rows

    async def _store(self, plan: Plan, rows: Mapping[CID, tuple[DocumentRow, bytes]],
                     receipts: Mapping[int, bytes], aliases: dict[str, str], acked_text: str,
                     now_ts: float, refuse: Callable[[list[Refusal]], None]
                     ) -> tuple[Charge, list[Store], set[CID]]:
        """Charge the quotas and store what is taken durably: the charge, what is
        stored, and what another writer recorded meanwhile (not stored here)."""
        node = self.node

        def costs(stored: Sequence[Store]) -> list[tuple[str, CID, int]]:
            return [receiving.cost(e, aliases) for e in stored]

        # Room in each sender's quota for what is about to be stored (the block
        # and the signed document), reserved before anything is written. What
        # does not fit is not stored, and the batch is answered 429.
        entries = list(plan.store)
        charge = await node.quotas.charge(costs(entries), now_ts, aliases)
        if charge.refusal is not None:
            # What answers a document left out is left out with it, and its room
            # given back.
            entries, dangling = receiving.drop_dangling(
                [e for e in entries if e.cid in charge.taken], plan.opened_here, plan.already)
            refuse(dangling)
            charge = node.quotas.settle(charge, costs(entries))
        lost: set[CID] = set()
        if not entries:
            return charge, entries, lost
        # Durable first: the blocks, then documents + acks + nonces in one
        # transaction. Only after both commits does any ack leave.
        try:
            await node.put_recorded([(e.cid, e.block) for e in entries])
            while entries:
                held, lost = await node.ledger.record_received_checked([
                    (*rows[e.cid], receipts[e.index], "received", acked_text,
                     e.notice.sender, e.notice.nonce) for e in entries
                ], usage=charge.usage)
                if not held:
                    break
                # Recorded before under another envelope: nothing was written.
                # Those are duplicates, what links them goes with them, and
                # their room and blocks are given back; the rest is written.
                before = {e.cid for e in entries}
                entries, duplicates = receiving.recorded_elsewhere(entries, held)
                refuse(duplicates)
                entries, dangling = receiving.drop_dangling(entries, plan.opened_here,
                                                            plan.already)
                refuse(dangling)
                charge = node.quotas.settle(charge, costs(entries))
                await node.discard(list(before - {e.cid for e in entries}))
        except BaseException:
            node.quotas.release(charge)
            raise
        if lost:
            # Another writer of this ledger (not a batch of this process: those
            # reserve digests) recorded the same signed documents under other
            # envelopes meanwhile: nothing of these was written, so every notice
            # naming one is refused, and the quota counts them no more.
            refuse([(e.index, DuplicateError(
                f"the signed document in {e.cid} was recorded meanwhile under another "
                "envelope")) for e in entries if e.cid in lost])
            settled = node.quotas.settle(charge, costs([e for e in entries if e.cid not in lost]))
            await node.ledger.add_quota_usage(Quotas.difference(charge, settled))
            await node.discard(list(lost))
        return charge, entries, lost
