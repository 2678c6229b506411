"""The node: one company's end of every trade (docs/spec.md, "Exchange").

A :class:`Node` wires the kernel to its I/O: the identity from the home
folder, the ledger, a block store (embedded SQLite, or Kubo), an HTTP client
for partners. It

* **sends**: builds a document, seals it to both parties, puts the block,
  records the document and queues the signed notice in one ledger
  transaction; the delivery loop then POSTs notices in batches with bounded
  exponential backoff and jitter, and accepts an ack only when its signature
  verifies *and* it names the digest of what was sealed;
* **receives**: checks each notice (active partner, signature, recipient,
  time window, replay), fetches the block (own store, else the sender's
  trustless gateway with a signed request), checks its hash, opens and
  validates it, commits block and document durably, and only then signs and
  returns the ack;
* **serves blocks** to a partner who is a party to them, and to no one else.

Time is read from ``self.clock`` so tests can move it.
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
from kernel import dagcbor
from kernel import envelope as kenvelope
from kernel.cid import CID
from kernel.document import format_time
from kernel.errors import (
    CIDMismatchError,
    ExpiredError,
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
from kernel.identity import Identity
from kernel.messages import (
    MESSAGE_LIMITS,
    Notice,
    check_ack,
    make_ack,
    make_notice,
    notice_nonce,
    open_ack,
    open_notice,
)
from kernel.rotation import make_rotation, open_rotation
from kernel.signed import open_signed
from kernel.thread import Held, canonical, check_links

from .errors import (
    TEMPORARY,
    BodyTooLargeError,
    DuplicateError,
    InvitationError,
    OverloadedError,
    PartnerError,
    PeerError,
)
from .home import Config, Home
from .httpsig import sign_request
from .invitation import (
    EVERY_SCOPE,
    INTRODUCTION_VALIDITY,
    Invitation,
    PublicResolver,
    check_endpoint,
    endpoint_scopes,
    make_invitation,
    parse_invitation,
    printable,
)
from .ledger import DocumentRow, Ledger, Partner
from .plugin_host import PluginHost, findings_json
from .quota import Quotas

__all__ = ["Node", "SendResult", "MAX_BATCH", "MAX_BODY", "NOTICES_PATH", "INTRODUCE_PATH",
           "ROTATE_PATH"]

log = logging.getLogger("usagi.node")
#: One line per delivery and per received batch: what 'usagi serve' shows by default.
activity = logging.getLogger("usagi.activity")

NOTICES_PATH: Final = "/usagi/v1/notices"
INTRODUCE_PATH: Final = "/usagi/v1/introduce"
ROTATE_PATH: Final = "/usagi/v1/rotate"
MAX_BATCH: Final = 256
MAX_BODY: Final = 1 << 20
SEND_BATCH: Final = 100
PIPELINE: Final = 4  # batches in flight at once
YIELD_EVERY: Final = 10  # documents sealed between two turns of the event loop
RECENT_BLOCKS: Final = 4096
RESIGN_AFTER: Final = 60.0  # seconds; well inside the receiver's ±10 minute window
FETCH_CONCURRENCY: Final = 16
#: Bytes of blocks one batch may fetch from the sender's gateway. They are held
#: until the batch is stored, so this bounds a batch's memory (a partner's batch
#: of 255 notices for 1 MiB blocks would hold 255 MiB); what is past it is
#: answered ``overloaded``, a temporary reason: the sender sends it again.
FETCH_BUDGET: Final = 32 << 20
BATCH_LIMITS: Final = dagcbor.Limits(max_size=MAX_BODY, max_depth=3, max_length=MAX_BATCH)
CONTENT_TYPE: Final = "application/cbor"
#: What is read of a partner's error answer (its start only; the rest is never read).
ERROR_PREFIX: Final = 4096
#: A partner's answer to an introduction or a rotation: a small JSON object.
SMALL_ANSWER: Final = 4096


@dataclass(frozen=True, slots=True)
class SendResult:
    cid: CID
    partner: str
    thread: CID
    digest: bytes
    findings: tuple[Any, ...] = ()


def _prev_bytes(prev: Sequence[CID]) -> bytes:
    return dagcbor.encode(list(prev))


def acks_answer_limit(notices: int) -> int:
    """The largest honest answer to a batch of ``notices``: that many acks, each at most
    the 4 KiB of a message, with their CBOR heads, in a one-entry map."""
    return 16 + notices * (MESSAGE_LIMITS.max_size + 5)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
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


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int = ERROR_PREFIX) -> str:
    """The start of a partner's error answer, as text: the message, never all of it."""
    data = bytearray()
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data[:300].decode("utf-8", "replace")


def _log_batch(what: str, preposition: str, rows: list[tuple[DocumentRow, str]]) -> None:
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
        self._aliases: dict[str, str] = {}
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
        self._delivering = asyncio.Lock()
        #: signed-document digest -> the CID a batch in flight is storing it under:
        #: one signed document is recorded once, also across concurrent batches.
        self._storing: dict[bytes, CID] = {}
        # Futures for acks awaited in this process (wait_for_ack); other
        # processes on the same home poll the ledger instead.
        # cid -> a future set to (ack, status, reason) once the ack is stored
        self._ack_waiters: dict[CID, asyncio.Future[tuple[bytes, str, str | None]]] = {}
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

    def open_envelope(self, block: bytes, cid: CID | None = None) -> kenvelope.Opened:
        """Open with the current key, else with a retired one (documents sealed before a
        rotation, or by a partner during its overlap).

        By the kernel's rules alone, whatever plugins are enabled today: a stored
        document verifies the same after a plugin is enabled or disabled. What
        arrives is held to the enabled plugins' kinds on receipt (``_open``).
        """
        try:
            return kenvelope.open(block, self.identity, cid)
        except NotRecipientError:
            for old in self.retired:
                try:
                    return kenvelope.open(block, old, cid)
                except NotRecipientError:
                    continue
            raise

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
                                             else f"{resp.status} {await _read_prefix(resp)}")
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
                                    f"{resp.status} {await _read_prefix(resp)}; nothing stored")
                answer = await _read_capped(resp, SMALL_ANSWER, f"{invitation.name}'s answer")
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
                        ) -> list[SendResult]:
        """Send several documents with one block-store and one ledger commit.

        Each item is (kind, partner, body, reply_to). The blocks are durable
        before the ledger records them; a crash in between leaves only an
        unreferenced ciphertext block, never a queued notice without its block.
        """
        prepared = []
        partners: dict[str, Partner] = {}
        for kind, partner_key, body, reply_to in items:
            partner = partners.get(partner_key) or await self.resolve_partner(partner_key)
            partners[partner_key] = partner
            if not partner.active:
                raise PartnerError(f"{partner.name} is {partner.status}; nothing is sent to it")
            document = await self.build_document(kind, partner, body, reply_to=reply_to,
                                                 user=user)
            if prepare is not None:
                document = prepare(document)  # e.g. approvals sign the finished document
            # Warnings travel with the document; an error (a field a plugin
            # requires on its own kind) refuses it before anything is stored.
            findings = self.plugins.check(document, user=user)
            # The kernel's rules only: which plugin kinds it takes is the
            # receiver's to say (spec section 12), on receipt.
            sealed = kenvelope.seal(document, self.identity)
            prepared.append((partner, document, sealed, findings))
            if len(prepared) % YIELD_EVERY == 0:
                # Sealing is CPU work; a long send must not hold deliveries
                # and incoming acks back for its whole length.
                await asyncio.sleep(0)
        await self._put_recorded([(sealed.cid, sealed.block) for _, _, sealed, _ in prepared])
        cids = [sealed.cid for _, _, sealed, _ in prepared]
        try:
            if self.store.collects_garbage:  # a Kubo node does; the embedded store never
                for cid in cids:
                    await self.store.pin(cid)
        except Exception:
            await self._discard(cids)
            raise
        for _, _, sealed, _ in prepared:
            self._recent[sealed.cid] = sealed.block
        while len(self._recent) > RECENT_BLOCKS:
            self._recent.popitem(last=False)
        records, results = [], []
        for partner, document, sealed, findings in prepared:
            thread = document.get("thread", sealed.cid)
            notice = make_notice(self.identity, sealed.cid, partner.did, self.now())
            row = DocumentRow(sealed.cid, "out", partner.did, document["kind"], thread,
                              document.get("ref"), document["issued_at"], self.clock(), "queued",
                              None, sealed.digest, sealed.signed, user, findings_json(findings))
            records.append((row, _prev_bytes(document.get("prev", [])), notice))
            results.append(SendResult(sealed.cid, partner.did, thread, sealed.digest,
                                      tuple(findings)))
        try:
            await self.ledger.record_sent_many(records)
        except Exception:
            # Not recorded, so nothing refers to these blocks: take them back
            # rather than leave unreferenced ciphertext behind.
            await self._discard(cids)
            raise
        self.wake.set()
        return results

    async def _put_recorded(self, blocks: Sequence[tuple[CID, bytes]]) -> None:
        """Put blocks the ledger is about to record, each under its CID.

        The one place where a block and the CID its ledger row will carry meet,
        sent or received: the store names every block itself (CIDv1 dag-cbor
        sha2-256), and a row naming any other CID would name a block the store
        cannot return (spec section 2). The kernel already refuses such CIDs on
        notices and envelopes; this holds the invariant against every path.
        """
        filed = await self.store.put_many([block for _, block in blocks])
        wrong = [(cid, got) for (cid, _), got in zip(blocks, filed, strict=True) if got != cid]
        if wrong:
            await self._discard([got for _, got in wrong])  # unless recorded for themselves
            cid, got = wrong[0]
            raise CIDMismatchError(f"{cid} would be recorded for a block the store files "
                                   f"as {got}")

    async def _discard(self, cids: list[CID]) -> None:
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
        async with self._delivering:
            due = await self.ledger.claim_due(self.clock(), limit)
            if not due:
                return 0
            by_partner: dict[str, list[Any]] = {}
            for row in due:
                by_partner.setdefault(row.partner, []).append(row)
            results = await asyncio.gather(*[
                self._deliver_all(did, rows) for did, rows in by_partner.items()
            ])
            return sum(results)

    async def _deliver_all(self, did: str, rows: list[Any]) -> int:
        # One batch in flight per partner: a partner is never flooded by us,
        # and its acks come back in the order its work was done.
        done = 0
        for i in range(0, len(rows), SEND_BATCH):
            done += await self._deliver_to(did, rows[i:i + SEND_BATCH])
        return done

    async def _deliver_to(self, did: str, rows: list[Any]) -> int:
        cids = [r.cid for r in rows]
        # One round trip: the partner, what we sent it (digests), rotations.
        partner, digests, aliases = await self.ledger.delivering(did, cids)
        if partner is None or not partner.accepted_at(self.clock()):
            state = partner.status if partner else "removed"
            await self._failed(rows, f"partner is {state}")
            return 0
        try:
            url = check_endpoint(partner.endpoint, scopes=self.endpoint_scopes)
        except UsagiError as exc:  # stored before the policy changed (config)
            await self._failed(rows, f"{exc.code}: {exc}")
            return 0
        url = url.rstrip("/") + NOTICES_PATH
        batch = await self._batch_body(rows)
        body = dagcbor.encode(batch)
        try:
            async with self.session.post(url, data=body, headers={"Content-Type": CONTENT_TYPE},
                                         timeout=aiohttp.ClientTimeout(total=60),
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    retry_after = resp.headers.get("Retry-After", "")
                    busy = resp.status in (429, 503)
                    await self._failed(rows, f"{partner.name} answered {resp.status}: "
                                             f"{await _read_prefix(resp)}",
                                       retry_after=float(retry_after) if retry_after.isdigit()
                                       else None, count=not busy)
                    return 0
                # At most what ``len(rows)`` acks can be: a partner answering
                # gigabytes costs this much memory, and the batch is retried.
                payload = await _read_capped(resp, acks_answer_limit(len(rows)),
                                             f"{partner.name}'s answer")
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
        delivered: list[tuple[CID, bytes, str, str | None, str]] = []
        bad: dict[str, tuple[list[Any], str]] = {}  # error code -> rows, the first message
        later: list[tuple[Any, str]] = []  # refused for now (spec 11.1): sent again later

        def refuse(row: Any, exc: UsagiError) -> None:
            log.warning("ack for %s is not a receipt: %s", row.cid, exc)
            bad.setdefault(exc.code, ([], str(exc)))[0].append(row)

        # A partner that rotated its key acks with its new one.
        current = canonical(did, aliases)
        # Each ack must answer its own notice: the nonce we sent (spec section 8).
        nonces = [notice_nonce(raw) for raw in batch["notices"]]
        pending = list(zip(rows, acks, nonces, strict=True))
        for last_try in (False, True):
            signer_unknown = []
            for row, raw, nonce in pending:
                try:
                    if type(raw) is not bytes:
                        raise MalformedError("an ack is a byte string")
                    ack = open_ack(raw)
                    check_ack(ack, cid=row.cid, by=current if ack.by == current else did,
                              digest=digests.get(row.cid, b""), nonce=nonce)
                except WrongSignerError as exc:
                    if not last_try:
                        signer_unknown.append((row, raw, nonce))
                        continue
                    refuse(row, exc)
                    continue
                except UsagiError as exc:
                    refuse(row, exc)
                    continue
                if not ack.ok and ack.reason in TEMPORARY:
                    later.append((row, ack.reason))
                    continue
                delivered.append((row.cid, raw, ack.status, ack.reason, format_time(ack.at)))
            if not signer_unknown:
                break
            # Signed by a key we did not know when the batch left: the partner
            # may have announced a rotation meanwhile. Read the aliases again.
            current = await self.canonical(did)
            pending = signer_unknown
        # What is stored may be another process's ack for the same notice
        # (OR IGNORE): waiters get the stored one.
        stored = await self.ledger.mark_delivered(delivered)
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
            waiter = self._ack_waiters.pop(cid, None)
            if waiter is not None and not waiter.done() and cid in stored:
                waiter.set_result(stored[cid])
        for code, (failed, message) in bad.items():
            await self._failed(failed, f"{code}: the partner's ack is not a receipt ({message})")
        if later:
            # Not an answer yet: the partner keeps no record of these notices and
            # takes them again (same nonce), an attempt later.
            await self._failed([row for row, _ in later],
                               f"{partner.name} cannot take it now: {later[0][1]}")
        return len(delivered)

    async def _batch_body(self, rows: list[Any]) -> dict[str, Any]:
        """The notices, and (``push_blocks``) as many of their blocks as fit.

        Pushing the ciphertext along saves the partner a round trip per
        document; it changes nothing it checks, since a block is accepted only
        when it hashes to a CID named by a signed notice. Blocks that do not
        fit are fetched by the partner from our gateway.
        """
        body: dict[str, Any] = {"notices": [await self._fresh_notice(r) for r in rows]}
        if self.config.push_blocks:
            budget = MAX_BODY - 64 * 1024 - sum(len(r.notice) + 8 for r in rows)
            blocks = []
            for row in rows:
                block = self._recent.pop(row.cid, None)
                if block is None:
                    try:
                        block = await self.store.get(row.cid)
                    except UsagiError:
                        continue  # the partner will ask the gateway and get a clear answer
                if len(block) + 8 > budget:
                    break
                budget -= len(block) + 8
                blocks.append(block)
            if blocks:
                body["blocks"] = blocks
        return body

    async def _fresh_notice(self, row: Any) -> bytes:
        """The notice to send now. A notice queued a while ago (a retry, a partner that
        was away) is signed again with the same nonce and a fresh ``sent_at``, so it
        stays inside the receiver's time window; the nonce still identifies it, and
        a receiver that answered it before answers with the same ack. It is signed by
        our current key and addressed to the partner's current key (rotation)."""
        if self.clock() - row.created < RESIGN_AFTER:
            return bytes(row.notice)
        old = open_signed(row.notice, "notice", "from", MESSAGE_LIMITS).body
        to = await self.canonical(row.partner)
        return make_notice(self.identity, row.cid, to, self.now(), nonce=old["nonce"])

    async def _failed(self, rows: list[Any], error: str, retry_after: float | None = None,
                      count: bool = True) -> None:
        """Schedule a retry. A busy partner (429/503) costs no attempt from the budget."""
        now = self.clock()
        when = [now + max(self.backoff(r.attempts), retry_after or 0.0) for r in rows]
        given_up = await self.ledger.mark_failed([r.cid for r in rows], error, when,
                                                 self.max_attempts, count=count)
        log.info("delivery failed (%d notices): %s", len(rows), error)
        for cid in given_up:
            log.warning("%s undelivered: %s", cid, error)

    async def delivery_loop(self, stop: asyncio.Event, idle: float = 0.25) -> None:
        """Deliver until ``stop`` is set, keeping up to PIPELINE batches in flight.

        Woken early when something is queued (``wake``) or a batch finishes, so
        a partner is never idle while we have work for it, and never flooded.
        """
        inflight: set[asyncio.Task[int]] = set()
        claim = True  # whether this round asks the ledger for due notices
        last_claim = self.clock()
        while not stop.is_set():
            self.wake.clear()
            room = PIPELINE - len(inflight)
            more = False
            try:
                if room > 0 and claim:
                    last_claim = self.clock()
                    rows = await self.ledger.claim_due(last_claim, room * SEND_BATCH)
                    more = len(rows) >= room * SEND_BATCH
                    by_partner: dict[str, list[Any]] = {}
                    for row in rows:
                        by_partner.setdefault(row.partner, []).append(row)
                    for did, group in by_partner.items():
                        for i in range(0, len(group), SEND_BATCH):
                            inflight.add(asyncio.create_task(
                                self._deliver_to(did, group[i:i + SEND_BATCH])))
                # A batch in flight wakes the loop when it ends, and the wait is
                # at most ``idle`` anyway: the next due time matters only when
                # nothing is in flight (a retry due sooner than ``idle``).
                next_due = None if inflight else await self.ledger.next_due()
            except Exception:  # the loop must survive any single failure
                log.exception("delivery round failed")
                next_due = None
                more = True
            wait = idle if next_due is None else min(idle, max(0.0, next_due - self.clock()))
            if len(inflight) < PIPELINE:  # room for more: claim at least every ``idle``
                wait = min(wait, max(0.0, last_claim + idle - self.clock()))
            woken = asyncio.ensure_future(self.wake.wait())
            done, _ = await asyncio.wait({woken, *inflight}, timeout=max(wait, 0.005),
                                         return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            for task in done - {woken}:
                inflight.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    log.error("delivery batch failed", exc_info=task.exception())
            # Claim again when something was queued here (wake; read from the
            # event, which a batch ending in the same turn cannot hide), the
            # wait ran out, the last claim filled the room or there was no
            # room, or ``idle`` has passed since the last claim (a retry came
            # due, or another process queued notices, while batches kept
            # ending). A batch that merely ended makes nothing due: its
            # failures are rescheduled for later.
            claim = (more or room <= 0 or self.wake.is_set() or not done
                     or self.clock() - last_claim >= idle)
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)

    async def wait_for_ack(self, cid: CID, timeout: float = 30.0) -> tuple[bytes, str, str | None] | None:
        """The ack once it is stored, or None on timeout or when given up."""
        deadline = time.monotonic() + timeout
        waiter = self._ack_waiters.setdefault(cid, asyncio.get_running_loop().create_future())
        try:
            return await self._wait_for_ack(cid, waiter, deadline)
        finally:
            if self._ack_waiters.get(cid) is waiter:
                del self._ack_waiters[cid]

    async def _wait_for_ack(self, cid: CID, waiter: asyncio.Future[tuple[bytes, str, str | None]],
                            deadline: float) -> tuple[bytes, str, str | None] | None:
        while True:
            # First, and after each quiet 50 ms: the ack may have been stored
            # before we waited, or by another process (a `serve` on this home).
            ack, status = await self.ledger.ack_or_status(cid)
            if ack is not None:
                return ack
            if status == "undelivered":
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # This process's delivery hands over the ack it has just stored.
                return await asyncio.wait_for(asyncio.shield(waiter), timeout=min(0.05, remaining))
            except TimeoutError:
                pass
        return None

    # -- receiving ----------------------------------------------------------

    async def receive(self, body: bytes) -> list[bytes]:
        """Handle one POSTed batch of notices; return the acks in order.

        Raises a typed error (mapped to an HTTP status by the peer API) when
        the batch itself is bad; then nothing at all is processed or stored.
        """
        if len(body) > MAX_BODY:
            raise BodyTooLargeError(f"batch body of {len(body)} bytes (limit {MAX_BODY})")
        batch = dagcbor.decode(body, BATCH_LIMITS)
        if (type(batch) is not dict or "notices" not in batch
                or not set(batch) <= {"notices", "blocks"} or type(batch["notices"]) is not list
                or type(batch.get("blocks", [])) is not list):
            raise MalformedError('a batch is {"notices": [notice], ? "blocks": [block]}')
        raws = batch["notices"]
        log.debug("batch of %d notice(s), %d pushed block(s)", len(raws),
                  len(batch.get("blocks", ())))
        if not raws or len(raws) > MAX_BATCH:
            raise BodyTooLargeError(f"a batch holds 1..{MAX_BATCH} notices")
        pushed: dict[CID, bytes] = {}
        for block in batch.get("blocks", []):
            if type(block) is not bytes:
                raise MalformedError("each pushed block is a byte string")
            pushed[CID.for_block(block)] = block
        now = self.now()
        now_ts = now.timestamp()
        mine = self.my_dids(now_ts)
        notices: list[Notice] = []
        names: dict[str, str] = {}  # the batch's senders, checked, with their names
        named: set[CID] = set()
        for raw in raws:
            if type(raw) is not bytes:
                raise MalformedError("each notice is a byte string")
            notice = open_notice(raw, now=now, skew=self.skew)
            if notice.recipient not in mine:
                raise WrongRecipientError(f"notice is for {notice.recipient}, not for this node")
            if notice.sender not in names:
                partner = await self.ledger.partner(notice.sender)
                if partner is None or not partner.accepted_at(now_ts):
                    why = ("its key was rotated and the overlap has ended"
                           if partner is not None and partner.status == "rotated"
                           else "it is not an active partner")
                    raise UnknownSenderError(f"{notice.sender} refused: {why}")
                names[notice.sender] = partner.name
            notices.append(notice)
            named.add(notice.cid)
        if not pushed.keys() <= named:
            # Only blocks that hash to a CID a signed notice names are taken;
            # anything else is refused with the whole batch.
            raise CIDMismatchError("a pushed block hashes to no CID named in the batch")
        acks: list[bytes | None] = [None] * len(notices)
        rejected: list[tuple[CID, UsagiError]] = []
        fresh: list[int] = []
        # One round trip for what the batch needs read: the answers already
        # given (replays), the rotation aliases, and which blocks we hold.
        nonces: dict[str, list[bytes]] = {}
        for notice in notices:
            nonces.setdefault(notice.sender, []).append(notice.nonce)
        seen, self._aliases, already = await self.ledger.receiving(
            nonces, [n.cid for n in notices])
        # A nonce identifies a notice only with its sender: another partner's
        # nonce never matches, and one notice twice in a batch gets one answer.
        first_of: dict[tuple[str, bytes], int] = {}
        copies: list[tuple[int, int]] = []  # (i, j): notice i repeats notice j
        for i, notice in enumerate(notices):
            key = (notice.sender, notice.nonce)
            if key in seen:
                acks[i] = seen[key]  # a replay gets the answer already given
            elif key in first_of:
                copies.append((i, first_of[key]))
            else:
                first_of[key] = i
                fresh.append(i)
        # A partner whose quota is used up is refused before anything is fetched.
        await self.quotas.check({canonical(notices[i].sender, self._aliases) for i in fresh},
                                now_ts, self._aliases)
        semaphore = asyncio.Semaphore(FETCH_CONCURRENCY)
        # Fetched blocks are held until the batch is stored: what they may take is
        # bounded by ``fetch_budget``, a block in flight counted at the largest size.
        fetched_bytes = 0
        in_flight = 0

        async def process(i: int) -> tuple[int, Any]:
            nonlocal fetched_bytes, in_flight
            async with semaphore:
                if fetched_bytes + (in_flight + 1) * kenvelope.MAX_BLOCK > self.fetch_budget:
                    return i, OverloadedError(
                        f"this batch holds {fetched_bytes} bytes of fetched blocks (at most "
                        f"{self.fetch_budget}); the rest is taken when it is sent again")
                in_flight += 1
                try:
                    outcome = await self._take(notices[i], None)
                finally:
                    in_flight -= 1
                if not isinstance(outcome, UsagiError):
                    fetched_bytes += len(outcome[1])
                return i, outcome

        # Pushed blocks are opened right here; only missing ones cost a task
        # (and a fetch from the sender's gateway).
        taken = [(i, self._open(notices[i], pushed[notices[i].cid]))
                 for i in fresh if notices[i].cid in pushed]
        fetched = [process(i) for i in fresh if notices[i].cid not in pushed]
        if fetched:
            taken += await asyncio.gather(*fetched)
            # Fetching took a while: read again which documents are stored.
            already = await self.ledger.digests(
                [o[0].cid for _, o in taken if not isinstance(o, UsagiError)])
        taken = await self._check_links(notices, taken, already)
        # One signed document, one record: two envelopes of it in this batch are
        # found here; one recorded before is found by the write itself (no read
        # of its own on the way of every batch: Ledger.record_received_checked).
        holders: dict[bytes, CID] = {}
        statements_ok: list[tuple[Notice, Any, bytes, DocumentRow, bytes]] = []
        # One time for the batch's acks, signed into each and stored beside it.
        acked_at = self.now()
        acked_text = format_time(acked_at)

        def refuse(i: int, error: UsagiError) -> None:
            notice = notices[i]
            acks[i] = make_ack(self.identity, cid=notice.cid, to=notice.sender,
                               nonce=notice.nonce, status="rejected", at=acked_at,
                               reason=error.code)
            rejected.append((notice.cid, error))

        in_batch: dict[CID, tuple[bytes, DocumentRow, bytes]] = {}  # ack, row, prev
        # What the link check (section 9) took as this batch's: a reply may link
        # one only if that one is stored with it (see ``linked`` below).
        opened_here = {o[0].cid for _, o in taken if not isinstance(o, UsagiError)}
        links: dict[CID, set[CID]] = {}
        ok_index: list[int] = []  # the notice of each entry of statements_ok
        for i, outcome in taken:
            notice = notices[i]
            if isinstance(outcome, UsagiError):
                refuse(i, outcome)
                continue
            opened, block, findings = outcome
            if opened.cid in already:  # the same block under a new notice: answer, store once
                old = await self.ledger.ack(opened.cid)
                if old is not None:
                    # The same answer (status, digest), for this notice: a sender takes
                    # an ack only for the nonce it sent (spec section 8).
                    ack = make_ack(self.identity, cid=notice.cid, to=notice.sender,
                                   nonce=notice.nonce, status=old[1], at=acked_at,
                                   digest=opened.digest, reason=old[2])
                    acks[i] = ack
                    await self.ledger.record_nonce(notice.sender, notice.nonce, notice.cid, ack)
                    continue
            if opened.cid in in_batch:  # named twice in this batch: one document, and
                # each notice its own ack (a sender takes an ack only for its nonce)
                _, row, prev = in_batch[opened.cid]
                ack = make_ack(self.identity, cid=notice.cid, to=notice.sender,
                               nonce=notice.nonce, status="received", at=acked_at,
                               digest=opened.digest)
                statements_ok.append((notice, block, ack, row, prev))  # the nonce is stored
                ok_index.append(i)
                acks[i] = ack
                continue
            holder = holders.get(opened.digest)
            if holder is not None and holder != opened.cid:
                refuse(i, DuplicateError(f"the signed document in {opened.cid} is recorded "
                                         f"already, as {holder}"))
                continue
            holders[opened.digest] = opened.cid
            ack = make_ack(self.identity, cid=notice.cid, to=notice.sender, nonce=notice.nonce,
                           status="received", at=acked_at, digest=opened.digest)
            doc = opened.document
            row = DocumentRow(opened.cid, "in", notice.sender, doc["kind"],
                              doc.get("thread", opened.cid), doc.get("ref"), doc["issued_at"],
                              self.clock(), "received", None, opened.digest, opened.signed,
                              doc.get("user"), findings_json(findings))
            prev = _prev_bytes(doc.get("prev", []))
            in_batch[opened.cid] = ack, row, prev
            links[opened.cid] = ({doc["thread"], *doc.get("prev", ())} if "thread" in doc
                                 else set())
            statements_ok.append((notice, block, ack, row, prev))
            ok_index.append(i)
            acks[i] = ack
        entries = list(zip(ok_index, statements_ok, strict=True))
        # A batch in flight at the same time may be storing the same signed
        # document under another envelope: reserved here, with no await between
        # the check and the reservation, and given back once written.
        reserved: list[bytes] = []
        kept = []
        for i, entry in entries:
            row = entry[3]
            holder = self._storing.get(row.digest)
            if holder is not None and holder != row.cid:
                refuse(i, DuplicateError(f"the signed document in {row.cid} is being recorded "
                                         f"as {holder}"))
                continue
            if holder is None:
                self._storing[row.digest] = row.cid
                reserved.append(row.digest)
            kept.append((i, entry))
        entries = self._linked(kept, opened_here, already, links, refuse)
        try:
            return await self._store_received(entries, notices, acks, now_ts, acked_text,
                                              refuse, rejected, names, copies,
                                              (opened_here, already, links))
        finally:
            for reserved_digest in reserved:
                self._storing.pop(reserved_digest, None)

    @staticmethod
    def _linked(entries: list[tuple[int, Any]], opened_here: set[CID], held: dict[CID, bytes],
                links: dict[CID, set[CID]], refuse: Callable[[int, UsagiError], None]
                ) -> list[tuple[int, Any]]:
        """Drop the replies that link a document of this batch that is not stored with
        them (refused as a duplicate, or left out by the quota), until none is left:
        a stored reply never names what this node does not hold (docs/spec.md 9)."""
        while True:
            storing = {entry[3].cid for _, entry in entries}
            dangling = {cid for cid in storing
                        if any(link in opened_here and link not in held and link not in storing
                               for link in links.get(cid, ()))}
            if not dangling:
                return entries
            for i, entry in entries:
                if entry[3].cid in dangling:
                    refuse(i, UnknownPrevError(f"{entry[3].cid} answers a document of its "
                                               "batch that is not stored now"))
            entries = [(i, entry) for i, entry in entries if entry[3].cid not in dangling]

    async def _store_received(self, entries: list[tuple[int, Any]], notices: list[Notice],
                              acks: list[bytes | None], now_ts: float, acked_text: str,
                              refuse: Callable[[int, UsagiError], None],
                              rejected: list[tuple[CID, UsagiError]], names: dict[str, str],
                              copies: list[tuple[int, int]],
                              linking: tuple[set[CID], dict[CID, bytes], dict[CID, set[CID]]]
                              ) -> list[bytes]:
        """Charge the quotas, store what is taken durably, and answer the batch."""
        # Room in each sender's quota for what is about to be stored (the block
        # and the signed document), reserved before anything is written. What
        # does not fit is not stored, and the batch is answered 429 below.
        def cost(entry: Any) -> tuple[str, CID, int]:
            row = entry[3]
            return canonical(row.partner, self._aliases), row.cid, len(entry[1]) + len(row.signed)

        charge = await self.quotas.charge([cost(e) for _, e in entries], now_ts, self._aliases)
        if charge.refusal is not None:
            entries = [(i, e) for i, e in entries if e[3].cid in charge.taken]
            # What answers a document left out is left out with it, and its room
            # given back.
            entries = self._linked(entries, *linking, refuse)
            charge = self.quotas.settle(charge, [cost(e) for _, e in entries])
        statements_ok = [e for _, e in entries]
        lost: set[CID] = set()
        if statements_ok:
            # Durable first: the blocks, then documents + acks + nonces in one
            # transaction. Only after both commits does any ack leave.
            try:
                await self._put_recorded([(s[3].cid, s[1]) for s in statements_ok])
                while entries:
                    held, lost = await self.ledger.record_received_checked([
                        (row, prev, ack, "received", acked_text, notice.sender, notice.nonce)
                        for notice, _block, ack, row, prev in (e for _, e in entries)
                    ], usage=charge.usage)
                    if not held:
                        break
                    # Recorded before under another envelope: nothing was written.
                    # Those are duplicates, what links them goes with them, and
                    # their room and blocks are given back; the rest is written.
                    before = {e[3].cid for _, e in entries}
                    for i, entry in entries:
                        if entry[3].digest in held:
                            refuse(i, DuplicateError(
                                f"the signed document in {entry[3].cid} is recorded "
                                f"already, as {held[entry[3].digest]}"))
                    entries = self._linked([(i, e) for i, e in entries
                                            if e[3].digest not in held], *linking, refuse)
                    charge = self.quotas.settle(charge, [cost(e) for _, e in entries])
                    await self._discard(list(before - {e[3].cid for _, e in entries}))
                statements_ok = [e for _, e in entries]
            except BaseException:
                self.quotas.release(charge)
                raise
            if lost:
                # Another writer of this ledger (not a batch of this process: those
                # reserve digests) recorded the same signed documents under other
                # envelopes meanwhile: nothing of these was written, so every notice
                # naming one is refused, and the quota counts them no more.
                for i, entry in entries:
                    if entry[3].cid in lost:
                        refuse(i, DuplicateError(f"the signed document in {entry[3].cid} was "
                                                 "recorded meanwhile under another envelope"))
                settled = self.quotas.settle(charge, [cost(e) for _, e in entries
                                                      if e[3].cid not in lost])
                await self.ledger.add_quota_usage(Quotas.difference(charge, settled))
                await self._discard(list(lost))
            _log_batch("received", "from", [(s[3], names.get(s[0].sender, s[0].sender))
                                             for s in {s[3].cid: s for s in statements_ok}.values()
                                             if s[3].cid not in lost])
        if rejected:
            sender = printable(", ".join(sorted(names.values())))
            first_cid, first = rejected[0]
            activity.warning("rejected %d document(s) from %s, e.g. %s: %s (%s)", len(rejected),
                             sender, first_cid, first.code, printable(first))
        for i, j in copies:
            acks[i] = acks[j]
        if charge.refusal is not None:
            # Once per partner and window: later batches are refused by the check above.
            activity.warning("%s: %s", printable(", ".join(sorted(names.values()))),
                             charge.refusal)
            # What fit is stored; its acks go out when the sender retries (replays).
            raise charge.refusal
        return [a for a in acks if a is not None]

    async def _check_links(self, notices: list[Notice], taken: list[tuple[int, Any]],
                           already: dict[CID, bytes]) -> list[tuple[int, Any]]:
        """Refuse the replies that link what is not theirs to link (docs/spec.md 9, 11.1).

        A reply's ``thread`` and ``prev`` must name documents this node holds with
        the same partner, or documents of this batch that are taken (a sender may
        answer its own document in the batch that carries it). One ledger read
        for the batch; none when no document in it is a reply. A link to a
        document with another partner is answered exactly like a link to one not
        held (``unknown_prev``, which the sender retries): the sender learns
        nothing of this node's other trades. The log names ``foreign_thread``.
        """
        replies: dict[CID, tuple[Any, str]] = {}  # cid -> (opened, sender)
        for i, outcome in taken:
            # Not those refused already, nor those recorded (and judged) before.
            if not isinstance(outcome, UsagiError) and "thread" in outcome[0].document \
                    and outcome[0].cid not in already:
                replies[outcome[0].cid] = outcome[0], notices[i].sender
        if not replies:
            return taken
        # The first documents of this batch: a reply in it may answer them.
        held = {o[0].cid: Held(notices[i].sender, o[0].cid, o[0].document["issued_at"])
                for i, o in taken if not isinstance(o, UsagiError)
                and "thread" not in o[0].document and o[0].cid not in already}
        links = {link for opened, _ in replies.values()
                 for link in (opened.document["thread"], *opened.document["prev"])}
        held.update(await self.ledger.held([c for c in links if c not in replies]))
        refused: dict[CID, UsagiError] = {}
        pending = dict(replies)
        while pending:
            # A reply waits for the replies of this batch it answers to be judged.
            ready = [cid for cid, (opened, _) in pending.items()
                     if not any(link in pending for link in
                                (opened.document["thread"], *opened.document["prev"]))]
            for cid in ready or list(pending):  # none ready: a cycle, which no hash allows
                opened, sender = pending.pop(cid)
                try:
                    if not ready:
                        raise UnknownPrevError(f"{cid} answers a document that answers it")
                    check_links(opened.document, sender, held, self._aliases)
                    held[cid] = Held(sender, opened.document["thread"],
                                     opened.document["issued_at"])
                except ForeignThreadError as exc:
                    activity.warning("refused %s from %s: foreign_thread (%s)", cid, sender, exc)
                    refused[cid] = UnknownPrevError(f"{cid}: {exc}")
                except ThreadError as exc:
                    log.info("rejecting %s from %s: %s", cid, sender, exc)
                    refused[cid] = exc
        return [(i, refused.get(o[0].cid, o) if not isinstance(o, UsagiError) else o)
                for i, o in taken]

    async def _take(self, notice: Notice, block: bytes | None) -> Any:
        """Fetch, check and open one noticed block; a UsagiError is returned, not raised."""
        try:
            if block is None:
                block = await self.fetch_block(notice)
        except UsagiError as exc:
            log.info("rejecting %s from %s: %s", notice.cid, notice.sender, exc)
            return exc
        return self._open(notice, block)

    def _open(self, notice: Notice, block: bytes) -> Any:
        """Check and open one block; a UsagiError is returned, not raised."""
        try:
            opened = self.open_envelope(block, notice.cid)
            # A sender that rotated its key after sealing re-signs the notice with
            # its new key: the document's signer is then its predecessor.
            if opened.signer != notice.sender and \
                    canonical(opened.signer, self._aliases) != notice.sender:
                raise WrongSignerError("the document is signed by someone other than the notice's sender")
            if opened.document["to"] not in {self.did, *(i.did for i in self.retired)}:
                raise WrongSignerError("the document is not addressed to this node")
            # A kind no enabled plugin declares is refused here, on receipt, and
            # never judged again: a stored document verifies whatever plugins
            # are enabled later (spec section 12).
            self.plugins.check_kind(opened.document)
            # The whole company's plugins judge what arrives (the document's
            # "user" is the sender's employee, not one of ours).
            findings = self.plugins.check(opened.document)
            return opened, block, findings
        except UsagiError as exc:
            log.info("rejecting %s from %s: %s", notice.cid, notice.sender, exc)
            return exc

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
