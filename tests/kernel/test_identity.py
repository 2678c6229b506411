"""kernel._identity: did:key vectors, X25519 derivation, labelled signatures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiformats import multibase

from kernel._identity import LABELS, Identity, Party, party
from kernel.errors import InvalidSignatureError, MalformedError

# Source: W3C CCG did:key spec test vectors, w3c-ccg/did-method-key
# test-vectors/ed25519-x25519.json @ 801b0a91ce5af882c389ca399fa1fd1a75229c09
# (seed -> did, Ed25519 publicKeyBase58, X25519 key-agreement public/private base58).
DID_KEY_VECTORS = [
    (
        "00" * 32,
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
        "7By6kV2t2d188odEM4ExAve1UithKT6dLva4dwsDT3ak",
        "6QN8DfuN9hjgHgPvLXqgzqYE3jRRGRrmJQZkd5tL8paR",
    ),
    (
        "00" * 31 + "01",
        "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
        "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt",
        "FcoNC5NqP9CePWbhfz95iHaEsCjGkZUioK9Ck7Qiw286",
        "HBTcN2MrXNRj9xF9oi8QqYyuEPv3JLLjQKuEgW9oxVKP",
    ),
    (
        "00" * 31 + "02",
        "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
        "8pM1DN3RiT8vbom5u1sNryaNT1nyL8CTTW3b5PwWXRBH",
        "A5fe37PAxhX5WNKngBpGHhC1KpNE7nwbK9oX2tqwxYxU",
        "ACa4PPJ1LnPNq1iwS33V3Akh7WtnC71WkKFZ9ccM6sX2",
    ),
    (
        "00" * 31 + "03",
        "did:key:z6MkvqoYXQfDDJRv8L4wKzxYeuKyVZBfi9Qo6Ro8MiLH3kDQ",
        "HPYVwAQmskwT1qEEeRzhoomyfyupJGASQQtCXSNG8XS2",
        "7ocvdvQinfqtyQ3Dh9aA7ggoVCQkmfaoueZazHETDv3B",
        "FZrzd1osCnbK6y6MJzMBW1RcVfL524sNKhSbqRwMuwHT",
    ),
    (
        "00" * 31 + "04",
        "did:key:z6MkwW6aqMnjgrhJXFUko3NnZPGzVpkNzhYK7yEhnsibmLwL",
        "J3qYF7YJMKCqQke47UQwiHizgFUXapHxRxKmxbkar89x",
        "FbQtKTG6FjWSeYZyowWYv2KBcCbwmHqH6HUuxdJ4xkwP",
        "8Zybi2bqQ8YB4uPm3iy2rkDCmbB4wkG2Y2ig5YAkgNdg",
    ),
]


def _b58(text: str) -> bytes:
    return bytes(multibase.decode("z" + text))


@pytest.mark.parametrize(
    ("seed", "did", "ed_pub", "x_pub", "x_priv"), DID_KEY_VECTORS, ids=lambda v: v[:16]
)
def test_did_key_vectors(seed: str, did: str, ed_pub: str, x_pub: str, x_priv: str) -> None:
    me = Identity(bytes.fromhex(seed))
    assert me.did == did
    assert me.public_key == _b58(ed_pub)
    assert me.x25519_public == _b58(x_pub)
    assert me.x25519_secret == _b58(x_priv)
    assert party(did) == me.party
    assert Party.from_did(did).x25519_public == _b58(x_pub)


def test_zero_seed_vector() -> None:
    assert Identity(bytes(32)).did == "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


@pytest.mark.parametrize(
    "did",
    [
        "",
        "did:key:",
        "did:web:example.com",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW",  # one char short
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWpp",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW0",  # 0 is not base58
        "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",  # an X25519 did:key
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1
        "DID:KEY:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        " did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    ],
)
def test_bad_dids(did: str) -> None:
    with pytest.raises(MalformedError):
        party(did)


@pytest.mark.parametrize("value", [None, 7, b"did:key:z6Mk"])
def test_non_text_did(value: object) -> None:
    with pytest.raises(MalformedError):
        party(value)  # type: ignore[arg-type]


def test_seed_must_be_32_bytes() -> None:
    for seed in (b"", bytes(31), bytes(33), "0" * 32, bytearray(32)):
        with pytest.raises(ValueError):
            Identity(seed)  # type: ignore[arg-type]


def test_signatures_are_deterministic_and_verify() -> None:
    me = Identity(bytes(32))
    sig = me.sign("document", b"hello")
    assert sig == me.sign("document", b"hello") and len(sig) == 64
    me.party.verify("document", b"hello", sig)
    with pytest.raises(InvalidSignatureError):
        me.party.verify("document", b"hellO", sig)
    with pytest.raises(InvalidSignatureError):
        Identity(bytes([1]) * 32).party.verify("document", b"hello", sig)


def test_signature_covers_label_and_separator() -> None:
    from nacl.signing import SigningKey

    me = Identity(bytes(32))
    plain = SigningKey(bytes(32)).sign(b"usagi-p2p/v1/notice\x00msg").signature
    assert me.sign("notice", b"msg") == plain


def test_label_separation() -> None:
    """A signature made for one purpose never verifies as another."""
    me = Identity(bytes(32))
    message = b"same bytes"
    sigs = {label: me.sign(label, message) for label in LABELS}
    assert len(set(sigs.values())) == len(LABELS)
    for made_for, sig in sigs.items():
        for checked_as in LABELS:
            if checked_as == made_for:
                me.party.verify(checked_as, message, sig)
            else:
                with pytest.raises(InvalidSignatureError):
                    me.party.verify(checked_as, message, sig)


def test_labels_are_versioned_and_distinct() -> None:
    assert all(v.startswith(b"usagi-p2p/v1/") and b"\x00" not in v for v in LABELS.values())
    assert len(set(LABELS.values())) == len(LABELS)


@pytest.mark.parametrize("sig", [b"", bytes(63), bytes(65), "x" * 64, bytearray(64)])
def test_signature_shape(sig: object) -> None:
    with pytest.raises(InvalidSignatureError):
        Identity(bytes(32)).party.verify("document", b"m", sig)  # type: ignore[arg-type]


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64), st.data())
def test_flipped_signature_byte_never_verifies(
    seed: bytes, message: bytes, data: st.DataObject
) -> None:
    me = Identity(seed)
    sig = bytearray(me.sign("ack", message))
    index = data.draw(st.integers(0, 63))
    sig[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(InvalidSignatureError):
        me.party.verify("ack", message, bytes(sig))


@given(st.binary(min_size=32, max_size=32))
def test_did_round_trip(seed: bytes) -> None:
    me = Identity(seed)
    assert party(me.did) == me.party
    assert party(me.did).did == me.did


def test_party_rejects_bad_public_keys() -> None:
    with pytest.raises(MalformedError):
        Party(bytes(31))
