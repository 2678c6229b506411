"""Notices and acknowledgements: what travels between two nodes (docs/spec.md, "Notices", "Acks").

A **notice** tells a partner that a block is waiting for it; it carries only
the CID, never content:

    NoticeBody = { "cid": &Envelope, "from": did, "to": did, "nonce": bytes .size 16, "sent_at": time }

An **ack** is the content-addressed counterpart of an AS2 MDN: the receiver
signs the CID it was told about and the digest of the signed document it
opened (the MDN's "received-content MIC"). An ack whose digest does not match
what the sender sealed is not a receipt.

    AckBody = { "at": time, "by": did, "to": did, "cid": &Envelope, "nonce": bytes .size 16,
                "status": "received" / "accepted" / "rejected",
                ? "digest": bytes .size 34, ? "reason": tstr }

Both travel in the signed wrapper of :mod:`kernel._signed`, labels
``usagi-p2p/v1/notice`` and ``usagi-p2p/v1/ack``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple

from . import dagcbor
from ._document import format_time, parse_time
from ._identity import Identity, party
from ._signed import open_signed, sign
from .cid import CID, is_block_cid
from .errors import (
    AckCIDMismatchError,
    AckNonceMismatchError,
    AckSignerError,
    DigestMismatchError,
    ExpiredError,
    MalformedError,
    WrongRecipientError,
)

__all__ = ["Notice", "Ack", "make_notice", "open_notice", "notice_nonce", "make_ack", "open_ack",
           "check_ack", "ACK_STATUSES"]

ACK_STATUSES: Final = frozenset({"received", "accepted", "rejected"})
MESSAGE_LIMITS: Final = dagcbor.Limits(max_size=4096, max_depth=2, max_length=16)
MAX_REASON: Final = 500


class Notice(NamedTuple):
    cid: CID
    sender: str
    recipient: str
    nonce: bytes
    sent_at: datetime
    raw: bytes


class Ack(NamedTuple):
    cid: CID
    by: str
    to: str
    nonce: bytes
    status: str
    digest: bytes | None
    reason: str | None
    at: datetime
    raw: bytes

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


_NOTICE_FIELDS: Final = frozenset({"cid", "from", "to", "nonce", "sent_at"})
_ACK_FIELDS: Final = frozenset({"at", "by", "to", "cid", "nonce", "status"})
_ACK_OPTIONAL: Final = frozenset({"digest", "reason"})
_ACK_ALL: Final = _ACK_FIELDS | _ACK_OPTIONAL


def _require(body: dict[str, Any], required: frozenset[str], allowed: frozenset[str], what: str) -> None:
    keys = body.keys()
    if not required <= keys or not keys <= allowed:
        raise MalformedError(f"a {what} has fields {sorted(required)} (+ {sorted(allowed - required)})")


def make_notice(
    sender: Identity, cid: CID, to: str, sent_at: datetime, nonce: bytes | None = None
) -> bytes:
    party(to)
    if not is_block_cid(cid):
        raise ValueError("a notice names a block by a CIDv1 dag-cbor sha2-256 CID")
    if nonce is not None and (type(nonce) is not bytes or len(nonce) != 16):
        raise ValueError("a notice nonce is 16 bytes")
    if sent_at.tzinfo is None:
        raise ValueError("sent_at must be an aware datetime")
    body = {
        "cid": cid,
        "from": sender.did,
        "to": to,
        "nonce": nonce if nonce is not None else os.urandom(16),
        "sent_at": format_time(sent_at),
    }
    return sign(sender, "notice", body)


def open_notice(
    raw: bytes,
    *,
    me: str | None = None,
    now: datetime | None = None,
    skew: timedelta = timedelta(minutes=10),
) -> Notice:
    """Verify a notice's signature and shape; check recipient and time if given."""
    signed = open_signed(raw, "notice", "from", MESSAGE_LIMITS)
    body = signed.body
    _require(body, _NOTICE_FIELDS, _NOTICE_FIELDS, "notice")
    if type(body["cid"]) is not CID:
        raise MalformedError("notice cid must be a CID link")
    if not is_block_cid(body["cid"]):
        # Blocks are filed under this one form (spec section 2): a document
        # recorded under another CID would name a block no store can find.
        raise MalformedError(f"notice cid {body['cid']} is not a CIDv1 dag-cbor sha2-256 CID")
    if type(body["nonce"]) is not bytes or len(body["nonce"]) != 16:
        raise MalformedError("notice nonce must be 16 bytes")
    party(body["to"])
    sent_at = parse_time(body["sent_at"])
    if me is not None and body["to"] != me:
        raise WrongRecipientError(f"notice is for {body['to']}, not for this node")
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if now is not None and abs(now - sent_at) > skew:
        raise ExpiredError(f"notice sent at {body['sent_at']}, outside the {skew} window")
    return Notice(body["cid"], body["from"], body["to"], body["nonce"], sent_at, raw)


def notice_nonce(raw: bytes) -> bytes:
    """The nonce of a notice this node made itself. Its signature is not checked:
    anything received goes through :func:`open_notice`."""
    wrapper = dagcbor.decode(raw, MESSAGE_LIMITS)
    inner = wrapper.get("body") if type(wrapper) is dict else None
    body = dagcbor.decode(inner, MESSAGE_LIMITS) if type(inner) is bytes else None
    nonce = body.get("nonce") if type(body) is dict else None
    if type(nonce) is not bytes or len(nonce) != 16:
        raise MalformedError("not a notice")
    return nonce


def make_ack(
    receiver: Identity,
    *,
    cid: CID,
    to: str,
    nonce: bytes,
    status: str,
    at: datetime,
    digest: bytes | None = None,
    reason: str | None = None,
) -> bytes:
    if status not in ACK_STATUSES:
        raise ValueError(f"ack status must be one of {sorted(ACK_STATUSES)}")
    if status != "rejected" and digest is None:
        raise ValueError("a positive ack names the digest of what was received")
    body: dict[str, Any] = {
        "at": format_time(at),
        "by": receiver.did,
        "to": to,
        "cid": cid,
        "nonce": nonce,
        "status": status,
    }
    if digest is not None:
        body["digest"] = digest
    if reason is not None:
        # At most MAX_REASON UTF-8 bytes (the spec's .size), cut at a character boundary.
        encoded = reason.encode("utf-8")
        body["reason"] = reason if len(encoded) <= MAX_REASON else \
            encoded[:MAX_REASON].decode("utf-8", "ignore")
    return sign(receiver, "ack", body)


def open_ack(raw: bytes) -> Ack:
    """Verify an ack's signature and shape."""
    signed = open_signed(raw, "ack", "by", MESSAGE_LIMITS)
    body = signed.body
    _require(body, _ACK_FIELDS, _ACK_ALL, "ack")
    if type(body["cid"]) is not CID:
        raise MalformedError("ack cid must be a CID link")
    if type(body["status"]) is not str or body["status"] not in ACK_STATUSES:
        raise MalformedError(f"unknown ack status {body['status']!r}")
    digest = body.get("digest")
    if digest is not None and (type(digest) is not bytes or len(digest) != 34 or digest[:2] != b"\x12\x20"):
        raise MalformedError("ack digest must be a sha2-256 multihash")
    if body["status"] != "rejected" and digest is None:
        raise MalformedError("a positive ack must carry a digest")
    reason = body.get("reason")
    if reason is not None and (type(reason) is not str
                               or len(reason.encode("utf-8")) > MAX_REASON):
        raise MalformedError("ack reason must be short text")
    if type(body["nonce"]) is not bytes or len(body["nonce"]) != 16:
        raise MalformedError("ack nonce must be 16 bytes")
    party(body["to"])
    return Ack(
        body["cid"], body["by"], body["to"], body["nonce"], body["status"], digest, reason,
        parse_time(body["at"]), raw,
    )


def check_ack(ack: Ack, *, cid: CID, by: str, digest: bytes, nonce: bytes | None = None) -> None:
    """Raise unless ``ack`` answers exactly this notice (``nonce``) about exactly this
    block (``cid``, ``digest``), from exactly ``by`` (docs/spec.md section 8).

    ``ack`` has been opened (:func:`open_ack`: signature and shape). A sender
    passes the nonce of the notice it sent; a verifier of a stored ack that no
    longer knows the notice passes None. A rejected ack passes this check (it
    is a valid answer, not a receipt); callers look at ``ack.ok``.
    """
    if ack.by != by:
        raise AckSignerError(f"ack by {ack.by}, expected {by}")
    if ack.cid != cid:
        raise AckCIDMismatchError(f"ack names {ack.cid}, expected {cid}")
    if nonce is not None and ack.nonce != nonce:
        raise AckNonceMismatchError(f"ack answers notice {ack.nonce.hex()}, not {nonce.hex()}")
    if ack.ok and ack.digest != digest:
        raise DigestMismatchError()
