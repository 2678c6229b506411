"""The web UI: the company's people trade in a browser, on the node's local listener (docs/ui.md).

Server-rendered pages (Jinja2 through aiohttp-jinja2, autoescaping on) on the
local API's application, enhanced by a vendored htmx and a few lines of our
own JavaScript; Japanese and English message catalogs. Every page calls the
node operations (``usagi_p2p.node.operations``) as the CLI and the API do.

    app.py        install(): routes, the middleware (session, CSRF, headers, errors)
    base.py       what every page shares: the visitor, render(), the navigation
    sessions.py   one-time sign-in codes and server-side sessions
    i18n.py       catalogs, the choice of language, dates and money per locale
    templating.py the Jinja2 environment (translation, filters)
    unread.py     the inbox's unread marks
    lists.py      inbox and outbox (filters, search, live rows)
    document.py   a document as its business form, its verification, its thread
    compose.py    composing and answering (live extraction, inline validation)
"""

from .app import install
from .sessions import issue_signin, signin_url

__all__ = ["install", "issue_signin", "signin_url"]
