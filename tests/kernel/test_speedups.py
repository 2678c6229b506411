"""kernel._speedups (the C codec) against kernel.dagcbor's cbor2 reference.

Two implementations of one format: the same input must give the same value
(types and map order included) or the same bytes, and bad input the same
error class. Under CI the C codec must be built (the machine has a compiler);
elsewhere these tests skip when it is absent and the reference serves alone,
and they skip under USAGI_PURE_PYTHON (CI's run of the suite on the reference).
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
from kernel.errors import DecodeError, EncodeError, MalformedError, NonCanonicalError, UsagiError

from ._support import CODEC_FIXTURES, codec_fixture_paths, require_fixtures, stable_id
from .test_dagcbor import SPEC_REJECTS, values

if os.environ.get(dagcbor.PURE_PYTHON_ENV, "") not in ("", "0"):
    assert dagcbor.IMPLEMENTATION == "python"
    pytest.skip(f"{dagcbor.PURE_PYTHON_ENV} is set: the reference serves alone", allow_module_level=True)
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
    ids=stable_id,
)
def test_encoder_same_bytes(value: Any) -> None:
    assert fast.encode(value) == dagcbor.reference_encode(value)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, {1: 2}, {b"a": 1}, 1 << 64, -(1 << 64) - 1, {1, 2}, object(), complex(1, 2),
     [[[{"a": {3}}]]], "\ud800", {"\udc00": 1}],
    ids=stable_id,
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

from kernel import _document as document  # noqa: E402

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
    "tax_category": shortish | leaf,
    "tax_rate": decimalish | leaf,
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
    good = [{"text": "M6 bolt", "qty": "100", "unit": "pcs", "unit_price": "12.50", "ref": "A-1",
             "tax_category": "S", "tax_rate": "10"},
            {"text": "x", "qty": None, "ext": {"food": {"lot": "L1", "temp": ["2", 3]}}}]
    assert fast.lines_ok(good) is True
    for bad in ({"text": " "}, {"text": "x", "qty": "1.5e3"}, {"text": "x", "ext": {"food": {"t": 2.5}}},
                {"text": "x", "colour": "red"}, {"text": "x", "unit": ""}, {"qty": "1"}, "text",
                {"text": "x", "tax_rate": 10}, {"text": "x", "tax_rate": "10%"},
                {"text": "x", "tax_category": ""}):
        assert fast.lines_ok([*good, bad]) is False
        assert python_line_problems([*good, bad])


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

    # A known field name is the interned str the Python code's literals are.
    (text_key,) = fast.decode(dagcbor.encode({"text": "x"}), 4, 16)
    assert text_key is sys.intern("text")
    # Anything else stays a plain str: interning network input would make it
    # immortal on CPython 3.12. Were the decoded key interned, interning an
    # equal string made at run time would return that very object.
    name = "zq" + os.urandom(8).hex()
    (key,) = fast.decode(dagcbor.encode({name: 1}), 4, 16)
    assert key == name
    assert sys.intern("".join([name[:3], name[3:]])) is not key


# -- one module state per instance, limits passed in, errors raised once (issue 15) --


def fresh_instance() -> Any:
    """A second, independent instance of the extension (multi-phase init: its own state)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel._speedups", fast.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module is not fast
    return module


class Recorded(Exception):
    """Counts every instance made, to see that one refusal makes one exception."""

    made: list[type[Exception]] = []

    def __init__(self, message: str | None = None, *, offset: int | None = None) -> None:
        Recorded.made.append(type(self))
        self.offset = offset
        super().__init__(message)


class RecMalformed(Recorded):
    pass


class RecNonCanonical(Recorded):
    pass


class RecLimit(Recorded):
    pass


class RecEncode(Recorded):
    pass


MIRROR = {RecMalformed: "MalformedError", RecNonCanonical: "NonCanonicalError",
          RecLimit: "LimitExceededError", RecEncode: "EncodeError"}


def recording_instance(**limits: int) -> Any:
    module = fresh_instance()
    module.configure(cid_type=CID, cid_from_bytes=CID.from_bytes, malformed=RecMalformed,
                     noncanonical=RecNonCanonical, limit_exceeded=RecLimit, encode_error=RecEncode,
                     max_nesting=limits.get("max_nesting", dagcbor.MAX_NESTING),
                     max_text=limits.get("max_text", document.MAX_TEXT),
                     max_short=limits.get("max_short", document.MAX_SHORT))
    return module


def test_an_unconfigured_instance_refuses_to_work() -> None:
    module = fresh_instance()
    for call in (lambda: module.decode(b"\x00", 4, 4), lambda: module.encode(1), lambda: module.lines_ok([])):
        with pytest.raises(RuntimeError, match="configure"):
            call()
    assert module.limits() == {"max_nesting": 0, "max_text": 0, "max_short": 0}


def test_the_limits_are_the_python_constants() -> None:
    assert fast.limits() == {"max_nesting": dagcbor.MAX_NESTING, "max_text": document.MAX_TEXT,
                             "max_short": document.MAX_SHORT}
    for bad in ({"max_text": 0}, {"max_nesting": -1}, {"max_nesting": 1 << 20}, {"max_short": "800"}):
        with pytest.raises((ValueError, TypeError)):
            fresh_instance().configure(**bad)


def test_limits_given_to_one_instance_are_the_ones_it_applies() -> None:
    small = recording_instance(max_text=10, max_short=3, max_nesting=4)
    assert small.lines_ok([{"text": "x" * 10, "unit": "pcs"}]) is True
    assert small.lines_ok([{"text": "x" * 11}]) is False
    assert small.lines_ok([{"text": "x", "unit": "pcs!"}]) is False
    assert fast.lines_ok([{"text": "x" * 11, "unit": "pcs!"}]) is True  # the kernel's own are untouched
    with pytest.raises(RecLimit):
        small.decode(b"\x81" * 5 + b"\x00", 64, 16)  # max_depth is capped at max_nesting
    small.decode(b"\x81" * 4 + b"\x00", 64, 16)
    with pytest.raises(RecEncode, match="nested too deeply"):
        small.encode([[[[[[0]]]]]])


def test_instances_do_not_share_state() -> None:
    # With C globals (single-phase init), configuring a second instance (or the
    # module in a subinterpreter) replaced the classes the kernel's raised.
    other = recording_instance()
    bad = bytes.fromhex("a2616201616102")  # keys out of order
    with pytest.raises(RecNonCanonical):
        other.decode(bad, 4, 4)
    with pytest.raises(NonCanonicalError):
        fast.decode(bad, 4, 4)
    with pytest.raises(EncodeError):
        fast.encode(math.nan)
    # The key caches are separate too: the same keys decode in both.
    data = dagcbor.encode({"text": "x", "zz-custom": 1})
    assert other.decode(data, 4, 4) == fast.decode(data, 4, 4) == {"text": "x", "zz-custom": 1}


def test_an_instance_is_collected_with_what_it_holds() -> None:
    import gc
    import weakref

    class Holder(Exception):
        pass

    module = fresh_instance()
    module.configure(malformed=Holder)
    ref = weakref.ref(Holder)
    del Holder, module
    gc.collect()
    assert ref() is None  # m_traverse/m_clear let the cycle module -> class -> ... go


@pytest.mark.parametrize(("hex_", "error", "why"), SPEC_REJECTS, ids=[c[2] for c in SPEC_REJECTS])
def test_one_refusal_makes_one_exception(hex_: str, error: type[DecodeError], why: str) -> None:
    rec = recording_instance()
    Recorded.made.clear()
    try:
        rec.decode(bytes.fromhex(hex_), dagcbor.DEFAULT_LIMITS.max_depth, dagcbor.DEFAULT_LIMITS.max_length)
    except Recorded as exc:
        assert Recorded.made == [type(exc)]
        assert MIRROR[type(exc)] == error.__name__
    except DecodeError as exc:  # raised by the kernel's CID parser, as it is
        assert Recorded.made == [] and isinstance(exc, error)
    else:
        pytest.fail("accepted")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutated_input_makes_at_most_one_exception(value: Any, data: st.DataObject) -> None:
    rec = recording_instance()
    encoded = bytearray(dagcbor.reference_encode(value))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    Recorded.made.clear()
    try:
        got: Any = rec.decode(bytes(encoded), 64, 100_000)
    except Recorded as exc:
        got = MIRROR[type(exc)]
        assert Recorded.made == [type(exc)]
    except DecodeError as exc:
        got = type(exc).__name__
        assert Recorded.made == []
    else:
        assert Recorded.made == []
    ours = outcome(fast_decode, bytes(encoded))
    assert (ours[1].__name__ if ours[0] == "error" else ours[1]) == got or same(ours[1], got)


@pytest.mark.parametrize("value", [math.nan, {1: 2}, 1 << 64, -(1 << 64) - 1, "\ud800", {"\udc00": 1},
                                   {"a": ["ok", "\U0001f600\udfff"]}, object(), [[[{"a": {3}}]]]],
                         ids=stable_id)
def test_one_encode_refusal_makes_one_exception(value: Any) -> None:
    rec = recording_instance()
    Recorded.made.clear()
    with pytest.raises(RecEncode):
        rec.encode(value)
    assert Recorded.made == [RecEncode]


@pytest.mark.parametrize("hex_", [
    "62c0af", "62c1bf", "63e08080", "63e09fbf", "63eda080", "63edbfbf", "64f08f8080", "64f4908080",
    "61f5", "61ff", "6180", "62c280c2", "63e282", "64f09f98", "62dfbf", "63efbfbf", "64f48fbfbf",
    "63ed9fbf", "64f0908080", "6a41424344454647c3a9",
])
def test_utf8_is_judged_as_python_judges_it(hex_: str) -> None:
    # overlong forms, surrogates, past U+10FFFF, stray and missing continuation bytes, and the edges
    assert_same_outcome(bytes.fromhex(hex_))


def test_in_a_subinterpreter_the_module_has_its_own_state() -> None:
    interpreters = pytest.importorskip("_xxsubinterpreters", reason="no subinterpreter API on this Python")
    script = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("kernel._speedups", {fast.__file__!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
class Mine(Exception):
    def __init__(self, message=None, *, offset=None):
        super().__init__(message)
module.configure(cid_type=type, cid_from_bytes=bytes, malformed=Mine, noncanonical=Mine,
                 limit_exceeded=Mine, encode_error=Mine, max_nesting=8)
try:
    module.decode(b"", 4, 4)
except Mine:
    pass
"""
    interp = interpreters.create()
    try:
        interpreters.run_string(interp, script)
    finally:
        interpreters.destroy(interp)
    with pytest.raises(MalformedError):  # the kernel's class, not the destroyed interpreter's
        fast.decode(b"", 4, 4)
    assert fast.limits()["max_nesting"] == dagcbor.MAX_NESTING
