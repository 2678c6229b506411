"""Signed objects: one wrapper for documents, notices, acks, invitations.

docs/spec.md, "Signed objects". Every signed thing travels as

    Signed = { "sig": bytes .size 64, "body": bytes .cbor T, "signer": did }

where ``sig`` is Ed25519 by ``signer`` over ``label || 0x00 || body``. The body
stays the exact bytes that were signed, so verifying needs no re-encoding, and
the label says what the body is, so a notice's signature never passes as an
ack's. ``decode_signed`` verifies before it decodes the body; it raises, it
never returns False.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from . import dagcbor
from ._identity import Identity, party
from .errors import MalformedError, WrongSignerError

__all__ = ["Signed", "sign", "open_signed", "SIGNED_LIMITS"]

#: A signed wrapper is small: three entries, no nesting.
SIGNED_LIMITS: Final = dagcbor.Limits(max_size=1 << 20, max_depth=2, max_length=8)
#: Bodies are the kernel's own structures; documents have their own limits.
BODY_LIMITS: Final = dagcbor.Limits(max_size=1 << 20, max_depth=16, max_length=10_000)
_WRAPPER_KEYS: Final = frozenset({"sig", "body", "signer"})


class Signed(NamedTuple):
    """A verified signed object: the wrapper bytes, the body value and bytes, the signer."""

    raw: bytes
    body: Any
    body_bytes: bytes
    signer: str


def sign(identity: Identity, label: str, body: Any) -> bytes:
    """Encode ``body``, sign it under ``label``, return the wrapper's bytes."""
    body_bytes = dagcbor.encode(body)
    return sign_bytes(identity, label, body_bytes)


def sign_bytes(identity: Identity, label: str, body_bytes: bytes) -> bytes:
    signature = identity.sign(label, body_bytes)
    # Keys in canonical order: "sig" (3), "body" (4), "signer" (6).
    return dagcbor.encode_plain({"sig": signature, "body": body_bytes, "signer": identity.did})


def open_signed(
    raw: bytes,
    label: str,
    author_field: str,
    body_limits: dagcbor.Limits = BODY_LIMITS,
) -> Signed:
    """Decode a wrapper, verify its signature, decode the body.

    ``author_field`` names the body field that must equal the signer (``from``
    for documents and notices, ``by`` for acks): a valid signature by someone
    else raises WrongSignerError.
    """
    wrapper = dagcbor.decode(raw, SIGNED_LIMITS)
    # Three distinct keys, all of them present: exactly sig, body, signer.
    if type(wrapper) is not dict or len(wrapper) != 3 or not _WRAPPER_KEYS <= wrapper.keys():
        raise MalformedError("a signed object is a map of exactly sig, body, signer")
    body_bytes = wrapper["body"]
    signature = wrapper["sig"]
    signer = wrapper["signer"]
    if type(body_bytes) is not bytes or type(signature) is not bytes or type(signer) is not str:
        raise MalformedError("signed object fields have the wrong types")
    party(signer).verify(label, body_bytes, signature)
    body = dagcbor.decode(body_bytes, body_limits)
    if type(body) is not dict:
        raise MalformedError(f"the body of a {label} is a map")
    if body.get(author_field) != signer:
        raise WrongSignerError(f"{label} signed by {signer}, but its {author_field} is someone else")
    return Signed(raw, body, body_bytes, signer)
