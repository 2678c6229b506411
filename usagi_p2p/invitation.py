"""Invitations and introductions: how two companies become partners with one paste.

docs/spec.md, "Pairing". ``usagi invite`` prints

    usagi1:<base64url of a Signed{ InvitationBody }>

    InvitationBody = { "v": 1, "type": "invitation", "name": tstr, "did": did,
                       "endpoint": tstr, "expires": time, "nonce": bytes .size 16 }

signed by ``did`` under label ``usagi-p2p/v1/invitation``. Whoever pastes it
with ``usagi partner add`` checks the signature and expiry, stores the
partner, and POSTs an *introduction* to the endpoint: the same structure with
``"type": "introduction"`` and the invitation's nonce, signed by the new
partner. The inviting node accepts an introduction only for a nonce it issued
and that has not expired, so after one paste both sides know each other.
"""

from __future__ import annotations

import base64
import binascii
import os
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from kernel import dagcbor
from kernel.document import format_time, parse_time
from kernel.errors import UsagiError
from kernel.identity import Identity
from kernel.signed import open_signed, sign

from .errors import InvitationError
from .terminal import printable  # the one escaping rule; importable here as before

__all__ = ["Invitation", "make_invitation", "parse_invitation", "PREFIX", "printable", "name_problem"]

PREFIX: Final = "usagi1:"
LIMITS: Final = dagcbor.Limits(max_size=4096, max_depth=2, max_length=16)


@dataclass(frozen=True, slots=True)
class Invitation:
    type: str
    name: str
    did: str
    endpoint: str
    expires: datetime
    nonce: bytes
    raw: bytes

    def text(self) -> str:
        return PREFIX + base64.urlsafe_b64encode(self.raw).decode().rstrip("=")


def _check_endpoint(endpoint: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvitationError(f"endpoint must be an http(s) URL, not {endpoint!r}")


def make_invitation(identity: Identity, name: str, endpoint: str, now: datetime, *,
                    valid_for: timedelta = timedelta(days=7), type: str = "invitation",
                    nonce: bytes | None = None) -> Invitation:
    _check_endpoint(endpoint)
    body = {
        "v": 1,
        "type": type,
        "name": name,
        "did": identity.did,
        "endpoint": endpoint,
        "expires": format_time(now + valid_for),
        "nonce": nonce if nonce is not None else os.urandom(16),
    }
    raw = sign(identity, "invitation", body)
    return parse_invitation(raw, now=now)


#: Bidirectional overrides and isolates: they make a name display as another.
_BIDI: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def name_problem(name: object, error: type[Exception]) -> None:
    """Raise ``error`` unless ``name`` is a company name fit to print: 1..200
    characters, no control characters (a partner chooses its name, and it is
    shown on the other company's terminal) and no bidirectional overrides."""
    if type(name) is not str or not 0 < len(name) <= 200 or not name.strip():
        raise error("a name must be 1..200 characters")
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI for ch in name):
        raise error("a name must not contain control characters or direction overrides")


def parse_invitation(text_or_raw: str | bytes, *, now: datetime | None = None) -> Invitation:
    """Verify an invitation (or introduction); raise InvitationError on anything wrong."""
    if isinstance(text_or_raw, str):
        text = text_or_raw.strip()
        if not text.startswith(PREFIX):
            raise InvitationError(f"an invitation starts with {PREFIX!r}")
        try:
            raw = base64.urlsafe_b64decode(text[len(PREFIX):] + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise InvitationError("the invitation is not valid base64url") from None
    else:
        raw = text_or_raw
    try:
        signed = open_signed(raw, "invitation", "did", LIMITS)
    except UsagiError as exc:
        raise InvitationError(f"invalid invitation: {exc}") from None
    body = signed.body
    if set(body) != {"v", "type", "name", "did", "endpoint", "expires", "nonce"} or body["v"] != 1:
        raise InvitationError("invitation has the wrong fields")
    if body["type"] not in ("invitation", "introduction"):
        raise InvitationError("unknown invitation type")
    name, endpoint, nonce = body["name"], body["endpoint"], body["nonce"]
    name_problem(name, InvitationError)
    if type(endpoint) is not str or len(endpoint) > 500:
        raise InvitationError("invitation endpoint is not a URL")
    _check_endpoint(endpoint)
    if type(nonce) is not bytes or len(nonce) != 16:
        raise InvitationError("invitation nonce must be 16 bytes")
    try:
        expires = parse_time(body["expires"])
    except UsagiError as exc:
        raise InvitationError(str(exc)) from None
    if now is not None and expires < now:
        raise InvitationError(f"the invitation expired at {body['expires']}")
    return Invitation(body["type"], name, body["did"], endpoint, expires, nonce, raw)
