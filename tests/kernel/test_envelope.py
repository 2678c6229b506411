"""kernel._envelope: seal/open by both parties, every failure class, padding, opacity."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from kernel import dagcbor
from kernel._envelope import MIN_BUCKET, bucket, digest, open_envelope, open_plaintext, seal, seal_signed
from kernel._identity import Identity
from kernel._signed import sign_bytes
from kernel.cid import CID
from kernel.errors import (
    CIDMismatchError,
    DecodeError,
    DecryptionError,
    InvalidDocumentError,
    InvalidSignatureError,
    MalformedError,
    NonCanonicalError,
    NotRecipientError,
    UsagiError,
    WrongSignerError,
)

from ._support import BUYER, SELLER, STRANGER, order

DOC = order()
SEALED = seal(DOC, BUYER)


def _slot_owner_index(block: bytes, me: Identity) -> int:
    from nacl import bindings as sodium
    from nacl.exceptions import CryptoError

    for i, slot in enumerate(dagcbor.decode(block)["s"]):
        try:
            sodium.crypto_box_seal_open(slot, me.x25519_public, me.x25519_secret)
            return i
        except CryptoError:
            continue
    raise AssertionError("no slot for this key")


def _reencode(block: bytes, **changes: Any) -> bytes:
    env = dagcbor.decode(block)
    env.update(changes)
    return dagcbor.encode(env)


def test_both_parties_open() -> None:
    for me in (BUYER, SELLER):
        opened = open_envelope(SEALED.block, me, SEALED.cid)
        assert opened.document == DOC
        assert opened.signer == BUYER.did
        assert opened.signed == SEALED.signed
        assert opened.digest == SEALED.digest == digest(SEALED.signed)
        assert opened.cid == SEALED.cid == CID.for_block(SEALED.block)
    assert open_envelope(SEALED.block, SELLER).cid == SEALED.cid  # CID computed when not given


def test_sealed_shape() -> None:
    env = dagcbor.decode(SEALED.block)
    assert list(env) == ["c", "n", "s", "v"]
    assert env["v"] == 1 and len(env["n"]) == 24 and len(env["s"]) == 2
    assert all(len(slot) == 80 for slot in env["s"])
    assert len(env["c"]) == bucket(len(SEALED.signed)) + 16
    assert dagcbor.encode(env) == SEALED.block  # encode_ordered agrees with encode
    assert SEALED.digest == b"\x12\x20" + __import__("hashlib").sha256(SEALED.signed).digest()


def test_sealing_is_randomised() -> None:
    again = seal(DOC, BUYER)
    assert again.block != SEALED.block and again.signed == SEALED.signed


def test_third_key_is_not_recipient() -> None:
    with pytest.raises(NotRecipientError):
        open_envelope(SEALED.block, STRANGER, SEALED.cid)


def test_a_third_recipient_is_refused_by_every_party() -> None:
    """v1 seals a document to its two parties only: a sender that seals a third
    one in (which neither party could see) gets the envelope refused."""
    with pytest.raises(InvalidDocumentError):
        seal(DOC, BUYER, [BUYER.did, SELLER.did, STRANGER.did])
    sealed = seal_signed(SEALED.signed, [BUYER.did, SELLER.did, STRANGER.did])
    assert open_plaintext(sealed.block, STRANGER) == sealed.signed  # the general opener
    for me in (SELLER, BUYER, STRANGER):
        with pytest.raises(MalformedError, match="exactly 2 slots"):
            open_envelope(sealed.block, me, sealed.cid)


def test_a_single_slot_document_envelope_is_refused() -> None:
    sealed = seal_signed(SEALED.signed, [SELLER.did])
    assert open_plaintext(sealed.block, SELLER) == SEALED.signed
    with pytest.raises(MalformedError, match="exactly 2 slots"):
        open_envelope(sealed.block, SELLER, sealed.cid)


def test_cid_mismatch() -> None:
    with pytest.raises(CIDMismatchError):
        open_envelope(SEALED.block, SELLER, CID.for_block(SEALED.block + b"x"))


def test_tampered_ciphertext() -> None:
    env = dagcbor.decode(SEALED.block)
    c = bytearray(env["c"])
    c[10] ^= 1
    with pytest.raises(DecryptionError):
        open_envelope(_reencode(SEALED.block, c=bytes(c)), SELLER)


def test_tampered_nonce() -> None:
    env = dagcbor.decode(SEALED.block)
    with pytest.raises(DecryptionError):
        open_envelope(_reencode(SEALED.block, n=bytes(24 - 1) + bytes([env["n"][-1] ^ 1])), SELLER)


def test_tampered_slots() -> None:
    env = dagcbor.decode(SEALED.block)
    mine = _slot_owner_index(SEALED.block, SELLER)
    for index, expected in ((mine, NotRecipientError), (1 - mine, DecryptionError)):
        slots = list(env["s"])
        slot = bytearray(slots[index])
        slot[40] ^= 0x80
        slots[index] = bytes(slot)
        with pytest.raises(expected):
            open_envelope(_reencode(SEALED.block, s=slots), SELLER)
    with pytest.raises(DecryptionError):  # reordering the slots changes the associated data
        open_envelope(_reencode(SEALED.block, s=list(reversed(env["s"]))), SELLER)
    with pytest.raises(DecryptionError):  # dropping the other party's slot too
        open_plaintext(_reencode(SEALED.block, s=[env["s"][mine]]), SELLER)
    with pytest.raises(MalformedError):  # which a document's opener sees before decrypting
        open_envelope(_reencode(SEALED.block, s=[env["s"][mine]]), SELLER)


def test_wrong_signer() -> None:
    """A document whose 'from' is BUYER but which STRANGER signed."""
    signed = sign_bytes(STRANGER, "document", dagcbor.encode(DOC))
    sealed = seal_signed(signed, [BUYER.did, SELLER.did])
    with pytest.raises(WrongSignerError):
        open_envelope(sealed.block, SELLER, sealed.cid)
    with pytest.raises(WrongSignerError):
        seal(DOC, STRANGER)


def test_forged_signer_field() -> None:
    body = dagcbor.encode(DOC)
    forged = dagcbor.encode(
        {"sig": STRANGER.sign("document", body), "body": body, "signer": BUYER.did}
    )
    sealed = seal_signed(forged, [BUYER.did, SELLER.did])
    with pytest.raises(InvalidSignatureError):
        open_envelope(sealed.block, SELLER)


def test_label_matters_inside_the_envelope() -> None:
    signed = sign_bytes(BUYER, "notice", dagcbor.encode(DOC))
    with pytest.raises(InvalidSignatureError):
        open_envelope(seal_signed(signed, [BUYER.did, SELLER.did]).block, SELLER)


def test_invalid_document_inside() -> None:
    signed = sign_bytes(BUYER, "document", dagcbor.encode({**DOC, "total": 1.5}))
    with pytest.raises(InvalidDocumentError):
        open_envelope(seal_signed(signed, [BUYER.did, SELLER.did]).block, SELLER)
    with pytest.raises(InvalidDocumentError):
        seal({**DOC, "total": 1.5}, BUYER)


def test_seal_requires_both_parties() -> None:
    with pytest.raises(InvalidDocumentError):
        seal(DOC, BUYER, [BUYER.did])
    with pytest.raises(InvalidDocumentError):
        seal(DOC, BUYER, [BUYER.did, STRANGER.did])


def test_non_canonical_envelope() -> None:
    block = SEALED.block
    assert block[-3:] == b"\x61\x76\x01"
    with pytest.raises(NonCanonicalError):
        open_envelope(block[:-1] + b"\x18\x01", SELLER)  # v as a non-minimal int
    with pytest.raises(MalformedError):
        open_envelope(block + b"\x00", SELLER)  # trailing byte
    with pytest.raises(NonCanonicalError):
        open_envelope(b"\xbf" + block[1:] + b"\xff", SELLER)  # indefinite-length map
    env = dagcbor.decode(block)
    unsorted = dagcbor.encode_ordered({"v": 1, "c": env["c"], "n": env["n"], "s": env["s"]})
    with pytest.raises(NonCanonicalError):
        open_envelope(unsorted, SELLER)


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"v": "1"},
        {"n": bytes(23)},
        {"s": []},
        {"s": [bytes(79)]},
        {"c": bytes(100)},
        {"x": 1},
    ],
    ids=repr,
)
def test_malformed_envelope_fields(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        open_envelope(_reencode(SEALED.block, **change), SELLER)


def test_bucket_sizes() -> None:
    assert bucket(0) == MIN_BUCKET == 512
    assert bucket(511) == 512 and bucket(512) == 1024
    assert bucket(65535) == 65536 and bucket(65536) == 2 * 65536
    assert bucket(3 * 65536) == 4 * 65536


def test_block_length_depends_only_on_the_bucket() -> None:
    short = seal(order(), BUYER)
    longer = seal(order(lines=[{"text": "x" * 150}]), BUYER)
    assert len(short.signed) != len(longer.signed)
    assert bucket(len(short.signed)) == bucket(len(longer.signed))
    assert len(short.block) == len(longer.block)
    bigger = seal(order(lines=[{"text": "x" * 900}]), BUYER)
    assert bucket(len(bigger.signed)) != bucket(len(short.signed))
    for sealed in (short, longer, bigger):
        ciphertext = dagcbor.decode(sealed.block)["c"]
        assert len(ciphertext) == bucket(len(sealed.signed)) + 16
        # everything but the ciphertext is of fixed size for two recipients
        assert len(sealed.block) - len(dagcbor.encode(ciphertext)) == len(short.block) - len(
            dagcbor.encode(dagcbor.decode(short.block)["c"])
        )
    assert len(bigger.block) > len(short.block)


def test_no_plaintext_in_the_block() -> None:
    doc = order(
        ref="PO-77812",
        note="deliver to Kawasaki plant gate 3",
        currency="JPY",
        lines=[{"text": "M6x20 SUS304 hex bolt, 500 pcs", "qty": "500", "unit_price": "12.50"}],
    )
    sealed = seal(doc, BUYER)
    needles = [
        BUYER.did,
        SELLER.did,
        BUYER.did[8:],
        SELLER.did[8:],
        "M6x20 SUS304",
        "Kawasaki",
        "PO-77812",
        "issued_at",
        "kind",
        "order",
        "lines",
        "unit_price",
        "usagi-p2p",
        "2025-04-01",
        "signer",
    ]
    for needle in needles:
        assert needle.encode() not in sealed.block, needle
    for key in (BUYER.public_key, SELLER.public_key, BUYER.x25519_public, SELLER.x25519_public):
        assert key not in sealed.block
        assert key[:8] not in sealed.block


# -- properties -----------------------------------------------------------------


@settings(max_examples=150)
@given(st.data())
def test_flipped_byte_is_a_typed_error(data: st.DataObject) -> None:
    block = bytearray(SEALED.block)
    index = data.draw(st.integers(0, len(block) - 1))
    block[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(UsagiError):
        open_envelope(bytes(block), SELLER)
    with pytest.raises(CIDMismatchError):
        open_envelope(bytes(block), SELLER, SEALED.cid)


@given(st.integers(0, len(SEALED.block) - 1))
def test_truncation_is_a_typed_error(cut: int) -> None:
    with pytest.raises(DecodeError):
        open_envelope(SEALED.block[:cut], BUYER)


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32))
def test_random_third_key_never_opens(seed: bytes) -> None:
    me = Identity(seed)
    if me.did in (BUYER.did, SELLER.did):
        return
    with pytest.raises(NotRecipientError):
        open_envelope(SEALED.block, me)


def test_slot_order_is_random() -> None:
    # Which position holds the seller's slot, over 200 seals: a fair coin
    # lands outside 60..140 with probability < 1e-8.
    first = 0
    for _ in range(200):
        slots = dagcbor.decode(seal(DOC, BUYER).block)["s"]
        try:
            sodium.crypto_box_seal_open(slots[0], SELLER.x25519_public, SELLER.x25519_secret)
            first += 1
        except CryptoError:
            sodium.crypto_box_seal_open(slots[1], SELLER.x25519_public, SELLER.x25519_secret)
    assert 60 <= first <= 140


def test_slots_share_one_ephemeral_key_and_are_standard_sealed_boxes() -> None:
    sealed = seal(DOC, BUYER)
    slots = dagcbor.decode(sealed.block)["s"]
    assert len({slot[:32] for slot in slots}) == 1
    # each is a libsodium sealed box its recipient opens with crypto_box_seal_open
    opened = []
    for who in (SELLER, BUYER):
        keys = []
        for slot in slots:
            try:
                keys.append(sodium.crypto_box_seal_open(slot, who.x25519_public, who.x25519_secret))
            except CryptoError:
                pass
        opened.append(keys)
    assert len(opened[0]) == len(opened[1]) == 1 and opened[0] == opened[1]
    # and not by a third key
    for slot in slots:
        with pytest.raises(CryptoError):
            sodium.crypto_box_seal_open(slot, STRANGER.x25519_public, STRANGER.x25519_secret)


def test_low_order_ephemeral_key_is_not_a_recipient_not_a_crash() -> None:
    env = dagcbor.decode(seal(DOC, BUYER).block)
    env["s"] = [bytes(32) + slot[32:] for slot in env["s"]]  # the all-zero point
    with pytest.raises(NotRecipientError):
        open_envelope(dagcbor.encode(env), SELLER)


# -- what v1 forbids: slot counts, padding, CID forms ------------------------------


def _by_hand(signed: bytes, recipients: list[Identity], padded_size: int) -> bytes:
    """An envelope built from the kernel's own primitives, as a sender that
    ignores the rules would: any recipients, any padded length."""
    import os

    from kernel._envelope import _associated_data, pad, wrap

    key, nonce = os.urandom(32), os.urandom(24)
    slots = wrap(key, [r.x25519_public for r in recipients])
    body = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        pad(signed, padded_size), _associated_data(nonce, slots), nonce, key)
    return dagcbor.encode({"c": body, "n": nonce, "s": slots, "v": 1})


#: Enough distinct keys for the largest envelope the general opener reads.
OTHERS = [Identity(bytes([0x40 + i]) * 32) for i in range(16)]
NATURAL = bucket(len(SEALED.signed))


def test_the_hand_builder_makes_what_seal_makes() -> None:
    block = _by_hand(SEALED.signed, [BUYER, SELLER], NATURAL)
    assert len(block) == len(SEALED.block)
    assert open_envelope(block, SELLER, CID.for_block(block)).signed == SEALED.signed


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.randoms(use_true_random=False))
def test_a_document_envelope_has_exactly_two_slots(count: int, rng: Any) -> None:
    recipients = [SELLER, BUYER, *OTHERS][:max(count, 1)]
    rng.shuffle(recipients)
    if SELLER not in recipients:
        recipients[0] = SELLER
    block = _by_hand(SEALED.signed, recipients, NATURAL)
    assert open_plaintext(block, SELLER) == SEALED.signed  # sealed well, for any count
    if count == 2:
        assert open_envelope(block, SELLER).signed == SEALED.signed
    else:
        with pytest.raises(MalformedError, match="exactly 2 slots"):
            open_envelope(block, SELLER, CID.for_block(block))


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(len(SEALED.signed) + 1, 3 * 65536),
                 st.sampled_from([512, 1024, 2048, 4096, 65536, 2 * 65536, 3 * 65536])))
def test_the_padding_is_exactly_the_bucket(size: int) -> None:
    if size <= len(SEALED.signed):
        return
    block = _by_hand(SEALED.signed, [BUYER, SELLER], size)
    if size == NATURAL:
        assert open_envelope(block, SELLER).signed == SEALED.signed
        return
    # A length no bucket has is seen without a key; a larger bucket than the
    # content needs, once decrypted. Either way: malformed, for every opener.
    for opener in (lambda b: open_envelope(b, SELLER), lambda b: open_plaintext(b, BUYER)):
        with pytest.raises(MalformedError):
            opener(block)


def test_is_bucket_holds_exactly_the_lengths_bucket_returns() -> None:
    from kernel._envelope import is_bucket

    limit = 300_000  # past 64 KiB, so both rules are covered
    assert {s for s in range(limit) if is_bucket(s)} == {
        b for b in map(bucket, range(limit)) if b < limit}


@pytest.mark.parametrize("form", ["blake2b-256", "raw", "v0"])
def test_an_envelope_is_named_by_one_cid_form_only(form: str) -> None:
    """The block hashes to each of these CIDs, but the store files it under its
    CIDv1 dag-cbor sha2-256 one: any other name is refused (spec section 2)."""
    import hashlib

    from kernel.cid import BLAKE2B_256, RAW, encode_varint

    block = SEALED.block
    if form == "blake2b-256":
        raw = (b"\x01\x71" + encode_varint(BLAKE2B_256) + b"\x20"
               + hashlib.blake2b(block, digest_size=32).digest())
        other = CID.from_bytes(raw)
    elif form == "raw":
        other = CID.for_block(block, RAW)
    else:
        other = CID.from_bytes(b"\x12\x20" + hashlib.sha256(block).digest())
    assert other.matches(block) and other != SEALED.cid
    with pytest.raises(CIDMismatchError):
        open_envelope(block, SELLER, other)
    with pytest.raises(CIDMismatchError):
        open_plaintext(block, SELLER, other)


def test_the_largest_sealable_document_fits_the_block_a_receiver_opens() -> None:
    """Padding adds up to 64 KiB: a signed document is bounded by what its bucket
    leaves room for, so nothing a sealer makes is over the 1 MiB an opener takes."""
    from kernel._envelope import ENVELOPE_LIMITS, MAX_BLOCK, MAX_SIGNED

    signed = bytes(MAX_SIGNED)
    sealed = seal_signed(signed, [SELLER.did, BUYER.did])
    assert len(sealed.block) <= MAX_BLOCK
    dagcbor.decode(sealed.block, ENVELOPE_LIMITS)  # within the opener's limits
    assert open_plaintext(sealed.block, BUYER, sealed.cid) == signed
    with pytest.raises(InvalidDocumentError, match="too large"):
        seal_signed(bytes(MAX_SIGNED + 1), [SELLER.did, BUYER.did])
