"""The local API: the node's capabilities over HTTP for the company's own systems (docs/api.md).

Company-facing: it listens on its own loopback address (:mod:`.server`),
never on the peer port, and the peer listener never serves its routes.

    tokens.py    bearer tokens, stored hashed in the home; scopes read < send < admin
    problems.py  RFC 9457 problem details and the API's own error classes
    routes.py    the route table: path, scope, body limit, handler
    app.py       the one middleware: loopback guard, token, scope, body limit, errors
    server.py    the listener ``usagi serve`` starts beside the peer service
    client.py    the ``usagi`` command's side: a running node's API, standard library only
    openapi.json the contract, kept in step with the route table by tests/api

The names below are imported when first used (PEP 562): a ``usagi`` command
that only talks to a running node (client.py) does not load aiohttp and the
node to start.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import make_app
    from .routes import ROUTES, Call, Route
    from .server import LocalServer
    from .tokens import SCOPES, TokenStore

__all__ = ["make_app", "ROUTES", "Call", "Route", "LocalServer", "SCOPES", "TokenStore"]

_WHERE = {"make_app": ".app", "ROUTES": ".routes", "Call": ".routes", "Route": ".routes",
          "LocalServer": ".server", "SCOPES": ".tokens", "TokenStore": ".tokens"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
