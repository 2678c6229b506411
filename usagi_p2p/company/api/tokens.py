"""The local API's bearer tokens: made once, shown once, stored hashed (docs/api.md, "Tokens").

A token is ``usagi_`` followed by 32 random bytes in unpadded base64url (43
characters): the prefix lets secret scanners recognise a leaked one. Only its
SHA-256 is stored. A slow password hash (argon2id) is the tool for secrets a
person chooses; a 256-bit random token cannot be guessed or brute-forced from
its hash, so one SHA-256 suffices and checking a request costs microseconds.

Tokens live in ``HOME/api-tokens.json`` (mode 0600, written to a temporary file
and renamed, so a reader sees the old file or the new one, never half of
one). Writers take an exclusive ``flock`` on the home folder, so two
``usagi token`` commands at once do not lose each other's change. A running
node re-reads the file when its inode, size or modification time changes
(one ``stat`` per request), so ``usagi token revoke`` takes effect at the
next request without a restart.

When each token was last used is kept apart, in ``HOME/api-tokens-used.json``,
written by the running node at most once a minute per token: checking a
token never rewrites the token file.

Scopes are ordered: ``read`` < ``send`` < ``admin``; a route needs one, and a
token holding it or a higher one may call the route.

The home's own token, ``cli`` (scope ``admin``), is what the ``usagi``
command shows the running node; its secret is kept in ``HOME/local.token``
(0600), as readable as the key files beside it. Revoking it is allowed; the
next command that needs it makes a new one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ...node.errors import NameTakenError, NodeError
from ...node.home import write_private

__all__ = ["SCOPES", "PREFIX", "CLI_TOKEN", "Token", "TokenStore", "TokenError", "UnknownTokenError",
           "scope_allows"]

#: The scopes, weakest first: a token may call every route needing its scope or a lower one.
SCOPES: Final = ("read", "send", "admin")
PREFIX: Final = "usagi_"
#: The home's own token, used by the ``usagi`` command (its secret in ``local.token``).
CLI_TOKEN: Final = "cli"  # noqa: S105 (a name, not a secret)
FILE: Final = "api-tokens.json"
USED_FILE: Final = "api-tokens-used.json"
SECRET_FILE: Final = "local.token"  # noqa: S105 (a file name)
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Seconds between two writes of one token's last use.
_USED_EVERY: Final = 60.0


class TokenError(NodeError):
    """The token name or scope is not valid."""

    code = "validation_failed"


class UnknownTokenError(NodeError):
    """There is no token of that name."""

    code = "not_found"


def scope_allows(held: str, needed: str) -> bool:
    """Whether a token of scope ``held`` may call a route needing ``needed``."""
    return SCOPES.index(held) >= SCOPES.index(needed)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Token:
    """One token as stored: never its secret."""

    name: str
    scope: str
    #: Seconds since 1970 (UTC).
    created: float
    #: A short random id, so a token made again under a revoked name starts afresh.
    id: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "created": self.created, "id": self.id,
                "sha256": self.sha256}


class TokenStore:
    """The tokens of one home: edit them (the CLI) and check them (the running node)."""

    def __init__(self, home_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home_path = home_path
        #: Seconds since 1970: the node's clock where a node is known (``Node.clock``).
        self.clock = clock
        self.path = home_path / FILE
        self.used_path = home_path / USED_FILE
        self._seen: tuple[int, int, int] | None = None
        self._by_digest: dict[str, Token] = {}
        #: Token id -> last use (seconds), as this process knows it.
        self._used: dict[str, float] = {}
        self._used_written: dict[str, float] = {}

    # -- reading ----------------------------------------------------------------

    def _read(self) -> list[Token]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise NodeError(f"{self.path} cannot be read: {exc}") from None
        try:
            return [Token(**entry) for entry in data["tokens"]]
        except (KeyError, TypeError) as exc:
            raise NodeError(f"{self.path} is not a token file: {exc}") from None

    def tokens(self) -> list[Token]:
        return sorted(self._read(), key=lambda t: t.name)

    def last_used(self) -> dict[str, float]:
        """Token id -> when it was last used, as far as the running node wrote it down."""
        try:
            data = json.loads(self.used_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def check(self, secret: str) -> Token | None:
        """The token whose secret this is, or None. Re-reads the file when it changed."""
        try:
            st = os.stat(self.path)
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._by_digest = {t.sha256: t for t in self._read()}
            self._seen = seen
        # A dict lookup by the digest: what a timing difference could reveal is
        # about the hash of the guess, not about any stored secret.
        return self._by_digest.get(_digest(secret))

    def note_use(self, token: Token, now: float | None = None) -> None:
        """Remember that ``token`` was used; written down at most once a minute."""
        now = self.clock() if now is None else now
        self._used[token.id] = now
        if now - self._used_written.get(token.id, 0.0) < _USED_EVERY:
            return
        self._used_written[token.id] = now
        live = {t.id for t in self._by_digest.values()}
        merged = {k: v for k, v in {**self.last_used(), **self._used}.items() if k in live}
        with contextlib.suppress(OSError):  # a bookkeeping file: never fail a request for it
            write_private(self.used_path, json.dumps(merged, sort_keys=True))

    # -- editing ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Token]]:
        fd = os.open(self.home_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tokens = self._read()
            before = list(tokens)
            yield tokens
            if tokens == before:
                return
            write_private(self.path, json.dumps({"version": 1, "tokens": [
                t.to_json() for t in tokens]}, indent=1, sort_keys=True) + "\n")
        finally:
            os.close(fd)  # closing releases the lock

    def create(self, name: str, scope: str, now: float | None = None) -> str:
        """A new token; returns its secret, which is not stored anywhere."""
        if not _NAME.fullmatch(name):
            raise TokenError("a token name is 1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        if scope not in SCOPES:
            raise TokenError(f"scope must be one of {', '.join(SCOPES)}")
        with self._locked() as tokens:
            if any(t.name == name for t in tokens):
                raise NameTakenError(f"a token named {name!r} exists; revoke it first")
            return _add(tokens, name, scope, self.clock() if now is None else now)

    def revoke(self, name: str) -> Token:
        with self._locked() as tokens:
            found = [t for t in tokens if t.name == name]
            if not found:
                raise UnknownTokenError(f"no token named {name!r}")
            tokens.remove(found[0])
        return found[0]

    def cli_secret(self) -> str:
        """The home's own token (scope admin) for the ``usagi`` command; made when missing."""
        secret_path = self.home_path / SECRET_FILE
        with self._locked() as tokens:
            with contextlib.suppress(FileNotFoundError):
                secret = secret_path.read_text(encoding="utf-8").strip()
                if any(t.name == CLI_TOKEN and t.sha256 == _digest(secret) for t in tokens):
                    return secret
            # None yet, or its secret was lost, or revoked: a new one.
            tokens[:] = [t for t in tokens if t.name != CLI_TOKEN]
            secret = _add(tokens, CLI_TOKEN, "admin", self.clock())
            write_private(secret_path, secret + "\n")
            return secret


def _add(tokens: list[Token], name: str, scope: str, now: float) -> str:
    secret = PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    tokens.append(Token(name=name, scope=scope, created=now, id=secrets.token_hex(4),
                        sha256=_digest(secret)))
    return secret
