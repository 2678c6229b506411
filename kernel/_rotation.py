"""Key rotation: a party moves to a new key, its partners follow (docs/spec.md, "Key rotation").

    RotationCore = { "v": 1, "old": did, "new": did, "at": time, "overlap_until": time }
    RotationBody = RotationCore + { "confirm": bytes .size 64 }
    Rotation     = Signed by "old" (label usagi-p2p/v1/key-rotation, author field "old")

``confirm`` is the *new* key's signature, under the same label, over the
DAG-CBOR of RotationCore: proof that whoever announces the new key holds it,
so nobody can rotate a party onto a key it does not control. The wrapper's
signature by the old key is the authority: only the holder of the old key
can retire it. Until ``overlap_until`` both keys are valid in both
directions; afterwards the old key is revoked and refused. Documents sealed
to the old key keep opening with the old secret key, which the rotating
party keeps for its own history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import dagcbor
from ._document import format_time, parse_time
from ._identity import Identity, party
from ._signed import open_signed, sign
from .errors import InvalidSignatureError, MalformedError

__all__ = ["Rotation", "make_rotation", "open_rotation"]

LIMITS = dagcbor.Limits(max_size=4096, max_depth=2, max_length=16)


@dataclass(frozen=True, slots=True)
class Rotation:
    old: str
    new: str
    at: datetime
    overlap_until: datetime
    raw: bytes

    def in_overlap(self, now: datetime) -> bool:
        return now <= self.overlap_until


def _core(old: str, new: str, at: str, overlap_until: str) -> bytes:
    return dagcbor.encode({"v": 1, "old": old, "new": new, "at": at,
                           "overlap_until": overlap_until})


def make_rotation(old: Identity, new: Identity, at: datetime, overlap_until: datetime) -> bytes:
    """The rotation statement from ``old`` to ``new``, signed by both."""
    if overlap_until < at:
        raise ValueError("the overlap ends before the rotation")
    at_text, until_text = format_time(at), format_time(overlap_until)
    confirm = new.sign("rotation", _core(old.did, new.did, at_text, until_text))
    body = {"v": 1, "old": old.did, "new": new.did, "at": at_text,
            "overlap_until": until_text, "confirm": confirm}
    return sign(old, "rotation", body)


def open_rotation(raw: bytes) -> Rotation:
    """Verify both signatures of a rotation statement; raise on anything wrong."""
    body = open_signed(raw, "rotation", "old", LIMITS).body
    # type(...) is int: DAG-CBOR's true is not 1, though Python's True == 1.
    if set(body) != {"v", "old", "new", "at", "overlap_until", "confirm"} \
            or type(body["v"]) is not int or body["v"] != 1:
        raise MalformedError("a rotation has fields v, old, new, at, overlap_until, confirm")
    new, confirm = body["new"], body["confirm"]
    if type(confirm) is not bytes:
        raise MalformedError("rotation confirm must be a signature")
    if new == body["old"]:
        raise MalformedError("a rotation moves to a different key")
    at, until = parse_time(body["at"]), parse_time(body["overlap_until"])
    if until < at:
        raise MalformedError("the overlap ends before the rotation")
    try:
        party(new).verify("rotation", _core(body["old"], new, body["at"], body["overlap_until"]),
                          confirm)
    except InvalidSignatureError:
        raise InvalidSignatureError("the new key did not confirm the rotation") from None
    return Rotation(body["old"], new, at, until, raw)
