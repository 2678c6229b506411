"""usagi-p2p's kernel: the pure core every distribution shares.

DAG-CBOR, CIDs, did:key identities, sealed envelopes, signed documents,
notices, acks and threads. No I/O: bytes and values in, bytes and values out;
time is a parameter. The wire format is specified in docs/spec.md.

The public surface is this module's ``__all__`` and the public modules
``kernel.dagcbor``, ``kernel.cid``, ``kernel.errors`` and ``kernel.plugin``
(the plugin contract). Modules whose names start with ``_`` are private:
other layers import from here (tests/kernel/test_surface.py checks it).
"""

# Names are imported when first used (PEP 562): ``from kernel.errors import
# UsagiError`` does not load the crypto (nacl), the multiformats or the document
# rules, so a command that only talks to a running node starts fast. What the
# surface is does not change: ``from kernel import Identity`` works as before.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import cid, dagcbor, errors, plugin
    from ._commerce import (
        Discrepancy,
        document_findings,
    )
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
    from ._match import (
        Match,
        match_thread,
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

#: Where each exported name lives (the public modules are their own).
_WHERE = {
    "Discrepancy": "._commerce",
    "document_findings": "._commerce",
    "Match": "._match",
    "match_thread": "._match",
    "KERNEL_KINDS": "._document",
    "RESPONSES": "._document",
    "format_time": "._document",
    "parse_time": "._document",
    "validate_document": "._document",
    "DOCUMENT_LIMITS": "._envelope",
    "MAX_BLOCK": "._envelope",
    "Opened": "._envelope",
    "Sealed": "._envelope",
    "open_envelope": "._envelope",
    "open_plaintext": "._envelope",
    "seal": "._envelope",
    "seal_signed": "._envelope",
    "Identity": "._identity",
    "Party": "._identity",
    "party": "._identity",
    "MESSAGE_LIMITS": "._messages",
    "Ack": "._messages",
    "Notice": "._messages",
    "check_ack": "._messages",
    "make_ack": "._messages",
    "make_notice": "._messages",
    "notice_nonce": "._messages",
    "open_ack": "._messages",
    "open_notice": "._messages",
    "Rotation": "._rotation",
    "make_rotation": "._rotation",
    "open_rotation": "._rotation",
    "open_signed": "._signed",
    "sign": "._signed",
    "sign_bytes": "._signed",
    "Held": "._thread",
    "canonical": "._thread",
    "check_links": "._thread",
    "split_thread": "._thread",
    "verify_thread": "._thread",
    "CID": ".cid",
    "UsagiError": ".errors",
}


def __getattr__(name: str) -> Any:
    if name in ("cid", "dagcbor", "errors", "plugin"):
        return import_module(f".{name}", __name__)
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Ack",
    "canonical",
    "check_ack",
    "check_links",
    "CID",
    "cid",
    "dagcbor",
    "Discrepancy",
    "document_findings",
    "DOCUMENT_LIMITS",
    "errors",
    "format_time",
    "Held",
    "Identity",
    "KERNEL_KINDS",
    "make_ack",
    "make_notice",
    "make_rotation",
    "Match",
    "match_thread",
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
