"""The node: one company's end of every trade (docs/spec.md, "Exchange").

A :class:`Node` wires the kernel to its I/O: the identity from the home
folder, the ledger, a block store (embedded SQLite, or Kubo), an HTTP client
for partners. It

* **sends**: builds a document, seals it to both parties, puts the block,
  records the document and queues the signed notice in one ledger
  transaction (several documents, or several requests' groups of them, in one
  as well: ``send_many``, ``send_groups``); the delivery loop (``delivery.py``)
  then POSTs notices in batches with bounded exponential backoff and jitter,
  and accepts an ack only when its signature verifies *and* it names the
  digest of what was sealed;
* **receives** (``intake.py``, its rules in ``receiving.py``): checks each
  notice (active partner, signature, recipient, time window, replay), fetches
  the block (own store, else the sender's trustless gateway with a signed
  request), checks its hash, opens and validates it, commits block and
  document durably, and only then signs and returns the ack;
* **serves blocks** to a partner who is a party to them, and to no one else.

Time is read from ``self.clock`` so tests can move it; every part of the node
reads it from there.

About 750 lines: the Node is the one object the faces, the peer listener and
the operations hold, so its lifecycle, keys and rotations, partners and the
sending path (one send, many, and the local API's coalesced groups) stay
together; receiving, delivery and the operations, which only use it, live in
modules of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp

from ipfs.blockstore import BlockNotFoundError, BlockStore, StoreUnavailableError
from ipfs.gateway import GatewayClient
from ipfs.sqlite import SQLiteBlockStore
from kernel import (
    Ack,
    Identity,
    Notice,
    Opened,
    Sealed,
    canonical,
    dagcbor,
    format_time,
    make_notice,
    make_rotation,
    open_rotation,
    seal,
)
from kernel.cid import CID
from kernel.errors import CIDMismatchError, ExpiredError, UnknownSenderError, UsagiError
from kernel.plugin import Finding

from .delivery import CONTENT_TYPE, NOTICES_PATH, Delivery, read_capped, read_prefix
from .errors import IdempotencyInProgressError, InvitationError, PartnerError, PeerError
from .home import Config, Home
from .httpsig import sign_request
from .indexing import Indexer
from .intake import FETCH_BUDGET, Intake
from .invitation import (
    EVERY_SCOPE,
    INTRODUCTION_VALIDITY,
    Invitation,
    PublicResolver,
    check_endpoint,
    endpoint_scopes,
    make_invitation,
    parse_invitation,
)
from .ledger import DocumentRow, KeyClaim, Ledger, Partner
from .plugin_host import PluginHost, findings_json
from .quota import Quotas
from .receiving import MAX_BODY, open_sealed

# MAX_BODY, NOTICES_PATH and CONTENT_TYPE (owned by receiving and delivery) are
# also named here: the peer listener takes the protocol's paths and limits from here.
__all__ = ["Node", "SendResult", "MAX_BODY", "NOTICES_PATH", "INTRODUCE_PATH", "ROTATE_PATH",
           "CONTENT_TYPE"]

log = logging.getLogger("usagi.node")

INTRODUCE_PATH: Final = "/usagi/v1/introduce"
ROTATE_PATH: Final = "/usagi/v1/rotate"
YIELD_EVERY: Final = 10  # documents sealed between two turns of the event loop
RECENT_BLOCKS: Final = 4096
#: A partner's answer to an introduction or a rotation: a small JSON object.
SMALL_ANSWER: Final = 4096


@dataclass(frozen=True, slots=True)
class SendResult:
    cid: CID
    partner: str
    thread: CID
    digest: bytes
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One document to send, as :meth:`Node.send_groups` takes it: (kind, partner,
    body, reply_to) as an item of :meth:`Node.send_many`, and who sends it."""

    kind: str
    partner: str
    body: dict[str, Any]
    reply_to: CID | None = None
    user: str | None = None


class Refused(Exception):  # noqa: N818 (an outcome, as IdempotencyInProgressError is)
    """Nothing of a group was sent: ``errors`` says why, per document (its index)."""

    def __init__(self, errors: list[tuple[int, Exception]]) -> None:
        super().__init__("; ".join(f"[{i}] {exc}" for i, exc in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class _Prepared:
    partner: Partner
    document: dict[str, Any]
    sealed: Sealed
    findings: list[Finding]
    user: str | None


def _prev_bytes(prev: Sequence[CID]) -> bytes:
    return dagcbor.encode(list(prev))


class Node:
    """One company's node. ``async with Node.load(home, passphrase) as node``."""

    def __init__(self, home: Home, identity: Identity, config: Config,
                 *, store: BlockStore | None = None,
                 clock: Callable[[], float] = time.time,
                 retired: Sequence[Identity] = ()) -> None:
        self.home = home
        self.identity = identity
        #: Keys this node rotated away from: they still open its own history.
        self.retired = list(retired)
        #: old DID -> end of overlap, for our own rotations (loaded on open).
        self._own_overlaps: dict[str, float] = {}
        self.config = config
        self.clock = clock
        self.ledger = Ledger(str(home.ledger_path), clock=clock)
        self.store: BlockStore = store or self._make_store()
        self._session: aiohttp.ClientSession | None = None
        self._gateway: GatewayClient | None = None
        self.wake = asyncio.Event()
        self.retry_base = config.retry_base
        self.retry_cap = config.retry_cap
        self.max_attempts = config.max_attempts
        self.skew = timedelta(minutes=10)
        # Blocks sealed here recently, so pushing them with their notices
        # needs no store round trip. Bounded; the store stays the truth.
        self._recent: OrderedDict[CID, bytes] = OrderedDict()
        self._last_issued: datetime | None = None
        self.plugins = PluginHost.for_config(config)
        #: Bytes of blocks one received batch may fetch and hold (FETCH_BUDGET).
        self.fetch_budget = FETCH_BUDGET
        #: Where partner requests may go (docs/spec.md 10, "Endpoints").
        self.endpoint_scopes = endpoint_scopes(config.endpoint, config.allow_private_endpoints)
        #: What each partner may store here per period, and has (docs/spec.md §12).
        self.quotas = Quotas(home, config, self.ledger)
        #: Receiving (intake.py, the rules in receiving.py) and delivery (delivery.py).
        self._intake = Intake(self)
        self._delivery = Delivery(self)
        #: The search index, kept up off the exchange's path (indexing.py).
        self._indexer = Indexer(self.ledger)

    @classmethod
    def load(cls, home: Home | str, passphrase: str | None, **kwargs: Any) -> Node:
        home = home if isinstance(home, Home) else Home(home)
        identity = home.load_identity(passphrase)
        retired = home.load_keyring(passphrase)
        return cls(home, identity, home.load_config(), retired=retired, **kwargs)

    def _make_store(self) -> BlockStore:
        if self.config.kubo_url:
            from ipfs.kubo import KuboBlockStore

            return KuboBlockStore(self.config.kubo_url)
        return SQLiteBlockStore(self.home.blocks_path)

    async def __aenter__(self) -> Node:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        await self.ledger.open()
        self._own_overlaps = {old: until for old, _, until, _ in await self.ledger.own_rotations()}
        await self.store.open()
        # Names a partner's endpoint uses are resolved through the endpoint policy.
        resolver = (PublicResolver(self.endpoint_scopes)
                    if self.endpoint_scopes != EVERY_SCOPE else None)
        connector = aiohttp.TCPConnector(limit=64, limit_per_host=32, resolver=resolver)
        self._session = aiohttp.ClientSession(connector=connector)
        self._gateway = GatewayClient(self._session, timeout=30.0)

    async def index_backlog(self, progress: Callable[[int, int], None] | None = None,
                            batch: int = 1000) -> int:
        """Index every document the search index lacks (recorded since it last
        caught up, a ledger from before the index, or one whose index was reset),
        in batches; return how many. A search calls it before it looks;
        ``progress(done, total)`` is called after each batch."""
        return await self._indexer.catch_up(progress, batch)

    async def index_loop(self, stop: asyncio.Event) -> None:
        """Keep the search index up in the background until ``stop`` is set
        (usagi_p2p/node/indexing.py): the serving node runs it."""
        await self._indexer.loop(stop)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.store.close()
        await self.ledger.close()

    @property
    def did(self) -> str:
        return self.identity.did

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("node is not open")
        return self._session

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def my_dids(self, now: float | None = None) -> set[str]:
        """The DIDs this node answers to now: its key, and rotated keys still in overlap."""
        now = self.clock() if now is None else now
        return {self.did} | {old for old, until in self._own_overlaps.items() if now <= until}

    def open_envelope(self, block: bytes, cid: CID | None = None) -> Opened:
        """Open with the current key, else with a retired one (documents sealed before a
        rotation, or by a partner during its overlap).

        By the kernel's rules alone, whatever plugins are enabled today: a stored
        document verifies the same after a plugin is enabled or disabled. What
        arrives is held to the enabled plugins' kinds on receipt
        (``receiving.open_block``).
        """
        return open_sealed(block, [self.identity, *self.retired], cid)

    async def partner_dids(self, key: str) -> list[str]:
        """A partner's current DID and every DID it rotated away from (its history)."""
        did = (await self.resolve_partner(key)).did
        aliases = await self.ledger.aliases()
        return [did, *(old for old in aliases if canonical(old, aliases) == did)]

    async def canonical(self, did: str) -> str:
        """The key a party uses now, following rotations."""
        return canonical(did, await self.ledger.aliases())

    # -- key rotation ---------------------------------------------------------

    async def rotate(self, passphrase: str | None, overlap: timedelta = timedelta(days=14),
                     *, fast_kdf: bool = False) -> tuple[bytes, dict[str, str]]:
        """Move this node to a new key and tell every active partner.

        Returns the signed rotation statement and, per partner, "ok" or why it
        could not be told (run 'usagi key announce' later for those).
        """
        old, new = self.identity, Identity.generate()
        now = self.now()
        statement = make_rotation(old, new, now, now + overlap)
        await self.ledger.record_rotation(old.did, new.did, (now + overlap).timestamp(),
                                          statement)
        self.home.rotate_key(new, passphrase, fast_kdf=fast_kdf)
        self.identity = new
        self.config.did = new.did
        self.retired.insert(0, old)
        self._own_overlaps[old.did] = (now + overlap).timestamp()
        return statement, await self.announce_rotation(statement)

    async def announce_rotation(self, statement: bytes) -> dict[str, str]:
        results: dict[str, str] = {}
        for partner in await self.ledger.partners():
            if not partner.active:
                continue
            try:
                url = check_endpoint(partner.endpoint, scopes=self.endpoint_scopes)
            except UsagiError as exc:
                results[partner.name] = f"{exc.code}: {exc}"
                continue
            url = url.rstrip("/") + ROTATE_PATH
            try:
                async with self.session.post(url, data=statement,
                                             headers={"Content-Type": CONTENT_TYPE},
                                             timeout=aiohttp.ClientTimeout(total=15),
                                             allow_redirects=False) as resp:
                    # An answer of 200 is all we need: its body is not read.
                    results[partner.name] = ("ok" if resp.status == 200
                                             else f"{resp.status} {await read_prefix(resp)}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                results[partner.name] = f"unreachable: {exc!r}"
        return results

    async def accept_rotation(self, raw: bytes) -> Partner:
        """A partner tells us it moved to a new key."""
        rotation = open_rotation(raw)
        partner = await self.ledger.partner(rotation.old)
        if partner is None or not partner.active:
            raise UnknownSenderError(f"{rotation.old} is not an active partner of this node")
        if self.now() > rotation.overlap_until:
            raise ExpiredError("the rotation's overlap has already ended")
        await self.ledger.partner_rotated(rotation.old, rotation.new,
                                          rotation.overlap_until.timestamp())
        updated = await self.ledger.partner(rotation.new)
        assert updated is not None
        log.info("%s rotated its key to %s", partner.name, rotation.new)
        return updated

    # -- partners -----------------------------------------------------------

    async def invite(self, valid_for: timedelta = timedelta(days=7)) -> Invitation:
        invitation = make_invitation(self.identity, self.config.name, self.config.endpoint,
                                     self.now(), valid_for=valid_for)
        await self.ledger.add_invitation(invitation.nonce, invitation.expires.timestamp())
        return invitation

    async def add_partner(self, text: str, *, introduce: bool = True) -> Partner:
        """Verify an invitation, introduce ourselves to it, and store the partner once
        it has accepted (docs/spec.md section 10): an introduction refused or not
        delivered stores nothing, and the same paste may simply be run again.
        ``introduce=False`` stores the partner without contacting it."""
        invitation = parse_invitation(text, now=self.now())
        if invitation.type != "invitation":
            raise PartnerError("that is an introduction, not an invitation")
        if invitation.did == self.did:
            raise PartnerError("that invitation is your own")
        check_endpoint(invitation.endpoint, scopes=self.endpoint_scopes)
        known = await self.ledger.partner(invitation.did)
        if known is not None and not known.active:
            raise PartnerError(f"{known.name} is already a partner of this node, {known.status}; "
                               "'usagi partner resume' exchanges with it again")
        if introduce:
            await self._introduce(invitation)
        return await self.ledger.add_partner(invitation.did, invitation.name, invitation.endpoint,
                                             invitation.raw)

    async def _introduce(self, invitation: Invitation) -> None:
        """POST our introduction to the inviting node; return once it has accepted it."""
        intro = make_invitation(self.identity, self.config.name, self.config.endpoint,
                                self.now(), type="introduction", nonce=invitation.nonce,
                                valid_for=INTRODUCTION_VALIDITY)
        url = invitation.endpoint.rstrip("/") + INTRODUCE_PATH
        try:
            async with self.session.post(url, data=intro.raw, timeout=aiohttp.ClientTimeout(15),
                                         headers={"Content-Type": CONTENT_TYPE},
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    raise PeerError(f"{invitation.name} refused the introduction: "
                                    f"{resp.status} {await read_prefix(resp)}; nothing stored")
                answer = await read_capped(resp, SMALL_ANSWER, f"{invitation.name}'s answer")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PeerError(f"{url} could not be reached to introduce ourselves ({exc!r}); "
                            "nothing stored: run 'usagi partner add' again later") from None
        try:
            accepted = json.loads(answer).get("ok") is True
        except (ValueError, AttributeError, RecursionError):
            accepted = False
        if not accepted:
            raise PeerError(f"{invitation.name} answered the introduction with "
                            f"{answer[:300].decode('utf-8', 'replace')!r}, not "
                            '{"ok": true}; nothing stored')

    async def accept_introduction(self, raw: bytes) -> Partner:
        """A new partner answers one of our invitations (docs/spec.md section 10).

        Valid at most INTRODUCTION_VALIDITY ahead (plus the clock allowance of
        notices), for an invitation of ours not expired and used by no one else
        (one conditional statement takes it). An introduction never changes a
        partner already stored: a suspended or removed one is refused, an active
        one answered as before; a new one gets a name no other partner has.
        """
        now = self.now()
        intro = parse_invitation(raw, now=now)
        if intro.type != "introduction":
            raise PartnerError("expected an introduction")
        if intro.expires > now + INTRODUCTION_VALIDITY + self.skew:
            raise InvitationError(f"an introduction is valid for {INTRODUCTION_VALIDITY} at "
                                  f"most, this one until {format_time(intro.expires)}")
        check_endpoint(intro.endpoint, scopes=self.endpoint_scopes)
        known = await self.ledger.partner(intro.did)
        if known is not None and not known.active:
            raise PartnerError(f"introduction refused: {intro.did} is {known.status} here, "
                               "and an introduction does not change that")
        why = await self.ledger.use_invitation(intro.nonce, intro.did, now.timestamp())
        if why is not None:
            raise PartnerError(f"introduction refused: {why}")
        return await self.ledger.add_partner(intro.did, intro.name, intro.endpoint, intro.raw,
                                             update=False)

    async def resolve_partner(self, key: str) -> Partner:
        partner = await self.ledger.find_partner(key)
        if partner is None:
            raise PartnerError(f"no partner matches {key!r} (see 'usagi partner list')")
        return partner

    # -- sending ------------------------------------------------------------

    async def build_document(self, kind: str, partner: Partner, body: dict[str, Any], *,
                             reply_to: CID | None = None, user: str | None = None
                             ) -> dict[str, Any]:
        document: dict[str, Any] = {k: v for k, v in body.items()
                                    if k not in ("v", "kind", "from", "to", "issued_at",
                                                 "thread", "prev")}
        document.update(v=1, kind=kind, issued_at=self._issue_time(),
                        to=partner.did)
        document["from"] = self.did
        if user:
            document["user"] = user
        if reply_to is not None:
            answered = await self.ledger.document(reply_to)
            if answered is None:
                raise PartnerError(f"{reply_to} is not in this node's ledger")
            if await self.canonical(answered.partner) != partner.did:
                raise PartnerError(f"{reply_to} is a document with another partner")
            document["thread"] = answered.thread
            document["prev"] = [reply_to]
        return document

    def _issue_time(self) -> str:
        """Now, but always after the last document this node issued: two documents
        with the same content sent in one clock tick (a coarse or a test clock)
        still differ in their signed bytes, which a receiver records once
        (spec section 11.1, "One signed document, one record")."""
        now = self.now()
        if self._last_issued is not None and now <= self._last_issued:
            now = self._last_issued + timedelta(microseconds=1)
        self._last_issued = now
        return format_time(now)

    async def send(self, kind: str, partner_key: str, body: dict[str, Any], *,
                   reply_to: CID | None = None, user: str | None = None) -> SendResult:
        """Seal, store, record and queue one document; the delivery loop sends it."""
        return (await self.send_many([(kind, partner_key, body, reply_to)], user=user))[0]

    async def send_many(self, items: Sequence[tuple[str, str, dict[str, Any], CID | None]], *,
                        user: str | None = None,
                        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                        claim: KeyClaim | None = None) -> list[SendResult]:
        """Send several documents with one block-store and one ledger commit.

        Each item is (kind, partner, body, reply_to). The blocks are durable
        before the ledger records them; a crash in between leaves only an
        unreferenced ciphertext block, never a queued notice without its block.
        With ``claim`` (a keyed request of the local API), the documents are
        recorded only while the claim holds its key, and the key names them in
        the same commit (Ledger.record_sent_groups); else nothing is sent and
        IdempotencyInProgressError says so.
        """
        partners: dict[str, Partner] = {}
        prepared = []
        for kind, partner_key, body, reply_to in items:
            prepared.append(await self._prepare(kind, partner_key, body, reply_to, user,
                                                prepare, partners))
            if len(prepared) % YIELD_EVERY == 0:
                # Sealing is CPU work; a long send must not hold deliveries
                # and incoming acks back for its whole length.
                await asyncio.sleep(0)
        outcome = (await self._record([(prepared, claim)]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def send_groups(self, groups: Sequence[tuple[Sequence[Outgoing], KeyClaim | None]]
                          ) -> list[list[SendResult] | Exception]:
        """Several sends at once (the local API's concurrent requests, coalesced): each
        group is one request's documents with its key's claim (or None).

        Each group is prepared on its own: a document that cannot be sent
        (an unknown or suspended partner, a body the kernel refuses, a plugin's
        error) fails its group only, as :class:`Refused` listing every such
        document by its index; nothing of that group is sent. The others are
        stored with one block-store put and recorded in ONE ledger transaction
        (each keyed group only while its claim holds its key, else
        IdempotencyInProgressError for that group). If that commit fails as a
        whole, each group is tried again alone, so one group's failure is its
        own. Per group, in order: its results, or why nothing of it was sent.
        """
        partners: dict[str, Partner] = {}
        outcomes: list[list[SendResult] | Exception] = []
        ready: list[tuple[list[_Prepared], KeyClaim | None]] = []
        where: list[int] = []
        count = 0
        for index, (items, claim) in enumerate(groups):
            prepared: list[_Prepared] = []
            refused: list[tuple[int, Exception]] = []
            for i, item in enumerate(items):
                try:
                    prepared.append(await self._prepare(item.kind, item.partner, item.body,
                                                        item.reply_to, item.user, None, partners))
                except Exception as exc:  # noqa: BLE001 (each document's own failure, reported)
                    refused.append((i, exc))
                count += 1
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if refused:
                outcomes.append(Refused(refused))
            else:
                outcomes.append([])
                ready.append((prepared, claim))
                where.append(index)
        if not ready:
            return outcomes
        try:
            recorded = await self._record(ready)
        except Exception as exc:
            if len(ready) == 1:
                recorded = [exc]
            else:  # one group's fault must not be all of theirs: each alone
                recorded = []
                for group in ready:
                    try:
                        recorded += await self._record([group])
                    except Exception as alone:  # noqa: BLE001 (that group's answer)
                        recorded.append(alone)
        for index, outcome in zip(where, recorded, strict=True):
            outcomes[index] = outcome
        return outcomes

    async def refusals(self, items: Sequence[Outgoing]) -> list[tuple[int, Exception]]:
        """Why each of ``items`` could not be sent (its index), as :meth:`send_groups`
        would find it; nothing is stored. For listing every broken document of a
        request that is refused anyway."""
        partners: dict[str, Partner] = {}
        refused: list[tuple[int, Exception]] = []
        for i, item in enumerate(items):
            try:
                await self._prepare(item.kind, item.partner, item.body, item.reply_to,
                                    item.user, None, partners)
            except Exception as exc:  # noqa: BLE001 (listed)
                refused.append((i, exc))
            if (i + 1) % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return refused

    async def _prepare(self, kind: str, partner_key: str, body: dict[str, Any],
                       reply_to: CID | None, user: str | None,
                       prepare: Callable[[dict[str, Any]], dict[str, Any]] | None,
                       partners: dict[str, Partner]) -> _Prepared:
        """One document built, checked by the plugins and sealed; nothing stored yet."""
        partner = partners.get(partner_key) or await self.resolve_partner(partner_key)
        partners[partner_key] = partner
        if not partner.active:
            raise PartnerError(f"{partner.name} is {partner.status}; nothing is sent to it")
        document = await self.build_document(kind, partner, body, reply_to=reply_to, user=user)
        if prepare is not None:
            document = prepare(document)  # e.g. approvals sign the finished document
        # Warnings travel with the document; an error (a field a plugin
        # requires on its own kind) refuses it before anything is stored.
        findings = self.plugins.check(document, user=user)
        # The kernel's rules only: which plugin kinds it takes is the
        # receiver's to say (spec section 12), on receipt.
        return _Prepared(partner, document, seal(document, self.identity), findings, user)

    async def _record(self, groups: Sequence[tuple[Sequence[_Prepared], KeyClaim | None]]
                      ) -> list[list[SendResult] | Exception]:
        """Store the groups' blocks (one put) and record them (one transaction);
        raises if either fails as a whole (nothing recorded; the blocks taken back)."""
        every = [p for prepared, _ in groups for p in prepared]
        await self.put_recorded([(p.sealed.cid, p.sealed.block) for p in every])
        for p in every:
            self._recent[p.sealed.cid] = p.sealed.block
        while len(self._recent) > RECENT_BLOCKS:
            self._recent.popitem(last=False)
        records, results = [], []
        for prepared, claim in groups:
            rows, sent = [], []
            for p in prepared:
                thread = p.document.get("thread", p.sealed.cid)
                notice = make_notice(self.identity, p.sealed.cid, p.partner.did, self.now())
                row = DocumentRow(p.sealed.cid, "out", p.partner.did, p.document["kind"], thread,
                                  p.document.get("ref"), p.document["issued_at"], self.clock(),
                                  "queued", None, p.sealed.digest, p.sealed.signed, p.user,
                                  findings_json(p.findings))
                rows.append((row, _prev_bytes(p.document.get("prev", [])), notice))
                sent.append(SendResult(p.sealed.cid, p.partner.did, thread, p.sealed.digest,
                                       tuple(p.findings)))
            records.append((rows, claim))
            results.append(sent)
        try:
            held = await self.ledger.record_sent_groups(records)
        except Exception:
            # Not recorded, so nothing refers to these blocks: take them back
            # rather than leave unreferenced ciphertext behind.
            await self.discard([p.sealed.cid for p in every])
            raise
        outcomes: list[list[SendResult] | Exception] = []
        for (prepared, _), sent, ok in zip(groups, results, held, strict=True):
            if ok:
                outcomes.append(sent)
            else:
                await self.discard([p.sealed.cid for p in prepared])
                outcomes.append(IdempotencyInProgressError(
                    "another attempt took this Idempotency-Key over"))
        self.wake.set()
        return outcomes

    async def put_recorded(self, blocks: Sequence[tuple[CID, bytes]]) -> None:
        """Put blocks the ledger is about to record, each under its CID.

        The one place where a block and the CID its ledger row will carry meet,
        sent or received: the store names every block itself (CIDv1 dag-cbor
        sha2-256), and a row naming any other CID would name a block the store
        cannot return (spec section 2). The kernel already refuses such CIDs on
        notices and envelopes; this holds the invariant against every path.

        On a store that collects garbage (a Kubo node, an IPFS Cluster's proxy)
        each block is pinned here too, sent and received alike: a block the
        ledger records must outlive the daemon's next GC.
        """
        filed = await self.store.put_many([block for _, block in blocks])
        wrong = [(cid, got) for (cid, _), got in zip(blocks, filed, strict=True) if got != cid]
        if wrong:
            await self.discard([got for _, got in wrong])  # unless recorded for themselves
            cid, got = wrong[0]
            raise CIDMismatchError(f"{cid} would be recorded for a block the store files "
                                   f"as {got}")
        if self.store.collects_garbage:  # a Kubo node does; the embedded store never
            try:
                for cid in filed:
                    await self.store.pin(cid)
            except Exception:
                await self.discard(filed)
                raise

    async def discard(self, cids: list[CID]) -> None:
        """Best effort: forget blocks this node just stored and never recorded.

        A block the ledger does hold (a commit that went through although its
        caller saw an error) is kept; if the ledger cannot say, all are kept.
        """
        try:
            recorded = await self.ledger.digests(cids)
        except Exception as exc:
            log.warning("kept %d unrecorded blocks (the ledger cannot be read: %s)",
                        len(cids), exc)
            return
        for cid in cids:
            if cid in recorded:
                continue
            self._recent.pop(cid, None)
            try:
                if self.store.collects_garbage:
                    await self.store.unpin(cid)
                await self.store.delete(cid)
            except Exception as exc:  # cleanup must not hide the error being raised
                log.warning("could not remove unrecorded block %s: %s", cid, exc)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: exponential, capped, full jitter."""
        ceiling = float(min(self.retry_cap, self.retry_base * (2 ** attempts)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (jitter, not crypto)

    async def deliver_once(self, limit: int = 1000) -> int:
        """Send every due notice once; return how many were acknowledged."""
        return await self._delivery.deliver_once(limit)

    async def delivery_loop(self, stop: asyncio.Event, idle: float = 0.25) -> None:
        """Deliver until ``stop`` is set (usagi_p2p/node/delivery.py)."""
        await self._delivery.loop(stop, idle)

    async def wait_for_ack(self, cid: CID, timeout: float = 30.0, *, fresh: bool = False
                           ) -> tuple[bytes, str, str | None] | None:
        """The ack once it is stored, or None on timeout or when given up.
        ``fresh``: ``cid`` was sent by this process a moment ago (Delivery.wait_for_ack)."""
        return await self._delivery.wait_for_ack(cid, timeout, fresh=fresh)

    def opened_ack(self, signed: bytes) -> Ack:
        """An ack this node stored (as wait_for_ack returns it), opened: verified
        once, by the delivery that stored it, or now."""
        return self._delivery.opened_ack(signed)

    def take_recent(self, cid: CID) -> bytes | None:
        """A block sealed here recently, taken out of the cache (delivery pushes it)."""
        return self._recent.pop(cid, None)

    # -- receiving ----------------------------------------------------------

    async def receive(self, body: bytes) -> list[bytes]:
        """Handle one POSTed batch of notices; return the acks in order
        (usagi_p2p/node/intake.py; the rules: usagi_p2p/node/receiving.py).

        Raises a typed error (mapped to an HTTP status by the peer API) when
        the batch itself is bad; then nothing at all is processed or stored.
        """
        return await self._intake.receive(body)

    async def fetch_block(self, notice: Notice) -> bytes:
        # Our own copy only for a block the sender is a party to: for any other,
        # what a partner's notice gets back must not depend on what we hold.
        if await self.may_read(notice.sender, notice.cid):
            try:
                return await self.store.get(notice.cid)
            except BlockNotFoundError:
                pass
        partner = await self.ledger.partner(notice.sender)
        assert partner is not None and self._gateway is not None
        try:  # an endpoint stored before this node's policy narrowed (spec 10)
            endpoint = check_endpoint(partner.endpoint, scopes=self.endpoint_scopes)
        except UsagiError as exc:
            raise StoreUnavailableError(f"the sender's endpoint is refused: {exc}") from None
        path = f"/ipfs/{notice.cid}"
        headers = sign_request(self.identity, "GET", path, "format=raw",
                               created=int(self.clock()))
        return await self._gateway.get_block(endpoint, notice.cid, headers=headers)

    async def may_read(self, requester: str, cid: CID) -> bool:
        """A block is served only to an active partner who is a party to it.

        The ledger is asked the same questions whether or not ``cid`` is held,
        so a partner who is no party cannot tell from the time taken either.
        """
        partner = await self.ledger.partner(requester)
        if partner is None or not partner.accepted_at(self.clock()):
            return False
        aliases = await self.ledger.aliases()
        row = await self.ledger.document(cid)
        return row is not None and requester in (row.partner, canonical(row.partner, aliases))
