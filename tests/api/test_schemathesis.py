"""Schemathesis against a live node: openapi.json is the contract, the running node keeps it.

A real node (Kanto) serves its local API on 127.0.0.1, paired with a second
real node (Osaka) so that a send is delivered and acked. Schemathesis
generates requests for every operation of ``openapi.json`` (valid and invalid
ones) and checks each answer: never a 5xx, a status the operation documents,
the content type and body schema it documents, and that a route needing a
token refuses a request without one. The run is bounded (a few examples per
operation, a fixed seed, derandomized: the same requests every run) so that it
belongs in ``make test``.

The nodes run on an event loop of their own in a thread: Schemathesis calls
them with ``requests``, synchronously, from the test's thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from usagi_p2p.company.api import events
from usagi_p2p.company.api.routes import OPENAPI_PATH, ROUTES

from ..node.conftest import make_home, start
from .conftest import api_node

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

#: Examples per operation in the fuzzing phase; the coverage phase adds its own
#: (boundary and negative values, one per rule), as many as the schema has rules.
MAX_EXAMPLES = 12
#: The longest ``?wait`` a generated send may ask for (the schema allows 60 s).
MAX_WAIT = 1
SEED = 16

CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "request-timeout": 20,
    "max-stream-events": 3,  # an event stream (GET /api/v1/events) is read this far
    "generation": {
        "mode": "all",  # valid requests and invalid ones (each must be a documented 4xx)
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
    },
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
               "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
    "checks": {
        # A body over the route's limit is refused as 413 before it is read (documented).
        "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409,
                                                          413, 415, 422, 428, 429]},
    },
    "operations": [
        # Rules JSON Schema cannot say, so a schema-valid request may still be refused
        # with the documented 4xx: an invitation must be signed by who it names (400);
        # a name is 1..200 UTF-8 *bytes* and not only white space (422); a document's
        # body must be a valid document of its kind, to a partner it names (422, 404);
        # a page cursor must be one this node gave out (400 invalid_cursor, and
        # invalid_query for a search's cursor).
        {"include-operation-id": ["addPartner", "updatePartner", "sendDocument",
                                  "sendDocuments", "extractPreview", "listDocuments",
                                  "searchDocuments"],
         "checks": {"positive_data_acceptance": {
             "expected-statuses": ["2xx", 400, 401, 403, 404, 409, 422, 429]}}},
        # Any bytes are a CAR to examine: the answer is a 200 report, "ok": false for
        # bytes that are not one. A "wrong type" of body cannot exist on the wire.
        {"include-operation-id": "verifyArchive",
         "checks": {"negative_data_rejection": {"enabled": False}}},
        # An event stream's examples are all made a valid resume (_bounded): its
        # refusals are tests/api/test_events.py's.
        {"include-operation-id": "streamEvents",
         "checks": {"negative_data_rejection": {"enabled": False}}},
    ],
})
# A CAR upload (POST /api/v1/archive/verify) is bytes, sent as they were generated.
schemathesis.serializer.alias("application/vnd.ipld.car", "application/octet-stream")
SCHEMA = schemathesis.openapi.from_dict(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")),
                                        config=CONFIG)


@dataclass
class Live:
    """The two nodes, running on their loop in a thread, as HTTP sees them."""

    url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    partner: str = ""
    #: a document Kanto sent to Osaka and got acked, before the run
    cid: str = ""
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("schemathesis")
    result = Live()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def run() -> None:
        nonlocal stop, loop
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        try:
            osaka, osaka_service = await start(make_home(root / "osaka", "Osaka Precision"))
            try:
                async with api_node(root / "kanto") as api:
                    await api.node.add_partner((await osaka.invite()).text())
                    sent = await api.node.send("quote", "Osaka", _quote("Q-LIVE-1"))
                    ack = await api.node.wait_for_ack(sent.cid, timeout=30)
                    assert ack is not None, "Osaka did not ack the first quote"
                    result.url = api.local.url or ""
                    result.tokens = dict(api.tokens)
                    result.partner = osaka.did
                    result.cid = str(sent.cid)
                    result.ready.set()
                    await stop.wait()
            finally:
                await osaka_service.close()
                await osaka.close()
        except BaseException as exc:
            result.error = exc
            result.ready.set()

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="live-nodes", daemon=True)
    thread.start()
    assert result.ready.wait(60), "the live nodes did not start"
    if result.error is not None:
        raise result.error
    try:
        yield result
    finally:
        assert loop is not None and stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def _quote(ref: str) -> dict[str, Any]:
    return {"ref": ref, "currency": "JPY", "valid_until": "2026-12-31T00:00:00Z",
            "lines": [{"text": "六角ナット M6", "qty": "1000", "unit": "pcs",
                       "unit_price": "12", "amount": "12000"}], "total": "12000"}


#: Headers that frame the message (RFC 9112) or belong to one connection (RFC 9110 section 7.6.1).
_FRAMING = frozenset({"transfer-encoding", "content-length", "connection", "te", "trailer",
                      "upgrade", "keep-alive", "host", "expect"})


def _bounded(case: Any) -> None:
    """A generated send waits for its ack at most MAX_WAIT seconds (not the schema's 60).

    Framing and hop-by-hop headers a negative example may carry (``Transfer-Encoding:
    R``) are dropped: aiohttp's parser refuses such a message with a plain 400 before
    any route runs; HTTP framing is the server's, not the API contract's."""
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in _FRAMING}
    query = case.query
    if case.operation.definition.raw.get("operationId") == "streamEvents":
        # A stream is read until its third event (max-stream-events): start it where
        # three are held, or it waits out the request timeout. Its refusals (422 for
        # a bad id or type) are tests/api/test_events.py's.
        case.query = {"after": 0}
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "last-event-id"}
        # The stream the last example left is noticed gone within one poll; a
        # token holds MAX_STREAMS at most (503 overloaded past that, by design).
        time.sleep(events.POLL + 0.2)
        return
    if isinstance(query, dict) and "wait" in query:
        try:
            if float(query["wait"]) > MAX_WAIT:
                query["wait"] = MAX_WAIT
        except (TypeError, ValueError):
            pass  # not a number: the node must refuse it (422), which is checked


@SCHEMA.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_keeps_the_contract(case: Any, live: Live) -> None:
    """No 5xx, a documented status, content type and body, for valid and invalid requests."""
    _bounded(case)
    response = case.call_and_validate(
        base_url=live.url, headers={"Authorization": f"Bearer {live.tokens['admin']}"})
    assert response.status_code < 500, response.text


# -- what generated requests rarely reach: real sends, real CIDs, real partners --------

def _op(method: str, path: str) -> Any:
    return SCHEMA[path][method]


def test_real_documents_and_partners_keep_the_contract(live: Live) -> None:
    """Calls that need state generation cannot guess: a partner's name, a CID, a good send."""
    admin = {"Authorization": f"Bearer {live.tokens['admin']}"}
    sent = _op("POST", "/api/v1/documents").Case(
        query={"wait": 10}, headers={"Idempotency-Key": "live-quote-2"},
        body={"kind": "quote", "to": "Osaka Precision", "body": _quote("Q-LIVE-2")})
    answer = sent.call_and_validate(base_url=live.url, headers=admin)
    assert answer.status_code == 201, answer.text
    assert answer.json()["ack"]["status"] == "received"
    replay = sent.call_and_validate(base_url=live.url, headers=admin)
    assert (replay.status_code, replay.json()["cid"]) == (201, answer.json()["cid"])
    assert replay.headers["idempotent-replayed"] == ["true"]
    queued = _op("POST", "/api/v1/documents").Case(
        body={"kind": "order", "reply_to": answer.json()["cid"], "ref": "PO-LIVE-1"})
    assert queued.call_and_validate(base_url=live.url, headers=admin).status_code == 202
    batch = _op("POST", "/api/v1/batches").Case(
        query={"wait": 10}, headers={"Idempotency-Key": "live-batch-1"},
        body={"documents": [{"kind": "quote", "to": "Osaka Precision",
                             "body": _quote(f"Q-LIVE-B{i}")} for i in range(3)]})
    answers = batch.call_and_validate(base_url=live.url, headers=admin)
    assert answers.status_code == 201, answers.text
    assert [a["ack"]["status"] for a in answers.json()] == ["received"] * 3
    for cid in (live.cid, answer.json()["cid"]):
        for path in ("/api/v1/documents/{cid}", "/api/v1/documents/{cid}/block",
                     "/api/v1/documents/{cid}/thread", "/api/v1/documents/{cid}/match"):
            got = _op("GET", path).Case(path_parameters={"cid": cid})
            assert got.call_and_validate(base_url=live.url, headers=admin).status_code == 200
        ubl = _op("GET", "/api/v1/documents/{cid}/ubl").Case(path_parameters={"cid": cid})
        assert ubl.call_and_validate(base_url=live.url, headers=admin).status_code == 422
        verify = _op("POST", "/api/v1/documents/{cid}/verify").Case(path_parameters={"cid": cid})
        assert verify.call_and_validate(base_url=live.url, headers=admin).json()["ok"] is True
    page = _op("GET", "/api/v1/documents").Case(query={"limit": 1})
    first = page.call_and_validate(base_url=live.url, headers=admin).json()
    assert first["next"]
    after = _op("GET", "/api/v1/documents").Case(query={"limit": 1, "cursor": first["next"]})
    assert after.call_and_validate(base_url=live.url, headers=admin).status_code == 200
    for key in ("Osaka Precision", "osaka", live.partner):
        for method, path in (("GET", "/api/v1/partners/{partner}"),
                             ("GET", "/api/v1/partners/{partner}/usage")):
            one = _op(method, path).Case(path_parameters={"partner": key})
            assert one.call_and_validate(base_url=live.url, headers=admin).status_code == 200
    archive = _op("GET", "/api/v1/archive").Case(query={})
    car = archive.call_and_validate(base_url=live.url, headers=admin)
    assert car.status_code == 200
    check = _op("POST", "/api/v1/archive/verify").Case(
        body=car.content, media_type="application/vnd.ipld.car")
    assert check.call_and_validate(base_url=live.url, headers=admin).json()["ok"] is True


def test_without_a_token_every_operation_that_needs_one_is_401(live: Live) -> None:
    """Each route of the table, called without a token and with a wrong one: 401, problem+json."""
    for route in ROUTES:
        path = route.path.replace("{partner}", "osaka").replace("{cid}", live.cid)
        for headers in ({}, {"Authorization": "Bearer usagi_" + "A" * 43}):
            answer = requests.request(route.method, live.url + path, headers=headers, timeout=20)
            if route.scope is None:
                assert answer.status_code == 200, (route, answer.text)
                continue
            assert answer.status_code == 401, (route, answer.status_code, answer.text)
            assert answer.headers["Content-Type"].startswith("application/problem+json")
            assert answer.json()["code"] == "unauthorized"


def test_each_scope_reaches_exactly_its_routes(live: Live) -> None:
    """A token below a route's scope is 403 forbidden_scope; at or above it, never 401/403."""
    order = ["read", "send", "admin"]
    for route in ROUTES:
        if route.scope is None or route.method != "GET":
            continue  # GETs change nothing: safe to call with each token
        path = route.path.replace("{partner}", "osaka").replace("{cid}", live.cid)
        path += "?q=Q-2026" if route.operation == "searchDocuments" else ""  # q is required
        # An event stream stays open (heartbeats): its status is read, then it is closed.
        stream = route.operation == "streamEvents"
        for scope in order:
            answer = requests.get(live.url + path, timeout=20, stream=stream,
                                  headers={"Authorization": f"Bearer {live.tokens[scope]}"})
            if order.index(scope) < order.index(route.scope):
                assert answer.status_code == 403, (route, scope, answer.text)
                assert answer.json()["code"] == "forbidden_scope"
            elif route.operation == "getDocumentUBL":
                # The live document is a quote: UBL has no type for it (docs/formats.md).
                assert answer.status_code == 422, (route, scope, answer.text)
                assert answer.json()["code"] == "format_unsupported"
            else:
                assert answer.status_code == 200, (route, scope,
                                                   "" if stream else answer.text)
            answer.close()
    send = {"kind": "quote", "to": "osaka", "body": _quote("Q-SCOPE")}
    answer = requests.post(live.url + "/api/v1/documents", json=send, timeout=20,
                           headers={"Authorization": f"Bearer {live.tokens['read']}"})
    assert (answer.status_code, answer.json()["code"]) == (403, "forbidden_scope")


def test_the_schema_names_every_route() -> None:
    """The run above covers every route: the table's routes are the schema's operations."""
    ops = {(op.method.upper(), op.path) for op in
           (result.ok() for result in SCHEMA.get_all_operations())}
    assert ops == {(route.method, route.path) for route in ROUTES}

