"""Invitations and introductions: how two companies become partners with one paste.

docs/spec.md, "Pairing". ``usagi invite`` prints

    usagi1:<base64url of a Signed{ InvitationBody }>

    InvitationBody = { "v": 1, "type": "invitation", "name": tstr, "did": did,
                       "endpoint": tstr, "expires": time, "nonce": bytes .size 16 }

signed by ``did`` under label ``usagi-p2p/v1/invitation``. Whoever pastes it
with ``usagi partner add`` checks the signature and expiry, POSTs an
*introduction* to the endpoint (the same structure with ``"type":
"introduction"``, the invitation's nonce, valid 10 minutes, signed by the new
partner) and stores the partner once it is accepted. The inviting node
accepts an introduction only for a nonce it issued, not expired and used by
no one else, so after one paste both sides know each other.

A partner's endpoint becomes the prefix of every request this node sends it,
so :func:`check_endpoint` is the one gate for endpoints (docs/spec.md section
10, "Endpoints"): the URL's shape, and the scope of its host (public, private,
loopback, link-local) against the node's policy (:func:`endpoint_scopes`).
:class:`PublicResolver` applies the same policy to what a name resolves to.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from kernel import Identity, dagcbor, format_time, open_signed, parse_time, sign
from kernel.errors import UsagiError

from .errors import ConfigError, InvitationError
from .terminal import printable

__all__ = ["Invitation", "make_invitation", "parse_invitation", "PREFIX", "name_problem",
           "check_endpoint", "endpoint_scopes", "EVERY_SCOPE", "PublicResolver",
           "INTRODUCTION_VALIDITY"]

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


#: How long an introduction is valid: its ``expires`` is at most this after it is made.
INTRODUCTION_VALIDITY: Final = timedelta(minutes=10)

#: Where an endpoint's host points. A name other than ``localhost`` is "public"
#: until it is resolved; :class:`PublicResolver` checks what it resolves to.
PUBLIC: Final = "public"
PRIVATE: Final = "private"        # RFC 1918, unique local, shared (CGNAT), reserved ranges
LOOPBACK: Final = "loopback"
LINK_LOCAL: Final = "link-local"  # 169.254/16 (cloud metadata lives there), fe80::/10
EVERY_SCOPE: Final = frozenset({PUBLIC, PRIVATE, LOOPBACK, LINK_LOCAL})

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_NUMERIC: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")


def address_scope(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The scope of an IP address, or None for one that is never a destination
    (unspecified ``0.0.0.0`` / ``::``, which connects to this very machine, and multicast)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        return None
    if address.is_loopback:
        return LOOPBACK
    if address.is_link_local:
        return LINK_LOCAL
    return PUBLIC if address.is_global else PRIVATE


def endpoint_scopes(own_endpoint: str, allow_private: bool | None) -> frozenset[str]:
    """The scopes a node sends partner requests to (docs/spec.md section 10, "Endpoints").

    ``allow_private`` is the config switch ``allow_private_endpoints``: True allows
    every scope, False only public ones. Unset, a node allows what its own endpoint
    is: one on loopback (tests, ``usagi demo``, one machine) allows every scope, one
    on a private network allows public and private addresses, a public one (or one
    named by DNS) only public addresses.
    """
    if type(allow_private) not in (bool, type(None)):
        raise ConfigError("allow_private_endpoints is true, false or absent")
    if allow_private is not None:
        return EVERY_SCOPE if allow_private else frozenset({PUBLIC})
    own = _scope(urlsplit(own_endpoint).hostname or "")
    if own == LOOPBACK:
        return EVERY_SCOPE
    return frozenset({PUBLIC, PRIVATE}) if own in (PRIVATE, LINK_LOCAL) else frozenset({PUBLIC})


def _scope(host: str) -> str | None:
    try:
        return address_scope(ipaddress.ip_address(host))
    except ValueError:
        name = host.rstrip(".").lower()
        return LOOPBACK if name == "localhost" or name.endswith(".localhost") else PUBLIC


def check_endpoint(endpoint: object, *, scopes: frozenset[str] = EVERY_SCOPE) -> str:
    """Raise InvitationError unless ``endpoint`` is a URL this node may use as a partner's
    peer API prefix; return it. The one check for every endpoint (docs/spec.md section 10):

    an ``http`` or ``https`` URL of at most 500 characters, printable, with a host, an
    optional port (1..65535) and path, and no user info, query or fragment; the host
    a DNS name (IDNA, labels of letters, digits and hyphens, not ending in a number)
    or an IP address (IPv6 in brackets, no zone); and the host's scope in ``scopes``
    (:func:`endpoint_scopes`). Requests then go to the endpoint plus a path, never
    following a redirect.
    """
    if type(endpoint) is not str or not 0 < len(endpoint) <= 500:
        raise InvitationError("an endpoint is a URL of at most 500 characters")
    shown = printable(endpoint)
    if any(ch.isspace() or not ch.isprintable() or ch == "\\" for ch in endpoint):
        raise InvitationError(f"endpoint {shown!r} contains spaces, control characters or '\\'")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:  # "http://[x": Invalid IPv6 URL; a port out of range
        raise InvitationError(f"endpoint {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or \
            endpoint[:len(parts.scheme) + 3].lower() != parts.scheme + "://":
        raise InvitationError(f"endpoint must be an http(s) URL, not {shown!r}")
    if "@" in parts.netloc:
        raise InvitationError(f"endpoint {shown!r} must not carry user information")
    if "?" in endpoint or "#" in endpoint:
        raise InvitationError(f"endpoint {shown!r} must not have a query or fragment")
    if port == 0 or parts.netloc.endswith(":"):
        raise InvitationError(f"endpoint {shown!r} has an invalid port")
    if not parts.path.isascii():
        raise InvitationError(f"endpoint {shown!r}: percent-encode its path")
    host = parts.hostname or ""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None:
        try:
            name = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvitationError(f"endpoint {shown!r} has an invalid host name") from None
        labels = name.rstrip(".").split(".")
        if (not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels)
                or _NUMERIC.match(labels[-1])):
            raise InvitationError(f"endpoint {shown!r} has an invalid host name")
    elif "%" in host:  # an IPv6 zone names an interface of the machine that reads it
        raise InvitationError(f"endpoint {shown!r} has an address with a zone")
    scope = address_scope(address) if address is not None else _scope(host)
    if scope is None:
        raise InvitationError(f"endpoint {shown!r} is not an address anyone can be reached at")
    if scope not in scopes:
        raise InvitationError(
            f"endpoint {shown!r} is a {scope} address; this node sends partner requests only "
            f"to {', '.join(sorted(scopes))} addresses (config allow_private_endpoints)")
    return endpoint


class PublicResolver(AbstractResolver):
    """DNS as aiohttp resolves it, keeping only addresses in ``scopes``.

    A partner's endpoint names a host; what the name resolves to is decided at
    connect time (and may change: DNS rebinding), so the scope policy of
    :func:`check_endpoint` is applied here to every address a name resolves
    to. Addresses outside the policy are dropped; a name left with none fails
    to connect (aiohttp reports a ``ClientConnectorDNSError``). IP literals do
    not come here: :func:`check_endpoint` judges them before each request.
    """

    def __init__(self, scopes: frozenset[str]) -> None:
        self.scopes = scopes
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if address_scope(ipaddress.ip_address(r["host"])) in self.scopes]
        if not kept:
            raise OSError(f"{printable(host)} resolves to no address this node sends partner "
                          f"requests to ({', '.join(sorted(self.scopes))}; config "
                          "allow_private_endpoints)")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def make_invitation(identity: Identity, name: str, endpoint: str, now: datetime, *,
                    valid_for: timedelta | None = None, type: str = "invitation",
                    nonce: bytes | None = None) -> Invitation:
    """Sign an invitation (valid 7 days unless ``valid_for`` says otherwise) or an
    introduction (valid INTRODUCTION_VALIDITY, the most a node accepts)."""
    if valid_for is None:
        valid_for = INTRODUCTION_VALIDITY if type == "introduction" else timedelta(days=7)
    check_endpoint(endpoint)
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
    check_endpoint(endpoint)
    if type(nonce) is not bytes or len(nonce) != 16:
        raise InvitationError("invitation nonce must be 16 bytes")
    try:
        expires = parse_time(body["expires"])
    except UsagiError as exc:
        raise InvitationError(str(exc)) from None
    if now is not None and expires < now:
        raise InvitationError(f"the invitation expired at {body['expires']}")
    return Invitation(body["type"], name, body["did"], endpoint, expires, nonce, raw)
