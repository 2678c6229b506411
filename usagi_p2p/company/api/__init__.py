"""The local API: the node's capabilities over HTTP for the company's own systems (docs/api.md).

Company-facing: it listens on its own loopback address (:mod:`.server`),
never on the peer port, and the peer listener never serves its routes.

    tokens.py    bearer tokens, stored hashed in the home; scopes read < send < admin
    problems.py  RFC 9457 problem details and the API's own error classes
    routes.py    the route table: path, scope, body limit, handler
    app.py       the one middleware: loopback guard, token, scope, body limit, errors
    server.py    the listener ``usagi serve`` starts beside the peer service
    openapi.json the contract, kept in step with the route table by tests/api
"""

from .app import make_app
from .routes import ROUTES, Call, Route
from .server import LocalServer
from .tokens import SCOPES, TokenStore

__all__ = ["make_app", "ROUTES", "Call", "Route", "LocalServer", "SCOPES", "TokenStore"]
