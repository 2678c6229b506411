"""kernel._messages: notices and acks, byte-exact snapshots and every refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import VerifyKey

from kernel import dagcbor
from kernel._messages import check_ack, make_ack, make_notice, notice_nonce, open_ack, open_notice
from kernel._signed import sign
from kernel.cid import CID
from kernel.errors import (
    AckCIDMismatchError,
    AckNonceMismatchError,
    AckSignerError,
    CIDMismatchError,
    DigestMismatchError,
    ExpiredError,
    InvalidSignatureError,
    MalformedError,
    UsagiError,
    WrongRecipientError,
    WrongSignerError,
)

from ._support import BUYER, SELLER, STRANGER

BLOCK_CID = CID.for_block(b"usagi-p2p test block")
AT = datetime(2025, 4, 1, 9, 30, tzinfo=UTC)
NONCE = bytes(range(16))
DIGEST = b"\x12\x20" + bytes(32)

# Snapshots: Ed25519 is deterministic, so fixed seeds (11…, 22…), time and nonce
# give these exact bytes. A change here is a wire-format change.
NOTICE_SNAPSHOT = bytes.fromhex(
    "a3637369675840be178aa2660daefc072147ae0c9e13bfec1efcfb8accff87a563518c3ab503f2d48ec82cdc"
    "a74ce313e9cacfca28b8829a0aec8b47c41a05c72c920ab886650c64626f647958dea562746f78386469643a"
    "6b65793a7a364d6b74554c75645474417341685265675950695a363633315256337669763132716434475146"
    "387a31784232325363636964d82a582500017112202ce9f9c68afc1df3710f267c0b21b17929f730a0116b04"
    "ca9e252418e36a762a6466726f6d78386469643a6b65793a7a364d6b714743336e575a685969654556545644"
    "4b573576353838436947667344536d525647395a77775754764c534b656e6f6e636550000102030405060708"
    "090a0b0c0d0e0f6773656e745f617474323032352d30342d30315430393a33303a30305a667369676e657278"
    "386469643a6b65793a7a364d6b714743336e575a6859696545565456444b573576353838436947667344536d"
    "525647395a77775754764c534b"
)
ACK_SNAPSHOT = bytes.fromhex(
    "a3637369675840e851673376c2c40b5ff03c5807baca340177a97cf94060c46e39ab31dc4aad0de9aba4df96"
    "2175289b6194c098ac087fa8e8136649288bb5f1df8e13d88bdc0264626f6479590112a76261747432303235"
    "2d30342d30315430393a33303a30305a62627978386469643a6b65793a7a364d6b74554c7564547441734168"
    "5265675950695a363633315256337669763132716434475146387a31784232325362746f78386469643a6b65"
    "793a7a364d6b714743336e575a6859696545565456444b573576353838436947667344536d525647395a7777"
    "5754764c534b63636964d82a582500017112202ce9f9c68afc1df3710f267c0b21b17929f730a0116b04ca9e"
    "252418e36a762a656e6f6e636550000102030405060708090a0b0c0d0e0f6664696765737458221220000000"
    "0000000000000000000000000000000000000000000000000000000000667374617475736872656365697665"
    "64667369676e657278386469643a6b65793a7a364d6b74554c75645474417341685265675950695a36363331"
    "5256337669763132716434475146387a317842323253"
)
REJECT_SNAPSHOT = bytes.fromhex(
    "a3637369675840afd9d2543317bd9d91ff75d1d2f6c9384b5f7bfb2464ff969a86c179103ed749fdd0321f55"
    "c5e568bfabdb4e94d0f8f2bc84d6764ec39f3b8acdea8bf586870064626f6479590102a76261747432303235"
    "2d30342d30315430393a33303a30305a62627978386469643a6b65793a7a364d6b74554c7564547441734168"
    "5265675950695a363633315256337669763132716434475146387a31784232325362746f78386469643a6b65"
    "793a7a364d6b714743336e575a6859696545565456444b573576353838436947667344536d525647395a7777"
    "5754764c534b63636964d82a582500017112202ce9f9c68afc1df3710f267c0b21b17929f730a0116b04ca9e"
    "252418e36a762a656e6f6e636550000102030405060708090a0b0c0d0e0f66726561736f6e73756e6b6e6f77"
    "6e2070617274206e756d626572667374617475736872656a6563746564667369676e657278386469643a6b65"
    "793a7a364d6b74554c75645474417341685265675950695a363633315256337669763132716434475146387a"
    "317842323253"
)


def notice() -> bytes:
    return make_notice(BUYER, BLOCK_CID, SELLER.did, AT, NONCE)


def ack(**changes: object) -> bytes:
    args: dict = {
        "cid": BLOCK_CID,
        "to": BUYER.did,
        "nonce": NONCE,
        "status": "received",
        "at": AT,
        "digest": DIGEST,
    }
    args.update(changes)
    return make_ack(SELLER, **args)


def test_notice_snapshot() -> None:
    assert notice() == NOTICE_SNAPSHOT


def test_ack_snapshots() -> None:
    assert ack() == ACK_SNAPSHOT
    assert ack(status="rejected", digest=None, reason="unknown part number") == REJECT_SNAPSHOT


def test_snapshots_verify_independently() -> None:
    """Check the wrapper with PyNaCl directly, not through the kernel."""
    for raw, signer, label in ((NOTICE_SNAPSHOT, BUYER, b"notice"), (ACK_SNAPSHOT, SELLER, b"ack")):
        wrapper = dagcbor.decode(raw)
        assert list(wrapper) == ["sig", "body", "signer"]
        assert wrapper["signer"] == signer.did
        VerifyKey(signer.public_key).verify(
            b"usagi-p2p/v1/" + label + b"\x00" + wrapper["body"], wrapper["sig"]
        )
        assert dagcbor.encode(wrapper) == raw  # encode_ordered agrees with encode


def test_open_notice() -> None:
    opened = open_notice(NOTICE_SNAPSHOT, me=SELLER.did, now=AT + timedelta(minutes=9))
    assert (opened.cid, opened.sender, opened.recipient, opened.nonce, opened.sent_at) == (
        BLOCK_CID,
        BUYER.did,
        SELLER.did,
        NONCE,
        AT,
    )
    assert opened.raw == NOTICE_SNAPSHOT
    assert dagcbor.decode(dagcbor.decode(NOTICE_SNAPSHOT)["body"]) == {
        "cid": BLOCK_CID,
        "from": BUYER.did,
        "to": SELLER.did,
        "nonce": NONCE,
        "sent_at": "2025-04-01T09:30:00Z",
    }


@pytest.mark.parametrize("minutes", [-10, 0, 10])
def test_skew_window_inside(minutes: int) -> None:
    open_notice(NOTICE_SNAPSHOT, now=AT + timedelta(minutes=minutes))


@pytest.mark.parametrize(
    "delta", [timedelta(minutes=10, seconds=1), timedelta(minutes=-11), timedelta(days=400)]
)
def test_skew_window_outside(delta: timedelta) -> None:
    with pytest.raises(ExpiredError):
        open_notice(NOTICE_SNAPSHOT, now=AT + delta)
    open_notice(NOTICE_SNAPSHOT, now=AT + delta, skew=abs(delta) + timedelta(seconds=1))


def test_wrong_recipient() -> None:
    with pytest.raises(WrongRecipientError):
        open_notice(NOTICE_SNAPSHOT, me=STRANGER.did)
    with pytest.raises(WrongRecipientError):
        open_notice(NOTICE_SNAPSHOT, me=BUYER.did)  # the sender is not the recipient


def test_notice_is_not_an_ack_and_back() -> None:
    with pytest.raises(InvalidSignatureError):
        open_ack(NOTICE_SNAPSHOT)
    with pytest.raises(InvalidSignatureError):
        open_notice(ACK_SNAPSHOT)


def test_ack_body_signed_as_notice_never_verifies_as_ack() -> None:
    body = dagcbor.decode(dagcbor.decode(ACK_SNAPSHOT)["body"])
    relabelled = sign(SELLER, "notice", body)
    with pytest.raises(InvalidSignatureError):
        open_ack(relabelled)


def test_notice_signed_by_someone_else() -> None:
    body = dagcbor.decode(dagcbor.decode(NOTICE_SNAPSHOT)["body"])
    with pytest.raises(WrongSignerError):
        open_notice(sign(STRANGER, "notice", body))


@pytest.mark.parametrize(
    "changes",
    [
        {"nonce": bytes(15)},
        {"nonce": "0" * 16},
        {"cid": str(BLOCK_CID)},
        {"to": "did:key:zBad"},
        {"sent_at": "yesterday"},
        {"extra": 1},
    ],
    ids=repr,
)
def test_malformed_notice_bodies(changes: dict) -> None:
    body = dagcbor.decode(dagcbor.decode(NOTICE_SNAPSHOT)["body"])
    body.update(changes)
    with pytest.raises(MalformedError):
        open_notice(sign(BUYER, "notice", body))


def _foreign_cids() -> list[CID]:
    """CIDs the block hashes to under other forms than the one blocks are filed by."""
    import hashlib

    from kernel.cid import BLAKE2B_256, RAW, encode_varint

    block = b"usagi-p2p test block"
    return [
        CID.from_bytes(b"\x01\x71" + encode_varint(BLAKE2B_256) + b"\x20"
                       + hashlib.blake2b(block, digest_size=32).digest()),
        CID.for_block(block, RAW),
        CID.from_bytes(b"\x12\x20" + hashlib.sha256(block).digest()),  # CIDv0
        CID.from_bytes(b"\x01\x71\x00" + encode_varint(len(block)) + block),  # identity
    ]


@pytest.mark.parametrize("cid", _foreign_cids(), ids=str)
def test_a_notice_names_its_block_by_one_cid_form(cid: CID) -> None:
    """Spec section 7: the notice's cid is CIDv1 dag-cbor sha2-256, else malformed;
    and make_notice refuses to make anything else."""
    assert cid.matches(b"usagi-p2p test block") and cid != BLOCK_CID
    body = dagcbor.decode(dagcbor.decode(NOTICE_SNAPSHOT)["body"])
    body["cid"] = cid
    with pytest.raises(MalformedError, match="CIDv1 dag-cbor sha2-256"):
        open_notice(sign(BUYER, "notice", body))
    with pytest.raises(ValueError, match="CIDv1 dag-cbor sha2-256"):
        make_notice(BUYER, cid, SELLER.did, AT)


def test_notice_with_list_recipient_is_malformed() -> None:
    body = dagcbor.decode(dagcbor.decode(NOTICE_SNAPSHOT)["body"])
    body["to"] = [SELLER.did]
    with pytest.raises(MalformedError):
        open_notice(sign(BUYER, "notice", body))


def test_open_ack() -> None:
    opened = open_ack(ACK_SNAPSHOT)
    assert (
        opened.cid,
        opened.by,
        opened.to,
        opened.nonce,
        opened.status,
        opened.digest,
        opened.reason,
        opened.at,
    ) == (BLOCK_CID, SELLER.did, BUYER.did, NONCE, "received", DIGEST, None, AT)
    assert opened.ok
    rejected = open_ack(REJECT_SNAPSHOT)
    assert not rejected.ok and rejected.reason == "unknown part number" and rejected.digest is None


def test_check_ack() -> None:
    opened = open_ack(ACK_SNAPSHOT)
    check_ack(opened, cid=BLOCK_CID, by=SELLER.did, digest=DIGEST)
    with pytest.raises(DigestMismatchError):
        check_ack(opened, cid=BLOCK_CID, by=SELLER.did, digest=b"\x12\x20" + b"\x01" * 32)
    with pytest.raises(CIDMismatchError):
        check_ack(opened, cid=CID.for_block(b"other"), by=SELLER.did, digest=DIGEST)
    with pytest.raises(WrongSignerError):
        check_ack(opened, cid=BLOCK_CID, by=STRANGER.did, digest=DIGEST)
    # a rejection is an answer, not a receipt: no digest to match
    check_ack(open_ack(REJECT_SNAPSHOT), cid=BLOCK_CID, by=SELLER.did, digest=DIGEST)


def test_check_ack_names_each_mismatch() -> None:
    """Each way an ack can answer something else has its own code (spec section 8)."""
    opened = open_ack(ACK_SNAPSHOT)
    check_ack(opened, cid=BLOCK_CID, by=SELLER.did, digest=DIGEST, nonce=NONCE)
    cases = [
        ({"by": STRANGER.did}, AckSignerError, "ack_wrong_signer"),
        ({"cid": CID.for_block(b"other")}, AckCIDMismatchError, "ack_cid_mismatch"),
        ({"nonce": bytes(16)}, AckNonceMismatchError, "ack_nonce_mismatch"),
        ({"digest": b"\x12\x20" + b"\x01" * 32}, DigestMismatchError, "digest_mismatch"),
    ]
    for change, error, code in cases:
        expected = {"cid": BLOCK_CID, "by": SELLER.did, "digest": DIGEST, "nonce": NONCE, **change}
        with pytest.raises(error) as raised:
            check_ack(opened, **expected)
        assert raised.value.code == code
    # A rejection answers a notice too: its nonce must match.
    with pytest.raises(AckNonceMismatchError):
        check_ack(open_ack(REJECT_SNAPSHOT), cid=BLOCK_CID, by=SELLER.did, digest=DIGEST,
                  nonce=bytes(16))
    # The named errors are the kinds callers already catch.
    assert issubclass(AckSignerError, WrongSignerError)
    assert issubclass(AckCIDMismatchError, CIDMismatchError)


def test_notice_nonce_reads_our_own_notice() -> None:
    raw = make_notice(BUYER, BLOCK_CID, SELLER.did, AT, nonce=NONCE)
    assert notice_nonce(raw) == NONCE
    for bad in (b"\xa0", dagcbor.encode({"body": b"\xa0"}), b"\xff"):
        with pytest.raises(MalformedError):
            notice_nonce(bad)


def test_make_ack_arguments() -> None:
    with pytest.raises(ValueError):
        ack(status="maybe")
    with pytest.raises(ValueError):
        ack(digest=None)  # a positive ack names a digest
    long = open_ack(ack(status="rejected", digest=None, reason="x" * 600))
    assert long.reason == "x" * 500
    # 500 UTF-8 bytes (spec section 8's .size), cut at a character boundary.
    japanese = open_ack(ack(status="rejected", digest=None, reason="品" * 200))
    assert japanese.reason == "品" * 166


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "maybe"},
        {"digest": bytes(34)},
        {"digest": DIGEST[:-1]},
        {"nonce": bytes(8)},
        {"reason": 5},
        {"reason": "r" * 501},
        {"reason": "é" * 251},
        {"at": "now"},
        {"extra": True},
        {"cid": b"cid"},
    ],
    ids=repr,
)
def test_malformed_ack_bodies(changes: dict) -> None:
    body = dagcbor.decode(dagcbor.decode(ACK_SNAPSHOT)["body"])
    body.update(changes)
    with pytest.raises(MalformedError):
        open_ack(sign(SELLER, "ack", body))


def test_positive_ack_without_digest_is_malformed() -> None:
    body = dagcbor.decode(dagcbor.decode(ACK_SNAPSHOT)["body"])
    del body["digest"]
    with pytest.raises(MalformedError):
        open_ack(sign(SELLER, "ack", body))


def test_ack_with_list_status_is_malformed() -> None:
    body = dagcbor.decode(dagcbor.decode(ACK_SNAPSHOT)["body"])
    body["status"] = ["received"]
    with pytest.raises(MalformedError):
        open_ack(sign(SELLER, "ack", body))


@given(st.sampled_from(["notice", "ack"]), st.data())
def test_flipped_byte_is_a_typed_error(which: str, data: st.DataObject) -> None:
    raw = bytearray(NOTICE_SNAPSHOT if which == "notice" else ACK_SNAPSHOT)
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(UsagiError):
        (open_notice if which == "notice" else open_ack)(bytes(raw))


@given(st.sampled_from(["notice", "ack"]), st.data())
def test_truncation_is_a_typed_error(which: str, data: st.DataObject) -> None:
    raw = NOTICE_SNAPSHOT if which == "notice" else ACK_SNAPSHOT
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(UsagiError):
        (open_notice if which == "notice" else open_ack)(raw[:cut])
