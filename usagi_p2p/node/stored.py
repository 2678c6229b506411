"""How ledger.db stores a signed document's bytes (``documents.signed``): deflated
with a preset dictionary (docs/scale.md, "Disk").

The ledger keeps every signed document in plaintext so that it can be shown
and verified without decrypting its block again; at 100k documents those bytes
(~620 a document) were the largest part of ledger.db. DAG-CBOR repeats the same
map keys in every document, and each document names its two parties by DIDs of
56 characters, one of them the row's ``partner``. Deflate in the zlib format
(RFC 1950/1951: its Adler-32 finds a damaged value, which deflate alone would
turn into other bytes) with a dictionary of the keys and that DID stores them
in ~370 bytes:

* a stored value is either the signed document as received (its first byte a
  CBOR map's, 0xa0-0xbf: rows written before schema step 8, or a document
  that does not shrink), or ``0x00`` followed by the zlib stream;
* the dictionary of ``0x00`` is :data:`_DICTIONARY` followed by ``x8`` and the
  row's partner DID: a value once stored never changes meaning, so neither do
  these bytes (a new dictionary would take a new first byte);
* :func:`unpack` is the exact inverse: what a reader gets is the signed
  document, byte for byte (its digest and signature still verify).
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["pack", "unpack"]

#: The first byte of a deflated value (a signed document starts with a map's, 0xa0-0xbf).
_DEFLATED: Final = 0x00
#: Deflate level 6 in a 2 KiB window (the dictionary and most of a document)
#: with a small hash table: a compressor's setup is most of its cost for values
#: this short, ~30 us a document here against ~100 us with zlib's defaults, for
#: the same size. (Inflating accepts any window; the stored format does not
#: depend on these.)
_LEVEL: Final = 6
_WINDOW_BITS: Final = 11
_MEMORY_LEVEL: Final = 4
#: What deflate may refer back to before a document's first byte: text strings
#: as DAG-CBOR encodes them (a head byte, then the text), the keys of the
#: signed wrapper, of documents (docs/spec.md sections 3-5) and of their lines,
#: the kinds, common values. Deflate finds a match anywhere in it; the nearest
#: bytes (the end) cost the fewest bits, so the partner's DID comes last.
_DICTIONARY: Final = b"".join(
    bytes([0x60 + len(text)]) + text for text in (
        b"tax", b"rate", b"amount", b"subtotal", b"total", b"due", b"note", b"ext",
        b"parties", b"name", b"address", b"delivery", b"payment", b"valid_until",
        b"response", b"reject", b"accept", b"thread", b"prev", b"invoice",
        b"delivery_note", b"order_response", b"order", b"quote", b"JPY", b"currency",
        b"ref", b"pcs", b"unit", b"unit_price", b"qty", b"text", b"lines", b"kind",
        b"issued_at", b"from", b"to", b"v", b"body", b"sig")) + b"x8did:key:z6Mk"


def _dictionary(partner: str) -> bytes:
    return _DICTIONARY + b"x8" + partner.encode()


def pack(signed: bytes, partner: str) -> bytes:
    """``signed`` as ledger.db stores it in the row of ``partner`` (a DID)."""
    deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WINDOW_BITS, _MEMORY_LEVEL,
                               zlib.Z_DEFAULT_STRATEGY, _dictionary(partner))
    packed = bytes([_DEFLATED]) + deflate.compress(signed) + deflate.flush()
    return packed if len(packed) < len(signed) else signed


def unpack(stored: bytes, partner: str) -> bytes:
    """The signed document a ``documents.signed`` value holds (see :func:`pack`)."""
    if not stored or stored[0] != _DEFLATED:
        return stored
    inflate = zlib.decompressobj(15, zdict=_dictionary(partner))
    try:
        signed = inflate.decompress(stored[1:]) + inflate.flush()
    except zlib.error as exc:
        raise ValueError(f"a stored document is damaged: {exc}") from exc
    if not inflate.eof or inflate.unused_data:
        raise ValueError("a stored document is damaged: its stream ends early or late")
    return signed
