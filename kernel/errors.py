"""The one error hierarchy of usagi-p2p (docs/spec.md, section "Error codes").

Every error carries a stable ``code`` string that other implementations,
the HTTP layer and the CLI map on; the class docstring is the message a user
sees when no more specific message is given. The kernel never mentions HTTP:
the node maps codes to statuses in one table.

    UsagiError
    ├── DecodeError                  "you (or the peer) sent bytes we cannot read"
    │   ├── MalformedError           not well-formed CBOR / CID / structure
    │   ├── NonCanonicalError        well-formed but not the one canonical form
    │   └── LimitExceededError       size, depth or length over a limit
    ├── EncodeError                  a value DAG-CBOR cannot carry (float NaN, set, …)
    ├── CIDMismatchError             bytes do not hash to the CID named
    │   └── AckCIDMismatchError      an ack that names another CID than the one sent
    ├── DigestMismatchError          an ack that does not name what was sent
    ├── AckNonceMismatchError        an ack that answers another notice
    ├── NotRecipientError            no recipient slot opens with this key
    ├── DecryptionError              a slot opened but the body does not
    ├── InvalidSignatureError        an Ed25519 signature does not verify
    ├── WrongSignerError             signed by someone other than who it must be
    │   └── AckSignerError           an ack by someone other than the partner told
    ├── InvalidDocumentError         a document breaks a kernel rule
    ├── ThreadError                  a chain of documents does not hold together
    │   ├── ForeignThreadError       a link into a thread with other parties
    │   └── UnknownPrevError         a link to a document not held (yet): retry later
    ├── UnknownSenderError           the sender is not an active partner
    ├── WrongRecipientError          addressed to someone else
    ├── ReplayError                  a nonce or message seen before, differently
    ├── ExpiredError                 a time outside the allowed window
    └── StoreError / BlockTooLargeError / ... (defined by the layers above,
                                      always subclasses of UsagiError)
"""

from __future__ import annotations

__all__ = [
    "UsagiError",
    "DecodeError",
    "MalformedError",
    "NonCanonicalError",
    "LimitExceededError",
    "EncodeError",
    "CIDMismatchError",
    "DigestMismatchError",
    "AckCIDMismatchError",
    "AckNonceMismatchError",
    "NotRecipientError",
    "DecryptionError",
    "InvalidSignatureError",
    "WrongSignerError",
    "AckSignerError",
    "InvalidDocumentError",
    "ThreadError",
    "ForeignThreadError",
    "UnknownPrevError",
    "UnknownSenderError",
    "WrongRecipientError",
    "ReplayError",
    "ExpiredError",
]


class UsagiError(Exception):
    """Something went wrong in usagi-p2p."""

    code = "error"

    def __init__(self, message: str | None = None, *, offset: int | None = None) -> None:
        self.offset = offset
        text = message or (self.__doc__ or self.code).strip().splitlines()[0]
        if offset is not None:
            text = f"{text} (at byte {offset})"
        super().__init__(text)

    @property
    def message(self) -> str:
        return str(self)


class DecodeError(UsagiError):
    """The bytes could not be decoded."""

    code = "decode_error"


class MalformedError(DecodeError):
    """The bytes are not well-formed."""

    code = "malformed"


class NonCanonicalError(DecodeError):
    """The bytes are well-formed but not in the one canonical DAG-CBOR form."""

    code = "non_canonical"


class LimitExceededError(DecodeError):
    """A size, depth or length limit was exceeded."""

    code = "limit_exceeded"


class EncodeError(UsagiError):
    """The value cannot be encoded as DAG-CBOR."""

    code = "unencodable"


class CIDMismatchError(UsagiError):
    """The bytes do not hash to the CID they were fetched or announced under."""

    code = "cid_mismatch"


class DigestMismatchError(UsagiError):
    """The acknowledgement does not name the digest of what was sent: it is no receipt."""

    code = "digest_mismatch"


class AckCIDMismatchError(CIDMismatchError):
    """The acknowledgement names another CID than the one sent: it is no receipt."""

    code = "ack_cid_mismatch"


class AckNonceMismatchError(UsagiError):
    """The acknowledgement answers another notice (its nonce is not the notice's): it is no receipt."""

    code = "ack_nonce_mismatch"


class NotRecipientError(UsagiError):
    """This key is not one of the envelope's recipients."""

    code = "not_recipient"


class DecryptionError(UsagiError):
    """The envelope could not be decrypted: it was tampered with or is corrupt."""

    code = "decryption_failed"


class InvalidSignatureError(UsagiError):
    """The signature does not verify."""

    code = "invalid_signature"


class WrongSignerError(UsagiError):
    """The signature is valid but made by a key that is not allowed to sign this."""

    code = "wrong_signer"


class AckSignerError(WrongSignerError):
    """The acknowledgement is signed by someone other than the partner the notice went to."""

    code = "ack_wrong_signer"


class InvalidDocumentError(UsagiError):
    """The document breaks a kernel rule."""

    code = "invalid_document"


class ThreadError(UsagiError):
    """The documents do not form one valid thread."""

    code = "invalid_thread"


class ForeignThreadError(ThreadError):
    """The document links a document between other parties: a thread belongs to two parties only."""

    code = "foreign_thread"


class UnknownPrevError(ThreadError):
    """The document answers a document this node does not hold (yet); the sender may retry."""

    code = "unknown_prev"


class UnknownSenderError(UsagiError):
    """The sender is not a known, active partner."""

    code = "unknown_sender"


class WrongRecipientError(UsagiError):
    """The message is addressed to someone else."""

    code = "wrong_recipient"


class ReplayError(UsagiError):
    """This message was seen before."""

    code = "replay"


class ExpiredError(UsagiError):
    """The time of the message is outside the allowed window."""

    code = "expired"


#: Every code the kernel defines, for the node's mapping table and the spec test.
KERNEL_ERRORS: tuple[type[UsagiError], ...] = (
    UsagiError,
    DecodeError,
    MalformedError,
    NonCanonicalError,
    LimitExceededError,
    EncodeError,
    CIDMismatchError,
    AckCIDMismatchError,
    DigestMismatchError,
    AckNonceMismatchError,
    NotRecipientError,
    DecryptionError,
    InvalidSignatureError,
    WrongSignerError,
    AckSignerError,
    InvalidDocumentError,
    ThreadError,
    ForeignThreadError,
    UnknownPrevError,
    UnknownSenderError,
    WrongRecipientError,
    ReplayError,
    ExpiredError,
)
