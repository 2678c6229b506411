"""Content identifiers: CIDv1 (and CIDv0 for reading), unsigned varints.

Implements docs/spec.md section "CIDs" after the multiformats CID and
unsigned-varint specifications. Our own blocks are always CIDv1, sha2-256,
codec dag-cbor (0x71); raw (0x55) is accepted, and any CID read from a CAR
file or a DAG-CBOR link is kept as it is.

The text forms are parsed with ``multiformats`` (the field's library, with
its full multibase table); the hot path never touches it: a CID of our own is
``0x01 0x71 0x12 0x20 || sha256(block)`` built directly, and its base32 text is
the standard library's RFC 4648 base32. ``tests/kernel/test_cid.py`` checks
both against ``multiformats`` on every fixture.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

from .errors import CIDMismatchError, LimitExceededError, MalformedError

__all__ = ["CID", "DAG_CBOR", "RAW", "DAG_PB", "DAG_JSON", "SHA2_256", "BLAKE2B_256", "IDENTITY",
           "MAX_DIGEST", "encode_varint", "decode_varint", "is_block_cid", "as_cid"]

DAG_CBOR: Final = 0x71
RAW: Final = 0x55
DAG_PB: Final = 0x70
DAG_JSON: Final = 0x0129
SHA2_256: Final = 0x12
BLAKE2B_256: Final = 0xB220
IDENTITY: Final = 0x00

#: Identity multihashes longer than this are refused: they are data, not hashes.
MAX_IDENTITY_DIGEST: Final = 128
MAX_DIGEST: Final = 128

_V1_SHA256_DAG_CBOR: Final = b"\x01\x71\x12\x20"
_V1_SHA256_RAW: Final = b"\x01\x55\x12\x20"
#: Length of a CIDv1 / dag-cbor / sha2-256 CID in binary: 4 prefix bytes and the digest.
_BLOCK_CID_LENGTH: Final = 36


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, minimal, at most 9 bytes (63 bits)."""
    if value < 0 or value >= 1 << 63:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """Read one minimal unsigned varint at ``offset``; return (value, next offset).

    Raises MalformedError for a truncated, over-long (> 9 bytes) or non-minimal
    varint ("MUST be minimal", multiformats/unsigned-varint).
    """
    value = 0
    shift = 0
    pos = offset
    end = len(data)
    while True:
        if pos >= end:
            raise MalformedError("truncated varint", offset=offset)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - offset > 1:
                raise MalformedError("non-minimal varint", offset=offset)
            return value, pos
        shift += 7
        if pos - offset >= 9:
            raise MalformedError("varint longer than 9 bytes", offset=offset)


def _hash(code: int, data: bytes | memoryview) -> bytes:
    if code == SHA2_256:
        return hashlib.sha256(data).digest()
    if code == BLAKE2B_256:
        return hashlib.blake2b(data, digest_size=32).digest()
    if code == IDENTITY:
        return bytes(data)
    raise CIDMismatchError(f"unsupported multihash function 0x{code:x}")


class CID:
    """An immutable CID, held as its binary form.

    Build ours with :meth:`for_block`; read others with :meth:`from_bytes`,
    :meth:`read` (length unknown, as in a CAR section) or :meth:`parse` (text).
    """

    __slots__ = ("raw", "version", "codec", "hash_code", "digest", "_str")

    raw: bytes
    version: int
    codec: int
    hash_code: int
    digest: bytes

    def __init__(self, raw: bytes, version: int, codec: int, hash_code: int, digest: bytes):
        # Trusted constructor: use the class methods, which validate.
        self.raw = raw
        self.version = version
        self.codec = codec
        self.hash_code = hash_code
        self.digest = digest
        self._str: str | None = None

    # -- construction -----------------------------------------------------

    @classmethod
    def for_block(cls, block: bytes | memoryview, codec: int = DAG_CBOR) -> CID:
        """The CIDv1 (sha2-256) of ``block`` under ``codec``, built directly."""
        digest = hashlib.sha256(block).digest()
        if codec == DAG_CBOR:
            prefix = _V1_SHA256_DAG_CBOR
        elif codec == RAW:
            prefix = _V1_SHA256_RAW
        else:
            prefix = b"\x01" + encode_varint(codec) + b"\x12\x20"
        return cls(prefix + digest, 1, codec, SHA2_256, digest)

    @classmethod
    def read(cls, data: bytes | memoryview, offset: int = 0) -> tuple[CID, int]:
        """Parse a binary CID starting at ``offset``; return (cid, next offset)."""
        if (len(data) - offset >= 36 and data[offset] == 1 and data[offset + 2] == SHA2_256
                and data[offset + 3] == 0x20 and data[offset + 1] in (DAG_CBOR, RAW)):
            # CIDv1, dag-cbor or raw, sha2-256: every CID this project writes,
            # so it skips the varint walk (the test checks it against the walk).
            raw = bytes(data[offset:offset + 36])
            return cls(raw, 1, raw[1], SHA2_256, raw[4:]), offset + 36
        if len(data) - offset >= 2 and data[offset] == 0x12 and data[offset + 1] == 0x20:
            end = offset + 34
            if end > len(data):
                raise MalformedError("truncated CIDv0", offset=offset)
            raw = bytes(data[offset:end])
            return cls(raw, 0, DAG_PB, SHA2_256, raw[2:]), end
        version, pos = decode_varint(data, offset)
        if version != 1:
            raise MalformedError(f"unsupported CID version {version}", offset=offset)
        codec, pos = decode_varint(data, pos)
        hash_code, pos = decode_varint(data, pos)
        length, pos = decode_varint(data, pos)
        if length > MAX_DIGEST:
            raise LimitExceededError(f"multihash digest of {length} bytes", offset=offset)
        end = pos + length
        if end > len(data):
            raise MalformedError("truncated CID digest", offset=offset)
        if hash_code == SHA2_256 and length != 32 or hash_code == BLAKE2B_256 and length != 32:
            raise MalformedError("wrong digest length for the hash function", offset=offset)
        raw = bytes(data[offset:end])
        return cls(raw, 1, codec, hash_code, raw[end - offset - length :]), end

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> CID:
        """Parse exactly one binary CID; trailing bytes are an error."""
        cid, end = cls.read(raw)
        if end != len(raw):
            raise MalformedError("trailing bytes after CID", offset=end)
        return cid

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse a CID's text form (any multibase, or a bare CIDv0 ``Qm…``)."""
        from multiformats import CID as MFCID  # noqa: N811  (off the hot path)

        if not isinstance(text, str) or not text or len(text) > 200:
            raise MalformedError(f"not a CID: {str(text)[:80]!r}")
        if text[0] == "b" and text.islower():
            # base32 (our own form): the standard library decodes it; the
            # tests check every such parse against multiformats.
            try:
                raw = base64.b32decode(text[1:].upper() + "=" * (-(len(text) - 1) % 8))
            except (ValueError, binascii.Error):
                raise MalformedError(f"not a CID: {text[:80]!r} (bad base32)") from None
            return cls.from_bytes(raw)
        try:
            raw = bytes(MFCID.decode(text))
        except Exception as exc:  # multiformats raises several unrelated types
            raise MalformedError(f"not a CID: {text[:80]!r} ({exc})") from None
        return cls.from_bytes(raw)

    # -- behaviour --------------------------------------------------------

    def verify(self, block: bytes | memoryview) -> None:
        """Raise CIDMismatchError unless ``block`` hashes to this CID."""
        if _hash(self.hash_code, block) != self.digest:
            raise CIDMismatchError(f"block does not hash to {self}")

    def matches(self, block: bytes | memoryview) -> bool:
        try:
            self.verify(block)
        except CIDMismatchError:
            return False
        return True

    def __str__(self) -> str:
        text = self._str
        if text is None:
            if self.version == 0:
                from multiformats import multibase

                text = multibase.encode(self.raw, "base58btc")[1:]
            else:
                text = "b" + base64.b32encode(self.raw).decode("ascii").rstrip("=").lower()
            self._str = text
        return text

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"

    def __bytes__(self) -> bytes:
        return self.raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __lt__(self, other: CID) -> bool:
        return self.raw < other.raw


def is_block_cid(cid: CID) -> bool:
    """Whether ``cid`` has the one form a usagi block is named by (docs/spec.md
    section 2): CIDv1, dag-cbor, sha2-256, a 32-byte digest.

    It is the form every block store files a block under (``BlockStore.put``
    computes it), so a CID of any other form, even one the block hashes to,
    names a block that no store of ours can be asked for.
    """
    raw = cid.raw
    return len(raw) == _BLOCK_CID_LENGTH and raw[:4] == _V1_SHA256_DAG_CBOR


def as_cid(value: CID | str | bytes) -> CID:
    """Accept a CID, its text or its binary form (for APIs and the CLI)."""
    if isinstance(value, CID):
        return value
    if isinstance(value, str):
        return CID.parse(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return CID.from_bytes(bytes(value))
    raise MalformedError(f"not a CID: {type(value).__name__}")
