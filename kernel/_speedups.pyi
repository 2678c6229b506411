"""Types of the C codec kernel/_speedups.c (optional: absent when built without a compiler)."""

from collections.abc import Callable
from typing import Any

def configure(
    cid_type: type,
    cid_from_bytes: Callable[[bytes], Any],
    malformed: type[Exception],
    noncanonical: type[Exception],
    limit: type[Exception],
    encode_error: type[Exception],
) -> None: ...
def decode(data: bytes | memoryview, max_depth: int, max_length: int) -> Any: ...
def encode(value: Any) -> bytes: ...
def lines_ok(lines: Any) -> bool: ...
def document_ok(doc: Any, kinds: frozenset[Any]) -> bool: ...
def configure_documents(
    top_fields: frozenset[str],
    kernel_kinds: frozenset[str],
    responses: frozenset[str],
    known_parties: dict[str, Any],
    cid_type: type,
) -> None: ...
