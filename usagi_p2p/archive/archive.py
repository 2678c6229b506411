"""Sealed CAR archives of a node's trade history (docs/archive.md; docs/spec.md, "Archive").

One archive is one CAR v1 file. It is cut into *pages* of at most
:data:`PAGE_ENTRIES` documents; each page is written as::

    document envelopes …   (the blocks already in the store, unchanged)
    ack bundles …          one per partner on the page, sealed to [node, partner]
    partner lists …        last page only, past 1,000 partners, sealed to [node]
    manifest page          signed (label "manifest") by the node, sealed to the node only
    index                  clear DAG-CBOR linking all of the above and the previous index

The last index is the CAR's single root (CAR v1 readers do not need the root
first; the header is rewritten once the root is known, its length is fixed).
Pages are written as the ledger is read, so export, verify and import hold
one page at a time whatever the history's size.

Without keys :func:`verify_archive` checks framing, every block's hash, that
every block is linked by exactly the index that closes its page, the index
chain and the root. With the node's identity it also opens every manifest
page, document and ack, checks signatures, ack digests, page chain and
thread chains, in worker processes for large archives (the parent chains
the pages and names the same first failure as one pass would).
:func:`import_archive` runs the same checks, then restores the ledger
(``INSERT OR IGNORE``: re-import changes nothing).

A damaged or forged archive (framing, a hash, the index or manifest chain, a
manifest that does not open) fails as a whole. A sound archive holding a
document that does not verify (it does not open, its ack does not check, or
it breaks its thread, e.g. a reply another partner hung on this thread before
the node refused such replies) is *partial*: verify reports each such
document (:class:`Quarantined`), and import restores everything else and
keeps those apart in the ledger's ``quarantine`` table. No single document
makes an archive unrestorable.

The work is in three modules, one per direction: :mod:`.export` (the ledger's
snapshot to a CAR), :mod:`.verify` (the checks, keyless and keyed, in worker
processes for large archives) and :mod:`.restore` (verify, then the ledger's
restore); the structures themselves are :mod:`.structures`. This module names the public
operations in one place.

Errors::

    UsagiError
    └── NodeError
        └── ArchiveError          "archive_invalid"  (names the first failing CID)
            └── ForeignArchiveError "archive_foreign" (not this node's archive)
"""

from __future__ import annotations

from .export import ExportReport, export_archive
from .restore import RESTORED_UNACKED, import_archive
from .structures import ArchiveError, ForeignArchiveError
from .verify import Quarantined, VerifyReport, iter_pages, verify_archive

__all__ = ["ArchiveError", "ForeignArchiveError", "ExportReport", "VerifyReport", "Quarantined",
           "export_archive", "verify_archive", "import_archive", "iter_pages", "RESTORED_UNACKED"]
