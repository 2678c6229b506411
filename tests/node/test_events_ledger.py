"""The event sequence in the ledger (docs/spec.md section 11.6): each change reported once,
in the transaction that makes it; nothing reported for a change that is not committed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ipfs.blockstore import StoreError, StoreUnavailableError
from kernel.cid import CID
from usagi_p2p.node.ledger import Ledger, Restore

from .conftest import Pair, pair  # noqa: F401  (the fixture)

OLD = "did:key:z6MkOld"
NEW = "did:key:z6MkNew"


async def test_partner_changes_are_reported_once_each(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(OLD, "Osaka", "http://127.0.0.1:9", None)
        await ledger.add_partner(OLD, "Osaka", "http://127.0.0.1:9", None)  # nothing new
        await ledger.set_partner(OLD, name="Osaka Precision")
        await ledger.set_partner(OLD, status="suspended")
        await ledger.set_partner(OLD, status="suspended")  # nothing new
        await ledger.set_partner(OLD, status="active")
        await ledger.add_partner(OLD, "Osaka", "http://127.0.0.1:10", None)  # moved
        await ledger.partner_rotated(OLD, NEW, 2e9)
        events = await ledger.events(0)
        assert [(e.type, e.data["did"], e.data.get("change")) for e in events] == [
            ("partner.added", OLD, None),
            ("partner.changed", OLD, "renamed"),
            ("partner.changed", OLD, "suspended"),
            ("partner.changed", OLD, "resumed"),
            ("partner.changed", OLD, "endpoint"),
            # The new key is the same partner: a rotation, not a partner added.
            ("partner.changed", OLD, "rotated"),
        ]
        assert events[-1].data["rotated_to"] == NEW
        assert events[1].data["previous"] == {"name": "Osaka", "status": "active"}
        assert [e.seq for e in events] == list(range(1, 7))
        assert await ledger.event_range() == (1, 6)


async def test_an_import_restores_history_without_events(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.restore(Restore(partners=[(OLD, "Osaka", "http://127.0.0.1:9", "active")]))
        assert await ledger.partner(OLD) is not None
        assert await ledger.events(0) == []
        await ledger.set_partner(OLD, status="suspended")  # and the next change is news again
        assert [e.type for e in await ledger.events(0)] == ["partner.changed"]


async def test_pruned_seqs_are_never_given_again(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        for i in range(5):
            await ledger.add_partner(f"did:key:z6Mk{i}", f"P{i}", "http://127.0.0.1:9", None)
        assert await ledger.prune_events(before=0.0, keep=2) == 3
        assert [e.seq for e in await ledger.events(0)] == [4, 5]
        assert await ledger.prune_events(before=4e9, keep=10) == 2  # everything is old
        assert await ledger.event_range() == (6, 5)
        await ledger.add_partner("did:key:z6Mk9", "P9", "http://127.0.0.1:9", None)
        assert [e.seq for e in await ledger.events(0)] == [6]


async def test_a_failed_event_write_leaves_no_document(pair: Pair) -> None:  # noqa: F811
    """A fault at the event's insert: the send fails, and neither the document nor
    its notice nor any event is written."""
    seller = pair.seller
    before = await seller.ledger.events(0)
    await seller.ledger.db.execute(
        "CREATE TEMP TRIGGER fault BEFORE INSERT ON main.events "
        "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    try:
        with pytest.raises(StoreError):
            await seller.send("quote", "Osaka", {"lines": [{"text": "bolts"}]})
    finally:
        await seller.ledger.db.execute("DROP TRIGGER temp.fault")
    assert await seller.ledger.count_documents("out") == 0
    assert await seller.ledger.outbox() == []
    assert await seller.ledger.events(0) == before
    # Without the fault the same send is recorded with its one event.
    sent = await seller.send("quote", "Osaka", {"lines": [{"text": "bolts"}]})
    after = await seller.ledger.events(before[-1].seq)
    assert [(e.type, e.data["cid"]) for e in after][:1] == [("document.sent", str(sent.cid))]


async def test_a_write_locked_ledger_records_neither_change_nor_event(pair: Pair  # noqa: F811
                                                                      ) -> None:
    buyer = pair.buyer
    kanto = await buyer.ledger.find_partner("Kanto")
    assert kanto is not None
    before = await buyer.ledger.events(0)
    await buyer.ledger.db.execute("PRAGMA busy_timeout=200")
    lock = sqlite3.connect(str(buyer.home.ledger_path), isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError):
            await buyer.ledger.set_partner(kanto.did, status="suspended")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert (await buyer.ledger.partner(kanto.did)).status == "active"  # type: ignore[union-attr]
    assert await buyer.ledger.events(0) == before


def test_event_cids_are_given_as_text() -> None:
    from usagi_p2p.node.ledger import _event
    cid = CID.for_block(b"x")
    event = _event((1, 1.0, "document.sent", f'{{"cid": "{cid.raw.hex()}", "kind": "quote"}}'))
    assert event.data == {"cid": str(cid), "kind": "quote"}


async def test_document_events_read_the_same_from_columns_as_from_step_5s_json(
        tmp_path: Path) -> None:
    """Schema step 7: a document event keeps its fields in columns and is read back as
    the JSON object step 5's trigger made; events written as JSON before the step
    read as they did."""
    from usagi_p2p.node.ledger import DocumentRow

    path = tmp_path / "ledger.db"
    cid, other = CID.for_block(b"doc"), CID.for_block(b"other")
    async with Ledger(str(path)) as ledger:
        await ledger.add_partner(OLD, "Osaka", "http://127.0.0.1:9", None)
        row = DocumentRow(cid, "out", OLD, "order", cid, "PO-1", "2026-12-07T00:00:00Z", 1.0,
                          "queued", None, b"\x12\x20" + b"d" * 32, b"signed", None)
        await ledger.record_sent_many([(row, b"\x80", b"notice")])
        await ledger.set_partner(OLD, name="Osaka Precision")  # later: the event keeps "Osaka"
        await ledger.write([("UPDATE documents SET status = 'rejected', reason = 'x' "
                             "WHERE cid = ?", (cid.raw,))])
    db = sqlite3.connect(path)
    try:
        # an event as step 5's trigger wrote it, JSON with hex CIDs, before the step
        db.execute("INSERT INTO events (at, type, data) VALUES (1.0, 'document.received', ?)",
                   (json.dumps({"cid": other.raw.hex(), "direction": "in", "kind": "quote",
                                "ref": None, "thread": other.raw.hex(),
                                "partner": {"did": OLD, "name": "Osaka"},
                                "status": "received", "reason": None}),))
        db.commit()
        stored = db.execute("SELECT type, data FROM events WHERE type LIKE 'document.%' "
                            "ORDER BY seq").fetchall()
    finally:
        db.close()
    assert [data for _, data in stored[:2]] == ["", ""]  # columns, not JSON
    async with Ledger(str(path)) as ledger:
        events = [e for e in await ledger.events(0) if e.type.startswith("document.")]
    expected = {"cid": str(cid), "direction": "out", "kind": "order", "ref": "PO-1",
                "thread": str(cid), "partner": {"did": OLD, "name": "Osaka"},
                "status": "queued", "reason": None}
    assert [(e.type, e.data) for e in events] == [
        ("document.sent", expected),
        # the partner's name as it was when each change was committed
        ("document.rejected", {**expected, "status": "rejected", "reason": "x",
                               "partner": {"did": OLD, "name": "Osaka Precision"}}),
        ("document.received", {"cid": str(other), "direction": "in", "kind": "quote",
                               "ref": None, "thread": str(other),
                               "partner": {"did": OLD, "name": "Osaka"},
                               "status": "received", "reason": None}),
    ]
    # the same data, key for key and in order, as json_object wrote it
    assert list(events[0].data) == ["cid", "direction", "kind", "ref", "thread", "partner",
                                    "status", "reason"]


async def test_an_event_is_stamped_with_the_node_clock_when_its_transaction_began(
        tmp_path: Path) -> None:
    """The triggers read ``events_clock`` (schema step 7), which each write transaction
    of the ledger sets from the node's clock first; no trigger calls a function of
    SQLite's clock (one that does costs ~30 us a row: schema.py, step 7)."""
    now = [1_800_000_000.25]
    path = tmp_path / "ledger.db"
    async with Ledger(str(path), clock=lambda: now[0]) as ledger:
        await ledger.add_partner(OLD, "Osaka", "http://127.0.0.1:9", None)  # one statement
        now[0] += 60.5
        await ledger.partner_rotated(OLD, NEW, 2e9)  # a transaction of several
        assert [(e.type, e.at) for e in await ledger.events(0)] == [
            ("partner.added", 1_800_000_000.25), ("partner.changed", 1_800_000_060.75)]
    db = sqlite3.connect(path)
    try:
        triggers = [sql for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'events_%'")]
    finally:
        db.close()
    assert len(triggers) == 4
    assert all("julianday" not in sql and "events_clock" in sql for sql in triggers)
    assert not any("json_object" in sql for sql in triggers if "documents" in sql)
