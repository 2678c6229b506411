"""usagi-p2p's kernel: the pure core every distribution shares.

DAG-CBOR, CIDs, did:key identities, sealed envelopes, signed documents,
notices, acks and threads. No I/O: bytes and values in, bytes and values out;
time is a parameter. The wire format is specified in docs/spec.md.
"""

from . import dagcbor
from .cid import CID
from .document import KERNEL_KINDS, format_time, parse_time, validate_document
from .envelope import Opened, Sealed, open, seal
from .errors import UsagiError
from .identity import Identity, Party, party
from .messages import Ack, Notice, check_ack, make_ack, make_notice, open_ack, open_notice
from .rotation import Rotation, make_rotation, open_rotation
from .thread import verify_thread

__all__ = [
    "CID",
    "KERNEL_KINDS",
    "Ack",
    "Identity",
    "Notice",
    "Opened",
    "Party",
    "Rotation",
    "Sealed",
    "UsagiError",
    "check_ack",
    "dagcbor",
    "format_time",
    "make_ack",
    "make_notice",
    "make_rotation",
    "open",
    "open_ack",
    "open_notice",
    "open_rotation",
    "parse_time",
    "party",
    "seal",
    "validate_document",
    "verify_thread",
]
