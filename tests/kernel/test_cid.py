"""kernel.cid: CIDs agree with multiformats; strict parsing; varints (SPEC-NOTES §2, §3)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID as MFCID
from multiformats import multihash

from kernel.cid import (
    BLAKE2B_256,
    CID,
    DAG_CBOR,
    DAG_JSON,
    IDENTITY,
    RAW,
    SHA2_256,
    as_cid,
    decode_varint,
    encode_varint,
)
from kernel.errors import CIDMismatchError, DecodeError, MalformedError

V0_TEXT = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"  # sha2-256 of b"" as dag-pb v0


@given(st.binary(max_size=512))
def test_for_block_matches_multiformats(block: bytes) -> None:
    mh = multihash.digest(block, "sha2-256")
    for codec, name in ((DAG_CBOR, "dag-cbor"), (RAW, "raw"), (DAG_JSON, "dag-json")):
        ours = CID.for_block(block, codec)
        theirs = MFCID("base32", 1, name, mh)
        assert bytes(ours) == bytes(theirs)
        assert str(ours) == str(theirs)
        assert (ours.version, ours.codec, ours.hash_code) == (1, codec, SHA2_256)
        assert ours.digest == hashlib.sha256(block).digest()
        assert CID.parse(str(ours)) == ours
        assert CID.from_bytes(bytes(ours)) == ours


def test_raw_codec_layout() -> None:
    cid = CID.for_block(b"hello", RAW)
    assert cid.raw == b"\x01\x55\x12\x20" + hashlib.sha256(b"hello").digest()
    assert str(cid).startswith("bafkrei")
    assert str(CID.for_block(b"hello")).startswith("bafyrei")


@given(st.binary(max_size=128))
def test_parse_base32_and_base58_text(block: bytes) -> None:
    theirs = MFCID("base32", 1, "dag-cbor", multihash.digest(block, "sha2-256"))
    expected = CID.for_block(block)
    assert CID.parse(theirs.encode("base32")) == expected
    assert CID.parse(theirs.encode("base58btc")) == expected


def test_parse_upper_case_base32_and_base58_prefix() -> None:
    cid = CID.for_block(b"x")
    text = str(cid)
    assert CID.parse("B" + text[1:].upper()) == cid
    z = MFCID.decode(text).encode("base58btc")
    assert z.startswith("z")
    assert CID.parse(z) == cid
    assert str(CID.parse(z)) == text  # we always print base32


def test_cidv0_text_round_trip() -> None:
    cid = CID.parse(V0_TEXT)
    assert cid.version == 0
    assert cid.raw == b"\x12\x20" + hashlib.sha256(b"").digest()
    assert str(cid) == V0_TEXT
    assert CID.from_bytes(cid.raw) == cid
    assert cid != CID.from_bytes(b"\x01\x70" + cid.raw)  # v1 of the same hash is another CID


def test_identity_cid_from_fixture_text() -> None:
    cid = CID.parse("bafkqabiaaebagba")
    assert (cid.version, cid.codec, cid.hash_code, cid.digest) == (
        1,
        RAW,
        IDENTITY,
        b"\x00\x01\x02\x03\x04",
    )
    assert str(cid) == "bafkqabiaaebagba"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "bafy",
        "bafyreiaaaa",  # truncated digest
        "Qm",
        "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1",  # one char short
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "b" + "a" * 300,
        "!bafkqabiaaebagba",
        "bafkqabiaaebagba ",
        "zzzzz",
    ],
)
def test_malformed_text(text: str) -> None:
    with pytest.raises(MalformedError):
        CID.parse(text)


@pytest.mark.parametrize("value", [None, b"bafkqabiaaebagba", 42])
def test_parse_non_text(value: object) -> None:
    with pytest.raises(MalformedError):
        CID.parse(value)  # type: ignore[arg-type]


DIGEST = hashlib.sha256(b"").digest()


@pytest.mark.parametrize(
    ("hex_", "why"),
    [
        ("", "empty"),
        ("01", "version only"),
        ("0171", "no multihash"),
        ("01711220" + DIGEST.hex()[:-2], "digest one byte short"),
        ("01711220" + DIGEST.hex() + "00", "trailing byte"),
        ("02711220" + DIGEST.hex(), "version 2"),
        ("00711220" + DIGEST.hex(), "version 0 written as a varint"),
        ("1220" + DIGEST.hex()[:-2], "truncated CIDv0"),
        ("1220" + DIGEST.hex() + "00", "CIDv0 with trailing byte"),
        ("12" + DIGEST.hex(), "0x12 first but not v0: no CIDv18"),
        ("0181001220" + DIGEST.hex(), "non-minimal codec varint 81 00"),
        ("0171128000" + "20" + DIGEST.hex(), "non-minimal hash code varint"),
        ("0171121f" + DIGEST.hex()[:-2], "sha2-256 with a 31-byte digest"),
        ("0171a0e4021f" + "00" * 31, "blake2b-256 with a 31-byte digest"),
        ("01" + "ff" * 9 + "01" + "1220" + DIGEST.hex(), "over-long codec varint"),
        ("8101711220" + DIGEST.hex(), "non-minimal version varint"),
    ],
)
def test_malformed_bytes(hex_: str, why: str) -> None:
    with pytest.raises(MalformedError):
        CID.from_bytes(bytes.fromhex(hex_))


def test_huge_identity_digest_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        CID.from_bytes(b"\x01\x55\x00\x81\x02" + b"\x00" * 257)


def test_read_returns_next_offset() -> None:
    cid = CID.for_block(b"a")
    data = b"\xff" + cid.raw + b"rest"
    read, end = CID.read(data, 1)
    assert read == cid and data[end:] == b"rest"


def test_as_cid_accepts_three_forms() -> None:
    cid = CID.for_block(b"a")
    assert as_cid(cid) is cid
    assert as_cid(str(cid)) == cid
    assert as_cid(cid.raw) == cid
    with pytest.raises(MalformedError):
        as_cid(12)  # type: ignore[arg-type]


# -- varints (multiformats/unsigned-varint) -------------------------------------


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (255, "ff01"),
        (300, "ac02"),
        (16384, "808001"),
        ((1 << 63) - 1, "ffffffffffffffff7f"),
    ],
)
def test_varint_examples(value: int, hex_: str) -> None:
    assert encode_varint(value) == bytes.fromhex(hex_)
    assert decode_varint(bytes.fromhex(hex_)) == (value, len(hex_) // 2)


@given(st.integers(0, (1 << 63) - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) <= 9
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize(
    "hex_",
    [
        "",
        "80",
        "ff",
        "8100",
        "808000",
        "ff00",
        "ffffffffffffffff80",
        "ffffffffffffffffff01",
        "80808080808080808001",
    ],
)
def test_varint_rejects_truncated_non_minimal_over_long(hex_: str) -> None:
    with pytest.raises(MalformedError):
        decode_varint(bytes.fromhex(hex_))


@pytest.mark.parametrize("value", [-1, 1 << 63, 1 << 70])
def test_encode_varint_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


# -- verify ----------------------------------------------------------------------


def test_verify_sha2_256() -> None:
    cid = CID.for_block(b"block")
    cid.verify(b"block")
    assert cid.matches(b"block")
    assert not cid.matches(b"bloc")
    with pytest.raises(CIDMismatchError):
        cid.verify(b"blocK")


def test_verify_blake2b_256() -> None:
    block = b"filecoin-ish"
    digest = hashlib.blake2b(block, digest_size=32).digest()
    cid = CID.from_bytes(b"\x01\x71\xa0\xe4\x02\x20" + digest)
    assert cid.hash_code == BLAKE2B_256 and cid.digest == digest
    cid.verify(block)
    with pytest.raises(CIDMismatchError):
        cid.verify(block + b"!")
    theirs = MFCID("base32", 1, "dag-cbor", multihash.digest(block, "blake2b-256"))
    assert cid.raw == bytes(theirs) and str(cid) == str(theirs)


def test_verify_identity() -> None:
    cid = CID.parse("bafkqabiaaebagba")
    cid.verify(b"\x00\x01\x02\x03\x04")
    with pytest.raises(CIDMismatchError):
        cid.verify(b"\x00\x01\x02\x03")


def test_verify_unsupported_hash_raises_typed_error() -> None:
    # sha1 (0x11, 20 bytes), as in the codec fixtures' cid-arrayof
    cid = CID.from_bytes(b"\x01\x55\x11\x14" + b"\x00" * 20)
    with pytest.raises(CIDMismatchError):
        cid.verify(b"anything")


def test_equality_hash_and_order() -> None:
    a, b = CID.for_block(b"a"), CID.for_block(b"b")
    assert a == CID.from_bytes(a.raw) and hash(a) == hash(CID.from_bytes(a.raw))
    assert a != b and a != a.raw
    assert sorted([b, a]) == sorted([a, b])
    assert repr(a) == f"CID({str(a)!r})"


def test_read_fast_path_matches_the_fields_of_the_walk() -> None:
    # CIDv1 sha2-256 dag-cbor/raw is read without the varint walk; same fields,
    # same end offset, and a short one still fails as truncated.
    for codec in (0x71, 0x55):
        digest = hashlib.sha256(bytes([codec])).digest()
        raw = bytes([1, codec, 0x12, 0x20]) + digest
        for data in (b"\xff" + raw + b"tail", memoryview(bytearray(b"\xff" + raw + b"tail"))):
            cid, end = CID.read(data, 1)
            assert (cid.raw, cid.version, cid.codec, cid.hash_code, cid.digest, end) == (
                raw, 1, codec, 0x12, digest, 37)
            assert type(cid.raw) is bytes and type(cid.digest) is bytes
        assert cid == CID.parse(str(cid)) and str(cid) == str(MFCID.decode(str(cid)))
        with pytest.raises(MalformedError):
            CID.from_bytes(raw[:-1])
