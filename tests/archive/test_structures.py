"""The export's fast encoders give exactly the bytes of dagcbor.encode (usagi_p2p/archive/structures.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import dagcbor
from kernel.cid import CID, RAW
from kernel.errors import MalformedError
from usagi_p2p.archive.structures import (
    PAGE_TYPE,
    PARTNERS_TYPE,
    ArchiveError,
    cid_from_raw,
    encode_array,
    encode_map,
    entry_value,
    index_block,
    read_head,
    read_partner_list,
)

CIDS = [CID.for_block(bytes([i])) for i in range(8)]
text = st.text(max_size=300)  # non-ASCII and lengths across every CBOR head size up to 2 bytes


def _entry(cid: CID, direction: str, partner: str, kind: str, thread: CID, issued_at: str,
           recorded_at: str, status: str, reason: str | None, ack: int | None,
           ack_at: str | None) -> dict[str, Any]:
    """The entry as the exporter built it before: a plain map for dagcbor.encode."""
    entry: dict[str, Any] = {"cid": cid, "dir": direction, "partner": partner, "kind": kind,
                             "thread": thread, "issued_at": issued_at,
                             "recorded_at": recorded_at, "status": status}
    if reason is not None:
        entry["reason"] = reason
    if ack is not None:
        entry["ack"] = ack
        entry["ack_at"] = ack_at
    return entry


entries = st.builds(
    lambda cid, d, partner, kind, thread, issued, rec, status, reason, ack, ack_at: (
        cid, d, partner, kind, thread, issued, repr(rec), status, reason, ack,
        ack_at if ack is not None else None),
    st.sampled_from(CIDS), st.sampled_from(["out", "in"]), text, text, st.sampled_from(CIDS),
    text, st.floats(allow_nan=False, allow_infinity=False), text, st.none() | text,
    st.none() | st.integers(0, 2**64 - 1), text)


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, max_size=30))
def test_entries_encode_as_dagcbor_encode(rows: list[tuple[Any, ...]]) -> None:
    fast = [dagcbor.encode_ordered(entry_value(r[0].raw, r[1], r[2], r[3], r[4].raw, *r[5:]))
            for r in rows]
    plain = [_entry(*r) for r in rows]
    for one, entry in zip(fast, plain, strict=True):
        assert one == dagcbor.encode(entry)
    assert encode_array(fast) == dagcbor.encode(plain)


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 1000, 65536])
def test_array_heads(n: int) -> None:
    items = [dagcbor.encode(i) for i in range(n)]
    assert encode_array(items) == dagcbor.encode(list(range(n)))


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, 2**64 - 1), prev=st.none() | st.sampled_from(CIDS),
       head=st.none() | st.fixed_dictionaries({
           "count": st.integers(0, 10**9), "pages": st.integers(1, 10**6), "created_at": text,
           "partners": st.lists(st.fixed_dictionaries(
               {"did": text, "name": text, "endpoint": text, "status": text}), max_size=3)}),
       filters=st.dictionaries(st.sampled_from(["partner", "since", "until"]), text),
       acks=st.dictionaries(text, st.sampled_from(CIDS), max_size=4),
       rows=st.lists(entries, max_size=5))
def test_manifest_page_encodes_as_dagcbor_encode(seq: int, prev: CID | None,
                                                  head: dict[str, Any] | None,
                                                  filters: dict[str, str], acks: dict[str, CID],
                                                  rows: list[tuple[Any, ...]]) -> None:
    fields: dict[str, Any] = {"v": 1, "type": PAGE_TYPE, "by": "did:key:z6Mk", "seq": seq,
                              "acks": acks, "filter": filters}
    if prev is not None:
        fields["prev"] = prev
    if head is not None:
        fields["head"] = head
    fast = encode_array([dagcbor.encode_ordered(
        entry_value(r[0].raw, r[1], r[2], r[3], r[4].raw, *r[5:])) for r in rows])
    body = encode_map(fields, {"entries": fast})
    assert body == dagcbor.encode({**fields, "entries": [_entry(*r) for r in rows]})
    assert dagcbor.decode(body)["seq"] == seq  # and the strict decoder takes it


def test_encode_map_refuses_a_key_twice() -> None:
    with pytest.raises(ValueError):
        encode_map({"a": 1}, {"a": b"\x01"})


@pytest.mark.parametrize("n", [0, 1, 3, 1000, 2064])
@pytest.mark.parametrize("prev", [None, CIDS[7]])
def test_index_encodes_as_dagcbor_encode(n: int, prev: CID | None) -> None:
    blocks = [CID.for_block(i.to_bytes(4, "big")) for i in range(n)]
    index: dict[str, Any] = {"v": 1, "type": "usagi-archive/v1/index", "seq": n,
                             "manifest": CIDS[0], "blocks": blocks}
    if prev is not None:
        index["prev"] = prev
    fast = index_block(n, CIDS[0].raw, [b.raw for b in blocks], prev.raw if prev else None)
    assert fast == dagcbor.encode(index)


def test_cid_from_raw_is_cid_from_bytes() -> None:
    ours = CID.for_block(b"block")
    fast = cid_from_raw(ours.raw)
    assert (fast.raw, fast.version, fast.codec, fast.hash_code, fast.digest) == \
        (ours.raw, ours.version, ours.codec, ours.hash_code, ours.digest)
    for other in (CID.for_block(b"block", RAW),
                  CID.from_bytes(b"\x12\x20" + bytes(32))):  # raw codec, CIDv0: the slow path
        got = cid_from_raw(other.raw)
        assert (got.raw, got.version, got.codec, got.digest) == \
            (other.raw, other.version, other.codec, other.digest)
    with pytest.raises(MalformedError):
        cid_from_raw(ours.raw + b"\x00")  # trailing bytes still refused
    with pytest.raises(MalformedError):
        cid_from_raw(ours.raw[:-1])


partner = st.fixed_dictionaries({"did": text, "name": text, "endpoint": text, "status": text})
#: Anything a decoded block may hold, near the right shape and not.
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | text | st.binary(max_size=8)
    | st.sampled_from(CIDS) | st.sampled_from(["partners", "partner_lists", "v", "type", "did",
                                               PARTNERS_TYPE]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["v", "type", "partners", "partner_lists", "count", "pages",
                         "created_at", "did", "name", "endpoint", "status"]) | text,
        inner, max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(partner, min_size=1, max_size=5))
def test_a_partner_list_reads_back(partners: list[dict[str, str]]) -> None:
    value = dagcbor.decode(dagcbor.encode({"v": 1, "type": PARTNERS_TYPE, "partners": partners}))
    assert read_partner_list(CIDS[0], value) == [
        (p["did"], p["name"], p["endpoint"], p["status"]) for p in partners]
    head = {"count": 1, "pages": 1, "created_at": "t"}
    assert read_head(CIDS[0], {**head, "partners": partners}) == \
        (read_partner_list(CIDS[0], value), [])
    assert read_head(CIDS[0], {**head, "partner_lists": CIDS[1:3]}) == ([], CIDS[1:3])


@settings(max_examples=500, deadline=None)
@given(anything, anything)
def test_a_bad_head_or_partner_list_is_an_archive_error(head: Any, value: Any) -> None:
    """Whatever a block decodes to, the checks answer a list or ArchiveError."""
    for check, arg in ((read_head, head), (read_partner_list, value),
                       (read_head, {"count": 1, "pages": 1, "created_at": "t", "partners": value}),
                       (read_partner_list, {"v": 1, "type": PARTNERS_TYPE, "partners": value})):
        try:
            check(CIDS[0], arg)
        except ArchiveError as exc:
            assert exc.cid == CIDS[0]
