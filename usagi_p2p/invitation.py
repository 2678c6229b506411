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
import re
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


def printable(text: object) -> str:
    """``text`` safe to print on a terminal or in a log line: control characters
    and direction overrides become visible escapes (``\\x1b``), so text a partner
    wrote can neither colour, move the cursor, nor forge a line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or (unicodedata.category(ch) not in ("Cc", "Cf")
                                              and ch not in _BIDI)
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


#: Code points a name MUST NOT contain (docs/spec.md section 10.1): controls,
#: invisible and format characters, bidirectional controls, line separators,
#: private use, surrogates and noncharacters. An explicit list, not Unicode
#: categories, so every implementation and Unicode version agrees.
_NAME_FORBIDDEN: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff\ue000-\uf8ff\ufdd0-\ufdef\U000e0000-\U000e007f"
    "\U000f0000-\U0010ffff]|[\ufffe\uffff\U0001fffe\U0001ffff\U0002fffe\U0002ffff\U0003fffe"
    "\U0003ffff\U0004fffe\U0004ffff\U0005fffe\U0005ffff\U0006fffe\U0006ffff\U0007fffe"
    "\U0007ffff\U0008fffe\U0008ffff\U0009fffe\U0009ffff\U000afffe\U000affff\U000bfffe"
    "\U000bffff\U000cfffe\U000cffff\U000dfffe\U000dffff\U000efffe\U000effff]"
)
#: White space (what a name may not consist of only): the space separators.
_NAME_SPACE: Final = re.compile("[ \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]*")
MAX_NAME: Final = 200


def name_problem(name: object, error: type[Exception]) -> None:
    """Raise ``error`` unless ``name`` is a company name fit to print: 1..200
    UTF-8 bytes, not only white space, and none of the invisible, control or
    direction characters of :data:`_NAME_FORBIDDEN` (a partner chooses its
    name, and it is shown on the other company's terminal and compared with
    other partners' names)."""
    if (type(name) is not str or not 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME
            or _NAME_SPACE.fullmatch(name)):
        raise error(f"a name must be 1..{MAX_NAME} UTF-8 bytes, not only white space")
    bad = _NAME_FORBIDDEN.search(name)
    if bad is not None:
        raise error(f"a name must not contain control characters, invisible characters or "
                    f"direction overrides (U+{ord(bad.group()):04X})")


#: ASCII white space a paste may carry (line breaks of a mail client): removed anywhere.
_PASTE_SPACE: Final = re.compile("[\t\n\r ]+")
_B64URL: Final = re.compile("[A-Za-z0-9_-]*")


def _decode_text(text: str) -> bytes:
    """The signed bytes of ``usagi1:`` + base64url without padding (spec section 10.1).

    Strict: only the URL-safe alphabet, no ``=``, and the canonical spelling
    (unused bits zero), so one invitation has exactly one text.
    """
    text = _PASTE_SPACE.sub("", text)
    if not text.startswith(PREFIX):
        raise InvitationError(f"an invitation starts with {PREFIX!r}")
    data = text[len(PREFIX):]
    if not _B64URL.fullmatch(data) or len(data) % 4 == 1:
        raise InvitationError("the invitation is not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise InvitationError("the invitation is not valid base64url") from None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != data:
        raise InvitationError("the invitation is not canonical base64url (unused bits set)")
    return raw


def parse_invitation(text_or_raw: str | bytes, *, now: datetime | None = None) -> Invitation:
    """Verify an invitation (or introduction); raise InvitationError on anything wrong."""
    if isinstance(text_or_raw, str):
        raw = _decode_text(text_or_raw)
    else:
        raw = text_or_raw
    try:
        signed = open_signed(raw, "invitation", "did", LIMITS)
    except UsagiError as exc:
        raise InvitationError(f"invalid invitation: {exc}") from None
    body = signed.body
    # type(...) is int: DAG-CBOR's true is not 1, though Python's True == 1.
    if set(body) != {"v", "type", "name", "did", "endpoint", "expires", "nonce"} \
            or type(body["v"]) is not int or body["v"] != 1:
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
