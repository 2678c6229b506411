"""Formats: trade documents as UBL 2.1 (Peppol BIS 3) and line tables as spreadsheets.

Pure mappings (docs/formats.md): bytes and bodies in, bodies and bytes out; no
node, no ledger, no I/O beyond the bytes given. The node's operations gather
what a mapping needs (a document and its parties, usagi_p2p.node.operations);
the faces (CLI, local API) read and write the files.

    safexml.py    reading untrusted XML: size limit, no DTD, no entities, no network
    ubl.py        the UBL vocabulary: namespaces, document types, units, parties
    ubl_export.py a document -> UBL Invoice / CreditNote / Order / OrderResponse / DespatchAdvice
    ubl_import.py a UBL document -> a document body to send (or to look at)
    sheet.py      line tables from XLSX / CSV (headers in English or Japanese), rows out
"""

from .sheet import HEADERS, MAX_COLUMNS, MAX_ROWS, read_lines, write_table
from .ubl import KINDS, Parties, Party
from .ubl_export import export_ubl
from .ubl_import import MAX_XML, Imported, import_ubl

__all__ = ["HEADERS", "KINDS", "MAX_COLUMNS", "MAX_ROWS", "MAX_XML", "Imported", "Parties",
           "Party", "export_ubl", "import_ubl", "read_lines", "write_table"]
