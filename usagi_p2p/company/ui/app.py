"""The web UI on the local listener: routes, the middleware every page passes, sign-in (docs/ui.md).

:func:`install` adds the UI to the local API's application
(usagi_p2p/company/api/server.py), so it is served on the local listener and
nowhere else: the peer listener is another application on another port and
knows nothing of it. The API's middleware runs first for every request (the
loopback guard: this machine only, under a local host name, which also stops
DNS rebinding); the UI's own routes (its pages and ``/static/``) then pass
this one, in this order (every other path is the API's, answered with
problem details as before):

1. **Language**: the ``usagi_lang`` cookie, else ``Accept-Language``.
2. **Session**: the session cookie (HttpOnly, SameSite=Strict, Path=/, named
   after the port: two nodes on one machine are two sign-ins). Without a live
   session, a page redirects to ``/signin`` (an htmx request gets
   ``HX-Redirect``). ``/signin``, ``/lang`` and ``/static/`` need none.
3. **CSRF**: every request that is not GET or HEAD must carry the session's
   CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and, if
   the browser sends ``Origin``, come from this very origin; otherwise 403
   ``csrf_failed`` with a page that says so, and nothing is done.
4. **Headers** on every answer: a Content-Security-Policy without inline
   scripts or styles (``script-src 'self'``, ``style-src 'self'``),
   ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``,
   ``Referrer-Policy: no-referrer``, ``X-Content-Type-Options: nosniff``.
5. **Errors** as an HTML page in the visitor's language, with the spec's
   error code (docs/spec.md section 14) and the HTTP status of its row.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware

from kernel.errors import UsagiError

from ...node.errors import UnknownCodeError, http_status
from ...node.node import Node
from ..api.events import stream_events
from ..api.tokens import Token
from . import archive, compose, document, lists, partners, settings, status
from .base import (
    STATE,
    VISITOR,
    CSRFError,
    SignInNeeded,
    UIState,
    Visitor,
    local_path,
    node_of,
    render,
    visitor,
)
from .i18n import COOKIE, LANGUAGES, negotiate, translations
from .sessions import SESSION_TTL, SessionStore, csrf_token
from .templating import setup_environment
from .unread import ReadMarks

__all__ = ["install", "ROUTES", "SECURITY_HEADERS", "CSP", "session_cookie"]

log = logging.getLogger("usagi.ui")

HERE: Final = Path(__file__).resolve().parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The Content-Security-Policy of every page: our own files only, nothing inline.
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
              "base-uri 'none'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: Paths a visitor without a session may ask for.
PUBLIC: Final = ("/signin", "/lang", "/static/")
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def session_cookie(request: web.Request) -> str:
    """The session cookie's name on this listener: cookies are per host, not per
    port, and two nodes of one machine must not sign each other out."""
    port = request.url.port
    return f"usagi_session_{port}" if port else "usagi_session"


# -- the pages of this module: sign in, sign out, language, live events --------------


async def signin(request: web.Request) -> web.StreamResponse:
    code = request.query.get("code")
    target = local_path(request.query.get("next"))
    who = visitor(request)
    if code is None:
        if who.session is not None:
            raise web.HTTPSeeOther(location=quote(target, safe="/?=&%"))
        return render(request, "signin.html", {"failed": False}, status=401)
    exchanged = request.app[STATE].sessions.exchange(code)
    if exchanged is None:
        return render(request, "signin.html", {"failed": True}, status=403)
    session_id, session = exchanged
    request.app[STATE].marks.seen(session.user)
    request[VISITOR] = Visitor(session, who.language, csrf_token(session_id))
    # A page, not a redirect: its refresh is a navigation of this site, so the
    # SameSite=Strict cookie goes with it even when the link came from elsewhere.
    response = render(request, "signed_in.html", {"target": target})
    response.set_cookie(session_cookie(request), session_id, httponly=True, samesite="Strict",
                        path="/", max_age=int(SESSION_TTL))
    response.headers["Cache-Control"] = "no-store"
    return response


async def signout(request: web.Request) -> web.StreamResponse:
    who = visitor(request)
    if who.session is not None:
        request.app[STATE].sessions.end(who.session)
    response = web.HTTPSeeOther(location="/signin")
    response.del_cookie(session_cookie(request), path="/")
    raise response


async def language(request: web.Request) -> web.StreamResponse:
    """Switch the language (a preference cookie, not a change on the node)."""
    chosen = request.query.get("l", "")
    response = web.HTTPSeeOther(location=quote(local_path(request.query.get("next")),
                                               safe="/?=&%"))
    if chosen in LANGUAGES:
        response.set_cookie(COOKIE, chosen, samesite="Strict", path="/",
                            max_age=365 * 86400)
    raise response


async def home_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(location="/inbox")


async def events(request: web.Request) -> web.StreamResponse:
    """The API's event stream for a signed-in browser (EventSource sends the cookie,
    not a bearer token); at most the API's bound of streams per session."""
    who = visitor(request)
    assert who.session is not None
    owner = Token(f"ui:{who.session.key[:16]}", "read", 0.0, "ui", who.session.key)
    return await stream_events(_StreamCall(request, node_of(request), owner))


class _StreamCall:
    """What stream_events reads of a call: the request, the node, whose stream."""

    def __init__(self, request: web.Request, node: Node, token: Token) -> None:
        self.request, self.node, self.token = request, node, token


#: The UI's routes: (method, path, handler). A page module's routes are added here.
ROUTES: Final[list[tuple[str, str, Handler]]] = [
    ("GET", "/", home_page),
    ("GET", "/signin", signin),
    ("POST", "/signout", signout),
    ("GET", "/lang", language),
    ("GET", "/events", events),
    *lists.ROUTES,
    *document.ROUTES,
    *compose.ROUTES,
    # the company's own pages (usagi_p2p/company/ui/admin.py)
    *partners.ROUTES,
    *archive.ROUTES,
    *status.ROUTES,
    *settings.ROUTES,
]


# -- the middleware ----------------------------------------------------------------


def _csrf_ok(request: web.Request, who: Visitor, sent: str | None) -> bool:
    if who.session is None or not sent:
        return False
    if not hmac.compare_digest(sent.encode("ascii", "replace"), who.csrf.encode("ascii")):
        return False
    # The token is the check; the browser's own word on where the request comes
    # from backs it. Under Referrer-Policy: no-referrer a same-origin form sends
    # "Origin: null", so the Fetch Metadata header is the one that says "this site".
    origin = request.headers.get("Origin")
    if origin not in (None, "null", f"{request.scheme}://{request.host}"):
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def _status(exc: UsagiError) -> int:
    try:
        return http_status(exc.code)
    except UnknownCodeError:
        return 500


def _error_page(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if request.headers.get("HX-Request"):
        # htmx swaps nothing on an error status; the page's script shows the message.
        return web.Response(status=status, text=message[:500],
                            headers={"X-Usagi-Code": code})
    return render(request, "error.html", {"status": status, "code": code, "message": message},
                  status=status)


def _middleware(sessions: SessionStore, mine: set[object]) -> Middleware:
    @web.middleware
    async def ui(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.resource not in mine:
            # The API's routes, and paths nobody serves: the API's problem answers
            # (the local listener never serves the peer protocol, UI or not).
            return await handler(request)
        language_ = negotiate(request.cookies.get(COOKIE), request.headers.get("Accept-Language"))
        session_id = request.cookies.get(session_cookie(request))
        session = sessions.check(session_id)
        if session is not None and session.user is not None \
                and session.user not in node_of(request).home.load_config().users:
            sessions.end(session)  # a user removed since: signed out
            session = None
        who = Visitor(session, language_, csrf_token(session_id) if session and session_id
                      else "")
        request[VISITOR] = who
        try:
            try:
                if session is None and not request.path.startswith(PUBLIC):
                    raise SignInNeeded()
                if request.method not in _SAFE_METHODS:
                    sent = request.headers.get("X-CSRF-Token")
                    if sent is None and request.content_type in (
                            "application/x-www-form-urlencoded", "multipart/form-data"):
                        field = (await request.post()).get("csrf_token")
                        sent = field if isinstance(field, str) else None
                    if not _csrf_ok(request, who, sent):
                        raise CSRFError("this form did not come from this node's own pages, "
                                        "or it is from an earlier sign-in")
                response = await handler(request)
            except SignInNeeded:
                target = "/signin?next=" + quote(request.path_qs, safe="")
                if request.headers.get("HX-Request"):
                    response = web.Response(status=401, headers={"HX-Redirect": target})
                else:
                    response = web.HTTPSeeOther(location=target)
            except web.HTTPException as exc:
                if exc.status < 400:
                    response = exc
                elif exc.status == 404:
                    response = _error_page(request, 404, "not_found",
                                           translations(language_).gettext("There is no such page."))
                elif exc.status == 405:
                    response = _error_page(request, 405, "method_not_allowed",
                                           f"{request.method[:20]} {request.path[:200]}")
                else:
                    response = _error_page(request, exc.status, "malformed", exc.reason)
            except UsagiError as exc:
                status = _status(exc)
                if status >= 500:
                    log.error("%s %s failed: %s (%s)", request.method, request.path, exc,
                              exc.code)
                response = _error_page(request, status, exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 (the safety net: nothing escapes untyped)
            log.error("%s %s failed: %r", request.method, request.path, exc, exc_info=exc)
            response = _error_page(request, 500, "internal_error",
                                   "the node failed to answer; see its log")
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
            if "Cache-Control" not in response.headers and not request.path.startswith("/static/"):
                response.headers["Cache-Control"] = "no-store"
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return ui


def install(app: web.Application, node: Node) -> None:
    """Serve the web UI of ``node`` from ``app`` (the local API's application)."""
    sessions = SessionStore(node.home.path, clock=node.clock)
    app[STATE] = UIState(node, sessions, ReadMarks(node.home.path, clock=node.clock))
    environment = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
        undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.i18n"])
    setup_environment(environment)
    archive.install(app, node)
    mine: set[object] = set()
    app.middlewares.append(_middleware(sessions, mine))
    for method, path, handler in ROUTES:
        mine.add(app.router.add_route(method, path, handler).resource)
    mine.add(app.router.add_static("/static/", HERE / "static", name="ui-static"))
