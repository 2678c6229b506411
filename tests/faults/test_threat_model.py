"""Claims of docs/threat-model.md that no other test shows: what a stolen disk yields."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from usagi_p2p.node.home import Home
from usagi_p2p.node.stored import unpack

from ..node.conftest import Pair, pair  # noqa: F401  (the fixture)

SECRET = "Secret-Alloy-7731 price 98765.43"


async def _trade(p: Pair) -> None:
    result = await p.seller.send("quote", "Osaka", {"ref": "Q-tm", "lines": [{"text": SECRET}]})
    assert await p.seller.wait_for_ack(result.cid, timeout=15)


async def test_stolen_block_store_holds_no_plaintext(pair: Pair) -> None:  # noqa: F811
    await _trade(pair)
    for node in (pair.seller, pair.buyer):
        # The database and its WAL: everything a thief copying the folder gets.
        data = b"".join(p.read_bytes() for p in node.home.path.glob("blocks.db*"))
        assert SECRET.encode() not in data
        assert pair.seller.did.encode() not in data and pair.buyer.did.encode() not in data


async def test_stolen_ledger_holds_plaintext_and_partners(pair: Pair) -> None:  # noqa: F811
    """NOT protected (documented): the ledger keeps the signed plaintext of each
    opened document and the partner list, unencrypted; disk encryption is the
    operator's (docs/threat-model.md, "stolen disk")."""
    await _trade(pair)
    await pair.buyer.ledger.close()
    raw = b"".join(p.read_bytes() for p in pair.buyer.home.path.glob("ledger.db*"))
    with contextlib.closing(sqlite3.connect(pair.buyer.home.path / "ledger.db")) as db:
        stored = db.execute("SELECT partner, signed FROM documents").fetchall()
    await pair.buyer.ledger.open()
    # Deflated (usagi_p2p/node/stored.py), which hides nothing: zlib and the
    # partner's DID beside it give the plaintext back.
    assert any(SECRET.encode() in unpack(signed, partner) for partner, signed in stored)
    assert pair.seller.did.encode() in raw


def test_identity_key_at_rest_is_sealed_by_the_passphrase(tmp_path: Path) -> None:
    home = Home(tmp_path / "kanto")
    seed = bytes(range(32))
    home.create("Kanto", "correct horse battery staple", seed=seed, fast_kdf=True)
    text = home.key_path.read_text()
    assert seed.hex() not in text and "argon2id" in text
    assert home.key_path.stat().st_mode & 0o777 == 0o600
    assert home.load_identity("correct horse battery staple").did == home.load_config().did
