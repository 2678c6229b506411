"""Node-level errors and the one table mapping every error code to HTTP and exit codes.

The kernel's errors say *what* went wrong (kernel/errors.py); only here do
they meet HTTP. A peer endpoint answers ``{"error": code, "message": text}``
with the status below; the CLI exits with the listed code. The table is
docs/spec.md §14, row for row, and has a row for every code: looking up one
it lacks raises :class:`UnknownCodeError` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from kernel.errors import UsagiError

__all__ = ["NodeError", "ConfigError", "PassphraseError", "InvitationError", "PartnerError",
           "NameTakenError", "NoSuchPartnerError", "PeerError", "BodyTooLargeError",
           "OverloadedError", "DuplicateError",
           "NotFoundError", "MethodNotAllowedError", "RequestTimeoutError", "InternalError",
           "QuotaExceededError", "UnknownDocumentError", "InvalidCursorError",
           "IdempotencyKeyReusedError", "IdempotencyInProgressError", "IdempotencyKeysExhaustedError",
           "PluginConfigError", "InvalidQueryError",
           "FormatError", "MalformedInputError", "UnsafeInputError", "InputTooLargeError",
           "UnsupportedFormatError", "ExportIncompleteError", "TEMPORARY", "TABLE", "UnknownCodeError",
           "http_status",
           "exit_code"]


class NodeError(UsagiError):
    """The node could not do what was asked."""

    code = "node_error"


class ConfigError(NodeError):
    """The node's home folder or configuration is missing or invalid."""

    code = "config_error"


class PassphraseError(NodeError):
    """The passphrase does not open the identity key."""

    code = "bad_passphrase"


class InvitationError(NodeError):
    """The invitation is malformed, expired or not signed by who it names."""

    code = "invalid_invitation"


class PartnerError(NodeError):
    """No such partner, or the partner is not active."""

    code = "unknown_partner"


class NameTakenError(PartnerError):
    """Another partner already has that name: partner names are unique per node."""

    code = "name_taken"


class NoSuchPartnerError(PartnerError):
    """No partner of this node has that name or DID.

    Raised where a partner is named as the resource asked for (the local API's
    ``/api/v1/partners/{partner}``), so it is ``not_found`` (404); elsewhere an
    unknown partner stays ``unknown_partner``. A :class:`PartnerError`, so
    ``except PartnerError`` still catches it.
    """

    code = "not_found"


class PeerError(NodeError):
    """The partner's node answered with an error or could not be reached."""

    code = "peer_error"


class BodyTooLargeError(NodeError):
    """The request body, batch or block is larger than this node accepts."""

    code = "too_large"


class OverloadedError(NodeError):
    """The node is busy; retry after a moment."""

    code = "overloaded"
    #: Seconds to wait before trying again (HTTP Retry-After, docs/spec.md §11).
    retry_after: int = 1


class QuotaExceededError(NodeError):
    """The partner's quota of documents or bytes for this period is used up: retry later.

    ``retry_after``: seconds until the partner's quota window ends (docs/spec.md
    section 12, "Quotas"), sent as HTTP ``Retry-After``.
    """

    code = "quota_exceeded"

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        #: Seconds until the partner's current quota window ends (HTTP Retry-After).
        self.retry_after = retry_after


class NotFoundError(NodeError):
    """There is no such endpoint on this listener."""

    code = "not_found"


class MethodNotAllowedError(NodeError):
    """This endpoint does not answer that HTTP method."""

    code = "method_not_allowed"


class RequestTimeoutError(NodeError):
    """The request's body did not arrive in time."""

    code = "request_timeout"


class InternalError(NodeError):
    """The node failed to answer; the reason is in its log, not in the answer."""

    code = "internal_error"


class PluginConfigError(NodeError):
    """The plugin cannot be enabled or configured as asked.

    Not installed, not enabled, broken, no such setting, or settings the
    plugin refuses (docs/plugins.md, "Settings"); nothing is saved.
    """

    code = "plugin_error"


class InvalidQueryError(NodeError):
    """The search cannot be run as asked: an empty or too long query, a bad cursor or limit."""

    code = "invalid_query"


class DuplicateError(NodeError):
    """This signed document is already recorded under another envelope."""

    code = "duplicate"


class UnknownDocumentError(NodeError):
    """There is no document under that CID in this node's ledger."""

    code = "unknown_document"


class InvalidCursorError(NodeError):
    """The page cursor is not one this node gave out; start again without it."""

    code = "invalid_cursor"


class IdempotencyKeyReusedError(NodeError):
    """This Idempotency-Key was used with another request; a key names one request."""

    code = "idempotency_key_reused"


class IdempotencyInProgressError(NodeError):
    """A request with this Idempotency-Key is still being answered; retry after a moment."""

    code = "idempotency_in_progress"
    retry_after: int = 1


class IdempotencyKeysExhaustedError(NodeError):
    """This token holds as many Idempotency-Keys as the node keeps; retry once older ones expire."""

    code = "idempotency_keys_exhausted"
    retry_after: int = 60


# -- formats: UBL and spreadsheets in and out (docs/formats.md) ----------------


class FormatError(NodeError):
    """A file to import, or a document to export, cannot be converted as asked."""

    code = "format_error"


class MalformedInputError(FormatError):
    """The file is not well-formed XML, not a spreadsheet, or not a UBL document we can read."""

    code = "input_malformed"


class UnsafeInputError(FormatError):
    """The file holds what is never processed: a DTD, entities, external references, formulas."""

    code = "input_unsafe"


class InputTooLargeError(FormatError):
    """The file, or its rows, columns or lines, is over the limit (docs/formats.md, "Limits")."""

    code = "input_too_large"


class UnsupportedFormatError(FormatError):
    """No mapping for this kind, UBL document type or file type (docs/formats.md)."""

    code = "format_unsupported"


class ExportIncompleteError(FormatError):
    """The document lacks what the standard requires (a party's name, country, address);
    set it in the node's profile or the partner's ('usagi profile').

    ``missing`` names each missing field as the document would carry it
    (``parties.from.name``, ``parties.to.endpoint``, ``currency``, and
    ``due|payment_terms`` for "a due date or payment terms"), for a face that
    says it in its own words (the web UI).
    """

    code = "export_incomplete"

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


#: The reasons of a rejected ack that mean "not now" rather than "never"
#: (docs/spec.md section 11.1): the receiver keeps no record of the notice, and
#: the sender keeps it queued and sends it again later, same nonce. Every other
#: reason, and any reason not known here, is final.
TEMPORARY: Final = frozenset({"block_not_found", "store_unavailable", "store_error",
                              "unknown_prev", "overloaded"})

#: error code -> (HTTP status, CLI exit code): docs/spec.md §14, row for row
#: (tests/node/test_error_table.py). Every ``code`` of every UsagiError class is
#: here; a code that is not is a bug, and looking it up raises (no default).
_TABLE: Final[dict[str, tuple[int, int]]] = {
    # The base classes: never raised bare, listed so that every class has a row.
    "error": (400, 1),
    "node_error": (400, 1),
    "malformed": (400, 65),
    "non_canonical": (400, 65),
    "decode_error": (400, 65),
    "limit_exceeded": (413, 65),
    "too_large": (413, 65),
    "block_too_large": (413, 65),
    "unencodable": (400, 65),
    "invalid_document": (422, 65),
    "invalid_thread": (422, 1),
    "foreign_thread": (422, 1),
    "unknown_prev": (409, 75),
    "plugin_rejected": (422, 65),
    "plugin_error": (422, 1),
    "unknown_kind": (422, 65),
    "duplicate": (409, 65),
    "archive_invalid": (422, 1),
    "archive_partial": (422, 3),
    "archive_foreign": (403, 77),
    "pinning_failed": (502, 69),
    "invalid_signature": (401, 77),
    "wrong_signer": (401, 77),
    "unknown_sender": (403, 77),
    "unknown_partner": (403, 69),
    "invalid_invitation": (400, 65),
    "name_taken": (409, 65),
    "wrong_recipient": (421, 65),
    "expired": (400, 65),
    "replay": (409, 65),
    "cid_mismatch": (422, 1),
    "digest_mismatch": (422, 1),
    "ack_wrong_signer": (401, 77),
    "ack_cid_mismatch": (422, 1),
    "ack_nonce_mismatch": (422, 1),
    "not_recipient": (403, 77),
    "decryption_failed": (422, 1),
    "block_not_found": (404, 66),
    "store_unavailable": (503, 69),
    "store_error": (500, 74),
    "pinned": (500, 74),
    "car_malformed": (400, 65),
    "car_truncated": (400, 65),
    "car_unsupported_version": (400, 65),
    "car_limit_exceeded": (400, 65),
    "peer_error": (502, 69),
    "overloaded": (503, 75),
    "quota_exceeded": (429, 75),
    "not_found": (404, 66),
    "method_not_allowed": (405, 65),
    "request_timeout": (408, 75),
    "internal_error": (500, 70),
    "forbidden": (403, 77),
    "config_error": (500, 78),
    "bad_passphrase": (401, 77),
    # The local API (docs/api.md): the company's own callers.
    "unauthorized": (401, 77),
    "forbidden_scope": (403, 77),
    "not_loopback": (403, 77),
    "validation_failed": (422, 65),
    "unknown_document": (404, 66),
    "invalid_cursor": (400, 65),
    "idempotency_key_reused": (422, 65),
    "idempotency_in_progress": (409, 75),
    "idempotency_keys_exhausted": (429, 75),
    "invalid_query": (400, 64),
    # Formats: UBL and spreadsheets in and out (docs/formats.md).
    "format_error": (422, 65),
    "input_malformed": (400, 65),
    "input_unsafe": (400, 65),
    "input_too_large": (413, 65),
    "format_unsupported": (422, 65),
    "export_incomplete": (422, 65),
    # The web UI (docs/ui.md).
    "csrf_failed": (403, 77),
}


#: The table, read-only.
TABLE: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(_TABLE)


class UnknownCodeError(LookupError):
    """An error code that is not in the table: a programming error, never a peer's.

    Tests find every code (tests/node/test_error_table.py); should one slip
    through (a third-party plugin's, say), a boundary answers ``internal_error``
    and logs the code (docs/spec.md §14): the peer listener a 500
    (usagi_p2p/peer/app.py), the CLI exit 70.
    """


def _row(code: str) -> tuple[int, int]:
    try:
        return _TABLE[code]
    except KeyError:
        raise UnknownCodeError(f"error code {code!r} is not in the table of "
                               "usagi_p2p/node/errors.py (docs/spec.md §14)") from None


def http_status(code: str) -> int:
    """The HTTP status of ``code``; :class:`UnknownCodeError` if it has no row."""
    return _row(code)[0]


def exit_code(code: str) -> int:
    """The CLI exit code of ``code``; :class:`UnknownCodeError` if it has no row."""
    return _row(code)[1]
