"""kernel.envelope: seal/open by both parties, every failure class, padding, opacity."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from kernel import dagcbor
from kernel.cid import CID
from kernel.envelope import MIN_BUCKET, bucket, digest, open, open_plaintext, seal, seal_signed
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
from kernel.identity import Identity
from kernel.signed import sign_bytes

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
        opened = open(SEALED.block, me, SEALED.cid)
        assert opened.document == DOC
        assert opened.signer == BUYER.did
        assert opened.signed == SEALED.signed
        assert opened.digest == SEALED.digest == digest(SEALED.signed)
        assert opened.cid == SEALED.cid == CID.for_block(SEALED.block)
    assert open(SEALED.block, SELLER).cid == SEALED.cid  # CID computed when not given


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
        open(SEALED.block, STRANGER, SEALED.cid)


def test_extra_recipient_opens_but_is_not_a_party() -> None:
    sealed = seal(DOC, BUYER, [BUYER.did, SELLER.did, STRANGER.did])
    assert open_plaintext(sealed.block, STRANGER) == sealed.signed
    with pytest.raises(NotRecipientError):
        open(sealed.block, STRANGER)
    assert open(sealed.block, SELLER).document == DOC


def test_cid_mismatch() -> None:
    with pytest.raises(CIDMismatchError):
        open(SEALED.block, SELLER, CID.for_block(SEALED.block + b"x"))


def test_tampered_ciphertext() -> None:
    env = dagcbor.decode(SEALED.block)
    c = bytearray(env["c"])
    c[10] ^= 1
    with pytest.raises(DecryptionError):
        open(_reencode(SEALED.block, c=bytes(c)), SELLER)


def test_tampered_nonce() -> None:
    env = dagcbor.decode(SEALED.block)
    with pytest.raises(DecryptionError):
        open(_reencode(SEALED.block, n=bytes(24 - 1) + bytes([env["n"][-1] ^ 1])), SELLER)


def test_tampered_slots() -> None:
    env = dagcbor.decode(SEALED.block)
    mine = _slot_owner_index(SEALED.block, SELLER)
    for index, expected in ((mine, NotRecipientError), (1 - mine, DecryptionError)):
        slots = list(env["s"])
        slot = bytearray(slots[index])
        slot[40] ^= 0x80
        slots[index] = bytes(slot)
        with pytest.raises(expected):
            open(_reencode(SEALED.block, s=slots), SELLER)
    with pytest.raises(DecryptionError):  # reordering the slots changes the associated data
        open(_reencode(SEALED.block, s=list(reversed(env["s"]))), SELLER)
    with pytest.raises(DecryptionError):  # dropping the other party's slot too
        open(_reencode(SEALED.block, s=[env["s"][mine]]), SELLER)


def test_wrong_signer() -> None:
    """A document whose 'from' is BUYER but which STRANGER signed."""
    signed = sign_bytes(STRANGER, "document", dagcbor.encode(DOC))
    sealed = seal_signed(signed, [BUYER.did, SELLER.did])
    with pytest.raises(WrongSignerError):
        open(sealed.block, SELLER, sealed.cid)
    with pytest.raises(WrongSignerError):
        seal(DOC, STRANGER)


def test_forged_signer_field() -> None:
    body = dagcbor.encode(DOC)
    forged = dagcbor.encode(
        {"sig": STRANGER.sign("document", body), "body": body, "signer": BUYER.did}
    )
    sealed = seal_signed(forged, [BUYER.did, SELLER.did])
    with pytest.raises(InvalidSignatureError):
        open(sealed.block, SELLER)


def test_label_matters_inside_the_envelope() -> None:
    signed = sign_bytes(BUYER, "notice", dagcbor.encode(DOC))
    with pytest.raises(InvalidSignatureError):
        open(seal_signed(signed, [BUYER.did, SELLER.did]).block, SELLER)


def test_invalid_document_inside() -> None:
    signed = sign_bytes(BUYER, "document", dagcbor.encode({**DOC, "total": 1.5}))
    with pytest.raises(InvalidDocumentError):
        open(seal_signed(signed, [BUYER.did, SELLER.did]).block, SELLER)
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
        open(block[:-1] + b"\x18\x01", SELLER)  # v as a non-minimal int
    with pytest.raises(MalformedError):
        open(block + b"\x00", SELLER)  # trailing byte
    with pytest.raises(NonCanonicalError):
        open(b"\xbf" + block[1:] + b"\xff", SELLER)  # indefinite-length map
    env = dagcbor.decode(block)
    unsorted = dagcbor.encode_ordered({"v": 1, "c": env["c"], "n": env["n"], "s": env["s"]})
    with pytest.raises(NonCanonicalError):
        open(unsorted, SELLER)


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
        open(_reencode(SEALED.block, **change), SELLER)


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
        open(bytes(block), SELLER)
    with pytest.raises(CIDMismatchError):
        open(bytes(block), SELLER, SEALED.cid)


@given(st.integers(0, len(SEALED.block) - 1))
def test_truncation_is_a_typed_error(cut: int) -> None:
    with pytest.raises(DecodeError):
        open(SEALED.block[:cut], BUYER)


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32))
def test_random_third_key_never_opens(seed: bytes) -> None:
    me = Identity(seed)
    if me.did in (BUYER.did, SELLER.did):
        return
    with pytest.raises(NotRecipientError):
        open(SEALED.block, me)


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
        open(dagcbor.encode(env), SELLER)
