"""One owner per database (issue 15): only usagi_p2p/node/ledger.py (with its schema,
usagi_p2p/node/schema.py) states SQL on ledger.db, and only ipfs/sqlite.py on blocks.db.
Everyone else asks them (``Ledger.snapshot``, ``Ledger.restore``, the BlockStore contract)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEDGER_TABLES = ("partners", "rotations", "documents", "acks", "quarantine", "outbox",
                 "invitations", "nonces", "quota_usage", "idempotency_keys", "events",
                 "events_quiet", "webhook_cursor", "webhook_queue", "webhook_log")
WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|ALTER|CREATE|DROP)\b", re.IGNORECASE)
CONNECT = re.compile(r"\b(sqlite3|aiosqlite)\.connect\b|ATTACH DATABASE|\.ledger\.(write|db)\b")


def _sources(*packages: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
            for package in packages for p in sorted((ROOT / package).rglob("*.py"))}


def _sql_strings(text: str) -> list[str]:
    return [s for s in re.findall(r'"((?:[^"\\]|\\.)*)"', text) if WRITE.search(s)
            and re.search(r"\b(INTO|FROM|TABLE|SET)\b", s)]


def test_only_the_ledger_writes_ledger_db() -> None:
    owners = {"usagi_p2p/node/ledger.py", "usagi_p2p/node/schema.py"}
    problems = []
    for name, text in _sources("usagi_p2p").items():
        if name in owners:
            continue
        problems += [f"{name}: {m.group(0)}" for m in CONNECT.finditer(text)]
        problems += [f"{name}: {s}" for s in _sql_strings(text)
                     if any(re.search(rf"\b{t}\b", s) for t in LEDGER_TABLES)]
    assert problems == []


def test_only_the_sqlite_store_writes_blocks_db() -> None:
    problems = []
    for name, text in _sources("usagi_p2p", "ipfs").items():
        if name == "ipfs/sqlite.py":
            continue
        problems += [f"{name}: {s}" for s in _sql_strings(text) if re.search(r"\bblocks\b", s)]
        if name.startswith("ipfs/"):
            problems += [f"{name}: {m.group(0)}" for m in CONNECT.finditer(text)]
    assert problems == []


def test_the_checks_above_see_what_they_look_for() -> None:
    assert _sql_strings('x = "INSERT OR IGNORE INTO acks (cid) VALUES (?)"')
    assert CONNECT.search("await node.ledger.write([])")
    assert not _sql_strings('"the ledger cannot be written"')
