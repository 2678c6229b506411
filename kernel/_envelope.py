"""Envelopes: a signed document sealed to its two parties (docs/spec.md, "Envelope").

    Envelope = { "c": bytes, "n": bytes .size 24, "s": [+ bytes .size 80], "v": 1 }

* A fresh random 32-byte content key ``K`` and 24-byte nonce ``n``.
* Slots ``s``: ``K`` wrapped for each party as a libsodium sealed box
  (the ``crypto_box_seal`` format, X25519 keys derived from the parties'
  did:keys), 80 bytes each, carrying no identifier, in random order. The
  slots of one envelope share one ephemeral key, as in saltpack: each is
  still a standard sealed box (``crypto_box_seal_open`` opens it), and an
  opener does one X25519 for all of them instead of one per slot tried.
* Body ``c``: XChaCha20-Poly1305-IETF of the padded signed document under
  ``K`` and ``n``, with associated data
  ``"usagi-p2p/v1/envelope" || 0x00 || 0x01 || n || s[0] || s[1] …``, so
  every header byte is bound to the ciphertext.
* Padding: libsodium's ISO/IEC 7816-4 ``sodium_pad`` up to a size bucket
  (:func:`bucket`), so the block's length says little about the document.

The block's CID is CIDv1 / dag-cbor / sha2-256 of the envelope bytes. A holder
of the block without a party's key sees random bytes of a bucketed length.

An opener holds a sender to that form: a document envelope has exactly two
slots (v1: a third would seal the document to someone the receiver cannot
see), and its padded plaintext is exactly the bucket of the signed document
(:func:`open`); any other envelope (an archive's manifest page has one slot)
is opened with :func:`open_plaintext`, which checks the bucket too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from . import dagcbor
from ._document import validate_document
from ._identity import Identity, party
from ._signed import open_signed, sign_bytes
from .cid import CID, is_block_cid
from .errors import (
    CIDMismatchError,
    DecryptionError,
    InvalidDocumentError,
    MalformedError,
    NotRecipientError,
    WrongSignerError,
)

__all__ = ["Sealed", "Opened", "seal", "open_envelope", "bucket", "digest"]

ENVELOPE_VERSION: Final = 1
AD_LABEL: Final = b"usagi-p2p/v1/envelope\x00"
SLOT_SIZE: Final = 80  # 32-byte ephemeral key + 16-byte MAC + 32-byte content key
MAX_SLOTS: Final = 16
#: Slots of a document envelope in v1: its two parties, no one else.
DOCUMENT_SLOTS: Final = 2
MAC_SIZE: Final = 16
MIN_BUCKET: Final = 512
LARGE_STEP: Final = 64 * 1024
MAX_BLOCK: Final = 1 << 20

ENVELOPE_LIMITS: Final = dagcbor.Limits(max_size=MAX_BLOCK, max_depth=2, max_length=MAX_SLOTS)
DOCUMENT_LIMITS: Final = dagcbor.Limits(max_size=MAX_BLOCK, max_depth=16, max_length=10_000)



def _shuffled(slots: list[bytes]) -> list[bytes]:
    """The slots in a uniformly random order, from the OS CSPRNG.

    Two slots (every envelope between two parties): one random bit. More:
    sorted by 64-bit random keys, from one ``os.urandom`` call, where
    ``SystemRandom.shuffle`` makes one per slot and costs ~4 us for two. A tie
    between two 64-bit keys (p < 2^-60 for 16 slots) keeps the slots' order;
    nothing else is biased.
    """
    if len(slots) == 2:
        return slots if os.urandom(1)[0] & 1 else [slots[1], slots[0]]
    keys = os.urandom(8 * len(slots))
    order = sorted(range(len(slots)), key=lambda i: keys[8 * i : 8 * i + 8])
    return [slots[i] for i in order]


def bucket(size: int) -> int:
    """The padded length for a plaintext of ``size`` bytes (at least one pad byte).

    Powers of two from 512 bytes up to 64 KiB, then multiples of 64 KiB.
    """
    need = size + 1
    if need <= LARGE_STEP:
        target = MIN_BUCKET
        while target < need:
            target <<= 1
        return target
    return -(-need // LARGE_STEP) * LARGE_STEP


def is_bucket(size: int) -> bool:
    """Whether ``size`` is a length :func:`bucket` can return."""
    if size <= LARGE_STEP:
        return size >= MIN_BUCKET and size & (size - 1) == 0
    return size % LARGE_STEP == 0


#: The largest signed document one envelope holds: its bucket is 15 x 64 KiB, which
#: leaves 64 KiB of the block for the tag, nonce, slots and CBOR heads.
MAX_SIGNED: Final = MAX_BLOCK - LARGE_STEP - 1


def pad(data: bytes, size: int) -> bytes:
    """ISO/IEC 7816-4 padding (what libsodium's ``sodium_pad`` writes): 0x80, then zeros."""
    return data + b"\x80" + bytes(size - len(data) - 1)


def unpad(padded: bytes) -> bytes:
    """Undo :func:`pad`. Runs only on authenticated plaintext, so no padding oracle."""
    end = len(padded.rstrip(b"\x00")) - 1
    if end < 0 or padded[end] != 0x80:
        raise DecryptionError("bad padding inside an authenticated envelope")
    return padded[:end]


def digest(signed_document: bytes) -> bytes:
    """The ack digest of a signed document: a sha2-256 multihash (0x12 0x20 || hash)."""
    return b"\x12\x20" + hashlib.sha256(signed_document).digest()


class Sealed(NamedTuple):
    cid: CID
    block: bytes
    signed: bytes  # the signed document, before padding and encryption
    digest: bytes


class Opened(NamedTuple):
    cid: CID
    document: dict[str, Any]
    signed: bytes
    digest: bytes
    signer: str


def _box_nonce(ephemeral: bytes, recipient: bytes) -> bytes:
    """The sealed-box nonce: BLAKE2b-192 of ``epk || recipient pk`` (libsodium's
    ``crypto_box_seal``; hashlib's BLAKE2b is the same function, without
    PyNaCl's ~6 us per-call overhead)."""
    return hashlib.blake2b(ephemeral + recipient, digest_size=24).digest()


def wrap(key: bytes, recipients: Sequence[bytes]) -> list[bytes]:
    """``key`` as one sealed box per X25519 public key, all under one ephemeral key.

    Each slot is ``epk || crypto_box(key, nonce(epk, pk), pk, esk)``: byte for
    byte what ``crypto_box_seal`` makes, except that the ephemeral key pair is
    drawn once per envelope. Recipients are distinct keys, so every slot has
    its own shared key and nonce.
    """
    ephemeral, secret = sodium.crypto_box_keypair()
    return [ephemeral + sodium.crypto_box(key, _box_nonce(ephemeral, pk), pk, secret)
            for pk in recipients]


def unwrap(slots: Sequence[bytes], public: bytes, secret: bytes) -> bytes | None:
    """The key in whichever slot opens with this X25519 key pair, or None.

    One X25519 per run of slots with the same ephemeral key: for our
    envelopes (one shared key) a slot that is someone else's costs a MAC
    check, not a key exchange. Envelopes whose slots have separate ephemeral
    keys open the same way.
    """
    last = None
    shared: bytes | None = None
    for slot in slots:
        ephemeral = slot[:32]
        if ephemeral != last:
            last = ephemeral
            try:
                shared = sodium.crypto_box_beforenm(ephemeral, secret)
            except (CryptoError, ValueError):  # e.g. a low-order point
                shared = None
        if shared is None:
            continue
        try:
            return sodium.crypto_box_open_afternm(slot[32:], _box_nonce(ephemeral, public), shared)
        except (CryptoError, ValueError):
            continue
    return None


_AD_PREFIX: Final = AD_LABEL + bytes((ENVELOPE_VERSION,))


def _associated_data(nonce: bytes, slots: Sequence[bytes]) -> bytes:
    return _AD_PREFIX + nonce + b"".join(slots)


def seal(
    document: dict[str, Any],
    sender: Identity,
    parties: Iterable[str] | None = None,
    *,
    kinds: Iterable[str] = (),
) -> Sealed:
    """Sign ``document`` as ``sender`` and seal it to its parties.

    ``parties`` defaults to the document's ``from`` and ``to``, and may only
    name those two; the sender must be ``from``.
    """
    validate_document(document, kinds)
    author, to = document["from"], document["to"]
    if author != sender.did:
        raise WrongSignerError("the sender must be the document's 'from'")
    if parties is None:
        recipients = [author, to]  # distinct: validation refuses a document to oneself
    else:
        recipients = list(dict.fromkeys(parties))
        if set(recipients) != {author, to}:
            # v1: the two parties and no one else (an opener refuses any other count).
            raise InvalidDocumentError("a document is sealed to its two parties exactly")
    return seal_signed(sign_bytes(sender, "document", dagcbor.encode(document)), recipients)


def seal_signed(signed: bytes, recipients: Sequence[str]) -> Sealed:
    """Seal already-signed bytes (a document, or an ack for the archive)."""
    # The padded plaintext, its tag and the header must fit one block: padding to
    # a bucket can add up to 64 KiB, so the bucket (not the signed length) is
    # what is bounded (spec section 13: a signed document of MAX_SIGNED bytes).
    if len(signed) > MAX_SIGNED:
        raise InvalidDocumentError(f"document too large for one block ({len(signed)} signed "
                                   f"bytes; at most {MAX_SIGNED})")
    key = os.urandom(32)
    nonce = os.urandom(24)
    slots = _shuffled(wrap(key, [party(did).x25519_public for did in recipients]))
    padded = pad(signed, bucket(len(signed)))
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        padded, _associated_data(nonce, slots), nonce, key
    )
    # Keys in canonical order: c, n, s, v (all one byte long).
    block = dagcbor.encode_plain({"c": ciphertext, "n": nonce, "s": slots, "v": ENVELOPE_VERSION})
    return Sealed(CID.for_block(block), block, signed, digest(signed))


_ENVELOPE_KEYS: Final = frozenset({"c", "n", "s", "v"})


def _parse(block: bytes, slot_count: int | None = None) -> tuple[bytes, bytes, list[bytes]]:
    env = dagcbor.decode(block, ENVELOPE_LIMITS)
    if type(env) is not dict or env.keys() != _ENVELOPE_KEYS:
        raise MalformedError("an envelope is a map of exactly c, n, s, v")
    if env["v"] != ENVELOPE_VERSION or type(env["v"]) is not int:
        raise MalformedError(f"unsupported envelope version {env['v']!r}")
    ciphertext, nonce, slots = env["c"], env["n"], env["s"]
    if type(ciphertext) is not bytes or len(ciphertext) < MIN_BUCKET + MAC_SIZE:
        raise MalformedError("envelope ciphertext missing or too short")
    if not is_bucket(len(ciphertext) - MAC_SIZE):
        # Seen without a key: a length outside the buckets would tell a holder
        # of the block more about the document than its bucket does.
        raise MalformedError(f"envelope ciphertext of {len(ciphertext)} bytes: the padded "
                             "plaintext is not a bucket length")
    if type(nonce) is not bytes or len(nonce) != 24:
        raise MalformedError("envelope nonce must be 24 bytes")
    if type(slots) is not list or not 1 <= len(slots) <= MAX_SLOTS:
        raise MalformedError(f"an envelope has 1..{MAX_SLOTS} slots")
    if slot_count is not None and len(slots) != slot_count:
        raise MalformedError(f"a document envelope has exactly {slot_count} slots, not {len(slots)}")
    for slot in slots:
        if type(slot) is not bytes or len(slot) != SLOT_SIZE:
            raise MalformedError(f"a slot is {SLOT_SIZE} bytes")
    return ciphertext, nonce, slots


def open_plaintext(block: bytes, me: Identity, cid: CID | None = None, *,
                   slot_count: int | None = None) -> bytes:
    """Check the CID, find my slot, decrypt and unpad; return the signed bytes.

    ``slot_count``: the exact number of slots the envelope must have (any of
    1..16 when None). Either way the padded plaintext must be exactly the
    bucket of the bytes it pads (MalformedError otherwise).
    """
    if cid is not None:
        if not is_block_cid(cid):
            raise CIDMismatchError(f"an envelope is named by a CIDv1 dag-cbor sha2-256 CID, "
                                   f"not {cid}")
        cid.verify(block)
    ciphertext, nonce, slots = _parse(block, slot_count)
    key = unwrap(slots, me.x25519_public, me.x25519_secret)
    if key is None or len(key) != 32:
        raise NotRecipientError()
    try:
        padded = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, _associated_data(nonce, slots), nonce, key
        )
    except (CryptoError, ValueError):
        raise DecryptionError() from None
    plaintext = unpad(padded)
    if bucket(len(plaintext)) != len(padded):
        # A bucket, but a larger one than the content needs: padding is the
        # sender's only free choice of length, and v1 leaves it none.
        raise MalformedError(f"{len(plaintext)} bytes padded to {len(padded)}, not to "
                             f"their bucket of {bucket(len(plaintext))}")
    return plaintext


def open_envelope(block: bytes, me: Identity, cid: CID | None = None, *, kinds: Iterable[str] = ()) -> Opened:
    """Open an envelope as ``me``: the verified, validated document inside.

    Raises CIDMismatchError, DecodeError (MalformedError too for an envelope
    of other than two slots or padded past its bucket), NotRecipientError,
    DecryptionError, InvalidSignatureError, WrongSignerError or
    InvalidDocumentError. ``kinds`` are the namespaced kinds to accept; none
    (the default) accepts any well-formed one (docs/spec.md section 5).
    """
    signed = open_plaintext(block, me, cid, slot_count=DOCUMENT_SLOTS)
    result = open_signed(signed, "document", "from", DOCUMENT_LIMITS)
    document = result.body
    validate_document(document, kinds)
    if me.did not in (document["from"], document["to"]):
        raise NotRecipientError("this key opened the envelope but is not a party of the document")
    return Opened(cid or CID.for_block(block), document, signed, digest(signed), result.signer)
