"""usagi-p2p's kernel: the pure core every distribution shares.

DAG-CBOR, CIDs, did:key identities, sealed envelopes, signed documents,
notices, acks and threads. No I/O: bytes and values in, bytes and values out;
time is a parameter. The wire format is specified in docs/spec.md.

The public surface is this module's ``__all__`` and the public modules
``kernel.dagcbor``, ``kernel.cid``, ``kernel.errors`` and ``kernel.plugin``
(the plugin contract). Modules whose names start with ``_`` are private:
other layers import from here (tests/kernel/test_surface.py checks it).
"""

from . import cid, dagcbor, errors, plugin
from ._document import (
    KERNEL_KINDS,
    RESPONSES,
    format_time,
    parse_time,
    validate_document,
)
from ._envelope import (
    DOCUMENT_LIMITS,
    MAX_BLOCK,
    Opened,
    Sealed,
    open_envelope,
    open_plaintext,
    seal,
    seal_signed,
)
from ._identity import (
    Identity,
    Party,
    party,
)
from ._messages import (
    MESSAGE_LIMITS,
    Ack,
    Notice,
    check_ack,
    make_ack,
    make_notice,
    notice_nonce,
    open_ack,
    open_notice,
)
from ._rotation import (
    Rotation,
    make_rotation,
    open_rotation,
)
from ._signed import (
    open_signed,
    sign,
    sign_bytes,
)
from ._thread import (
    Held,
    canonical,
    check_links,
    split_thread,
    verify_thread,
)
from .cid import (
    CID,
)
from .errors import (
    UsagiError,
)

__all__ = [
    "Ack",
    "canonical",
    "check_ack",
    "check_links",
    "CID",
    "cid",
    "dagcbor",
    "DOCUMENT_LIMITS",
    "errors",
    "format_time",
    "Held",
    "Identity",
    "KERNEL_KINDS",
    "make_ack",
    "make_notice",
    "make_rotation",
    "MAX_BLOCK",
    "MESSAGE_LIMITS",
    "Notice",
    "notice_nonce",
    "open_ack",
    "open_envelope",
    "open_notice",
    "open_plaintext",
    "open_rotation",
    "open_signed",
    "Opened",
    "parse_time",
    "Party",
    "party",
    "plugin",
    "RESPONSES",
    "Rotation",
    "seal",
    "seal_signed",
    "Sealed",
    "sign",
    "sign_bytes",
    "split_thread",
    "UsagiError",
    "validate_document",
    "verify_thread",
]
