"""Deterministic, strict DAG-CBOR on top of cbor2 (docs/spec.md, "DAG-CBOR").

Implements the IPLD DAG-CBOR codec spec in its strict form:

* ``encode`` always emits the one canonical form: map keys are text, ordered
  by UTF-8 length and then bytewise; integers and lengths in their shortest
  form; floats always as 64-bit; definite lengths only; links (``CID``) as
  tag 42 over ``0x00 || binary CID``.
* ``decode`` accepts exactly that form and nothing else. cbor2's C decoder
  does the parsing with duplicate keys and indefinite lengths switched off and
  a depth limit; a walk over the value then rejects what the Data Model does
  not have (undefined, simple values, other tags, NaN/Infinity, non-text keys,
  keys out of order, integers outside [-2^64, 2^64-1]); finally the value is
  encoded again and must give back the input byte for byte, which rejects
  every non-shortest argument, short float and long-form tag, and names the
  first offending byte.

The module has two implementations of one format. The functions below are
the reference, on cbor2. ``kernel/_speedups.c`` is the same codec in C, built
at install when a C compiler is present (``setup.py``; ``optional``, so an
install without one still works); when it is importable, :func:`encode` and
:func:`decode` use it, unless the environment variable ``USAGI_PURE_PYTHON``
is set to anything but ``""`` or ``"0"`` when the kernel is imported (CI runs
the whole suite once that way). The tests run both on every fixture, the
reject table and generated values and bytes, and require identical values,
bytes and error classes (tests/kernel/test_speedups.py). ``IMPLEMENTATION``
says which one is in use. The C module gets the kernel's classes and limits
from here and from kernel/_document.py through ``configure()``: each number
lives in one place, in Python.

Integers cover the full CBOR range. Text must be valid UTF-8 (cbor2's
``str_errors="strict"``). Every call takes limits (size, depth, entries per
collection); going over one raises ``LimitExceededError``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from .cid import CID
from .errors import EncodeError, LimitExceededError, MalformedError, NonCanonicalError

__all__ = ["Limits", "DEFAULT_LIMITS", "encode", "decode"]

_MAX_UINT: Final = (1 << 64) - 1
_MIN_NINT: Final = -(1 << 64)
_CBORTag = cbor2.CBORTag


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a decoder enforces before it trusts anything in the input."""

    max_size: int = 1 << 20  # bytes in one block (1 MiB)
    max_depth: int = 64  # nesting of arrays and maps
    max_length: int = 100_000  # entries in one array or map


DEFAULT_LIMITS: Final = Limits()


# Maps of the same shape come by the thousand (every line of every order has
# the same keys), so the canonical order of a key tuple is computed once.
_ORDER_CACHE: dict[tuple[Any, ...], tuple[str, ...]] = {}
_GOOD_ORDERS: set[tuple[Any, ...]] = set()
_CACHE_LIMIT: Final = 4096
#: The deepest nesting either direction ever walks, whatever a caller's
#: Limits say: encoding refuses a deeper value, decoding a deeper item.
#: (It also bounds the C codec's stack; configure() passes it there.)
MAX_NESTING: Final = 512
_MAX_CHECK_DEPTH: Final = MAX_NESTING
_PLAIN: Final = frozenset({str, bytes, bool, type(None), CID})


def _utf8_len(key: str) -> int:
    return len(key) if key.isascii() else len(key.encode("utf-8"))


def _canonical_order(keys: tuple[Any, ...]) -> tuple[str, ...]:
    order = _ORDER_CACHE.get(keys)
    if order is None:
        for key in keys:
            if type(key) is not str:
                raise EncodeError(f"map key {key!r} is not a text string")
        # UTF-8 preserves code point order, so comparing the str is comparing
        # the bytes; only the length has to be taken in UTF-8.
        order = tuple(sorted(keys, key=lambda k: (_utf8_len(k), k)))
        if len(_ORDER_CACHE) >= _CACHE_LIMIT:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[keys] = order
    return order


def _default(encoder: Any, value: Any) -> None:
    if isinstance(value, CID):
        encoder.encode(_CBORTag(42, b"\x00" + value.raw))
        return
    raise EncodeError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def _normalize_scalar(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        if value > _MAX_UINT or value < _MIN_NINT:
            raise EncodeError(f"integer {value} outside the DAG-CBOR range")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise EncodeError("NaN and Infinity are not allowed in DAG-CBOR")
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    # subclasses (IntEnum, StrEnum …) encode as their base kind
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _normalize_scalar(int(value))
    if isinstance(value, float):
        return _normalize_scalar(float(value))
    if isinstance(value, str):
        return str.__str__(value)  # the text itself: str() of a (str, Enum) is its name
    if isinstance(value, bytes):
        return bytes(value)
    raise EncodeError(f"cannot encode {kind.__name__} as DAG-CBOR")


def _normalize(value: Any, depth: int) -> Any:
    """Return ``value`` with every map in canonical key order, checking types."""
    if depth > MAX_NESTING:
        raise EncodeError("value nested too deeply")
    kind = type(value)
    if kind is dict or (kind is not list and isinstance(value, dict)):
        out = {}
        for key in _canonical_order(tuple(value)):
            item = value[key]
            if type(item) in _PLAIN:
                out[key] = item
            else:
                out[key] = _normalize(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [item if type(item) in _PLAIN else _normalize(item, depth + 1) for item in value]
    if kind in _PLAIN:
        return value
    return _normalize_scalar(value)


def reference_encode(value: Any) -> bytes:
    """Encode ``value`` as canonical DAG-CBOR (the cbor2 reference)."""
    try:
        return cbor2.dumps(_normalize(value, 0), default=_default)
    except UnicodeEncodeError:
        raise EncodeError("text is not valid Unicode (a lone surrogate?)") from None


def encode_ordered(value: Any) -> bytes:
    """Encode a value whose maps are *already* in canonical key order.

    For the kernel's own fixed structures on the hot path; the tests check
    that it agrees with :func:`encode` for every structure it is used on.
    """
    return cbor2.dumps(value, default=_default)


def _tag_hook(tag: Any, immutable: bool) -> Any:
    if tag.tag != 42:
        raise MalformedError(f"CBOR tag {tag.tag} is not allowed in DAG-CBOR (only 42)")
    payload = tag.value
    if type(payload) is not bytes:
        raise MalformedError("tag 42 must wrap a byte string")
    if not payload or payload[0] != 0:
        raise MalformedError("tag 42 payload must start with the 0x00 multibase prefix")
    return CID.from_bytes(payload[1:])


def _check(value: Any, max_length: int, depth: int = 0) -> None:
    """Reject what the IPLD Data Model does not have; check map key order.

    The depth guard also stops cycles: cbor2 resolves the shared-value tags
    28/29 into objects that may contain themselves.
    """
    if depth > _MAX_CHECK_DEPTH:
        raise LimitExceededError("nesting too deep (or a cyclic shared value, tags 28/29)")
    kind = type(value)
    if kind is dict:
        if len(value) > max_length:
            raise LimitExceededError(f"map of {len(value)} entries (limit {max_length})")
        keys = tuple(value)
        if keys not in _GOOD_ORDERS:
            _check_keys(keys)
        items: Any = value.values()
    elif kind is list:
        if len(value) > max_length:
            raise LimitExceededError(f"array of {len(value)} entries (limit {max_length})")
        items = value
    else:
        _check_scalar(value)
        return
    for item in items:
        if type(item) not in _PLAIN:
            _check(item, max_length, depth + 1)


def _check_keys(keys: tuple[Any, ...]) -> None:
    previous: tuple[int, str] | None = None
    for key in keys:
        if type(key) is not str:
            raise MalformedError(f"map key {key!r} is not a text string")
        order = (_utf8_len(key), key)
        if previous is not None and order <= previous:
            raise NonCanonicalError(f"map key {key!r} out of canonical order")
        previous = order
    if len(_GOOD_ORDERS) >= _CACHE_LIMIT:
        _GOOD_ORDERS.clear()
    _GOOD_ORDERS.add(keys)


def _check_scalar(value: Any) -> None:
    kind = type(value)
    if kind is int:
        # cbor2 turns bignum tags (2, 3) into ints; outside the range they
        # would encode back to the same tag, so the range is checked here.
        if value > _MAX_UINT or value < _MIN_NINT:
            raise MalformedError("integer outside [-2^64, 2^64-1] (bignum tags are not allowed)")
        return
    if kind is float:
        if not math.isfinite(value):
            raise MalformedError("NaN and Infinity are not allowed in DAG-CBOR")
        return
    if kind in _PLAIN:
        return
    if value is cbor2.undefined:
        raise MalformedError("undefined is not allowed in DAG-CBOR")
    if isinstance(value, cbor2.CBORSimpleValue):
        raise MalformedError(f"simple value {value.value} is not allowed in DAG-CBOR")
    raise MalformedError(
        f"{kind.__name__} is not in the IPLD Data Model (a CBOR tag other than 42?)"
    )


def reference_decode(data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode one canonical DAG-CBOR item that spans all of ``data`` (the cbor2 reference)."""
    data = bytes(data)
    if len(data) > limits.max_size:
        raise LimitExceededError(f"block of {len(data)} bytes (limit {limits.max_size})")
    if not data:
        raise MalformedError("empty input")
    try:
        value = cbor2.loads(
            data,
            tag_hook=_tag_hook,
            max_depth=limits.max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except (MalformedError, LimitExceededError, NonCanonicalError):
        raise
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__
        if isinstance(cause, MalformedError | LimitExceededError):
            raise cause from None
        text = str(exc)
        lowered = text.lower()
        if "depth" in lowered:
            raise LimitExceededError(f"nesting deeper than {limits.max_depth}") from None
        if "indefinite" in lowered:
            # Indefinite length is a non-canonical spelling only where CBOR has
            # it (strings, arrays, maps); on an integer or a tag it is not CBOR.
            if any(name in lowered for name in ("integer", "semantic tag")):
                raise MalformedError(f"malformed CBOR: {text}") from None
            raise NonCanonicalError("indefinite-length item") from None
        if "duplicate" in lowered:
            raise MalformedError(f"duplicate map key ({text})") from None
        raise MalformedError(f"malformed CBOR: {text}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MalformedError(f"malformed CBOR: {exc}") from None
    _check(value, limits.max_length)
    again = cbor2.dumps(value, default=_default)
    if again != data:
        if len(data) > len(again) and data.startswith(again):
            raise MalformedError("trailing bytes after the item", offset=len(again))
        offset = next(
            (i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b),
            min(len(again), len(data)),
        )
        raise NonCanonicalError("not the canonical DAG-CBOR encoding", offset=offset)
    return value


# -- the implementation in use ------------------------------------------------

#: Set (to anything but "" or "0") before the kernel is imported, the kernel
#: runs on the pure-Python codec and rules even where the C module is built.
PURE_PYTHON_ENV: Final = "USAGI_PURE_PYTHON"

if os.environ.get(PURE_PYTHON_ENV, "") in ("", "0"):
    try:
        from . import _speedups as _speedups  # "as": kernel/_document.py takes it from here
    except ImportError:  # built without a C compiler: the reference serves
        _speedups = None  # type: ignore[assignment]
else:
    _speedups = None  # type: ignore[assignment]
# kernel/_document.py takes the module from here (None: not in use), so one
# switch decides for the codec and the line rules alike.

if _speedups is not None:
    _speedups.configure(
        cid_type=CID,
        cid_from_bytes=CID.from_bytes,
        malformed=MalformedError,
        noncanonical=NonCanonicalError,
        limit_exceeded=LimitExceededError,
        encode_error=EncodeError,
        max_nesting=MAX_NESTING,
    )
    _fast_decode = _speedups.decode
    IMPLEMENTATION: str = "c"

    def encode(value: Any) -> bytes:
        """Encode ``value`` as canonical DAG-CBOR."""
        return _speedups.encode(value)

    #: For the kernel's own structures of plain values (no ready-made tags)
    #: whose maps are already in canonical order: the C encoder when built,
    #: else cbor2 directly (:func:`encode_ordered`).
    encode_plain = _speedups.encode

    def decode(data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
        """Decode one canonical DAG-CBOR item that spans all of ``data``."""
        if type(data) is not bytes:
            data = bytes(data)  # any buffer, contiguous or not, counted in bytes, immutable
        if len(data) > limits.max_size:
            raise LimitExceededError(f"block of {len(data)} bytes (limit {limits.max_size})")
        return _fast_decode(data, limits.max_depth, limits.max_length)

else:
    IMPLEMENTATION = "python"
    encode = reference_encode
    encode_plain = encode_ordered
    decode = reference_decode
