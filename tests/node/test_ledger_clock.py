"""The ledger stamps rows with the clock it is given (the node's), never the wall clock."""

from __future__ import annotations

from pathlib import Path

from kernel import Identity
from kernel.cid import CID
from usagi_p2p.node.ledger import DocumentRow, Ledger

A, B = (Identity(bytes([i]) * 32).did for i in (1, 2))
NOW = 1_000_000.5  # 1970: no wall clock reads this


async def test_every_time_the_ledger_writes_is_the_clock_s(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db"), clock=lambda: NOW) as ledger:
        await ledger.add_partner(A, "Osaka", "http://127.0.0.1:1", None)
        await ledger.partner_rotated(A, B, valid_until=NOW + 10)
        cid = CID.for_block(b"block")
        row = DocumentRow(cid, "out", B, "order", cid, None, "2026-12-03T00:00:00Z", NOW,
                          "queued", None, b"\x12\x20" + b"\x01" * 32, b"signed", None)
        await ledger.record_sent_many([(row, b"\x80", b"notice")])
        await ledger.record_nonce(A, b"n" * 16, cid, b"ack")
        got = await ledger._all(
            "SELECT added_at FROM partners UNION ALL SELECT created FROM outbox "
            "UNION ALL SELECT seen_at FROM nonces")
        assert got == [(NOW,)] * 4
