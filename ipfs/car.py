"""Streaming CAR v1 read and write (docs/car.md; CARv1 spec, fixtures/SPEC-NOTES.md §4).

Framing (CARv1 §"Format description")::

    varint(len(H)) | H                  H = canonical DAG-CBOR {roots: [&Any], version: 1}
    varint(len(C)+len(D)) | C | D       one section per block; C = binary CID, D = block

* :class:`CARParser` is sans-io (like h11): bytes in through ``feed``, finished
  ``(CID, block)`` sections out. It never holds more than one section plus the
  chunk being fed, and checks every declared length against a limit before it
  waits for (and so buffers) the bytes.
* :class:`CARReader` drives the parser from a binary file, :class:`AsyncCARReader`
  and :func:`read_car_stream` from an async iterable of chunks.
* :class:`CARWriter` writes a file; :func:`encode_header` / :func:`encode_section`
  are the pure framing functions it uses.

Policies where the spec leaves room (SPEC-NOTES §4.2-4.4):

* Empty roots: the spec says "one or more" but lists the count as unresolved.
  Reading accepts ``roots: []`` by default (like js-car; codec-fixtures'
  ``fixtures.car`` has it); ``allow_empty_roots=False`` refuses it (like go-car).
  The writer always writes at least one root.
* Zero-length sections are not CARv1 and are a :class:`CARError` by default;
  ``zero_length_as_eof=True`` (go-car's ``ZeroLengthSectionAsEOF``) ends the
  data there and ignores the padding that follows.
* CIDv0 and CIDv1 are both accepted in roots and sections.
* The writer does not deduplicate: a set of seen CIDs would grow with the file,
  and the layout (order, duplicates) is the caller's choice. Callers dedupe.
* Every header and length varint is minimal and the header canonical, so a file
  read and written back in the same order is byte-identical.

Errors (all carry the absolute byte offset where the input broke)::

    UsagiError
    ├── CARError                "car_malformed"
    │   ├── CARVersionError     "car_unsupported_version"
    │   ├── CARTruncatedError   "car_truncated"
    │   └── CARLimitError       "car_limit_exceeded"
    └── CIDMismatchError        "cid_mismatch" (kernel): a block does not hash to its CID
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from typing import Any, Final, Protocol

from kernel import dagcbor
from kernel.cid import CID, DAG_CBOR, decode_varint, encode_varint
from kernel.errors import CIDMismatchError, LimitExceededError, UsagiError

__all__ = [
    "DEFAULT_MAX_HEADER",
    "DEFAULT_MAX_SECTION",
    "CARError",
    "CARVersionError",
    "CARTruncatedError",
    "CARLimitError",
    "encode_header",
    "encode_section",
    "CARParser",
    "CARReader",
    "AsyncCARReader",
    "read_car_stream",
    "CARWriter",
]

#: Largest header accepted (bytes after the length varint).
DEFAULT_MAX_HEADER: Final = 1 << 16
#: Largest section accepted: a 1 MiB block (our block limit) plus room for its CID.
DEFAULT_MAX_SECTION: Final = (1 << 20) + 1024
#: Bytes read from a file or expected per chunk when reading.
DEFAULT_CHUNK: Final = 1 << 16

_MAX_VARINT: Final = 9  # multiformats unsigned-varint: at most 9 bytes


class CARError(UsagiError):
    """The data is not a well-formed CAR v1 stream."""

    code = "car_malformed"


class CARVersionError(CARError):
    """The CAR version is not supported (only CAR v1 is)."""

    code = "car_unsupported_version"


class CARTruncatedError(CARError):
    """The CAR stream ended inside its header or a section."""

    code = "car_truncated"


class CARLimitError(CARError):
    """A CAR header or section is larger than the limit allows."""

    code = "car_limit_exceeded"


def _reason(exc: UsagiError) -> str:
    # Kernel errors name offsets relative to the slice we handed them; we name
    # the absolute offset ourselves, so drop theirs from the text.
    text = str(exc)
    if exc.offset is not None:
        text = text.removesuffix(f" (at byte {exc.offset})")
    return text


def encode_header(roots: Sequence[CID]) -> bytes:
    """The framed header: varint length, then canonical DAG-CBOR ``{roots, version: 1}``.

    Accepts an empty ``roots`` (to reproduce files such as ``fixtures.car``);
    :class:`CARWriter` refuses one.
    """
    body = dagcbor.encode({"roots": list(roots), "version": 1})
    return encode_varint(len(body)) + body


def encode_section(cid: CID, block: bytes) -> bytes:
    """One framed section: ``varint(len(C)+len(D)) | C | D`` with the binary CID."""
    return encode_varint(len(cid.raw) + len(block)) + cid.raw + block


class CARParser:
    """Sans-io CAR v1 parser: ``feed`` bytes, get back completed ``(CID, block)`` sections.

    ``offset`` is the number of input bytes consumed so far, i.e. the absolute
    offset of the next header or section not yet complete. Call ``finish`` at
    the end of input: it raises :class:`CARTruncatedError` if any bytes of an
    incomplete frame remain (a dangling varint byte counts) or no header came.

    When a frame fails after others in the same ``feed`` completed, those are
    returned first and the error is raised by the next ``feed`` or ``finish``,
    so a caller sees the same blocks however the input was chunked. Once
    failed, the parser keeps raising the same error.
    """

    def __init__(
        self,
        *,
        max_header: int = DEFAULT_MAX_HEADER,
        max_section: int = DEFAULT_MAX_SECTION,
        verify: bool = True,
        allow_empty_roots: bool = True,
        zero_length_as_eof: bool = False,
    ) -> None:
        self.max_header = max_header
        self.max_section = max_section
        self.verify = verify
        self.allow_empty_roots = allow_empty_roots
        self.zero_length_as_eof = zero_length_as_eof
        self.header_read = False
        self.roots: list[CID] = []
        self.version: int | None = None
        self.offset = 0
        self.eof = False  # a zero-length section ended the data (zero_length_as_eof)
        self._buf = bytearray()
        self._error: UsagiError | None = None

    def feed(self, data: bytes) -> list[tuple[CID, bytes]]:
        """Add input; return the sections it completed, in order."""
        if self._error is not None:
            raise self._error
        if self.eof:
            return []  # go-car's ZeroLengthSectionAsEOF: the padding is not read
        self._buf += data
        out: list[tuple[CID, bytes]] = []
        pos = 0
        try:
            with memoryview(self._buf) as view:
                while (end := self._step(view, pos, out)) is not None:
                    pos = end
        except UsagiError as exc:
            # The traceback still holds slices of the buffer, so it cannot be
            # resized; drop it instead (a failed parser reads nothing more).
            self._error = exc
            self._buf = bytearray()
            self.offset += pos
            if not out:
                raise
            return out
        # Keep only the incomplete frame: at most one section plus this chunk.
        del self._buf[:pos]
        self.offset += pos
        return out

    def finish(self) -> None:
        """Declare the end of input; raise if it ended inside a frame or before the header."""
        if self._error is not None:
            raise self._error
        if self.eof:
            return
        if self._buf or not self.header_read:
            what = "section" if self.header_read else "header"
            with memoryview(self._buf) as view:
                try:
                    length, body = self._varint(view, 0)
                    text = f"{what} declares {length} bytes but only {len(view) - body} remain"
                except CARTruncatedError:
                    text = f"input ends inside the {what} length varint"
            self._error = CARTruncatedError(text, offset=self.offset)
            raise self._error

    # -- internals ----------------------------------------------------------

    def _varint(self, view: memoryview, pos: int) -> tuple[int, int]:
        """Decode the varint at ``pos``; CARTruncatedError if it is not complete yet."""
        stop = min(len(view), pos + _MAX_VARINT)
        if all(view[i] & 0x80 for i in range(pos, stop)) and stop - pos < _MAX_VARINT:
            raise CARTruncatedError("incomplete varint", offset=self.offset + pos)
        try:
            return decode_varint(view, pos)
        except UsagiError as exc:
            raise CARError(f"bad length varint: {_reason(exc)}", offset=self.offset + pos) from None

    def _step(self, view: memoryview, pos: int, out: list[tuple[CID, bytes]]) -> int | None:
        """Parse one frame at ``pos``; return the offset after it, or None to wait for more."""
        if self.eof or pos >= len(view):
            return None
        at = self.offset + pos
        try:
            length, body = self._varint(view, pos)
        except CARTruncatedError:
            return None
        if not self.header_read:
            # The limit is checked before waiting, so a varint declaring
            # 200 GiB (badheaderlength.car) fails here, not in an allocation.
            if length > self.max_header:
                raise CARLimitError(
                    f"header of {length} bytes (limit {self.max_header})", offset=at
                )
            if body + length > len(view):
                return None
            self._read_header(view[body : body + length], at)
            return body + length
        if length == 0:
            if self.zero_length_as_eof:
                self.eof = True
                return len(view)
            raise CARError("zero-length section (not valid CAR v1)", offset=at)
        if length > self.max_section:
            raise CARLimitError(f"section of {length} bytes (limit {self.max_section})", offset=at)
        if body + length > len(view):
            return None
        out.append(self._read_section(view[body : body + length], self.offset + body, at))
        return body + length

    def _read_header(self, data: memoryview, at: int) -> None:
        limits = dagcbor.Limits(max_size=self.max_header, max_depth=8, max_length=self.max_header)
        try:
            header = dagcbor.decode(data, limits)
        except LimitExceededError as exc:
            raise CARLimitError(f"header: {_reason(exc)}", offset=at) from None
        except UsagiError as exc:
            raise CARError(f"header is not canonical DAG-CBOR: {_reason(exc)}", offset=at) from None
        if type(header) is not dict:
            raise CARError(f"header is a {type(header).__name__}, not a map", offset=at)
        version = header.get("version")
        if type(version) is not int:
            raise CARError("header has no integer 'version'", offset=at)
        if version != 1:
            # Checked before the other fields: {version: 2} is the CARv2 pragma.
            raise CARVersionError(f"unsupported CAR version {version}", offset=at)
        if set(header) != {"roots", "version"}:
            fields = ", ".join(sorted(header))
            raise CARError(
                f"header fields must be exactly roots, version (got {fields})", offset=at
            )
        roots = header["roots"]
        if type(roots) is not list or not all(type(r) is CID for r in roots):
            raise CARError("header 'roots' is not a list of CID links", offset=at)
        if not roots and not self.allow_empty_roots:
            raise CARError("header has no roots", offset=at)
        self.roots = roots
        self.version = version
        self.header_read = True

    def _read_section(self, data: memoryview, body_at: int, at: int) -> tuple[CID, bytes]:
        try:
            cid, end = CID.read(data)
        except UsagiError as exc:
            where = body_at + (exc.offset or 0)
            raise CARError(f"bad section CID: {_reason(exc)}", offset=where) from None
        block = bytes(data[end:])
        if self.verify:
            try:
                cid.verify(block)
            except CIDMismatchError as exc:
                raise CIDMismatchError(_reason(exc), offset=at) from None
        return cid, block


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class CARReader:
    """Read a CAR v1 file object in chunks; iterate for verified ``(CID, block)``.

    The header is read on construction (``roots``, ``version``). Memory stays
    bounded by one section plus one chunk whatever the file size. Iteration
    raises at the end if the file is truncated. Keyword options go to
    :class:`CARParser`.
    """

    def __init__(self, fp: _Readable, *, chunk_size: int = DEFAULT_CHUNK, **options: Any) -> None:
        self._fp = fp
        self._chunk_size = chunk_size
        self._parser = CARParser(**options)
        self._pending: deque[tuple[CID, bytes]] = deque()
        self._done = False
        while not self._parser.header_read and self._fill():
            pass

    @property
    def roots(self) -> list[CID]:
        return self._parser.roots

    @property
    def version(self) -> int:
        return 1

    def _fill(self) -> bool:
        """Read one chunk into the parser; False at end of input (after ``finish``)."""
        if self._done:
            return False
        chunk = self._fp.read(self._chunk_size)
        if not chunk:
            self._done = True
            self._parser.finish()
            return False
        self._pending.extend(self._parser.feed(chunk))
        return True

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        while True:
            while self._pending:
                yield self._pending.popleft()
            if not self._fill() and not self._pending:
                return


class AsyncCARReader:
    """Read CAR v1 from an async iterable of byte chunks (an HTTP body, a file reader).

    ``roots = await reader.read_header()``, then ``async for cid, block in reader``
    (iteration reads the header itself if it was not read). Keyword options go
    to :class:`CARParser`.
    """

    def __init__(self, chunks: AsyncIterable[bytes], **options: Any) -> None:
        self._chunks = chunks.__aiter__()
        self._parser = CARParser(**options)
        self._pending: deque[tuple[CID, bytes]] = deque()
        self._done = False

    @property
    def roots(self) -> list[CID]:
        return self._parser.roots

    async def _fill(self) -> bool:
        if self._done:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._done = True
            self._parser.finish()
            return False
        self._pending.extend(self._parser.feed(bytes(chunk)))
        return True

    async def read_header(self) -> list[CID]:
        """Read until the header is complete; return the roots."""
        while not self._parser.header_read and await self._fill():
            pass
        return self._parser.roots

    async def __aiter__(self) -> AsyncIterator[tuple[CID, bytes]]:
        await self.read_header()
        while True:
            while self._pending:
                yield self._pending.popleft()
            if not await self._fill() and not self._pending:
                return


async def read_car_stream(
    chunks: AsyncIterable[bytes], **options: Any
) -> AsyncIterator[tuple[CID, bytes]]:
    """Yield the verified ``(CID, block)`` sections of a CAR v1 stream (roots discarded).

    Use :class:`AsyncCARReader` when the roots are needed.
    """
    async for section in AsyncCARReader(chunks, **options):
        yield section


class CARWriter:
    """Write a CAR v1 file: the header at construction, then one section per ``write``.

    The writer does not deduplicate (see the module docstring); it refuses an
    empty ``roots`` (ValueError) and sections or headers over the read limits
    (:class:`CARLimitError`), so what it writes our reader accepts.
    """

    def __init__(
        self,
        fp: _Writable,
        roots: Sequence[CID],
        *,
        max_header: int = DEFAULT_MAX_HEADER,
        max_section: int = DEFAULT_MAX_SECTION,
    ) -> None:
        if not roots:
            raise ValueError("a CAR v1 file needs at least one root")
        header = encode_header(roots)
        if len(header) > max_header:
            raise CARLimitError(f"header of {len(header)} bytes (limit {max_header})")
        self._fp = fp
        self._max_section = max_section
        self.roots = list(roots)
        self.count = 0
        fp.write(header)
        self.bytes_written = len(header)

    def write(self, cid: CID, block: bytes, verify: bool = True) -> None:
        """Append one section; with ``verify`` the block must hash to ``cid``."""
        if verify:
            cid.verify(block)
        length = len(cid.raw) + len(block)
        if length > self._max_section:
            raise CARLimitError(f"section of {length} bytes (limit {self._max_section})")
        prefix = encode_varint(length) + cid.raw
        # Two writes instead of one concatenation: a 1 MiB block is not copied.
        self._fp.write(prefix)
        self._fp.write(block)
        self.bytes_written += len(prefix) + len(block)
        self.count += 1

    def write_block(self, block: bytes, codec: int = DAG_CBOR) -> CID:
        """Append ``block`` under its CIDv1 (sha2-256, ``codec``); return the CID."""
        cid = CID.for_block(block, codec)
        self.write(cid, block, verify=False)
        return cid
