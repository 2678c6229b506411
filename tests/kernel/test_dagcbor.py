"""kernel.dagcbor: strict DAG-CBOR against the IPLD codec fixtures and SPEC-NOTES §1/§5."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import struct
from collections import OrderedDict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiformats import CID as MFCID
from multiformats import multihash

from kernel import dagcbor
from kernel.cid import CID
from kernel.dagcbor import Limits
from kernel.errors import (
    DecodeError,
    EncodeError,
    LimitExceededError,
    MalformedError,
    NonCanonicalError,
    UsagiError,
)

from ._support import CODEC_FIXTURES, codec_fixture_paths, require_fixtures, stable_id

FIXTURES = codec_fixture_paths()
NEGATIVE = CODEC_FIXTURES / "negative-fixtures" / "dag-cbor" / "decode" / "duplicate-keys.json"


def _fixture_id(path: Path) -> str:
    return path.parent.name


def _walk(value: Any):
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _json_links(value: Any):
    if isinstance(value, dict):
        if set(value) == {"/"} and isinstance(value["/"], str):
            yield value["/"]
            return
        for item in value.values():
            yield from _json_links(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_links(item)


# -- the 128 positive fixtures -------------------------------------------------


def test_fixtures_are_present() -> None:
    require_fixtures(CODEC_FIXTURES)
    assert len(FIXTURES) == 128


@pytest.mark.parametrize("path", FIXTURES, ids=_fixture_id)
def test_fixture_round_trip_and_cid(path: Path) -> None:
    data = path.read_bytes()
    stem = path.name.split(".")[0]
    assert dagcbor.encode(dagcbor.decode(data)) == data
    cid = CID.for_block(data)
    assert str(cid) == stem
    assert bytes(cid) == b"\x01\x71\x12\x20" + hashlib.sha256(data).digest()
    theirs = MFCID("base32", 1, "dag-cbor", multihash.digest(data, "sha2-256"))
    assert str(cid) == str(theirs)
    assert bytes(cid) == bytes(theirs)


INT_FIXTURES = [p for p in FIXTURES if p.parent.name.startswith("int-")]
FLOAT_FIXTURES = [p for p in FIXTURES if p.parent.name.startswith("float-")]
CID_FIXTURES = [p for p in FIXTURES if p.parent.name.startswith("cid-")]


def test_fixture_groups_found() -> None:
    require_fixtures(CODEC_FIXTURES)
    assert (len(INT_FIXTURES), len(FLOAT_FIXTURES), len(CID_FIXTURES)) == (25, 13, 18)


@pytest.mark.parametrize("path", INT_FIXTURES, ids=_fixture_id)
def test_int_fixtures_decode_to_exact_ints(path: Path) -> None:
    value = dagcbor.decode(path.read_bytes())
    assert type(value) is int
    assert value == int(path.parent.name[len("int-") :])


def test_ints_beyond_64_bit_are_covered() -> None:
    require_fixtures(CODEC_FIXTURES)
    names = {p.parent.name for p in INT_FIXTURES}
    assert {
        "int-18446744073709551615",
        "int-11959030306112471731",
        "int--11959030306112471732",
    } <= names


@pytest.mark.parametrize("path", FLOAT_FIXTURES, ids=_fixture_id)
def test_float_fixtures_reencode_as_64_bit(path: Path) -> None:
    data = path.read_bytes()
    value = dagcbor.decode(data)
    floats = [v for v in _walk(value) if type(v) is float]
    for number in floats:
        assert dagcbor.encode(number) == b"\xfb" + struct.pack(">d", number)
    name = path.parent.name
    if name == "float-array_of_specials":
        assert value == [1, True, False, None, -1] and not floats
    else:
        assert type(value) is float
        assert value == float(name[len("float-") :])
        assert data == b"\xfb" + struct.pack(">d", value)


@pytest.mark.parametrize("path", CID_FIXTURES, ids=_fixture_id)
def test_cid_fixtures_decode_to_links_keeping_version(path: Path) -> None:
    value = dagcbor.decode(path.read_bytes())
    links = [v for v in _walk(value) if isinstance(v, CID)]
    assert links, "a cid-* fixture holds at least one link"
    assert not any(type(v) is bytes for v in _walk(value))
    (twin,) = path.parent.glob("*.dag-json")
    texts = list(_json_links(json.loads(twin.read_bytes())))
    # The DAG-JSON twin states the expected links (its map order may differ).
    expected = sorted((bytes(MFCID.decode(t)), MFCID.decode(t).version, t) for t in texts)
    got = sorted((link.raw, link.version, link) for link in links)
    assert [(raw, version) for raw, version, _ in expected] == [(r, v) for r, v, _ in got]
    for (_, _, text), (_, _, link) in zip(expected, got, strict=True):
        assert link == CID.parse(text)
        if link.version == 0:
            assert str(link) == text  # a v0 link keeps its Qm… form


# -- negative cases -----------------------------------------------------------


def test_upstream_negative_fixture_duplicate_keys() -> None:
    require_fixtures(NEGATIVE)
    entries = json.loads(NEGATIVE.read_text())
    assert entries
    for entry in entries:
        with pytest.raises(MalformedError):
            dagcbor.decode(bytes.fromhex(entry["hex"]))


# SPEC-NOTES §5, each with the class the kernel promises: NonCanonicalError for
# well-formed CBOR that is not the one canonical form (including indefinite
# lengths), MalformedError for what is not DAG-CBOR at all.
SPEC_REJECTS: list[tuple[str, type[DecodeError], str]] = [
    ("1817", NonCanonicalError, "23 with a 1-byte argument"),
    ("1900ff", NonCanonicalError, "255 with a 2-byte argument"),
    ("3800", NonCanonicalError, "-1 with a 1-byte argument"),
    ("5801ff", NonCanonicalError, "byte string, 1-byte length argument"),
    ("9fff", NonCanonicalError, "indefinite array"),
    ("bfff", NonCanonicalError, "indefinite map"),
    ("7f6161ff", NonCanonicalError, "indefinite text"),
    ("5f4101ff", NonCanonicalError, "indefinite bytes"),
    ("ff", MalformedError, "lone break"),
    ("f7", MalformedError, "undefined"),
    ("f0", MalformedError, "simple value 16"),
    ("f820", MalformedError, "simple value 32"),
    ("f93c00", NonCanonicalError, "half float"),
    ("fa3f800000", NonCanonicalError, "single float"),
    ("fb7ff8000000000000", MalformedError, "NaN"),
    ("fb7ff0000000000000", MalformedError, "+Inf"),
    ("fbfff0000000000000", MalformedError, "-Inf"),
    ("f97e00", MalformedError, "NaN (half)"),
    ("c11a00000000", MalformedError, "tag 1"),
    ("c249010000000000000000", MalformedError, "tag 2 bignum"),
    ("d9002a480001000003616263", NonCanonicalError, "tag 42, 2-byte tag argument"),
    ("d82a4701000003616263", MalformedError, "tag 42 without 00"),
    ("d82a63616263", MalformedError, "tag 42 over text"),
    ("a10102", MalformedError, "integer map key"),
    ("a2616201616102", NonCanonicalError, "keys b, a"),
    ("a262616101616202", NonCanonicalError, "keys aa, b"),
    ("a2616101616102", MalformedError, "duplicate key a"),
    ("0000", MalformedError, "trailing bytes"),
    ("f600", MalformedError, "trailing bytes after null"),
    ("", MalformedError, "empty input"),
    ("6261", MalformedError, "truncated text"),
    ("8201", MalformedError, "truncated array"),
    ("1c", MalformedError, "reserved additional info 28"),
    ("1f", MalformedError, "indefinite length on an unsigned integer"),
    ("3f", MalformedError, "indefinite length on a negative integer"),
    ("df", MalformedError, "indefinite length on a tag"),
    # a few more of the same classes
    ("c2410a", NonCanonicalError, "bignum tag over a small int"),
    ("d9d9f700", NonCanonicalError, "self-describe tag 55799"),
    ("d81e820102", MalformedError, "tag 30 rational"),
    ("d82a4100", MalformedError, "tag 42 over a lone 00 (empty CID)"),
    ("d82a5824001220" + "00" * 33, MalformedError, "tag 42 over a CIDv0 with a trailing byte"),
    ("a161ff01", MalformedError, "invalid UTF-8 key"),
    ("62c328", MalformedError, "invalid UTF-8 text"),
    ("a1a0a0", MalformedError, "map as a map key"),
]


@pytest.mark.parametrize(("hex_", "error", "why"), SPEC_REJECTS, ids=[c[2] for c in SPEC_REJECTS])
def test_spec_notes_reject_cases(hex_: str, error: type[DecodeError], why: str) -> None:
    with pytest.raises(error):
        dagcbor.decode(bytes.fromhex(hex_))


def test_every_decode_error_is_a_decode_error() -> None:
    for klass in (MalformedError, NonCanonicalError, LimitExceededError):
        assert issubclass(klass, DecodeError) and issubclass(klass, UsagiError)


def test_trailing_bytes_error_names_the_offset() -> None:
    with pytest.raises(MalformedError) as info:
        dagcbor.decode(bytes.fromhex("a161610100"))
    assert info.value.offset == 4


def test_cyclic_shared_reference_is_a_decode_error() -> None:
    # d8 1c 81 d8 1d 00: tag 28 "shareable" over [tag 29 "sharedref" 0]: a list containing itself.
    with pytest.raises(DecodeError):
        dagcbor.decode(bytes.fromhex("d81c81d81d00"))


def test_acyclic_shared_reference_is_rejected() -> None:
    # [shareable [0], sharedref 0] decodes to two views of one list; not canonical DAG-CBOR.
    with pytest.raises(DecodeError):
        dagcbor.decode(bytes.fromhex("82d81c8100d81d00"))


# -- limits -------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_size_limit() -> None:
    data = dagcbor.encode(b"x" * 100)
    assert dagcbor.decode(data, Limits(max_size=len(data))) == b"x" * 100
    with pytest.raises(LimitExceededError):
        dagcbor.decode(data, Limits(max_size=len(data) - 1))


def test_depth_limit() -> None:
    assert dagcbor.decode(dagcbor.encode(_nested(4)), Limits(max_depth=4)) == _nested(4)
    with pytest.raises(LimitExceededError):
        dagcbor.decode(dagcbor.encode(_nested(5)), Limits(max_depth=4))
    with pytest.raises(LimitExceededError):
        dagcbor.decode(dagcbor.encode(_nested(65)))  # default limit: 64
    maps: Any = 0
    for _ in range(5):
        maps = {"a": maps}
    with pytest.raises(LimitExceededError):
        dagcbor.decode(dagcbor.encode(maps), Limits(max_depth=4))


def test_collection_length_limit() -> None:
    limits = Limits(max_length=10)
    assert dagcbor.decode(dagcbor.encode(list(range(10))), limits) == list(range(10))
    with pytest.raises(LimitExceededError):
        dagcbor.decode(dagcbor.encode(list(range(11))), limits)
    with pytest.raises(LimitExceededError):
        dagcbor.decode(dagcbor.encode({f"k{i:02}": i for i in range(11)}), limits)
    with pytest.raises(LimitExceededError):
        dagcbor.decode(dagcbor.encode([[0] * 11]), limits)  # nested too


def test_huge_declared_length_does_not_allocate() -> None:
    # byte string / array claiming 2^63 entries in a 9-byte input
    for hex_ in ("5b7fffffffffffffff", "9b7fffffffffffffff", "bb7fffffffffffffff"):
        with pytest.raises(DecodeError):
            dagcbor.decode(bytes.fromhex(hex_))


# -- encoder ------------------------------------------------------------------


def test_key_order_is_length_first() -> None:
    assert dagcbor.encode({"aa": 1, "b": 2}) == bytes.fromhex("a2 61 62 02 62 61 61 01")
    assert dagcbor.encode({"b": 2, "aa": 1}) == bytes.fromhex("a2 61 62 02 62 61 61 01")
    # UTF-8 length, not character count: "é" is 2 bytes, so it sorts after "z"
    assert list(dagcbor.decode(dagcbor.encode({"é": 1, "z": 2, "ab": 3}))) == ["z", "ab", "é"]


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"a": [math.nan]},
        {1: 2},
        {b"a": 1},
        {None: 1},
        {"ok": {2: "nested"}},
        1 << 64,
        -(1 << 64) - 1,
        [1 << 100],
        {1, 2},
        frozenset(),
        object(),
        datetime(2025, 1, 1, tzinfo=UTC),
        Decimal("1.5"),
        complex(1, 2),
        [set()],
        {"a": object()},
    ],
    ids=stable_id,
)
def test_encoder_rejects(value: Any) -> None:
    with pytest.raises(EncodeError):
        dagcbor.encode(value)


def test_encoder_integer_range_edges() -> None:
    assert dagcbor.encode((1 << 64) - 1) == bytes.fromhex("1bffffffffffffffff")
    assert dagcbor.encode(-(1 << 64)) == bytes.fromhex("3bffffffffffffffff")
    assert dagcbor.encode(-1) == b"\x20"
    assert dagcbor.encode(-256) == bytes.fromhex("38ff")
    assert dagcbor.encode(-257) == bytes.fromhex("390100")


def test_encoder_shortest_forms_and_64_bit_floats() -> None:
    assert dagcbor.encode(23) == b"\x17"
    assert dagcbor.encode(24) == b"\x18\x18"
    assert dagcbor.encode(1.0) == bytes.fromhex("fb3ff0000000000000")
    assert dagcbor.encode(-0.0) == bytes.fromhex("fb8000000000000000")
    assert dagcbor.encode(b"") == b"\x40"
    assert dagcbor.encode([]) == b"\x80"


def test_encoder_links_and_base_kinds() -> None:
    link = CID.parse("bafkqabiaaebagba")
    assert dagcbor.encode(link) == bytes.fromhex("d82a4a00015500050001020304")

    class Colour(enum.IntEnum):
        RED = 7

    assert dagcbor.encode(Colour.RED) == b"\x07"
    assert dagcbor.encode((1, 2)) == dagcbor.encode([1, 2])
    assert dagcbor.encode(bytearray(b"ab")) == dagcbor.encode(b"ab")
    assert dagcbor.encode(OrderedDict([("b", 1), ("a", 2)])) == dagcbor.encode({"a": 2, "b": 1})


def test_encode_ordered_agrees_with_encode_on_sorted_input() -> None:
    value = {"c": b"x", "n": b"y" * 24, "s": [b"z" * 80], "v": 1}
    assert dagcbor.encode_ordered(value) == dagcbor.encode(value)


# -- properties -----------------------------------------------------------------

cids = st.builds(CID.for_block, st.binary(max_size=64))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=64)
    | st.text(max_size=32)
    | cids
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: Any) -> None:
    data = dagcbor.encode(value)
    decoded = dagcbor.decode(data)
    assert decoded == value
    assert dagcbor.encode(decoded) == data


def _check_mutation(mutated: bytes) -> None:
    try:
        result = dagcbor.decode(mutated)
    except DecodeError:
        return
    # Anything else raised propagates and fails the test.
    assert dagcbor.encode(result) == mutated


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_flipped_byte_is_decode_error_or_canonical(value: Any, data: st.DataObject) -> None:
    encoded = dagcbor.encode(value)
    index = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = bytearray(encoded)
    mutated[index] ^= flip
    _check_mutation(bytes(mutated))


@given(values, st.data())
def test_truncation_is_decode_error(value: Any, data: st.DataObject) -> None:
    encoded = dagcbor.encode(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        dagcbor.decode(encoded[:cut])


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_untyped(blob: bytes) -> None:
    _check_mutation(blob)


# -- which implementation serves ------------------------------------------------


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_pure_python_switch(value: str, pure: bool) -> None:
    """USAGI_PURE_PYTHON (docs/operations.md) puts the codec and the line rules on the reference."""
    import importlib.util
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import kernel.dagcbor as d, kernel._document as doc; "
            "print(d.IMPLEMENTATION, d._speedups is None, doc._lines_ok is None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "USAGI_PURE_PYTHON": value, "PYTHONPATH": str(root)})
    if pure:
        assert out.stdout.split() == ["python", "True", "True"]
    elif importlib.util.find_spec("kernel._speedups") is not None:  # built
        assert out.stdout.split() == ["c", "False", "False"]
    else:
        assert out.stdout.split() == ["python", "True", "True"]
