"""Party identities: Ed25519 keys named by ``did:key``, X25519 derived for sealing.

Implements docs/spec.md sections "Identities" and "Signatures".

* A party is named by the W3C ``did:key`` of its Ed25519 public key:
  ``did:key:z`` + base58btc(0xed 0x01 || public key).
* Its X25519 key for sealed boxes is *derived* from the Ed25519 key with
  libsodium's ``crypto_sign_ed25519_pk_to_curve25519`` (and ``sk_to_curve25519``
  on the private side). The DID alone then says everything needed to seal to a
  party: no second key to publish, rotate or bind with a signature. The spec
  records the trade-off (one key for two uses, which libsodium documents as
  safe for this pair of primitives).
* Every signature covers ``label || 0x00 || message`` with a versioned label
  ``usagi-p2p/v1/<what>``, so a signature made for one purpose can never be
  replayed as another.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Final

from multiformats import multibase
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError, CryptoError

from .errors import InvalidSignatureError, MalformedError

__all__ = ["Identity", "Party", "LABELS", "party"]

_ED25519_PUB_MULTICODEC: Final = b"\xed\x01"
_DID_PREFIX: Final = "did:key:z"
_DID_RE: Final = re.compile(r"did:key:z[1-9A-HJ-NP-Za-km-z]{40,60}")

#: Domain-separation labels: what a signature is for. Never reuse one.
LABELS: Final = {
    "document": b"usagi-p2p/v1/document",
    "notice": b"usagi-p2p/v1/notice",
    "ack": b"usagi-p2p/v1/ack",
    "invitation": b"usagi-p2p/v1/invitation",
    "request": b"usagi-p2p/v1/http-request",
    "manifest": b"usagi-p2p/v1/manifest",
    "rotation": b"usagi-p2p/v1/key-rotation",
    "approval": b"usagi-p2p/v1/approval",
}


class Party:
    """A party as others see it: its DID and the public keys derived from it."""

    __slots__ = ("did", "public_key", "x25519_public")

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise MalformedError("an Ed25519 public key is 32 bytes")
        try:
            self.x25519_public = sodium.crypto_sign_ed25519_pk_to_curve25519(public_key)
        except (CryptoError, ValueError, RuntimeError):
            raise MalformedError("not a valid Ed25519 public key") from None
        self.public_key = public_key
        self.did = _DID_PREFIX + multibase.encode(_ED25519_PUB_MULTICODEC + public_key, "base58btc")[1:]

    @classmethod
    def from_did(cls, did: str) -> Party:
        return party(did)

    def verify(self, label: str, message: bytes, signature: bytes) -> None:
        """Raise InvalidSignatureError unless ``signature`` is this party's over ``message``."""
        if type(signature) is not bytes or len(signature) != 64:
            raise InvalidSignatureError("a signature is 64 bytes")
        try:
            sodium.crypto_sign_open(signature + LABELS[label] + b"\x00" + message, self.public_key)
        except (BadSignatureError, CryptoError, ValueError):
            raise InvalidSignatureError(f"{label} signature does not verify for {self.did}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Party) and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"Party({self.did!r})"


def party(did: object) -> Party:
    """Parse a ``did:key`` (Ed25519) into a Party; cached, DIDs are immutable."""
    known = _KNOWN.get(did) if type(did) is str else None
    if known is not None:
        return known
    if type(did) is not str or not _DID_RE.fullmatch(did):
        raise MalformedError(f"not an Ed25519 did:key: {str(did)[:80]!r}")
    return _party(did)


#: Parties already parsed (the lru_cache below holds them; this skips its key
#: building and the regex on the per-document path). Bounded like it.
_KNOWN: dict[str, Party] = {}


def _party(did: str) -> Party:
    result = _parse_party(did)
    if len(_KNOWN) >= 4096:
        _KNOWN.clear()
    _KNOWN[did] = result
    return result


@functools.lru_cache(maxsize=4096)
def _parse_party(did: str) -> Party:
    try:
        raw = multibase.decode(did[len("did:key:") :])
    except Exception:  # multibase raises several types for bad input
        raise MalformedError(f"not an Ed25519 did:key: {did[:80]!r}") from None
    if len(raw) != 34 or raw[:2] != _ED25519_PUB_MULTICODEC:
        raise MalformedError(f"not an Ed25519 did:key: {did[:80]!r}")
    result = Party(bytes(raw[2:]))
    if result.did != did:  # a non-canonical base58 spelling
        raise MalformedError(f"not the canonical did:key form: {did[:80]!r}")
    return result


class Identity:
    """A party's own secret key. Sign with it, open envelopes with it."""

    __slots__ = ("seed", "_secret", "party", "did", "_x25519_secret")

    def __init__(self, seed: bytes) -> None:
        if type(seed) is not bytes or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        self.seed = seed
        self._secret = secret
        self.party = Party(public)
        self.did: str = self.party.did
        self._x25519_secret = sodium.crypto_sign_ed25519_sk_to_curve25519(secret)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(32))

    @property
    def public_key(self) -> bytes:
        return self.party.public_key

    @property
    def x25519_public(self) -> bytes:
        return self.party.x25519_public

    @property
    def x25519_secret(self) -> bytes:
        return self._x25519_secret

    def sign(self, label: str, message: bytes) -> bytes:
        """Ed25519 signature over ``label || 0x00 || message`` (deterministic)."""
        return sodium.crypto_sign(LABELS[label] + b"\x00" + message, self._secret)[:64]

    def __repr__(self) -> str:
        return f"Identity({self.did!r})"
