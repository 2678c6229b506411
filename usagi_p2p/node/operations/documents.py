"""The documents of a company's trades: sending, answering, delivering, looking.

Part of ``usagi_p2p.node.operations`` (see there). A thread is always gathered
between two parties (``Ledger.thread``, docs/spec.md section 9): a document
another partner hung on it cannot break it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from kernel import (
    DOCUMENT_LIMITS,
    Discrepancy,
    Opened,
    check_ack,
    document_findings,
    open_ack,
    open_signed,
    split_thread,
    verify_thread,
)
from kernel.cid import CID
from kernel.errors import UsagiError
from kernel.plugin import Finding

from ..errors import InvalidCursorError, NodeError, PartnerError, UnknownDocumentError
from ..ledger import DocumentRow, KeyClaim
from ..node import Node, Outgoing, Refused, SendResult
from ..plugin_host import PluginHost

__all__ = ["ANSWERS", "CARRIED", "SERVE_STATE", "MAX_PAGE", "AckView", "Check", "Delivery",
           "DocumentEntry", "DocumentPage", "DocumentView", "Prepare", "ThreadEntry",
           "Verification", "fill_extracted", "send", "opened_body", "outgoing", "send_groups", "refusals",
           "Outgoing", "Refused",
           "answer", "answer_body", "deliver_now", "requeue_undelivered", "outbox_counts",
           "await_ack", "retry_outbox", "sent_document",
           "list_documents", "page_documents", "show_document", "document_block",
           "thread_documents", "verify_document"]

#: What a running ``usagi serve`` writes in its home: ``{"pid", "url"}``.
SERVE_STATE: Final = "serve.json"

#: Asks a running ``usagi serve`` of this home to deliver now; True when it answered.
Wake = Callable[[], Awaitable[bool]]

#: A function that completes a built document before it is sealed (approvals).
Prepare = Callable[[dict[str, Any]], dict[str, Any]]

#: What an answer sent without a body of its own takes from the document it
#: answers: an order for what was quoted, a delivery note or an invoice for
#: what was ordered. Nothing else (a reference, a note, a response, dates) is
#: the same from one document to the next.
CARRIED: Final = ("currency", "lines", "total")

#: Which documents a kernel kind is filled from (an order from a quote or a
#: counter-offer, and so on). Anything else (a cancel, a message, a plugin's
#: kind, or an answer to the wrong document) needs a body of its own.
ANSWERS: Final[Mapping[str, frozenset[str]]] = {
    "order": frozenset({"quote", "order_response"}),
    "order_response": frozenset({"order"}),
    "delivery_note": frozenset({"order", "order_response"}),
    "invoice": frozenset({"order", "order_response", "delivery_note"}),
}


# -- values -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckView:
    """A partner's (or this node's) signed ack of one document, opened."""

    status: str
    reason: str | None
    by: str
    at: datetime
    signed: bytes
    #: The digest the ack names (a sha2-256 multihash of the signed document);
    #: None on a rejection.
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of a sent document: its ack, or its status while there is none."""

    ack: AckView | None
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class DocumentEntry:
    """One document of a listing (inbox, outbox)."""

    cid: CID
    direction: str
    kind: str
    ref: str | None
    partner: str
    #: The partner's local name; None for a DID this node has no partner under.
    partner_name: str | None
    issued_at: str
    status: str
    reason: str | None
    thread: CID
    #: When this node recorded it (Unix seconds).
    recorded_at: float = 0.0


#: The most documents one page of :func:`page_documents` holds.
MAX_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class DocumentPage:
    """One page of a listing, newest first; ``next`` is the cursor of the page
    after it (None: this is the last)."""

    entries: tuple[DocumentEntry, ...]
    next: str | None


@dataclass(frozen=True, slots=True)
class DocumentView:
    """One document as it was opened, with its ack and the plugins' findings."""

    cid: CID
    direction: str
    status: str
    reason: str | None
    thread: CID
    document: dict[str, Any]
    partner: str
    partner_name: str | None
    user: str | None
    findings: tuple[Finding, ...]
    ack: AckView | None
    #: The figures that do not add up (kernel.document_findings; docs/commerce.md).
    arithmetic: tuple[Discrepancy, ...] = ()


@dataclass(frozen=True, slots=True)
class ThreadEntry:
    """One document of a thread, in causal order."""

    cid: CID
    kind: str
    ref: str | None
    issued_at: str
    direction: str
    status: str


@dataclass(frozen=True, slots=True)
class Check:
    """One check of :func:`verify_document`; ``detail`` says what held or why not.

    ``facts`` are the same in typed pieces, for a face that words them itself
    (the web UI, in the reader's language): ``bytes``, ``signer``, ``from`` /
    ``to``, ``count`` / ``root`` / ``others``, ``status`` / ``by`` / ``at`` /
    ``reason`` (of the ack), and ``code`` (the error code of a failure).
    """

    name: str
    ok: bool
    detail: str
    facts: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Verification:
    cid: CID
    checks: tuple[Check, ...]
    #: The figures that do not add up: warnings, never a failed check.
    arithmetic: tuple[Discrepancy, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every check holds (and there is at least one)."""
        return bool(self.checks) and all(c.ok for c in self.checks)


# -- sending ------------------------------------------------------------------


def _a(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def _opened(row: DocumentRow) -> dict[str, Any]:
    body: dict[str, Any] = open_signed(row.signed, "document", "from",
                                       DOCUMENT_LIMITS).body
    return body


#: The body of a document row as it was signed (for the other operation modules).
opened_body: Final = _opened


_LISTS: Final = " (see 'usagi inbox' and 'usagi outbox')"


async def _held(node: Node, cid: CID, hint: str = "") -> DocumentRow:
    if (row := await node.ledger.document(cid)) is None:
        raise UnknownDocumentError(f"{cid} is not in this node's ledger{hint}")
    return row


async def answer_body(node: Node, kind: str, cid: CID) -> dict[str, Any]:
    """The body a ``kind`` answering ``cid`` starts from: its :data:`CARRIED` fields.

    Refused (NodeError, nothing sent) when ``kind`` is not filled from the
    answered kind (:data:`ANSWERS`) or there are no lines to carry over.
    """
    row = await _held(node, cid, _LISTS)
    if kind not in ANSWERS:
        raise NodeError(f"{_a(kind)} {kind} is not filled in from the document it answers; "
                        "give its body as a FILE")
    if row.kind not in ANSWERS[kind]:
        raise NodeError(f"{cid} is {_a(row.kind)} {row.kind}; {_a(kind)} {kind} is filled in "
                        f"from {' or '.join(sorted(ANSWERS[kind]))}. Give a FILE to send it "
                        "anyway")
    document = _opened(row)
    body: dict[str, Any] = {key: document[key] for key in CARRIED if key in document}
    if not body.get("lines"):
        raise NodeError(f"{cid} has no lines to carry over; give the {kind}'s body as a FILE")
    return body


def fill_extracted(plugins: PluginHost, body: dict[str, Any], user: str | None) -> None:
    """Add what the plugins extract from each line's text to its ``ext``; a field
    the body gives already is kept as written."""
    for line in body.get("lines") or []:
        if not isinstance(line, dict) or not isinstance(line.get("text"), str):
            continue
        for namespace, fields in plugins.extract(line["text"], user=user).items():
            ext = line.setdefault("ext", {})
            if isinstance(ext, dict) and isinstance(ext.setdefault(namespace, {}), dict):
                for key, value in fields.items():
                    ext[namespace].setdefault(key, value)


async def outgoing(node: Node, kind: str, body: Mapping[str, Any] | None, *,
                   to: str | None = None, reply_to: CID | None = None,
                   fields: Mapping[str, Any] | None = None, user: str | None = None,
                   extract: bool = False) -> Outgoing:
    """What :func:`send` (``body``) or :func:`answer` (no ``body``: filled from
    ``reply_to``) would seal, resolved but not sealed: for :func:`send_groups`.

    ``fields`` go on top of the body (a reference, a response). Without ``to``
    the document goes to whoever the answered document is with, under its
    current key. Raises as :func:`send` and :func:`answer` do, nothing sent.
    """
    if body is None:
        if reply_to is None:
            raise PartnerError("say what to send: a body, or a document to answer")
        filled = await answer_body(node, kind, reply_to)
    else:
        filled = dict(body)
    filled.update(fields or {})
    partner = to
    if partner is None:
        if reply_to is None:
            raise PartnerError("say who gets it: a partner, or a document to answer")
        partner = await node.canonical((await _held(node, reply_to, _LISTS)).partner)
    if extract:
        fill_extracted(node.plugins, filled, user)
    return Outgoing(kind, partner, filled, reply_to, user)


async def send_groups(node: Node, groups: Sequence[tuple[Sequence[Outgoing], KeyClaim | None]]
                      ) -> list[list[SendResult] | Exception]:
    """Several sends in one ledger transaction (``Node.send_groups``): per group, its
    results, or why nothing of it was sent (``Refused``: each document that cannot
    be sent, by index; IdempotencyInProgressError: its claim was lost; else the
    failure of its commit)."""
    return await node.send_groups(groups)


async def refusals(node: Node, items: Sequence[Outgoing]) -> list[tuple[int, Exception]]:
    """Why each of ``items`` could not be sent, by index (``Node.refusals``); nothing
    is stored."""
    return await node.refusals(items)


async def send(node: Node, kind: str, body: Mapping[str, Any], *, to: str | None = None,
               reply_to: CID | None = None, user: str | None = None,
               prepare: Prepare | None = None, extract: bool = False,
               claim: KeyClaim | None = None) -> SendResult:
    """Seal, store, record and queue one document (delivered by :func:`deliver_now`
    or a running ``usagi serve``).

    ``to`` is a partner's name, name prefix or DID; without it, an answer
    (``reply_to``) goes to whoever the answered document is with, under its
    current key. ``extract`` fills each line's plugin fields from its text
    (:func:`fill_extracted`); ``prepare`` completes the built document
    (approvals) before it is checked and sealed. ``claim``: the idempotency key
    this send answers (:mod:`.requests`), recorded with the document.
    """
    item = await outgoing(node, kind, body, to=to, reply_to=reply_to, user=user,
                          extract=extract)
    return (await node.send_many([(item.kind, item.partner, item.body, item.reply_to)],
                                 user=user, prepare=prepare, claim=claim))[0]


async def answer(node: Node, kind: str, reply_to: CID, fields: Mapping[str, Any] | None = None,
                 *, to: str | None = None, user: str | None = None,
                 prepare: Prepare | None = None, extract: bool = False,
                 claim: KeyClaim | None = None) -> SendResult:
    """Answer ``reply_to`` with a ``kind`` filled from it (:func:`answer_body`), then
    ``fields`` on top (a reference, a response); sent like :func:`send`."""
    body = await answer_body(node, kind, reply_to)
    body.update(fields or {})
    return await send(node, kind, body, to=to, reply_to=reply_to, user=user, prepare=prepare,
                      extract=extract, claim=claim)


async def sent_document(node: Node, cid: CID) -> SendResult:
    """What :func:`send` returned for a document this node sent (an answer given
    again: a keyed request whose first attempt sent it)."""
    row = await _held(node, cid)
    if row.direction != "out":
        raise UnknownDocumentError(f"{cid} is not a document this node sent")
    return SendResult(row.cid, row.partner, row.thread, row.digest, _findings(row.findings))


async def deliver_now(node: Node, wake: Wake | None = None) -> None:
    """Deliver the outbox now: by the ``usagi serve`` of this home if one runs
    (it holds the delivery loop; ``wake`` asks it, True when it answered), else
    from this process, once. The faces pass ``wake`` (the company side's client
    of the local API); the core node does not know how to reach its own serve."""
    if wake is None or not await wake():
        await node.deliver_once()


def _ack_view(signed: bytes, status: str, reason: str | None) -> AckView:
    opened = open_ack(signed)
    return AckView(status, reason, opened.by, opened.at, signed, opened.digest)


async def await_ack(node: Node, cid: CID, timeout: float = 30.0, *, fresh: bool = False
                    ) -> Delivery:
    """The partner's ack of ``cid`` once stored, or the document's status after
    ``timeout`` seconds without one. ``fresh``: this process has just sent ``cid``
    (its first look is in memory, not in the ledger: Node.wait_for_ack)."""
    if (ack := await node.wait_for_ack(cid, timeout, fresh=fresh)) is None:
        row = await node.ledger.document(cid)
        return Delivery(None, row.status if row else "unknown", row.reason if row else None)
    # The ack as it was signed (its status and reason), not as the ledger recorded it;
    # opened (its signature checked) once: by the delivery that stored it, or here.
    opened = node.opened_ack(ack[0])
    view = AckView(opened.status, opened.reason, opened.by, opened.at, ack[0])
    return Delivery(view, opened.status, opened.reason)


async def retry_outbox(node: Node, who: str | None = None, wake: Wake | None = None) -> int:
    """Queue every undelivered document (to partner ``who``, or all) again, deliver
    now, and say how many were queued."""
    count = await requeue_undelivered(node, who)
    await deliver_now(node, wake)
    return count


async def requeue_undelivered(node: Node, who: str | None = None) -> int:
    """Queue every undelivered document (to partner ``who``, or all) again; how many."""
    did = (await node.resolve_partner(who)).did if who else None
    return int(await node.ledger.retry_undelivered(did))


async def outbox_counts(node: Node) -> dict[str, int]:
    """How many notices are pending, delivered and undelivered (every state, 0 if none)."""
    counts = await node.ledger.outbox_counts()
    return {state: int(counts.get(state, 0)) for state in ("pending", "delivered", "undelivered")}


# -- looking ------------------------------------------------------------------


async def list_documents(node: Node, direction: Literal["in", "out"], *,
                         partner: str | None = None, kind: str | None = None,
                         status: str | None = None, since: datetime | None = None,
                         limit: int = 50) -> list[DocumentEntry]:
    """The newest ``limit`` documents received (``in``) or sent (``out``), oldest
    first; ``partner`` (name, prefix or DID) includes its earlier keys."""
    dids = await node.partner_dids(partner) if partner else None
    rows = await node.ledger.documents(direction=direction, partners=dids, kind=kind,
                                       status=status,
                                       since=since.timestamp() if since else None,
                                       limit=limit, newest=True)
    names = await node.ledger.partner_names(r.partner for r in rows)
    return [DocumentEntry(r.cid, r.direction, r.kind, r.ref, r.partner, names.get(r.partner),
                          r.issued_at, r.status, r.reason, r.thread, r.recorded_at) for r in rows]


def _cursor(row: DocumentRow) -> str:
    """The opaque cursor after ``row``: its position (recorded_at, CID), versioned."""
    text = json.dumps([1, row.recorded_at, str(row.cid)], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def _position(cursor: str) -> tuple[float, CID]:
    """The position a cursor of :func:`_cursor` names; InvalidCursorError for anything else."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, recorded_at, cid = json.loads(raw.decode("ascii"))
        if version != 1 or type(recorded_at) not in (int, float) or not isinstance(cid, str) \
                or not math.isfinite(recorded_at):
            raise ValueError("not a cursor of this node")
        return float(recorded_at), CID.parse(cid)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, UsagiError):
        raise InvalidCursorError("not a cursor this node gave out; list again from the "
                                 "first page") from None


async def page_documents(node: Node, *, direction: Literal["in", "out"] | None = None,
                         partner: str | None = None, kind: str | None = None,
                         status: str | None = None, since: datetime | None = None,
                         until: datetime | None = None, cursor: str | None = None,
                         limit: int = 50) -> DocumentPage:
    """One page of the documents (received ``in``, sent ``out``, or both), newest
    first, recorded in [``since``, ``until``); ``cursor`` is the ``next`` of the
    page before. Paging to the end lists every document once, also while new
    ones arrive (they come before the first page). Full-text search (``q``)
    is to join these filters (issue 16)."""
    if not 1 <= limit <= MAX_PAGE:
        raise NodeError(f"a page holds 1 to {MAX_PAGE} documents, not {limit}")
    before = _position(cursor) if cursor is not None else None
    dids = await node.partner_dids(partner) if partner else None
    rows = await node.ledger.documents_page(
        direction=direction, partners=dids, kind=kind, status=status,
        since=since.timestamp() if since else None, until=until.timestamp() if until else None,
        before=before, limit=limit + 1)
    names = await node.ledger.partner_names(r.partner for r in rows[:limit])
    entries = tuple(DocumentEntry(r.cid, r.direction, r.kind, r.ref, r.partner,
                                  names.get(r.partner), r.issued_at, r.status, r.reason,
                                  r.thread, r.recorded_at) for r in rows[:limit])
    return DocumentPage(entries, _cursor(rows[limit - 1]) if len(rows) > limit else None)


def _findings(text: str | None) -> tuple[Finding, ...]:
    # Findings are written by this node's own plugin host (findings_json).
    return tuple(Finding(**f) for f in json.loads(text or "[]"))


async def show_document(node: Node, cid: CID) -> DocumentView:
    """One document as it was opened (no decryption needed), with its ack."""
    row = await _held(node, cid)
    ack = await node.ledger.ack(cid)
    partner = await node.ledger.partner(row.partner)
    document = _opened(row)
    return DocumentView(cid, row.direction, row.status, row.reason, row.thread, document,
                        row.partner, partner.name if partner else None, row.user,
                        _findings(row.findings),
                        _ack_view(*ack) if ack else None, tuple(document_findings(document)))


async def document_block(node: Node, cid: CID) -> bytes:
    """The envelope block of a document this node holds, as stored (its hash is ``cid``)."""
    await _held(node, cid)
    return await node.store.get(cid)


async def thread_documents(node: Node, cid: CID) -> list[ThreadEntry]:
    """The thread ``cid`` belongs to, in causal order (its chain verified)."""
    found = await node.ledger.thread(cid)
    if found is None:
        raise UnknownDocumentError(f"{cid} is not in this node's ledger")
    _, rows, aliases = found
    opened = [Opened(r.cid, _opened(r), r.signed, r.digest, "") for r in rows]
    by_cid = {r.cid: r for r in rows}
    return [ThreadEntry(o.cid, o.document["kind"], o.document.get("ref"),
                        o.document["issued_at"], by_cid[o.cid].direction, by_cid[o.cid].status)
            for o in verify_thread(opened, aliases)]


async def verify_document(node: Node, cid: CID) -> Verification:
    """Every check a person needs to trust a document: ledger, block hash,
    signature, parties, digest, thread, ack. ``ok`` only if all hold."""
    checks: list[Check] = []
    arithmetic: tuple[Discrepancy, ...] = ()

    def record(name: str, ok: bool, detail: str, **facts: str) -> bool:
        checks.append(Check(name, ok, detail, facts))
        return ok

    def done() -> Verification:
        return Verification(cid, tuple(checks), arithmetic)

    row = await node.ledger.document(cid)
    if not record("ledger", row is not None,
                  "recorded" if row else "not in this node's ledger"):
        return done()
    assert row is not None
    try:
        block = await node.store.get(cid)
        record("block", True, f"{len(block)} bytes hash to the CID", bytes=str(len(block)))
    except UsagiError as exc:
        record("block", False, f"[{exc.code}] {exc}", code=exc.code)
        return done()
    try:
        opened = node.open_envelope(block, cid)
        doc = opened.document
        arithmetic = tuple(document_findings(doc))
        record("signature", True, f"signed by {opened.signer}", signer=str(opened.signer))
        record("parties", True, f"{doc['from']} -> {doc['to']}", **{"from": doc["from"],
                                                                    "to": doc["to"]})
        record("digest", opened.digest == row.digest, "matches the ledger"
               if opened.digest == row.digest else "differs from the ledger")
    except UsagiError as exc:
        record("envelope", False, f"[{exc.code}] {exc}", code=exc.code)
        return done()
    try:
        found = await node.ledger.thread(cid)
        _, rows, aliases = found if found is not None else (row, [], {})
        members = []
        for r in rows:
            members.append(node.open_envelope(await node.store.get(r.cid), r.cid))
        # This document holds when its own chain does: a broken document elsewhere
        # in the thread is named, but does not take this one with it.
        order, broken = split_thread(row.thread, members, aliases)
        why = {o.cid: exc for o, exc in broken}
        if cid in why:
            record("thread", False, f"[{why[cid].code}] {why[cid]}", code=why[cid].code)
        else:
            record("thread", True, f"{len(order)} document(s) chain from {row.thread}"
                   + (f"; {len(broken)} other(s) do not: "
                      + ", ".join(f"{o.cid} [{e.code}]" for o, e in broken) if broken else ""),
                   count=str(len(order)), root=str(row.thread), others=str(len(broken)))
    except UsagiError as exc:
        record("thread", False, f"[{exc.code}] {exc}", code=exc.code)
    ack = await node.ledger.ack(cid)
    if ack is None:
        record("ack", False, "no acknowledgement yet", status="none")
    else:
        expected_by = doc["to"]  # the receiver acks: the partner, or this node
        try:
            parsed = open_ack(ack[0])
            # The acknowledging party may have rotated its key since.
            if parsed.by != expected_by and await node.canonical(expected_by) == parsed.by:
                expected_by = parsed.by
            check_ack(parsed, cid=cid, by=expected_by, digest=opened.digest)
            record("ack", parsed.ok, f"{parsed.status} by {parsed.by} at {parsed.at.isoformat()}"
                   + (f" ({parsed.reason})" if parsed.reason else ""), status=parsed.status,
                   by=parsed.by, at=parsed.at.isoformat(), reason=parsed.reason or "")
        except UsagiError as exc:
            record("ack", False, f"[{exc.code}] {exc}", code=exc.code)
    return done()


