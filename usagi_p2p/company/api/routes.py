"""The local API's routes: one table says each route's scope, body limit and handler.

The handlers live in the module of their resource (this_node, partners,
plugins, archive, documents); what a route is made of is in calls.py.

A route is a :class:`Route` in :data:`ROUTES`; its handler takes a :class:`Call`
(the request, the node, the token, the body already read within the route's
limit) and returns a response. The middleware (usagi_p2p/company/api/app.py)
does everything else the same way for every route: the loopback guard, the
token, the scope, the body limit, and errors as problem details. Each route
is also an operation of ``openapi.json`` (its ``operationId`` is
:attr:`Route.operation`, its ``x-usagi-scope`` the scope); tests/api/test_openapi.py
checks the two agree. docs/api.md, "Adding a route", says how to add one.
"""

from __future__ import annotations

from typing import Final

from .archive import VERIFY_ROUTE, export_archive
from .calls import OPENAPI_PATH, SMALL, Call, Endpoints, Field, Route, body_limit, parse_object, version
from .client import MAX_WAIT
from .documents import (
           BATCH_BODY,
           SEND_BODY,
           document_block,
           document_get,
           document_match,
           document_send,
           document_thread,
           document_verify,
           documents_list,
           documents_send_batch,
           request_hash,
)
from .events import stream_events
from .exchange import document_ubl
from .partners import (
           add_partner,
           create_invitation,
           drop_partner_quota,
           get_partner,
           list_partners,
           partner_usage,
           remove_partner,
           resume_partner,
           set_partner_quota,
           suspend_partner,
           update_partner,
)
from .plugins import extract_preview, list_plugins, list_users
from .search import search
from .this_node import key, openapi, outbox_retry, status

__all__ = ["Route", "Call", "Endpoints", "Field", "ROUTES", "OPENAPI_PATH", "parse_object",
           "version", "body_limit", "MAX_WAIT", "SEND_BODY", "request_hash"]

ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/openapi.json", "getOpenAPI", None, 0, openapi),
    Route("GET", "/api/v1/status", "getStatus", "read", 0, status),
    Route("GET", "/api/v1/key", "getKey", "read", 0, key),
    Route("POST", "/api/v1/outbox/retry", "retryOutbox", "send", SMALL, outbox_retry),
    # partners, plugins, users, archive (issue 16)
    Route("GET", "/api/v1/partners", "listPartners", "read", 0, list_partners),
    Route("POST", "/api/v1/partners", "addPartner", "admin", SMALL, add_partner),
    Route("GET", "/api/v1/partners/{partner}", "getPartner", "read", 0, get_partner),
    Route("PATCH", "/api/v1/partners/{partner}", "updatePartner", "admin", SMALL,
          update_partner),
    Route("DELETE", "/api/v1/partners/{partner}", "removePartner", "admin", 0, remove_partner),
    Route("PUT", "/api/v1/partners/{partner}/suspended", "suspendPartner", "admin", 0,
          suspend_partner),
    Route("DELETE", "/api/v1/partners/{partner}/suspended", "resumePartner", "admin", 0,
          resume_partner),
    Route("GET", "/api/v1/partners/{partner}/usage", "getPartnerUsage", "read", 0,
          partner_usage),
    Route("PUT", "/api/v1/partners/{partner}/quota", "setPartnerQuota", "admin", SMALL,
          set_partner_quota),
    Route("DELETE", "/api/v1/partners/{partner}/quota", "dropPartnerQuota", "admin", 0,
          drop_partner_quota),
    Route("POST", "/api/v1/invitations", "createInvitation", "admin", SMALL, create_invitation),
    Route("GET", "/api/v1/plugins", "listPlugins", "read", 0, list_plugins),
    Route("POST", "/api/v1/plugins/extract", "extractPreview", "read", 256 << 10,
          extract_preview),
    Route("GET", "/api/v1/users", "listUsers", "admin", 0, list_users),
    Route("GET", "/api/v1/archive", "exportArchive", "admin", 0, export_archive),
    VERIFY_ROUTE,
    # documents (issue 16): list, send, get, block, thread, verify
    Route("GET", "/api/v1/documents", "listDocuments", "read", 0, documents_list),
    Route("POST", "/api/v1/documents", "sendDocument", "send", SEND_BODY, document_send),
    # many documents in one request, all or none (docs/api.md, "Send many at once")
    Route("POST", "/api/v1/batches", "sendDocuments", "send", BATCH_BODY,
          documents_send_batch),
    Route("GET", "/api/v1/documents/{cid}", "getDocument", "read", 0, document_get),
    Route("GET", "/api/v1/documents/{cid}/block", "getDocumentBlock", "read", 0, document_block),
    Route("GET", "/api/v1/documents/{cid}/thread", "getDocumentThread", "read", 0, document_thread),
    Route("POST", "/api/v1/documents/{cid}/verify", "verifyDocument", "read", 0,
          document_verify),
    # commercial integrity (issue 19, docs/commerce.md): the three-way match of a thread
    Route("GET", "/api/v1/documents/{cid}/match", "getDocumentMatch", "read", 0, document_match),
    # the standard formats (docs/formats.md): a document as UBL 2.1 / Peppol BIS 3
    Route("GET", "/api/v1/documents/{cid}/ubl", "getDocumentUBL", "read", 0, document_ubl),
    # search (docs/api.md, "Search")
    Route("GET", "/api/v1/search", "searchDocuments", "read", 0, search),
    # events (usagi_p2p/company/api/events.py)
    Route("GET", "/api/v1/events", "streamEvents", "read", 0, stream_events),
)
