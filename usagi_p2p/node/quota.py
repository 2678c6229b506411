"""Per-partner quotas: how much one partner may store on this node per period
(docs/spec.md section 12, "Quotas").

A partner with a real key can send valid documents as fast as the node takes
them, and each is stored twice (the ciphertext block and the opened signed
document). Without a bound, one partner fills the disk. So each partner may
store at most ``docs`` documents and ``bytes`` bytes (block + signed document)
per window of ``period`` seconds; windows are fixed, counted from the Unix
epoch (with the default period, a UTC day).

What the node does with a batch (``Node.receive``):

* before fetching anything, a partner that has already used up its window,
  or had a batch refused in it, is refused (:meth:`Quotas.check`): a flood
  past the quota costs at most one fetch per window, then no fetch, no
  decryption, no write;
* after opening, just before storing, the batch's new documents are charged
  (:meth:`Quotas.charge`) in notice order, each partner's up to the first
  that does not fit. Check and reservation are one synchronous step (no
  ``await`` between them), so two batches from one partner in flight at once
  cannot both take the same room. The documents that fit are stored; if any
  did not, the node then answers ``quota_exceeded`` (HTTP 429, ``Retry-After``
  = seconds to the end of the window) and the partner's window is closed:
  every later batch in it is refused before any fetch, as Retry-After said
  (else a flooder could make the node fetch and open a full batch, to refuse
  it, again and again). The sender retries the whole batch then; what was
  stored is answered as a replay, with the ack already given, and costs no
  quota again;
* the charge is written with the documents, in their ledger transaction
  (``quota_usage``), so the count is what was committed; a failed write gives
  the reservation back (:meth:`Quotas.release`). (One document named in two
  batches in flight at once is counted by both and stored once: an error in
  the node's favour that an honest sender, which leases each notice to one
  batch, does not meet.)

A partner thus stores at most its quota per window, and an honest sender's
documents always advance: a window's first document is taken even when it
alone is larger than the byte quota (unless the quota is 0), so the bound is
the quota plus at most one document (< 2 MiB).

Quotas come from the config (``quota_docs``, ``quota_bytes``,
``quota_period``, and ``partner_quotas`` per DID). The file is read again
when it changes, so ``usagi partner quota`` takes effect on a running
``usagi serve`` without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kernel import canonical
from kernel.cid import CID

from .errors import ConfigError, QuotaExceededError
from .home import Config, Home
from .ledger import Ledger

__all__ = ["Quota", "Quotas", "Charge", "parse_size", "format_size"]

log = logging.getLogger("usagi.quota")


@dataclass(frozen=True, slots=True)
class Quota:
    """What one partner may store per window."""

    docs: int
    bytes: int


@dataclass(slots=True)
class _Window:
    """One partner's current window: committed plus reserved."""

    start: float
    docs: int = 0
    bytes: int = 0
    #: A batch was refused in this window: refuse the rest of it (Retry-After).
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Charge:
    """What one batch reserved: (partner, window start, documents, bytes) each; the
    documents that fit (to store); and the refusal to answer when some did not."""

    usage: tuple[tuple[str, float, int, int], ...]
    taken: frozenset[CID] = frozenset()
    refusal: QuotaExceededError | None = None


class Quotas:
    """The quota of every partner and what each has used in its current window.

    The node that receives is the only writer of ``quota_usage``; what this
    object holds is that table plus the batches reserved but not yet committed.
    """

    def __init__(self, home: Home, config: Config, ledger: Ledger) -> None:
        self.home = home
        self.ledger = ledger
        self._config = config
        self._stamp = self._config_stamp()
        # partner DID -> its current window, committed + reserved
        self._used: dict[str, _Window] | None = None
        self._loading = asyncio.Lock()
        # partner DID -> how many rotations were known when its earlier keys'
        # windows were last merged into its own (a new rotation merges again)
        self._merged: dict[str, int] = {}

    # -- configuration --------------------------------------------------------

    def _config_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.home.config_path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def config(self) -> Config:
        """The quota settings, read again when config.json changed on disk."""
        stamp = self._config_stamp()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                self._config = self.home.load_config()
            except ConfigError as exc:  # a bad edit: keep the quotas in force
                log.warning("config.json changed but cannot be read, quotas unchanged: %s", exc)
        return self._config

    @staticmethod
    def window(config: Config, now: float) -> float:
        """The start of the window ``now`` falls in."""
        return float(math.floor(now / config.quota_period) * config.quota_period)

    @staticmethod
    def quota(config: Config, did: str, aliases: dict[str, str] | None = None) -> Quota:
        """The quota of the partner whose current key is ``did``. A setting made for
        one of its earlier keys (before a rotation) still applies."""
        own = config.partner_quotas.get(did)
        if own is None and aliases:
            own = next((q for key, q in config.partner_quotas.items()
                        if canonical(key, aliases) == did), None)
        own = own or {}
        return Quota(own.get("docs", config.quota_docs), own.get("bytes", config.quota_bytes))

    # -- usage ------------------------------------------------------------------

    async def _usage(self) -> dict[str, _Window]:
        if self._used is None:
            async with self._loading:
                if self._used is None:
                    self._used = {did: _Window(*row)
                                  for did, row in (await self.ledger.quota_usage()).items()}
        return self._used

    def _current(self, used: dict[str, _Window], did: str, start: float,
                 aliases: dict[str, str] | None) -> _Window:
        if aliases and self._merged.get(did) != len(aliases):
            # A partner that rotated its key keeps the count of its earlier keys: a
            # new key is not a new quota. Each key's committed row holds what was
            # counted under it, so the rows of one window add up.
            self._merged[did] = len(aliases)
            for key in [k for k in used if k != did and canonical(k, aliases) == did]:
                earlier, window = used.pop(key), used.get(did)
                if window is None or window.start < earlier.start:
                    used[did] = earlier
                elif window.start == earlier.start:
                    window.docs += earlier.docs
                    window.bytes += earlier.bytes
                    window.closed = window.closed or earlier.closed
        window = used.get(did)
        if window is None or window.start < start:  # nothing yet, or a window that has ended
            window = used[did] = _Window(start)
        return window

    @staticmethod
    def _refusal(config: Config, quota: Quota, window: _Window, now: float, what: str
                 ) -> QuotaExceededError:
        """The refusal to answer, and the partner's window closed until it ends."""
        window.closed = True
        retry = max(1, math.ceil(window.start + config.quota_period - now))
        return QuotaExceededError(
            f"{what}: this partner stored {window.docs:,} of {quota.docs:,} documents and "
            f"{format_size(window.bytes)} of {format_size(quota.bytes)} in this period; "
            f"retry in {retry} s", retry_after=retry)

    async def check(self, dids: Iterable[str], now: float,
                    aliases: dict[str, str] | None = None) -> None:
        """Refuse (QuotaExceededError) when any of ``dids`` has no room left at all,
        or had a batch refused in this window."""
        used = await self._usage()
        config = self.config()
        start = self.window(config, now)
        for did in dids:
            quota = self.quota(config, did, aliases)
            window = self._current(used, did, start, aliases)
            if window.closed or window.docs >= quota.docs or window.bytes >= quota.bytes:
                raise self._refusal(config, quota, window, now, "quota used up")

    async def charge(self, documents: Iterable[tuple[str, CID, int]], now: float,
                     aliases: dict[str, str] | None = None) -> Charge:
        """Take room for ``documents`` (partner DID, CID, bytes to store), in order:
        each partner's up to the first that does not fit. ``Charge.taken`` names
        the documents to store, ``Charge.refusal`` is set when any were left out."""
        used = await self._usage()
        # From here to the reservation nothing awaits: one step for the event loop.
        config = self.config()
        start = self.window(config, now)
        taken: set[CID] = set()
        counted: dict[str, list[int]] = {}
        quotas: dict[str, Quota] = {}
        full: dict[str, list[Any]] = {}  # partner -> [quota, window, documents left out]
        for did, cid, size in documents:
            if cid in taken:  # named twice in the batch: stored once
                continue
            if did in full:
                full[did][2] += 1
                continue
            quota = quotas.get(did)
            if quota is None:
                quota = quotas[did] = self.quota(config, did, aliases)
            window = self._current(used, did, start, aliases)
            # A window's first document is taken even when it alone is larger
            # than the byte quota: else it could never be delivered.
            first = window.docs == 0 and quota.docs > 0 and quota.bytes > 0
            if window.closed or window.docs + 1 > quota.docs or \
                    (window.bytes + size > quota.bytes and not first):
                full[did] = [quota, window, 1]
                continue
            window.docs += 1
            window.bytes += size
            taken.add(cid)
            count = counted.setdefault(did, [0, 0])
            count[0] += 1
            count[1] += size
        refusals = [self._refusal(config, quota, window, now, f"{left} document(s) over quota")
                    for quota, window, left in full.values()]
        return Charge(tuple((did, start, docs, size) for did, (docs, size) in counted.items()),
                      frozenset(taken), refusals[0] if refusals else None)

    def settle(self, charge: Charge, stored: Iterable[tuple[str, CID, int]]) -> Charge:
        """The charge for what is stored after all (partner DID, CID, bytes; each a
        document ``charge`` took): the room of the others is given back."""
        counted: dict[str, list[int]] = {}
        cids: set[CID] = set()
        for did, cid, size in stored:
            if cid not in cids:
                cids.add(cid)
                count = counted.setdefault(did, [0, 0])
                count[0] += 1
                count[1] += size
        usage = tuple((did, start, *counted.get(did, (0, 0))) for did, start, _, _ in charge.usage)
        self.release(Charge(self.difference(Charge(usage), charge)))
        return Charge(tuple(u for u in usage if u[2]), frozenset(cids), charge.refusal)

    @staticmethod
    def difference(charge: Charge, other: Charge) -> tuple[tuple[str, float, int, int], ...]:
        """``other`` minus ``charge``, per partner and window (negative where ``other``
        counts less): what a count holding ``charge`` must change by to hold ``other``."""
        theirs = {(did, start): (docs, size) for did, start, docs, size in other.usage}
        out = []
        for did, start, docs, size in charge.usage:
            o_docs, o_size = theirs.get((did, start), (0, 0))
            if (docs, size) != (o_docs, o_size):
                out.append((did, start, o_docs - docs, o_size - size))
        return tuple(out)

    def release(self, charge: Charge) -> None:
        """Give back a reservation whose documents were not stored."""
        if self._used is None:
            return
        for did, start, docs, size in charge.usage:
            window = self._used.get(did)
            if window is not None and window.start == start:
                window.docs = max(0, window.docs - docs)
                window.bytes = max(0, window.bytes - size)

    async def report(self, partners: Iterable[Any], now: float,
                     aliases: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Each partner's use of its current window against its quota, as committed."""
        committed: dict[str, tuple[float, int, int]] = {}
        for key, row in (await self.ledger.quota_usage()).items():  # under the current keys
            did = canonical(key, aliases or {})
            if did not in committed or committed[did][0] < row[0]:
                committed[did] = row
            elif committed[did][0] == row[0]:  # counted under two keys of one partner
                committed[did] = (row[0], committed[did][1] + row[1], committed[did][2] + row[2])
        config = self.config()
        start = self.window(config, now)
        out = []
        for partner in partners:
            if partner.status == "rotated":  # counted under its current key
                continue
            quota = self.quota(config, partner.did, aliases)
            used = committed.get(partner.did)
            docs, size = (used[1], used[2]) if used is not None and used[0] >= start else (0, 0)
            out.append({"partner": partner.name, "did": partner.did, "docs": docs,
                        "docs_quota": quota.docs, "bytes": size, "bytes_quota": quota.bytes,
                        "own": self._has_own(config, partner.did, aliases),
                        "resets_at": start + config.quota_period})
        return out

    @staticmethod
    def _has_own(config: Config, did: str, aliases: dict[str, str] | None) -> bool:
        quotas = config.partner_quotas
        return did in quotas or any(canonical(k, aliases or {}) == did for k in quotas)


_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2,
          "mb": 1000 ** 2, "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3,
          "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4}


def parse_size(text: str) -> int:
    """``"500MiB"``, ``"2GiB"``, ``"1.5G"``, ``"300000"``: bytes. K/M/G and KiB/MiB/GiB
    are powers of 1024, KB/MB/GB powers of 1000."""
    cleaned = text.strip().replace(" ", "").replace("_", "").lower()
    digits = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 500MiB, 2GiB, 300000)") from None
    if unit not in _UNITS or not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a size (e.g. 500MiB, 2GiB, 300000)")
    return int(value * _UNITS[unit])


def format_size(size: int) -> str:
    """Bytes as a person reads them: 1.0 GiB, 312.5 MiB, 812 B."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
