"""ledger.db's schema and its migrations, numbered by ``PRAGMA user_version``.

The ledger's tables (what docs/spec.md section 12 asks the node to keep;
upgrades: docs/operations.md, "Schema versions") are made by
:data:`MIGRATIONS`, applied in order by :func:`ipfs.sqlite.migrate`: a ledger
at ``user_version`` N runs the steps after the N-th, each in its own
``BEGIN IMMEDIATE`` transaction that also sets ``user_version`` to the step's
number, so a step is applied whole or not at all, and two processes opening
one ledger apply it once. A step, once released, never changes: a new schema
change is a new step at the end.

Step 1 is the schema as the node made it before there were versions (every
``CREATE … IF NOT EXISTS``, run on each open, ``user_version`` 0) together
with the columns ledgers older than that lacked: a ledger of any earlier
version, or none, comes out of it with the same tables. Step 2 makes
``nonces`` a rowid table. Step 3 adds the local API's idempotency keys
(docs/api.md, "Idempotency-Key"), step 4 the full-text index (``search``),
step 5 (:func:`_events`) the event sequence the local API streams and the
webhooks' queue and log (docs/spec.md section 11.6), step 6
(:func:`_search_queue`) takes the search index off the document's
transaction: a trigger queues each document recorded, and the node indexes
the queue in batches (usagi_p2p/node/indexing.py), step 7
(:func:`_cheaper_event_triggers`) writes document events as columns and
stamps events with the node's clock from a table, not a function, step 8
(:func:`_deflated_documents`) lets ``documents.signed`` hold a document
deflated (usagi_p2p/node/stored.py), step 9 (:func:`_search_without_positions`)
makes the search index again without positions, step 10
(:func:`_idempotency_counts`) keeps how many idempotency keys each token
holds, so a claim checks the token's quota in one lookup, not by counting.
"""

from __future__ import annotations

import sqlite3
from typing import Final

import aiosqlite

from ipfs.sqlite import Migration

__all__ = ["MIGRATIONS", "VERSION"]

_NONCES = """
CREATE TABLE IF NOT EXISTS nonces (
    sender TEXT NOT NULL,
    nonce BLOB NOT NULL,
    cid BLOB NOT NULL,
    ack BLOB NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (sender, nonce)
);
"""

_TABLES = """
CREATE TABLE IF NOT EXISTS partners (
    did TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',      -- active | suspended | removed | rotated
    added_at REAL NOT NULL,
    invitation BLOB,
    rotated_to TEXT,                            -- the partner's next key (status rotated)
    valid_until REAL                            -- end of the rotation's overlap
);
CREATE TABLE IF NOT EXISTS rotations (          -- our own key rotations
    old TEXT PRIMARY KEY,
    new TEXT NOT NULL,
    overlap_until REAL NOT NULL,
    statement BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    cid BLOB PRIMARY KEY,
    direction TEXT NOT NULL,                    -- out | in
    partner TEXT NOT NULL,
    kind TEXT NOT NULL,
    thread BLOB NOT NULL,                       -- the thread's root CID (its own for a root)
    prev BLOB,                                  -- concatenated binary CIDs, DAG-CBOR list
    ref TEXT,
    issued_at TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    status TEXT NOT NULL,                       -- queued | delivered | undelivered | rejected | received
    reason TEXT,
    digest BLOB NOT NULL,
    signed BLOB NOT NULL,
    user TEXT,
    findings TEXT                               -- plugin findings, JSON; NULL = not checked
);
CREATE INDEX IF NOT EXISTS documents_thread ON documents(thread);
CREATE INDEX IF NOT EXISTS documents_partner ON documents(partner, recorded_at);
CREATE INDEX IF NOT EXISTS documents_direction ON documents(direction, recorded_at);  -- inbox/outbox
CREATE INDEX IF NOT EXISTS documents_digest ON documents(digest);  -- one signed document, one row
CREATE TABLE IF NOT EXISTS acks (
    cid BLOB PRIMARY KEY,                       -- the document acknowledged
    raw BLOB NOT NULL,                          -- the signed ack
    status TEXT NOT NULL,
    reason TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (         -- archived documents that did not verify on import
    cid BLOB PRIMARY KEY,                       -- (docs/archive.md, "Import"); never a document
    direction TEXT NOT NULL,                    -- of the node nor of a thread; the block is kept
    partner TEXT NOT NULL,
    kind TEXT NOT NULL,
    thread BLOB NOT NULL,
    issued_at TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    code TEXT NOT NULL,                         -- why: an error code (docs/spec.md section 14)
    reason TEXT NOT NULL,
    archive BLOB NOT NULL,                      -- the root CID of the archive it came in
    quarantined_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    cid BLOB PRIMARY KEY,
    partner TEXT NOT NULL,
    notice BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',      -- pending | delivered | undelivered
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt);
CREATE TABLE IF NOT EXISTS invitations (
    nonce BLOB PRIMARY KEY,
    expires REAL NOT NULL,
    used_by TEXT
);
""" + _NONCES + """
"""

#: What each partner stored in its current quota window (docs/spec.md section 12,
#: "Quotas"), keyed by the partner's current DID. Written in the transaction
#: that records the documents, so it counts exactly what was committed.
_QUOTA = """
CREATE TABLE IF NOT EXISTS quota_usage (
    partner TEXT PRIMARY KEY,
    period_start REAL NOT NULL,                 -- start of the window (Unix seconds)
    docs INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"""

#: Columns ledgers made before the tables above lacked: (table, column, type).
_LATE_COLUMNS: Final = (("documents", "findings", "TEXT"), ("partners", "rotated_to", "TEXT"),
                        ("partners", "valid_until", "REAL"))


def _statements(script: str) -> list[str]:
    """The statements of ``script``, one by one (``executescript`` would commit
    the step's transaction before running them)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    assert not pending.strip(), pending
    return out


async def _tables(db: aiosqlite.Connection) -> None:
    """1: the tables as they were before versions, and the columns added before that."""
    for statement in _statements(_TABLES + _QUOTA):
        await db.execute(statement)
    for table, column, kind in _LATE_COLUMNS:
        columns = {row[1] for row in await db.execute_fetchall(f"PRAGMA table_info({table})")}
        if column not in columns:
            await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


async def _nonces_with_rowid(db: aiosqlite.Connection) -> None:
    """2: ``nonces`` was WITHOUT ROWID: its ~400-byte rows (the ack is kept) made
    every insert under a random nonce move rows around the B-tree (28 us of CPU
    per row against 13 us as a rowid table). Copied once, every row kept."""
    rows = list(await db.execute_fetchall(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'nonces'"))
    if rows and "WITHOUT ROWID" in str(rows[0][0]).upper():
        await db.execute("ALTER TABLE nonces RENAME TO nonces_without_rowid")
        for statement in _statements(_NONCES):
            await db.execute(statement)
        await db.execute("INSERT INTO nonces SELECT sender, nonce, cid, ack, seen_at "
                         "FROM nonces_without_rowid")
        await db.execute("DROP TABLE nonces_without_rowid")


#: The local API's idempotency keys (docs/api.md, "Idempotency-Key"): one row per
#: (token, key), claimed by one conditional INSERT; ``cid`` is set in the same
#: transaction that records the document, so a key names the one document its
#: request sent, or none.
_IDEMPOTENCY = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    token TEXT NOT NULL,                        -- the token's id (tokens.py), not its secret
    key TEXT NOT NULL,                          -- the Idempotency-Key header, as sent
    token_name TEXT NOT NULL,
    request BLOB NOT NULL,                      -- SHA-256 of the request (method, path, body)
    claim BLOB NOT NULL,                        -- who works on it now: a random value per attempt
    state TEXT NOT NULL,                        -- pending | done
    lease_until REAL NOT NULL,                  -- a pending claim older than this was abandoned
    cid BLOB,                                   -- the document sent; NULL: none yet
    status INTEGER,                             -- the answer (state done): HTTP status
    answer TEXT,                                -- and JSON body
    created_at REAL NOT NULL,
    PRIMARY KEY (token, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at);
"""


async def _idempotency_keys(db: aiosqlite.Connection) -> None:
    """3: the local API's idempotency keys, in a table of their own."""
    for statement in _statements(_IDEMPOTENCY):
        await db.execute(statement)


#: Full-text search (usagi_p2p/node/fulltext.py; docs/spec.md section 12, "Search").
#: ``search`` is an FTS5 table holding its own copy of the text it indexes (so
#: that it can be read back for snippets, and rows removed): its rowid is
#: ``search_rows.id``, an INTEGER PRIMARY KEY that VACUUM never renumbers (the
#: rowids of ``documents`` it may). ``search_pending`` lists the documents not
#: indexed yet: the node indexes them when it opens (``Ledger.index_pending``).
#: (Step 6 replaces ``search_pending`` with ``search_queue``, filled by a trigger.)
_SEARCH = """
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(ref, body, partner, party,
    tokenize = 'trigram');
CREATE TABLE IF NOT EXISTS search_rows (
    id INTEGER PRIMARY KEY,
    cid BLOB NOT NULL UNIQUE                    -- documents.cid
);
CREATE TABLE IF NOT EXISTS search_pending (     -- documents to index (backfill, reindex)
    cid BLOB PRIMARY KEY
);
"""

#: The trigram tokenizer came with SQLite 3.34.
_TRIGRAM: Final = (3, 34, 0)


async def _search_index(db: aiosqlite.Connection) -> None:
    """4: the full-text index. The documents a ledger already holds are listed in
    ``search_pending``: indexing them reads each signed document, which is work
    for the node in batches (``Ledger.index_pending``), not for one migration
    transaction that would hold the ledger for as long as it runs."""
    if sqlite3.sqlite_version_info < _TRIGRAM:
        raise sqlite3.NotSupportedError(
            f"SQLite {sqlite3.sqlite_version} has no trigram tokenizer for the search "
            "index; the node needs SQLite 3.34 or later")
    for statement in _statements(_SEARCH):
        await db.execute(statement)
    await db.execute("INSERT OR IGNORE INTO search_pending (cid) SELECT cid FROM documents")


#: The event sequence (docs/spec.md section 11.6) and what the webhooks owe.
#:
#: ``seq`` is AUTOINCREMENT: a seq is never used twice, even after every event
#: was pruned, so a client's ``Last-Event-ID`` never names a newer event. A
#: rolled-back transaction takes its seq back with it (sqlite_sequence is
#: written in the same transaction), and writers are serialized, so a reader
#: never sees seq n+1 without n: the sequence has no gaps but those pruned.
#:
#: Events are written by triggers on the rows they report, in the statement
#: that changes the row: an event exists exactly when its change is
#: committed, whichever write path made it (a document inserted ``OR IGNORE``
#: that was already there fires nothing). ``data`` holds CIDs as the hex of
#: their bytes (SQL cannot write CID text); the ledger gives them as text.
#: ``at`` is SQLite's clock (seconds since the epoch, from julianday('now'));
#: since step 7 the node's (``events_clock``).
#: ``events_quiet`` holds a row only inside a transaction that must not
#: report (an archive import restores history, it does not happen now).
_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    type TEXT NOT NULL,                         -- document.received, partner.changed, ...
    data TEXT NOT NULL                          -- JSON
);
CREATE TABLE IF NOT EXISTS events_quiet (one INTEGER PRIMARY KEY CHECK (one = 1));
CREATE TRIGGER IF NOT EXISTS events_document_added AFTER INSERT ON documents
WHEN NOT EXISTS (SELECT 1 FROM events_quiet)
BEGIN
    INSERT INTO events (at, type, data) VALUES ((julianday('now') - 2440587.5) * 86400.0,
        CASE NEW.direction WHEN 'in' THEN 'document.received' ELSE 'document.sent' END,
        json_object('cid', hex(NEW.cid), 'direction', NEW.direction, 'kind', NEW.kind,
                    'ref', NEW.ref, 'thread', hex(NEW.thread),
                    'partner', json_object('did', NEW.partner, 'name',
                        (SELECT name FROM partners WHERE did = NEW.partner)),
                    'status', NEW.status, 'reason', NEW.reason));
END;
CREATE TRIGGER IF NOT EXISTS events_document_status AFTER UPDATE OF status ON documents
WHEN NEW.status IS NOT OLD.status AND NOT EXISTS (SELECT 1 FROM events_quiet)
BEGIN
    INSERT INTO events (at, type, data) VALUES ((julianday('now') - 2440587.5) * 86400.0,
        'document.' || CASE NEW.status WHEN 'queued' THEN 'requeued' ELSE NEW.status END,
        json_object('cid', hex(NEW.cid), 'direction', NEW.direction, 'kind', NEW.kind,
                    'ref', NEW.ref, 'thread', hex(NEW.thread),
                    'partner', json_object('did', NEW.partner, 'name',
                        (SELECT name FROM partners WHERE did = NEW.partner)),
                    'status', NEW.status, 'reason', NEW.reason));
END;
CREATE TRIGGER IF NOT EXISTS events_partner_added AFTER INSERT ON partners
WHEN NOT EXISTS (SELECT 1 FROM events_quiet)
    AND NOT EXISTS (SELECT 1 FROM partners WHERE rotated_to = NEW.did)
BEGIN
    INSERT INTO events (at, type, data) VALUES ((julianday('now') - 2440587.5) * 86400.0, 'partner.added',
        json_object('did', NEW.did, 'name', NEW.name, 'endpoint', NEW.endpoint,
                    'status', NEW.status));
END;
CREATE TRIGGER IF NOT EXISTS events_partner_changed
AFTER UPDATE OF name, status, endpoint ON partners
WHEN (NEW.name IS NOT OLD.name OR NEW.status IS NOT OLD.status
      OR NEW.endpoint IS NOT OLD.endpoint) AND NOT EXISTS (SELECT 1 FROM events_quiet)
BEGIN
    INSERT INTO events (at, type, data) VALUES ((julianday('now') - 2440587.5) * 86400.0, 'partner.changed',
        json_object('did', NEW.did, 'name', NEW.name, 'endpoint', NEW.endpoint,
                    'status', NEW.status,
                    'change', CASE
                        WHEN NEW.status IS NOT OLD.status THEN
                            CASE NEW.status WHEN 'active' THEN 'resumed' ELSE NEW.status END
                        WHEN NEW.name IS NOT OLD.name THEN 'renamed'
                        ELSE 'endpoint' END,
                    'previous', json_object('name', OLD.name, 'status', OLD.status),
                    'rotated_to', NEW.rotated_to));
END;
CREATE TABLE IF NOT EXISTS webhook_cursor (     -- the last event queued for each URL
    url TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_queue (      -- deliveries owed
    url TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,         -- attempts made
    next_at REAL NOT NULL,
    PRIMARY KEY (url, seq)
);
CREATE TABLE IF NOT EXISTS webhook_log (        -- every attempt, kept as long as its event
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    url TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,                             -- the HTTP status; NULL: no answer
    at REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_log_seq ON webhook_log(seq);
"""


async def _events(db: aiosqlite.Connection) -> None:
    """5: the event sequence of the local API, its triggers, the webhooks' tables."""
    for statement in _statements(_EVENTS):
        await db.execute(statement)


#: The documents waiting for the search index (usagi_p2p/node/indexing.py).
#:
#: Indexing a document in the transaction that records it (step 4) cost the
#: exchange ~40 % of its throughput: the FTS5 insert of each row, and the
#: document's text made on the event loop. The transaction now only appends
#: the document's CID here, from a trigger, so every path that records a
#: document (sent, received, restored) queues exactly the rows it committed;
#: the node indexes the queue in batches when it is quiet, and a search
#: indexes what waits before it looks. ``id`` grows with each row, so an
#: insert lands on the table's last page (a random-key index, such as
#: ``search_pending``'s CID, would cost a page write of its own per
#: document); rows are taken out by (id, cid), so an id used again after
#: the queue emptied is never mistaken for the row that had it.
_SEARCH_QUEUE = """
CREATE TABLE IF NOT EXISTS search_queue (
    id INTEGER PRIMARY KEY,
    cid BLOB NOT NULL                           -- documents.cid
);
CREATE TRIGGER IF NOT EXISTS search_queue_document AFTER INSERT ON documents
BEGIN
    INSERT INTO search_queue (cid) VALUES (NEW.cid);
END;
"""


async def _search_queue(db: aiosqlite.Connection) -> None:
    """6: the search index's queue, filled by a trigger; ``search_pending`` moves into it."""
    for statement in _statements(_SEARCH_QUEUE):
        await db.execute(statement)
    await db.execute("INSERT INTO search_queue (cid) SELECT cid FROM search_pending")
    await db.execute("DROP TABLE search_pending")


#: Cheaper event triggers (schema step 7): document events as columns, and the
#: time from ``events_clock``.
#:
#: Step 5's triggers cost ~30 us of the SQLite thread per event (a third of
#: the receiving INSERT's cost), measured with batches of 100 received
#: documents alternated between two ledgers in one process (so that the
#: host's noise hits both): ~51 us a row with the trigger, ~21 without. What
#: costs is a trigger program that calls ``julianday('now')`` (or any other
#: non-deterministic function: ``random()`` costs the same) or builds the
#: row with ``json_object``: either alone puts the trigger at ~50 us a row.
#: The same values written to columns, with the time read from a one-row
#: table, cost ~4 us (~25 us a row). So:
#:
#: * a document event keeps its fields in columns (``data`` is '' for it),
#:   and the ledger makes the same JSON object when it reads the event
#:   (``ledger._event``): what a client or a webhook receives is unchanged,
#:   the values as they were when the change was committed (the partner's
#:   name then). Partner events (rare) keep their JSON; events written
#:   before this step keep theirs;
#: * ``at`` is read from ``events_clock``, which the ledger sets to the node's
#:   clock first in each of its write transactions (the clock every other
#:   time in the ledger comes from); a writer that does not set it (a tool on
#:   ledger.db) stamps the last time set.
_EVENT_COLUMNS: Final = (("cid", "BLOB"), ("direction", "TEXT"), ("kind", "TEXT"),
                         ("ref", "TEXT"), ("thread", "BLOB"), ("partner", "TEXT"),
                         ("partner_name", "TEXT"), ("status", "TEXT"), ("reason", "TEXT"))
_SQLITE_NOW: Final = "(julianday('now') - 2440587.5) * 86400.0"
_EVENTS_CLOCK = """
CREATE TABLE IF NOT EXISTS events_clock (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    at REAL NOT NULL                            -- seconds since the epoch
);
INSERT OR IGNORE INTO events_clock (one, at) VALUES (1, (julianday('now') - 2440587.5) * 86400.0);
"""
_DOCUMENT_EVENTS = """
DROP TRIGGER IF EXISTS events_document_added;
DROP TRIGGER IF EXISTS events_document_status;
CREATE TRIGGER events_document_added AFTER INSERT ON documents
WHEN NOT EXISTS (SELECT 1 FROM events_quiet)
BEGIN
    INSERT INTO events (at, type, data, cid, direction, kind, ref, thread, partner,
                        partner_name, status, reason)
    VALUES ((SELECT at FROM events_clock),
        CASE NEW.direction WHEN 'in' THEN 'document.received' ELSE 'document.sent' END, '',
        NEW.cid, NEW.direction, NEW.kind, NEW.ref, NEW.thread, NEW.partner,
        (SELECT name FROM partners WHERE did = NEW.partner), NEW.status, NEW.reason);
END;
CREATE TRIGGER events_document_status AFTER UPDATE OF status ON documents
WHEN NEW.status IS NOT OLD.status AND NOT EXISTS (SELECT 1 FROM events_quiet)
BEGIN
    INSERT INTO events (at, type, data, cid, direction, kind, ref, thread, partner,
                        partner_name, status, reason)
    VALUES ((SELECT at FROM events_clock),
        'document.' || CASE NEW.status WHEN 'queued' THEN 'requeued' ELSE NEW.status END, '',
        NEW.cid, NEW.direction, NEW.kind, NEW.ref, NEW.thread, NEW.partner,
        (SELECT name FROM partners WHERE did = NEW.partner), NEW.status, NEW.reason);
END;
"""


async def _cheaper_event_triggers(db: aiosqlite.Connection) -> None:
    """7: document events in columns of ``events``, every event's time from
    ``events_clock``: the four triggers made again (the partner ones as in step 5
    but for the time)."""
    columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(events)")}
    for name, kind in _EVENT_COLUMNS:
        if name not in columns:
            await db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
    for statement in _statements(_EVENTS_CLOCK) + _statements(_DOCUMENT_EVENTS):
        await db.execute(statement)
    for statement in _statements(_EVENTS):
        if statement.startswith("CREATE TRIGGER IF NOT EXISTS events_partner_"):
            name = statement.split()[5]
            assert _SQLITE_NOW in statement, name
            await db.execute(f"DROP TRIGGER IF EXISTS {name}")
            await db.execute(statement.replace(_SQLITE_NOW, "(SELECT at FROM events_clock)"))


async def _deflated_documents(db: aiosqlite.Connection) -> None:
    """8: from this step on, ``documents.signed`` may hold a signed document
    deflated with a preset dictionary (usagi_p2p/node/stored.py: ~360 bytes
    instead of ~620). Rows written before stay as they are (a reader tells the
    two apart by the first byte), so the step changes no table and rewrites no
    row: its number is what makes a program older than it refuse this ledger
    (``SchemaTooNewError``) rather than show a deflated document as garbage."""
    await db.execute("SELECT 1")


#: The search index without positions (step 9).
#:
#: With ``detail=full`` (step 4) the index kept where in its row each trigram
#: is: ~400 bytes a document, a third of ledger.db beside the documents
#: themselves, at 100k documents. ``detail=none`` keeps which rows hold each
#: trigram, ~85 bytes a document; a term's candidates are the rows that hold
#: its trigrams, and the ledger keeps those holding the term (fulltext.py,
#: ``Ledger.search``). Nor does it keep each row's size per column
#: (``columnsize=0``): that was for bm25, which ranked with positions.
_SEARCH_WITHOUT_POSITIONS = """
CREATE VIRTUAL TABLE search USING fts5(ref, body, partner, party,
    tokenize = 'trigram', detail = none, columnsize = 0);
"""


async def _search_without_positions(db: aiosqlite.Connection) -> None:
    """9: the search index made again without positions (see above). Its rows are
    not copied in this transaction (a ledger of a million documents would be
    held for minutes): every document is queued, and the node indexes the queue
    in batches as after step 4 (``Ledger.index_pending``; a search first
    indexes what waits)."""
    await db.execute("DROP TABLE search")
    for statement in _statements(_SEARCH_WITHOUT_POSITIONS):
        await db.execute(statement)
    await db.execute("DELETE FROM search_rows")
    # What waited stays queued, once.
    await db.execute("INSERT INTO search_queue (cid) SELECT cid FROM documents "
                     "WHERE cid NOT IN (SELECT cid FROM search_queue) ORDER BY rowid")


#: How many idempotency keys each token holds (step 10), kept by triggers: a
#: claim (``Ledger.claim_key``) checks the token's quota with one lookup
#: instead of counting the token's keys, up to 10,000 index entries a request.
#: An upsert that updates a key fires no INSERT trigger, so only new keys count.
_IDEMPOTENCY_COUNTS = """
CREATE TABLE IF NOT EXISTS idempotency_counts (
    token TEXT PRIMARY KEY,
    held INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS idempotency_keys_held AFTER INSERT ON idempotency_keys BEGIN
    INSERT INTO idempotency_counts (token, held) VALUES (NEW.token, 1)
        ON CONFLICT(token) DO UPDATE SET held = held + 1;
END;
CREATE TRIGGER IF NOT EXISTS idempotency_keys_dropped AFTER DELETE ON idempotency_keys BEGIN
    UPDATE idempotency_counts SET held = held - 1 WHERE token = OLD.token;
END;
"""


async def _idempotency_counts(db: aiosqlite.Connection) -> None:
    """10: each token's count of idempotency keys, kept by triggers (see above),
    filled from the keys held now."""
    for statement in _statements(_IDEMPOTENCY_COUNTS):
        await db.execute(statement)
    await db.execute("INSERT OR REPLACE INTO idempotency_counts (token, held) "
                     "SELECT token, count(*) FROM idempotency_keys GROUP BY token")


#: The ledger's migrations, in order: step N brings ``user_version`` to N.
MIGRATIONS: Final[tuple[Migration, ...]] = (_tables, _nonces_with_rowid, _idempotency_keys,
                                              _search_index, _events, _search_queue,
                                              _cheaper_event_triggers, _deflated_documents,
                                              _search_without_positions, _idempotency_counts)
#: The ``user_version`` of a ledger this code made or migrated.
VERSION: Final = len(MIGRATIONS)
