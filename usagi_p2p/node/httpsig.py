"""Signed HTTP requests between partners: RFC 9421 (HTTP Message Signatures), Ed25519.

docs/spec.md, "Signed requests". A partner fetching a block signs its request:

    Signature-Input: usagi=("@method" "@path" "@query");created=1763788800;nonce="…";
                     keyid="did:key:z6Mk…";alg="ed25519";tag="usagi-p2p/v1"   (one line)
    Signature: usagi=:<base64 signature>:

The signature base is built exactly as RFC 9421 section 2.5 says. One
deliberate difference: the Ed25519 signature covers the usagi label
``usagi-p2p/v1/http-request || 0x00 || signature base`` rather than the bare
base, the same domain separation as every other usagi signature, so that no
signature made for HTTP can ever be taken for a document, notice or ack.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Final

from kernel import Identity, party
from kernel.errors import ExpiredError, InvalidSignatureError, MalformedError, ReplayError

__all__ = ["sign_request", "verify_request", "ReplayGuard", "COMPONENTS"]

COMPONENTS: Final = ("@method", "@path", "@query")
LABEL: Final = "usagi"
SKEW: Final = 300.0
_INPUT_RE: Final = re.compile(
    r'^usagi=\("@method" "@path" "@query"\);created=(\d{1,12});nonce="([A-Za-z0-9_-]{8,64})";'
    r'keyid="(did:key:z[1-9A-HJ-NP-Za-km-z]{40,60})";alg="ed25519";tag="usagi-p2p/v1"$'
)
# The 64-byte signature as RFC 8941 sf-binary: standard base64 WITH padding, and
# only its canonical spelling (86 characters, the last with its 4 unused bits
# zero, then "=="): one signature, one header (spec section 11.3).
_SIG_RE: Final = re.compile(r"^usagi=:([A-Za-z0-9+/]{85}[AQgw]==):$")


def _params(created: int, nonce: str, keyid: str) -> str:
    inner = " ".join(f'"{c}"' for c in COMPONENTS)
    return (f'({inner});created={created};nonce="{nonce}";keyid="{keyid}";alg="ed25519";'
            f'tag="usagi-p2p/v1"')


def _base(method: str, path: str, query: str, params: str) -> bytes:
    lines = [
        f'"@method": {method.upper()}',
        f'"@path": {path or "/"}',
        f'"@query": ?{query}',
        f'"@signature-params": {params}',
    ]
    return "\n".join(lines).encode("utf-8")


def sign_request(identity: Identity, method: str, path: str, query: str = "", *,
                 created: int, nonce: str | None = None) -> dict[str, str]:
    """The two headers that sign this request as ``identity`` at ``created`` (Unix
    seconds: the signer's clock, which its caller reads; this module reads none)."""
    nonce = nonce or base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=")
    params = _params(created, nonce, identity.did)
    signature = identity.sign("request", _base(method, path, query, params))
    return {
        "Signature-Input": f"{LABEL}={params}",
        "Signature": f"{LABEL}=:{base64.b64encode(signature).decode()}:",
    }


class ReplayGuard:
    """The (signer, nonce) pairs of signed requests accepted in the last window.

    A signature is only accepted while ``created`` is within ``skew`` of now,
    so a pair older than that can never pass again and is forgotten. The
    caller records a pair only once the request is authorized (the signer is a
    partner and a party to the block), so strangers cannot fill it. Each
    signer has room for ``per_signer`` live pairs, so one partner filling its
    share locks out only itself; ``capacity`` bounds all signers together (the
    memory). When either is full, new requests are refused rather than a live
    pair forgotten. In memory: a restart forgets it, which leaves at most one
    window (300 s) in which a captured request could be replayed once more.
    """

    def __init__(self, skew: float = SKEW, capacity: int = 100_000,
                 per_signer: int = 10_000) -> None:
        self.skew = skew
        self.capacity = capacity
        self.per_signer = per_signer
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._held: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._seen)

    def held(self, keyid: str) -> int:
        """How many live pairs ``keyid`` has."""
        return self._held[keyid]

    def check(self, keyid: str, nonce: str, created: float, now: float) -> None:
        """Raise ReplayError if this pair was seen (or no room is left); else remember it."""
        while self._seen:
            (signer, _), oldest = next(iter(self._seen.items()))
            if oldest >= now - self.skew:
                break
            self._seen.popitem(last=False)
            self._held[signer] -= 1
            if self._held[signer] <= 0:
                del self._held[signer]
        key = (keyid, nonce)
        if key in self._seen:
            raise ReplayError("this signed request was already used (same signer and nonce)")
        if self._held[keyid] >= self.per_signer:
            raise ReplayError(f"{self.per_signer} signed requests of this signer inside the "
                              f"window already; try again later")
        if len(self._seen) >= self.capacity:
            raise ReplayError(f"{self.capacity} signed requests inside the window already; "
                              f"try again later")
        # Kept in arrival order with max(created, now): an entry is forgotten only
        # after its own 'created' has left the window (conservative, never early).
        self._seen[key] = max(created, now)
        self._held[keyid] += 1

    def check_request(self, headers: Mapping[str, str], now: float) -> None:
        """:meth:`check` for a request that :func:`verify_request` accepted."""
        match = _INPUT_RE.match(headers.get("Signature-Input", ""))
        if not match:
            raise MalformedError("unsupported Signature-Input header")
        self.check(match.group(3), match.group(2), int(match.group(1)), now)


def verify_request(headers: Mapping[str, str], method: str, path: str, query: str, *,
                   now: float, skew: float = SKEW) -> str:
    """Verify a signed request at ``now`` (the verifier's clock, read by its caller);
    return the signer's DID. Raises on any failure.

    Replays are the caller's to refuse, once it has authorized the signer
    (:meth:`ReplayGuard.check_request`).
    """
    signature_input = headers.get("Signature-Input")
    signature = headers.get("Signature")
    if not signature_input or not signature:
        raise InvalidSignatureError("this request must be signed (RFC 9421 Signature headers)")
    match = _INPUT_RE.match(signature_input)
    sig_match = _SIG_RE.match(signature)
    if not match or not sig_match:
        raise MalformedError("unsupported Signature-Input or Signature header")
    created, nonce, keyid = int(match.group(1)), match.group(2), match.group(3)
    if abs(now - created) > skew:
        raise ExpiredError("request signature outside the time window")
    params = _params(created, nonce, keyid)
    try:
        raw = base64.b64decode(sig_match.group(1), validate=True)
    except binascii.Error:
        raise MalformedError("the Signature header is not base64") from None
    party(keyid).verify("request", _base(method, path, query, params), raw)
    return keyid
