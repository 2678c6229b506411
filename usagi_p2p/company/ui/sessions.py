"""Who is signed in to the web UI: one-time sign-in codes and server-side sessions (docs/ui.md).

Signing in works as in Jupyter: ``usagi ui`` (or the demo) makes a one-time
**sign-in code**, prints ``http://127.0.0.1:PORT/signin?code=…`` and the
browser that opens it gets a **session cookie** in exchange. Whoever can
run ``usagi`` on the node's home can sign in, as the company or as one of its
users (``usagi ui --user suzuki``): the home's files are the credential, as
they are for the local API's ``cli`` token.

* A code is 32 random bytes (base64url). Only its SHA-256 is stored, as the
  name of a file in ``HOME/ui/signin/`` holding the user and the expiry
  (:data:`CODE_TTL`). The CLI writes it; the serving node exchanges it by
  removing the file first: ``unlink`` succeeds once, so a code signs in once,
  even with two browsers racing.
* A session id is 32 random bytes too, sent only as an HttpOnly,
  SameSite=Strict cookie. The node keeps the SHA-256 of it (never the id),
  with the user and the expiry (:data:`SESSION_TTL`), in
  ``HOME/ui/sessions.json`` (0600, written whole and renamed), so a restart
  keeps people signed in and a stolen copy of the file signs nobody in.
* The CSRF token of a session is an HMAC of its id: bound to the session,
  unknown to anyone who does not hold the cookie, and never stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ...node.errors import ConfigError
from ...node.home import Home, write_private

__all__ = ["CODE_TTL", "SESSION_TTL", "Session", "SessionStore", "issue_signin", "signin_url",
           "csrf_token", "ui_dir"]

#: Seconds a sign-in code stays valid (unused).
CODE_TTL: Final = 15 * 60.0
#: Seconds a session lasts from sign-in: a working day and a half, then sign in again.
SESSION_TTL: Final = 12 * 3600.0
#: Most sessions kept; the oldest go first (a bound on the file, not a policy).
MAX_SESSIONS: Final = 200
_CSRF_LABEL: Final = b"usagi-p2p/v1/ui-csrf"


def ui_dir(home_path: Path) -> Path:
    """``HOME/ui``: the web UI's own files (made 0700)."""
    path = home_path / "ui"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def _random() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


def issue_signin(home: Home, user: str | None = None, *, ttl: float = CODE_TTL,
                 clock: Callable[[], float] = time.time) -> str:
    """A new one-time sign-in code for the company (``user`` None) or one of its users.

    ConfigError for a user the config does not know."""
    if user is not None and user not in home.load_config().users:
        raise ConfigError(f"no user {user!r} (see 'usagi user list')")
    code = _random()
    folder = ui_dir(home.path) / "signin"
    folder.mkdir(mode=0o700, exist_ok=True)
    now = clock()
    for old in folder.iterdir():  # forget codes nobody used
        try:
            if json.loads(old.read_text(encoding="utf-8"))["expires"] < now:
                old.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError):
            old.unlink(missing_ok=True)
    write_private(folder / _digest(code), json.dumps({"user": user, "expires": now + ttl}))
    return code


def signin_url(local_url: str, code: str) -> str:
    """Where a browser signs in with ``code`` on the local listener at ``local_url``."""
    return f"{local_url.rstrip('/')}/signin?code={code}"


def csrf_token(session_id: str) -> str:
    """The CSRF token of a session: an HMAC of its id (so never stored)."""
    mac = hmac.new(session_id.encode("ascii", "replace"), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser: who (None: the company itself) and until when."""

    user: str | None
    expires: float
    #: The SHA-256 of the session id (the id itself is only in the cookie).
    key: str


class SessionStore:
    """The sessions of one home's UI, held by the serving node."""

    def __init__(self, home_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home_path = home_path
        self.clock = clock
        self.path = home_path / "ui" / "sessions.json"
        self._sessions: dict[str, Session] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            items = data["sessions"].items()
            self._sessions = {key: Session(value["user"], float(value["expires"]), key)
                              for key, value in items}
        except FileNotFoundError:
            self._sessions = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._sessions = {}  # an unreadable file signs everyone out, nothing worse

    def _save(self) -> None:
        ui_dir(self.home_path)
        data: dict[str, Any] = {"sessions": {
            k: {"user": s.user, "expires": s.expires} for k, s in self._sessions.items()}}
        write_private(self.path, json.dumps(data))

    def exchange(self, code: str) -> tuple[str, Session] | None:
        """A new session (its id and record) for a one-time ``code``; None when the
        code is unknown, used or expired."""
        if not code or len(code) > 100 or not code.isascii():
            return None
        path = self.home_path / "ui" / "signin" / _digest(code)
        try:
            text = path.read_text(encoding="utf-8")
            path.unlink()  # succeeds once: the code is spent whoever comes next
        except OSError:
            return None
        try:
            entry = json.loads(text)
            user, expires = entry["user"], float(entry["expires"])
        except (ValueError, KeyError, TypeError):
            return None
        now = self.clock()
        if expires < now or (user is not None and not isinstance(user, str)):
            return None
        session_id = _random()
        session = Session(user, now + SESSION_TTL, _digest(session_id))
        self._prune(now)
        self._sessions[session.key] = session
        while len(self._sessions) > MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.expires)
            del self._sessions[oldest.key]
        self._save()
        return session_id, session

    def check(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id`` (a cookie's value), or None."""
        if not session_id or len(session_id) > 100 or not session_id.isascii():
            return None
        session = self._sessions.get(_digest(session_id))
        if session is None or session.expires < self.clock():
            return None
        return session

    def end(self, session: Session) -> None:
        """Sign ``session`` out."""
        if self._sessions.pop(session.key, None) is not None:
            self._save()

    def end_user(self, user: str | None) -> int:
        """Sign every session of ``user`` out (a removed user); how many."""
        gone = [k for k, s in self._sessions.items() if s.user == user]
        for key in gone:
            del self._sessions[key]
        if gone:
            self._save()
        return len(gone)

    def _prune(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]
