"""kernel._speedups (the C codec) against kernel.dagcbor's cbor2 reference.

Two implementations of one format: the same input must give the same value
(types and map order included) or the same bytes, and bad input the same
error class. Under CI the C codec must be built (the machine has a compiler);
elsewhere these tests skip when it is absent and the reference serves alone.
"""

from __future__ import annotations

import enum
import math
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import dagcbor
from kernel.cid import CID
from kernel.dagcbor import Limits
from kernel.errors import DecodeError, EncodeError, UsagiError

from ._support import CODEC_FIXTURES, codec_fixture_paths, require_fixtures
from .test_dagcbor import SPEC_REJECTS, values

if os.environ.get("CI") and dagcbor.IMPLEMENTATION != "c":
    pytest.fail("kernel._speedups was not built (no C compiler?); CI requires it", pytrace=False)

fast = pytest.importorskip("kernel._speedups", reason="C codec not built; the reference serves alone")


def fast_decode(data: bytes, limits: Limits = dagcbor.DEFAULT_LIMITS) -> Any:
    return fast.decode(data, limits.max_depth, limits.max_length)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, maps in the same order, floats bit for bit."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except UsagiError as exc:
        return "error", type(exc)


def assert_same_outcome(data: bytes, limits: Limits = dagcbor.DEFAULT_LIMITS, *, exact: bool = True) -> None:
    """Both accept with the same value, or both refuse.

    ``exact``: with the same error class too. Input with several faults may
    be refused for a different one of them: the reference parses first and
    checks afterwards, the C codec checks as it parses (e.g. ``82 7f``, a
    truncated array holding an indefinite string: NonCanonical for one,
    Malformed for the other). Random mutations therefore compare only
    accept/refuse and the value; every single-fault case compares the class.
    """
    ref = outcome(dagcbor.reference_decode, data, limits)
    ours = outcome(fast_decode, data, limits)
    assert ref[0] == ours[0], (data.hex(), ref, ours)
    if ref[0] == "ok":
        assert same(ref[1], ours[1]), data.hex()
    elif exact:
        assert ours[1] is ref[1], (data.hex(), ref[1], ours[1])


def test_in_use_when_built() -> None:
    assert dagcbor.IMPLEMENTATION == "c"
    assert dagcbor.decode(b"\xa1\x61\x61\x01") == {"a": 1}


# -- fixtures and the reject table ----------------------------------------------


@pytest.mark.parametrize("path", codec_fixture_paths(), ids=lambda p: p.parent.name)
def test_fixture_same_value_and_bytes(path: Path) -> None:
    data = path.read_bytes()
    ref = dagcbor.reference_decode(data)
    ours = fast_decode(data)
    assert same(ref, ours)
    assert fast.encode(ours) == data == dagcbor.reference_encode(ref)


def test_fixtures_present() -> None:
    require_fixtures(CODEC_FIXTURES)
    assert len(codec_fixture_paths()) == 128


@pytest.mark.parametrize(("hex_", "error", "why"), SPEC_REJECTS, ids=[c[2] for c in SPEC_REJECTS])
def test_reject_table_same_class(hex_: str, error: type[DecodeError], why: str) -> None:
    data = bytes.fromhex(hex_)
    with pytest.raises(error):
        fast_decode(data)
    assert_same_outcome(data)


def test_offsets_match_for_trailing_bytes() -> None:
    for data in (b"\x00\x00", bytes.fromhex("a161610100"), b"\xf6\x00\x01"):
        with pytest.raises(DecodeError) as ref:
            dagcbor.reference_decode(data)
        with pytest.raises(DecodeError) as ours:
            fast_decode(data)
        assert ours.value.offset == ref.value.offset is not None


# -- limits -------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 8])
def test_depth_limit_counts_like_the_reference(depth: int) -> None:
    cid = CID.for_block(b"x")
    shapes: list[Any] = [0, [], [0], [[0]], [[]], [[[0]]], {"a": {"b": 1}}, cid, [cid], {"a": [cid]},
                         {"a": [{"b": [1, {"c": []}]}]}]
    for shape in shapes:
        assert_same_outcome(dagcbor.reference_encode(shape), Limits(max_depth=depth))


@pytest.mark.parametrize("length", [0, 1, 5, 10])
def test_length_limit_like_the_reference(length: int) -> None:
    for shape in ([0] * 5, {f"k{i}": i for i in range(5)}, [[0] * 11], {"a": list(range(10))}):
        assert_same_outcome(dagcbor.reference_encode(shape), Limits(max_length=length))


def test_huge_declared_lengths_fail_without_allocating() -> None:
    for hex_ in ("5b7fffffffffffffff", "7b7fffffffffffffff", "9b7fffffffffffffff", "bb7fffffffffffffff",
                 "9bffffffffffffffff", "bbffffffffffffffff", "5bffffffffffffffff"):
        with pytest.raises(DecodeError):
            fast_decode(bytes.fromhex(hex_))


def test_deep_nesting_is_a_limit_error_not_a_crash() -> None:
    data = b"\x81" * 100_000 + b"\x00"
    with pytest.raises(DecodeError):
        fast.decode(data, 100_000, 10)


# -- encoder ------------------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 1


class Name(str, enum.Enum):  # noqa: UP042  (a mixed-in str Enum: str() is its name, not its text)
    ANNA = "anna"


@pytest.mark.parametrize(
    "value",
    [
        {"b": 2, "aa": 1, "é": 3, "z": 4},
        OrderedDict([("z", 1), ("a", 2)]),
        (1, 2, 3),
        [Colour.RED, Name.ANNA, bytearray(b"ab"), memoryview(b"cd")],
        [(1 << 64) - 1, -(1 << 64), -1, 0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32],
        [0.0, -0.0, 1.5, 1e300, -2.5e-300],
        {"k" * 40: list(range(30)), **{f"key{i:03}": i for i in range(40)}},
        [CID.for_block(b"a"), {"link": CID.for_block(b"b", 0x55)}],
        "テキスト",
        b"\x00" * 70_000,
    ],
    ids=repr,
)
def test_encoder_same_bytes(value: Any) -> None:
    assert fast.encode(value) == dagcbor.reference_encode(value)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, {1: 2}, {b"a": 1}, 1 << 64, -(1 << 64) - 1, {1, 2}, object(), complex(1, 2),
     [[[{"a": {3}}]]], "\ud800", {"\udc00": 1}],
    ids=repr,
)
def test_encoder_rejects_like_the_reference(value: Any) -> None:
    with pytest.raises(EncodeError):
        fast.encode(value)


def test_encoder_depth_limit() -> None:
    value: Any = 0
    for _ in range(600):
        value = [value]
    with pytest.raises(EncodeError):
        fast.encode(value)


# -- properties -------------------------------------------------------------------


@given(values)
def test_same_bytes_and_values(value: Any) -> None:
    data = dagcbor.reference_encode(value)
    assert fast.encode(value) == data
    assert same(fast_decode(data), dagcbor.reference_decode(data))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutations_same_outcome(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(dagcbor.reference_encode(value))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    assert_same_outcome(bytes(encoded), exact=False)


@given(values, st.data())
def test_truncations_same_outcome(value: Any, data: st.DataObject) -> None:
    encoded = dagcbor.reference_encode(value)
    assert_same_outcome(encoded[: data.draw(st.integers(0, len(encoded) - 1))], exact=False)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_same_outcome(blob: bytes) -> None:
    assert_same_outcome(blob, exact=False)


# -- document lines ---------------------------------------------------------------

from kernel import document  # noqa: E402

decimalish = (
    st.from_regex(r"-?(0|[1-9][0-9]{0,26})(\.[0-9]{1,12})?", fullmatch=True)
    | st.sampled_from(["", "-", "01", "1.", ".5", "1.0000000000000", "1" * 28, "１２", "1e3", "+1", "-0"])
    | st.just("1.5\n")
    | st.text(max_size=6)
)
# Around the byte limits (800 and 16,000 UTF-8 bytes) in 1-, 2-, 3- and 4-byte characters,
# and lone surrogates (3 bytes each, as "surrogatepass" writes them).
shortish = (st.text(max_size=3) | st.text(min_size=199, max_size=201)
            | st.sampled_from(["pcs", "", "x" * 800, "x" * 801, "é" * 400, "é" * 401, "六" * 266,
                               "六" * 267, "𠮷" * 200, "𠮷" * 201, "x" + "六" * 266, "\ud800" * 267]))
texty = (
    st.text(max_size=20)
    | st.sampled_from([" ", "\u3000\t", "\x1c", "a", " x ", "x" * 16000, "x" * 16001, "六" * 4000,
                       "六" * 5333, "六" * 5334, "𠮷" * 4000, "𠮷" * 4001, "x" + "𠮷" * 3999,
                       "é" * 8001, "\ud800" * 5334])
)
leaf = st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4) | st.booleans()
plugin_fields = st.recursive(
    leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)
namespaces = (
    st.from_regex(r"[a-z][a-z0-9_-]{0,39}", fullmatch=True) | st.sampled_from(["", "A", "9x", "a" * 41])
)
ext_values = st.dictionaries(namespaces, plugin_fields, max_size=2) | leaf
line_values = {
    "qty": decimalish | leaf,
    "unit_price": decimalish | leaf,
    "amount": decimalish | leaf,
    "unit": shortish | leaf,
    "ref": shortish | leaf,
    "ext": ext_values,
    "colour": leaf,
}
lines_strategy = st.lists(
    st.fixed_dictionaries({"text": texty | leaf}, optional=line_values)
    | st.fixed_dictionaries({}, optional=line_values) | leaf | st.lists(leaf, max_size=2),
    max_size=4,
)


def python_line_problems(lines: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i, line in enumerate(lines):
        document._check_line(line, f"lines[{i}]", out)
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(lines_strategy)
def test_lines_ok_agrees_with_the_python_rules(lines: list[Any]) -> None:
    assert fast.lines_ok(lines) is (not python_line_problems(lines))


def test_lines_ok_examples() -> None:
    good = [{"text": "M6 bolt", "qty": "100", "unit": "pcs", "unit_price": "12.50", "ref": "A-1"},
            {"text": "x", "qty": None, "ext": {"food": {"lot": "L1", "temp": ["2", 3]}}}]
    assert fast.lines_ok(good) is True
    for bad in ({"text": " "}, {"text": "x", "qty": "1.5e3"}, {"text": "x", "ext": {"food": {"t": 2.5}}},
                {"text": "x", "colour": "red"}, {"text": "x", "unit": ""}, {"qty": "1"}, "text"):
        assert fast.lines_ok([*good, bad]) is False
        assert python_line_problems([*good, bad])


# -- whole documents --------------------------------------------------------------

from kernel.identity import Identity, party  # noqa: E402

from ._support import BUYER, SELLER, STRANGER, order  # noqa: E402

LINK = CID.for_block(b"root")
field_values: dict[str, Any] = {
    "v": st.sampled_from([1, 2, True, 1.0, "1", None, 1 << 70]),
    "kind": st.sampled_from(["order", "quote", "order_response", "medical.approval", "food.recall",
                             "Order", "x" * 41, "a.b.c", "", "invoice", 7]),
    "from": st.sampled_from([BUYER.did, SELLER.did, STRANGER.did, "did:key:zBad", None, 3]),
    "to": st.sampled_from([SELLER.did, BUYER.did, STRANGER.did, "did:key:z6Mk", None]),
    "issued_at": st.sampled_from(["2025-04-01T09:30:00Z", "2024-02-29T00:00:00Z", "2026-02-29T00:00:00Z",
                                  "2026-11-22T24:00:00Z", "2026-11-22T05:00:60Z", "2026-11-22T05:00:00.5Z",
                                  "2026-11-22T05:00:00.10Z", "2026-11-22T05:00:00.123456Z",
                                  "2026-11-22T05:00:00.1234567Z", "2026-13-01T00:00:00Z",
                                  "0000-01-01T00:00:00Z", "2026-11-22 05:00:00Z", "2026-11-22T05:00:00",
                                  "２０２６-11-22T05:00:00Z", None, 5]),
    "valid_until": st.sampled_from(["2026-12-31T00:00:00Z", "2026-04-31T00:00:00Z", None, ""]),
    "due": st.sampled_from(["2027-01-31T00:00:00Z", "2027-01-32T00:00:00Z", None]),
    "thread": st.sampled_from([LINK, None, b"\x01", str(LINK)]),
    "prev": st.sampled_from([[LINK], [], None, [LINK, LINK], [LINK, CID.for_block(b"other")], [b"x"], LINK]),
    "ref": shortish | st.none() | st.integers(),
    "user": shortish | st.none(),
    "note": st.sampled_from(["", "x", "x" * 16000, "x" * 16001, "六" * 5333, "六" * 5334, "𠮷" * 4000,
                             "𠮷" * 4001, None, 1]),
    "currency": st.sampled_from(["JPY", "jpy", "JP", "ＪＰＹ", "EURO", None, 3]),
    "total": decimalish | st.none(),
    "response": st.sampled_from(["accept", "reject", "counter", "maybe", None, ["accept"], 1]),
    "lines": st.none() | lines_strategy | st.just("lines"),
    "ext": ext_values,
    "colour": leaf,
}


@st.composite
def documents(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    doc = order() if draw(st.booleans()) else order(thread=LINK, prev=[LINK], kind="order_response",
                                                    response="accept")
    for key in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=4, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            doc.pop(key, None)
        else:
            doc[key] = draw(field_values[key])
    kinds = draw(st.sampled_from([(), ("medical.approval",), ("food.recall", "medical.approval")]))
    return doc, kinds


for _did in (BUYER.did, SELLER.did, STRANGER.did):  # parsed once, as a node would have
    party(_did)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_document_ok_only_for_documents_the_python_rules_accept(case: tuple[dict[str, Any], Any]) -> None:
    doc, kinds = case
    problems = document.reference_problems(doc, kinds)
    if fast.document_ok(doc, frozenset(kinds)):
        assert problems == [], problems
    assert (document.document_problems(doc, kinds) == []) is (problems == [])


def test_document_ok_vouches_for_common_documents() -> None:
    for doc in (order(), order(thread=LINK, prev=[LINK], kind="order_response", response="accept",
                               ref="PO-1", currency="JPY", total="12.50", due="2026-12-31T00:00:00Z",
                               note="n", user="u", lines=[{"text": "x", "qty": "1", "ext": {"food": {}}}])):
        assert document.reference_problems(doc) == []
        assert fast.document_ok(doc, frozenset()) is True
    # not vouched for, left to the Python rules: a DID never parsed, several prev links
    fresh = Identity(os.urandom(32)).did  # a DID no other test has parsed
    assert fast.document_ok(order(to=fresh), frozenset()) is False
    assert document.document_problems(order(to=fresh)) == []
    two = order(thread=LINK, prev=[LINK, CID.for_block(b"b")])
    assert fast.document_ok(two, frozenset()) is False and document.document_problems(two) == []


# -- found by review: hostile values in-process, odd buffers, limits --------------


def test_a_list_emptied_while_it_is_encoded_is_not_a_crash() -> None:
    class Sneaky(dict):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return iter(dict.keys(self))

        def keys(self) -> Any:
            victim.clear()
            return list(dict.keys(self))

    victim: list[Any] = [Sneaky(a=1)] + [[i] for i in range(20)]
    expected = dagcbor.reference_encode([{"a": 1}] + [[i] for i in range(20)])
    assert fast.encode(victim) == expected  # the items as they were when encoding began


def test_dict_subclass_is_read_as_the_reference_reads_it() -> None:
    class Odd(dict):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return iter(["a"])

        def __getitem__(self, key: Any) -> Any:
            return 5

    assert fast.encode(Odd(b=1)) == dagcbor.reference_encode(Odd(b=1))


def test_kinds_with_their_own_equality_never_reach_the_c_check() -> None:
    class AnyKind:
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 1

    doc = order(kind="medical.approval")
    expected = document.reference_problems(doc, (AnyKind(),))
    assert expected and document.document_problems(doc, (AnyKind(),)) == expected
    with pytest.raises(TypeError):
        fast.document_ok(doc, ("medical.approval",))  # only a frozenset


def test_depth_and_length_limits_cannot_be_switched_off() -> None:
    deep = b"\x81" * 513 + b"\x00"
    for decode in (dagcbor.reference_decode, fast_decode):
        with pytest.raises(DecodeError):
            decode(deep, Limits(max_depth=5000))
    with pytest.raises(ValueError):
        fast.decode(b"\x81\x00", 64, -1)
    value: Any = 1
    for _ in range(513):
        value = [value]
    with pytest.raises(EncodeError):
        fast.encode(value)


@pytest.mark.parametrize("hex_", ["d81c01", "d9010001", "d9d9f701"])
def test_transparent_tags_are_non_canonical_in_both(hex_: str) -> None:
    assert_same_outcome(bytes.fromhex(hex_))


def test_non_contiguous_buffers() -> None:
    view = memoryview(b"abcdef")[::2]
    assert fast.encode(view) == dagcbor.reference_encode(view) == b"\x43ace"
    data = memoryview(dagcbor.encode({"a": [1, 2]}) * 2)[::2]
    assert outcome(dagcbor.decode, data)[0] == outcome(dagcbor.reference_decode, data)[0]


def test_decoded_keys_are_interned_only_when_they_are_known_field_names() -> None:
    import sys

    # A known field name is the interned object the C document check holds.
    (text_key,) = fast.decode(dagcbor.encode({"text": "x"}), 4, 16)
    assert text_key is sys.intern("text")
    # Anything else stays a plain str: interning network input would make it
    # immortal on CPython 3.12. Were the decoded key interned, interning an
    # equal string made at run time would return that very object.
    name = "zq" + os.urandom(8).hex()
    (key,) = fast.decode(dagcbor.encode({name: 1}), 4, 16)
    assert key == name
    assert sys.intern("".join([name[:3], name[3:]])) is not key


def _sealed_sample() -> tuple[bytes, bytes]:
    from kernel import Identity, seal

    a, b = Identity(b"\x01" * 32), Identity(b"\x02" * 32)
    sealed = seal({"v": 1, "kind": "message", "from": a.did, "to": b.did,
                   "issued_at": "2026-12-03T06:00:00Z", "lines": [{"text": "hello"}]}, a)
    return sealed.signed, sealed.block


def _generic_wrapper(raw: bytes) -> tuple[bytes, bytes, str] | None:
    try:
        value = dagcbor.reference_decode(raw, Limits(max_size=1 << 20, max_depth=2, max_length=8))
    except DecodeError:
        return None
    if type(value) is not dict or list(value) != ["sig", "body", "signer"]:
        return None
    parts = (value["sig"], value["body"], value["signer"])
    return parts if [type(p) for p in parts] == [bytes, bytes, str] else None


def _generic_envelope(block: bytes) -> tuple[bytes, bytes, list[bytes]] | None:
    try:
        value = dagcbor.reference_decode(block, Limits(max_size=1 << 20, max_depth=2, max_length=16))
    except DecodeError:
        return None
    if type(value) is not dict or list(value) != ["c", "n", "s", "v"] or value["v"] != 1 \
            or type(value["v"]) is not int or type(value["s"]) is not list:
        return None
    parts = (value["c"], value["n"], value["s"])
    if type(parts[0]) is not bytes or type(parts[1]) is not bytes or \
            any(type(s) is not bytes for s in parts[2]):
        return None
    return parts


def test_fixed_shape_fast_paths_read_what_the_reference_reads() -> None:
    signed, block = _sealed_sample()
    assert fast.signed_parts(signed) == _generic_wrapper(signed) is not None
    assert fast.envelope_parts(block) == _generic_envelope(block) is not None
    for other in (b"", b"\xa0", dagcbor.encode({"sig": b"x", "body": b"y"}), signed + b"\x00",
                  dagcbor.encode({"c": b"", "n": b"", "s": [b"a"] * 17, "v": 1}),
                  dagcbor.encode({"c": b"", "n": b"", "s": [], "v": 2}), bytearray(signed)):
        assert fast.signed_parts(other) is None
        assert fast.envelope_parts(other) is None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fixed_shape_fast_paths_never_accept_what_the_reference_refuses(data: st.DataObject) -> None:
    # Mutate a real wrapper and envelope: the fast path either declines (None:
    # the general decoder then decides) or returns exactly the reference's parts.
    signed, block = _sealed_sample()
    for raw, fast_read, reference in ((signed, fast.signed_parts, _generic_wrapper),
                                      (block, fast.envelope_parts, _generic_envelope)):
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(buf) - 1))
            action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
            if action == "flip":
                buf[i] ^= data.draw(st.integers(1, 255))
            elif action == "cut":
                del buf[i:]
                if not buf:
                    buf = bytearray(b"\x00")
            elif action == "insert":
                buf.insert(i, data.draw(st.integers(0, 255)))
            elif len(buf) > 1:
                del buf[i]
        mutated = bytes(buf)
        got = fast_read(mutated)
        assert got is None or got == reference(mutated)
