"""Types of the C codec kernel/_speedups.c (optional: absent when built without a compiler)."""

from collections.abc import Callable
from typing import Any

def configure(
    *,
    cid_type: type = ...,
    cid_from_bytes: Callable[[bytes], Any] = ...,
    malformed: type[Exception] = ...,
    noncanonical: type[Exception] = ...,
    limit_exceeded: type[Exception] = ...,
    encode_error: type[Exception] = ...,
    max_nesting: int = ...,
    max_text: int = ...,
    max_short: int = ...,
) -> None: ...
def limits() -> dict[str, int]: ...
def decode(data: bytes | memoryview, max_depth: int, max_length: int) -> Any: ...
def encode(value: Any) -> bytes: ...
def lines_ok(lines: Any) -> bool: ...
