"""The archive's structures and their checks (docs/archive.md, "Format").

CDDL of the four kinds of block an archive adds to the document envelopes::

    Index = {                        ; clear DAG-CBOR; the last one is the CAR root
      "v": 1, "type": "usagi-archive/v1/index", "seq": uint,
      "manifest": &Envelope,         ; this page's sealed manifest page
      "blocks": [* &Envelope],       ; the page's documents, then its ack bundles
      ? "prev": &Index,              ; absent on page 0
    }
    ManifestPage = {                 ; signed, label "usagi-p2p/v1/manifest", author "by";
      "v": 1, "type": "usagi-archive/v1/page",   ; then sealed to the node alone
      "by": did, "seq": uint, ? "prev": &Envelope,
      "filter": { ? "partner": did, ? "since": tstr, ? "until": tstr },
      "entries": [* Entry], "acks": { * did => &Envelope },
      ? "aliases": { * did => did },           ; key rotations at export, old -> new
      ? "head": { "count": uint, "pages": uint, "created_at": time,
                  ( "partners": [* Partner] // "partner_lists": [+ &Envelope] ) },
    }
    Partner = { "did": did, "name": tstr, "endpoint": tstr, "status": tstr }
    PartnerList = { "v": 1, "type": "usagi-archive/v1/partners", "partners": [+ Partner] }
                                     ; sealed (unsigned: the signed head links it) to [node]
    Entry = { "cid": &Envelope, "dir": "out" / "in", "partner": did, "kind": tstr,
              "thread": &Envelope, "issued_at": time, "recorded_at": tstr, "status": tstr,
              ? "reason": tstr, ? "ack": uint, ? "ack_at": time }
    AckBundle = { "v": 1, "type": "usagi-archive/v1/acks", "acks": [* bytes] }
                                     ; sealed (unsigned: each ack is signed) to [node, partner]

``recorded_at`` is the ledger's float as Python ``repr`` text: decimal, exact
on the way back, and no floats in DAG-CBOR.
"""

from __future__ import annotations

from typing import Any, Final

import cbor2

from kernel import dagcbor
from kernel.cid import CID, DAG_CBOR, SHA2_256
from kernel.errors import UsagiError

from ..node.errors import NodeError

__all__ = ["ArchiveError", "ForeignArchiveError", "INDEX_TYPE", "PAGE_TYPE", "ACKS_TYPE",
           "PARTNERS_TYPE", "PAGE_ENTRIES", "PAGE_BYTES", "PAGE_BLOCK_BYTES", "PAGE_LIMITS",
           "INDEX_LINKS", "PARTNER_LIST_ENTRIES", "PARTNER_LISTS", "ALIASES",
           "check_index", "entry_size", "read_entry", "read_head", "read_partner_list",
           "cid_from_raw", "link",
           "entry_value", "index_block", "encode_map", "encode_array"]

INDEX_TYPE: Final = "usagi-archive/v1/index"
PAGE_TYPE: Final = "usagi-archive/v1/page"
ACKS_TYPE: Final = "usagi-archive/v1/acks"
PARTNERS_TYPE: Final = "usagi-archive/v1/partners"

#: A page closes at this many documents …
PAGE_ENTRIES: Final = 1000
#: … or when its manifest or one ack bundle is estimated at this many bytes, so
#: every sealed block stays well under the 1 MiB block limit …
PAGE_BYTES: Final = 600_000
#: … or when its document blocks reach this size: a reader holds one page.
PAGE_BLOCK_BYTES: Final = 8 << 20

#: The head lists the partners inline up to this many (and while the page's
#: manifest stays within PAGE_BYTES); else in partner lists of at most this many
#: each (and PAGE_BYTES), sealed blocks of their own that the head links.
PARTNER_LIST_ENTRIES: Final = PAGE_ENTRIES
#: At most this many partner lists (so PARTNER_LIST_ENTRIES x this many partners).
PARTNER_LISTS: Final = PAGE_ENTRIES
#: An index links at most this many blocks besides its manifest page: a page's
#: documents and ack bundles (PAGE_ENTRIES each at most) or its partner lists.
INDEX_LINKS: Final = 2 * PAGE_ENTRIES

PAGE_LIMITS: Final = dagcbor.Limits(max_size=1 << 20, max_depth=6, max_length=PAGE_ENTRIES + 64)
#: Every page carries the node's key rotations inline: at most this many.
ALIASES: Final = PAGE_LIMITS.max_length
_INDEX_LIMITS: Final = dagcbor.Limits(max_size=1 << 20, max_depth=3, max_length=INDEX_LINKS + 64)
_PARTNER_KEYS: Final = frozenset({"did", "name", "endpoint", "status"})
_HEAD_KEYS: Final = frozenset({"count", "pages", "created_at"})
#: A canonical envelope starts with a 4-entry map whose first key is "c".
_ENVELOPE_PREFIX: Final = b"\xa4\x61c"
_ENTRY_KEYS: Final = frozenset({"cid", "dir", "partner", "kind", "thread", "issued_at",
                                "recorded_at", "status"})
_ENTRY_OPTIONAL: Final = frozenset({"reason", "ack", "ack_at"})


class ArchiveError(NodeError):
    """The archive is damaged or inconsistent (the message names the first failing CID)."""

    code = "archive_invalid"

    def __init__(self, message: str | None = None, *, cid: CID | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message, offset=offset)
        self.cid = cid


class ForeignArchiveError(ArchiveError):
    """The archive was not written by this node: its manifest does not open or is signed by another."""

    code = "archive_foreign"


# -- fast encoding (export) ------------------------------------------------------
#
# The export's hot path builds maps already in canonical key order, with links
# as ready-made CBOR tag 42 values, and encodes them with dagcbor.encode_ordered
# (cbor2's C encoder, no per-value normalisation and no per-link callback).
# tests/archive/test_structures.py checks every one against dagcbor.encode, and a
# verifier decodes every block strictly (canonical re-encoding compared byte
# for byte), so a drift would fail verification, never pass silently.

_OUR_CID_PREFIX: Final = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes


def cid_from_raw(raw: bytes) -> CID:
    """``CID.from_bytes(raw)``, without the varint walk for the CIDs we write ourselves."""
    if len(raw) == 36 and raw[:4] == _OUR_CID_PREFIX:
        return CID(raw, 1, DAG_CBOR, SHA2_256, raw[4:])
    return CID.from_bytes(raw)


def link(raw: bytes) -> cbor2.CBORTag:
    """A link (binary CID ``raw``) as DAG-CBOR encodes it: tag 42 over 0x00 || CID."""
    return cbor2.CBORTag(42, b"\x00" + raw)


def entry_value(cid: bytes, direction: str, partner: str, kind: str, thread: bytes,
                issued_at: str, recorded_at: str, status: str, reason: str | None,
                ack: int | None, ack_at: str | None) -> dict[str, Any]:
    """One manifest entry for ``encode_ordered``: keys in canonical order, links as tags.

    Canonical order (length, then bytes): ack cid dir | kind | ack_at reason
    status thread | partner | issued_at | recorded_at.
    """
    if ack is None:
        if reason is None:
            return {"cid": link(cid), "dir": direction, "kind": kind, "status": status,
                    "thread": link(thread), "partner": partner, "issued_at": issued_at,
                    "recorded_at": recorded_at}
        return {"cid": link(cid), "dir": direction, "kind": kind, "reason": reason,
                "status": status, "thread": link(thread), "partner": partner,
                "issued_at": issued_at, "recorded_at": recorded_at}
    if reason is None:
        return {"ack": ack, "cid": link(cid), "dir": direction, "kind": kind, "ack_at": ack_at,
                "status": status, "thread": link(thread), "partner": partner,
                "issued_at": issued_at, "recorded_at": recorded_at}
    return {"ack": ack, "cid": link(cid), "dir": direction, "kind": kind, "ack_at": ack_at,
            "reason": reason, "status": status, "thread": link(thread), "partner": partner,
            "issued_at": issued_at, "recorded_at": recorded_at}


def index_block(seq: int, manifest: bytes, blocks: list[bytes], prev: bytes | None) -> bytes:
    """The encoded Index (binary CIDs in): ``dagcbor.encode`` of the same map, faster."""
    value: dict[str, Any] = {"v": 1, "seq": seq}  # canonical: v seq prev type blocks manifest
    if prev is not None:
        value["prev"] = link(prev)
    value["type"] = INDEX_TYPE
    value["blocks"] = [link(b) for b in blocks]
    value["manifest"] = link(manifest)
    return dagcbor.encode_ordered(value)


def _head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form."""
    if n < 24:
        return bytes((major << 5 | n,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + n.to_bytes(size, "big")
    raise ValueError(f"{n} does not fit a CBOR head")


def encode_array(items: list[bytes]) -> bytes:
    """The DAG-CBOR array of items each already encoded canonically."""
    return _head(4, len(items)) + b"".join(items)


def _key_order(key: str) -> tuple[int, bytes]:
    utf8 = key.encode("utf-8")
    return len(utf8), utf8


def encode_map(fields: dict[str, Any], encoded: dict[str, bytes]) -> bytes:
    """``dagcbor.encode({**fields, **values})`` where ``encoded`` holds values already encoded.

    The caller guarantees each ``encoded[k]`` is the canonical encoding of its
    value (e.g. ``encode_ordered`` of :func:`entry_value` maps).
    """
    if fields.keys() & encoded.keys():
        raise ValueError("a key is both in fields and in encoded")
    keys = sorted((*fields, *encoded), key=_key_order)
    parts = [_head(5, len(keys))]
    for key in keys:
        utf8 = key.encode("utf-8")
        parts.append(_head(3, len(utf8)) + utf8)
        parts.append(encoded[key] if key in encoded else dagcbor.encode(fields[key]))
    return b"".join(parts)


def entry_size(reason: str | None) -> int:
    """A generous estimate of one entry's encoded size (encoding each would cost more)."""
    return 400 + len(reason or "") * 4


def check_index(cid: CID, block: bytes, window: dict[CID, bytes],
                prev: CID | None) -> dict[str, Any] | None:
    """The index ``block`` closing ``window``, checked; None if the block is not an index.

    Keyless: an envelope is a map of c, n, s, v; anything else must be an
    index that links exactly the blocks of its page, its manifest page and
    the previous index.
    """
    if block[:3] == _ENVELOPE_PREFIX:
        # Envelopes are opened (and fully parsed) by the keyed check; keyless,
        # their hash is all there is to check, so skip decoding them twice.
        return None
    try:
        value = dagcbor.decode(block, _INDEX_LIMITS)
    except UsagiError as exc:
        raise ArchiveError(f"{cid}: not DAG-CBOR: {exc}", cid=cid) from None
    if type(value) is dict and value.keys() == {"c", "n", "s", "v"}:
        return None
    if type(value) is not dict or value.get("type") != INDEX_TYPE or value.get("v") != 1:
        raise ArchiveError(f"{cid}: neither an envelope nor an archive index", cid=cid)
    blocks, manifest = value.get("blocks"), value.get("manifest")
    if type(blocks) is not list or not all(type(b) is CID for b in blocks) \
            or type(manifest) is not CID:
        raise ArchiveError(f"{cid}: an index links a manifest page and a list of blocks", cid=cid)
    if value.get("prev") != prev:
        raise ArchiveError(f"{cid}: index links previous index {value.get('prev')}, "
                           f"expected {prev}", cid=cid)
    if type(value.get("seq")) is not int:
        raise ArchiveError(f"{cid}: an index has a page number", cid=cid)
    linked = [*blocks, manifest]
    for link in linked:
        if link not in window:
            raise ArchiveError(f"{link}: linked by index {cid} but not in its page", cid=link)
    if len(set(linked)) != len(linked):
        raise ArchiveError(f"{cid}: an index links one block twice", cid=cid)
    if len(linked) != len(window):
        stray = next(c for c in window if c not in set(linked))
        raise ArchiveError(f"{stray}: in the page of index {cid} but not linked by it", cid=stray)
    return value


def read_entry(page: CID, entry: Any) -> dict[str, Any]:
    """Check one manifest entry's shape."""
    if type(entry) is not dict or not _ENTRY_KEYS <= entry.keys() \
            or not entry.keys() <= _ENTRY_KEYS | _ENTRY_OPTIONAL:
        raise ArchiveError(f"{page}: a manifest entry has the wrong fields", cid=page)
    if type(entry["cid"]) is not CID or type(entry["thread"]) is not CID \
            or entry["dir"] not in ("out", "in"):
        raise ArchiveError(f"{page}: a manifest entry has fields of the wrong type", cid=page)
    if "ack" in entry and (type(entry["ack"]) is not int or type(entry.get("ack_at")) is not str):
        raise ArchiveError(f"{page}: entry {entry['cid']} names its ack badly", cid=page)
    try:
        float(entry["recorded_at"])
    except (TypeError, ValueError):
        raise ArchiveError(f"{page}: entry {entry['cid']} has a bad recorded_at", cid=page) \
            from None
    return entry


def read_head(page: CID, head: Any) -> tuple[list[tuple[str, str, str, str]], list[CID]]:
    """Check the last page's head: its inline partners (none if it links partner
    lists) and the partner lists it links (none if its partners are inline)."""
    if type(head) is not dict or not _HEAD_KEYS <= head.keys() \
            or head.keys() - _HEAD_KEYS not in ({"partners"}, {"partner_lists"}):
        raise ArchiveError(f"{page}: the head has the wrong fields", cid=page)
    if "partners" in head:
        return _read_partners(page, head["partners"]), []
    lists = head["partner_lists"]
    if type(lists) is not list or not lists or not all(type(c) is CID for c in lists) \
            or len(set(lists)) != len(lists):
        raise ArchiveError(f"{page}: the head's partner lists are not distinct links", cid=page)
    return [], lists


def read_partner_list(cid: CID, value: Any) -> list[tuple[str, str, str, str]]:
    """Check one decoded partner list; its partners."""
    if type(value) is not dict or value.keys() != {"v", "type", "partners"} \
            or value["v"] != 1 or value["type"] != PARTNERS_TYPE or not value["partners"]:
        raise ArchiveError(f"{cid}: not a partner list", cid=cid)
    return _read_partners(cid, value["partners"])


def _read_partners(cid: CID, partners: Any) -> list[tuple[str, str, str, str]]:
    """A head's or a partner list's ``partners``: (did, name, endpoint, status) each."""
    if type(partners) is not list:
        raise ArchiveError(f"{cid}: the partners are not a list", cid=cid)
    out = []
    for partner in partners:
        if type(partner) is not dict or partner.keys() != _PARTNER_KEYS \
                or not all(type(v) is str for v in partner.values()):
            raise ArchiveError(f"{cid}: a partner is not {{did, name, endpoint, status}} as text",
                               cid=cid)
        out.append((partner["did"], partner["name"], partner["endpoint"], partner["status"]))
    return out
