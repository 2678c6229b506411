"""Routes for documents: list (cursor pages), get, block, thread, verify, send (Idempotency-Key)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

from aiohttp import web

from kernel import RESPONSES
from kernel.cid import CID
from kernel.errors import UsagiError

from ...node import operations
from ...node.node import SendResult
from ..views import document_json, match_json, page_json, sent_json, thread_json, verification_json
from .calls import Call, Field, member_errors, parse_object
from .client import MAX_WAIT
from .problems import FieldError, ValidationFailedError
from .sending import COALESCER_KEY

_Sent = TypeVar("_Sent")

# -- documents (docs/api.md, "Documents"): list, get, block, thread, verify, send --
#
# Thin routes over ``usagi_p2p.node.operations`` (documents.py, requests.py);
# the JSON shapes are ``usagi_p2p.company.views``'s, the same ``usagi --json``
# prints. Query parameters and bodies are checked in full before anything is
# done: every broken rule is one entry of a ``validation_failed`` problem.
# POST /api/v1/documents with an Idempotency-Key follows operations/requests.py:
# claim the key (one conditional statement), send with the claim (the document
# and the key's CID in one commit), record the answer.

#: A send's JSON body: a document is at most one block (kernel MAX_BLOCK, 1 MiB).
SEND_BODY: Final = 1 << 20
RAW: Final = "application/vnd.ipld.raw"

#: The query parameters of GET /api/v1/documents. ``q`` (full-text search,
#: FTS5) is to join them: add it here and to operations.page_documents.
_LIST_PARAMS: Final = ("direction", "partner", "kind", "status", "since", "until", "cursor",
                       "limit")


def _broken(name: str, code: str, message: str) -> FieldError:
    return {"field": name, "code": code, "message": message}


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    # What ``usagi --json`` prints (cli/common.py, jsonable): an opened document
    # holds CIDs (thread, prev) and may hold bytes.
    if isinstance(value, CID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False, default=_plain),
                        status=status, content_type="application/json")


def _cid(call: Call) -> CID:
    return CID.parse(call.request.match_info["cid"])


async def documents_list(call: Call) -> web.Response:
    query = call.request.query
    errors: list[FieldError] = [_broken(name[:100], "unknown_field", "not a parameter of this "
                                        "route") for name in sorted(set(query) - set(_LIST_PARAMS))]
    errors += [_broken(name, "repeated", "give it once") for name in _LIST_PARAMS
               if len(query.getall(name, [])) > 1]
    direction = query.get("direction")
    if direction is not None and direction not in ("in", "out"):
        errors.append(_broken("direction", "invalid", "in or out"))
    moments: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        text = query.get(name)
        moments[name] = _moment(text) if text is not None else None
        if text is not None and moments[name] is None:
            errors.append(_broken(name, "invalid", "a date (YYYY-MM-DD) or an RFC 3339 time"))
    limit = 50
    if (text := query.get("limit")) is not None:
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= operations.MAX_PAGE):
            errors.append(_broken("limit", "invalid", f"an integer from 1 to {operations.MAX_PAGE}"))
        else:
            limit = int(text)
    for name in ("partner", "kind", "status", "cursor"):
        if len(query.get(name, "")) > 500:
            errors.append(_broken(name, "too_long", "at most 500 characters"))
    if errors:
        raise ValidationFailedError(errors)
    side: Literal["in", "out"] | None = "in" if direction == "in" else (
        "out" if direction == "out" else None)
    page = await operations.page_documents(
        call.node, direction=side, partner=query.get("partner") or None, kind=query.get("kind") or None,
        status=query.get("status") or None, since=moments["since"], until=moments["until"],
        cursor=query.get("cursor"), limit=limit)
    return _json(page_json(page))


async def document_get(call: Call) -> web.Response:
    return _json(document_json(await operations.show_document(call.node, _cid(call))))


async def document_block(call: Call) -> web.Response:
    cid = _cid(call)
    block = await operations.document_block(call.node, cid)
    return web.Response(body=block, content_type=RAW,
                        headers={"Cache-Control": "private, max-age=31536000, immutable",
                                 "ETag": f'"{cid}"'})


async def document_thread(call: Call) -> web.Response:
    return _json({"documents": thread_json(
        await operations.thread_documents(call.node, _cid(call)))})


async def document_match(call: Call) -> web.Response:
    """The three-way match of the document's thread (docs/commerce.md; issue 19)."""
    return _json(match_json(await operations.match_documents(call.node, _cid(call))))


async def document_verify(call: Call) -> web.Response:
    return _json(verification_json(await operations.verify_document(call.node,
                                                                          _cid(call))))


# -- sending ------------------------------------------------------------------

_SEND_FIELDS: Final = (
    Field("kind", str, required=True, max_length=100),
    Field("to", str, max_length=500),
    Field("reply_to", str, max_length=200),
    Field("body", dict),
    Field("ref", str, max_length=200),
    Field("response", str, max_length=20),
    Field("user", str, max_length=200),
    Field("extract", bool),
)


class _Fraction(Exception):
    """A JSON fraction in a body (found by :func:`_as_text`)."""


def _as_text(value: Any) -> Any:
    """``value`` (as json.loads gives it) with every integer as its decimal string;
    _Fraction at the first fraction. The send path's check of every body: no path
    strings are built unless a rule is broken (then :func:`_decimals` says where)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is dict:
        return {k: _as_text(v) for k, v in value.items()}
    if kind is list:
        return [_as_text(v) for v in value]
    if kind is int:
        return str(value)
    if kind is float:
        raise _Fraction
    return value  # True, False, None


def _decimals(value: Any, where: str, errors: list[FieldError]) -> Any:
    """``value`` with every integer as its decimal string; a JSON fraction is one
    broken rule (documents carry decimals as strings: no float ever rounds)."""
    try:
        return _as_text(value)
    except _Fraction:
        return _decimals_where(value, where, errors)


def _decimals_where(value: Any, where: str, errors: list[FieldError]) -> Any:
    if isinstance(value, float):
        errors.append(_broken(where, "invalid", "write numbers as quoted decimals ('12.50')"))
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return {k: _decimals_where(v, f"{where}.{k}", errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals_where(v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    return value


def _send_request(call: Call) -> tuple[dict[str, Any], list[FieldError]]:
    """The body's members that have the right type, and every rule broken."""
    try:
        return parse_object(call, _SEND_FIELDS), []
    except ValidationFailedError as exc:
        if any(e["field"] == "" for e in exc.errors):
            raise  # not a JSON object at all: nothing more to say of its members
        wrong = {e["field"] for e in exc.errors}
        data = json.loads(call.body.decode("utf-8")) if call.body else {}  # empty: {}
        return {k: v for k, v in data.items() if k not in wrong}, list(exc.errors)


def request_hash(data: Mapping[str, Any], route: str = "POST /api/v1/documents") -> bytes:
    """What an Idempotency-Key is bound to: the route and its body, as JSON with
    sorted keys (spacing and member order do not make another request; ``wait``
    is not part of it)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n".encode() + text.encode("utf-8")).digest()


def _idempotency_key(call: Call, errors: list[FieldError]) -> str | None:
    """The ``Idempotency-Key`` header: an sf-string (the IETF draft, quoted) or the
    bare value many clients send; 1-255 visible ASCII characters."""
    headers = call.request.headers.getall("Idempotency-Key", [])
    if not headers:
        return None
    key = headers[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if len(headers) > 1 or not 1 <= len(key) <= 255 or not all(
            "!" <= ch <= "~" for ch in key):
        errors.append(_broken("Idempotency-Key", "invalid",
                              "one key of 1 to 255 visible ASCII characters"))
        return None
    return key


def _wait(call: Call, errors: list[FieldError]) -> float:
    query = call.request.query
    errors += [_broken(name[:100], "unknown_field", "not a parameter of this route")
               for name in sorted(set(query) - {"wait"})]
    text = query.get("wait")
    if text is None:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not (math.isfinite(wait) and 0 <= wait <= MAX_WAIT):
        errors.append(_broken("wait", "invalid", f"seconds from 0 to {MAX_WAIT:g}"))
        return 0.0
    return wait


def _check_send(data: dict[str, Any], errors: list[FieldError]) -> CID | None:
    """The rules ``usagi send`` has on its arguments, each broken one listed."""
    reply_to = None
    if "reply_to" in data:
        try:
            reply_to = CID.parse(data["reply_to"])
        except UsagiError:
            errors.append(_broken("reply_to", "invalid", "not a CID"))
    if "to" not in data and "reply_to" not in data:
        errors.append(_broken("to", "required", "say who gets it: to (a partner), or "
                              "reply_to (a document to answer)"))
    if "body" not in data and "reply_to" not in data:
        errors.append(_broken("body", "required", "give the document's body, or answer one "
                              "with reply_to"))
    if "body" not in data and data.get("kind") == "order_response" and "response" not in data:
        errors.append(_broken("response", "required", "an order_response says accept, reject "
                              "or counter (or give its body)"))
    if "response" in data and data["response"] not in RESPONSES:
        errors.append(_broken("response", "invalid", "accept, reject or counter"))
    if "body" in data:
        data["body"] = _decimals(data["body"], "body", errors)
    return reply_to


async def _outgoing(call: Call, data: dict[str, Any], reply_to: CID | None
                    ) -> operations.Outgoing:
    """The document a checked request sends, resolved (its partner, an answer's
    body filled from ``reply_to``): as ``usagi send`` would send it."""
    fields: dict[str, Any] = {k: data[k] for k in ("ref", "response") if k in data}
    body = data.get("body", {}) if "body" in data or reply_to is None else None
    return await operations.outgoing(call.node, data["kind"], body, to=data.get("to"),
                                     reply_to=reply_to, fields=fields, user=data.get("user"),
                                     extract=bool(data.get("extract")))


async def _sent(call: Call, data: dict[str, Any], reply_to: CID | None,
                claim: operations.Claimed | None) -> SendResult:
    node = call.node
    if claim is not None and claim.cid is not None:
        return await operations.sent_document(node, claim.cid)  # sent by an abandoned attempt
    item = await _outgoing(call, data, reply_to)
    try:
        return (await call.request.app[COALESCER_KEY].send(
            [item], claim.claim if claim is not None else None))[0]
    except operations.Refused as refused:
        raise refused.errors[0][1] from None  # its one document's own error, as one send


def _answer(status: int, text: str, cid: CID | None, replayed: bool = False) -> web.Response:
    headers = {"Location": f"/api/v1/documents/{cid}"} if cid is not None else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"  # as Stripe says it
    return web.Response(text=text, status=status, content_type="application/json",
                        headers=headers)


async def document_send(call: Call) -> web.Response:
    """Send a document: 202 with its CID at once, or with ``?wait`` 201 and the ack
    once it came (202 if it did not in time). The delivery loop delivers it."""
    data, errors = _send_request(call)
    digest = request_hash(data)  # the request as sent, before its numbers become decimals
    wait = _wait(call, errors)
    key = _idempotency_key(call, errors)
    reply_to = _check_send(data, errors)
    if errors:
        raise ValidationFailedError(errors)
    node = call.node

    async def send(claim: operations.Claimed | None) -> SendResult:
        result = await _sent(call, data, reply_to, claim)
        node.wake.set()  # the serving node's delivery loop sends it now
        return result

    async def answered(result: SendResult, fresh: bool) -> tuple[int, str]:
        delivery = (await operations.await_ack(node, result.cid, wait, fresh=fresh)
                    if wait else None)
        status = 201 if delivery is not None and delivery.ack is not None else 202
        return status, json.dumps(sent_json(result, delivery), ensure_ascii=False, default=_plain)

    def unanswered(result: SendResult) -> str:
        return json.dumps(sent_json(result, None), ensure_ascii=False, default=_plain)

    return await _under_key(call, key, digest, wait, send, answered, unanswered,
                            location=lambda result: result.cid)


async def _under_key(call: Call, key: str | None, digest: bytes, wait: float,
                     send: Callable[[operations.Claimed | None], Awaitable[_Sent]],
                     answered: Callable[[_Sent, bool], Awaitable[tuple[int, str]]],
                     unanswered: Callable[[_Sent], str], *,
                     location: Callable[[_Sent], CID] | None = None) -> web.Response:
    """A send under its Idempotency-Key (docs/api.md, 2.3), for one document or a
    batch: the key claimed first (a replay answers as the first attempt did), the
    send, its answer; on a failure the claim is released while nothing was sent,
    else finished with 202 and the sent documents without acks (a key that names
    documents is kept); the answer stored under the key."""
    node = call.node
    claim: operations.Claimed | None = None
    if key is not None:
        assert call.token is not None  # the route needs one
        started = await operations.claim_request(node, call.token.id, call.token.name, key,
                                                 digest, hold=wait)
        if isinstance(started, operations.Replay):
            return _answer(started.status, started.answer,
                           started.cid if location is not None else None, replayed=True)
        claim = started
    sent: _Sent | None = None
    try:
        sent = await send(claim)
        # ``fresh``: sent by this request now, not by an attempt before it (its
        # ack is then waited for in memory first: Node.wait_for_ack).
        status, text = await answered(sent, claim is None or not claim.cids)
    except BaseException:
        if claim is not None and sent is None:
            await operations.release_request(node, claim.claim)
        elif claim is not None and sent is not None:  # sent; the wait failed
            await operations.finish_request(node, claim.claim, 202, unanswered(sent))
        raise
    if claim is not None:
        await operations.finish_request(node, claim.claim, status, text)
    return _answer(status, text, location(sent) if location is not None else None)


# -- sending many (POST /api/v1/batches) ---------------------------------------

#: Documents one batch request may send (an ERP's month-end run sends several batches).
MAX_BATCH: Final = 100
#: A batch's JSON body: 100 typical documents fit many times over; a batch of
#: large documents is sent in smaller batches (or one by one, 1 MiB each).
BATCH_BODY: Final = 8 << 20
_BATCH_ROUTE: Final = "POST /api/v1/batches"


def _batch_items(call: Call, errors: list[FieldError]
                 ) -> tuple[list[dict[str, Any]], list[CID | None], bytes]:
    """The batch's documents (each checked as POST /api/v1/documents checks its
    body, every broken rule listed as ``documents[i].field``), their ``reply_to``
    CIDs, and the hash an Idempotency-Key is bound to."""
    data = parse_object(call, (Field("documents", list, required=True),))
    digest = request_hash(data, _BATCH_ROUTE)  # as sent: before numbers become decimals
    documents: list[Any] = data["documents"]
    if not documents:
        errors.append(_broken("documents", "required", "give at least one document"))
    if len(documents) > MAX_BATCH:
        errors.append(_broken("documents", "too_many", f"at most {MAX_BATCH} documents a "
                              "batch; send the rest in another"))
        return [], [], digest  # not looked into: nothing of it is sent
    items: list[dict[str, Any]] = []
    replies: list[CID | None] = []
    for i, item in enumerate(documents):
        where = f"documents[{i}]"
        if not isinstance(item, dict):
            errors.append(_broken(where, "wrong_type", "must be object"))
            items.append({})
            replies.append(None)
            continue
        broken = member_errors(item, _SEND_FIELDS)
        wrong = {e["field"] for e in broken}
        typed = {k: v for k, v in item.items() if k not in wrong}
        reply_to = _check_send(typed, broken)
        errors += [_broken(f"{where}.{e['field']}", e["code"], e["message"]) for e in broken]
        items.append(typed)
        replies.append(reply_to)
    return items, replies, digest


async def _batch_sent(call: Call, items: list[dict[str, Any]], replies: list[CID | None],
                      claim: operations.Claimed | None) -> list[SendResult]:
    node = call.node
    if claim is not None and claim.cids:  # sent by an abandoned attempt: answer with them
        return [await operations.sent_document(node, cid) for cid in claim.cids]
    refused: dict[int, Exception] = {}
    outgoing: list[tuple[int, operations.Outgoing]] = []
    for i, (data, reply_to) in enumerate(zip(items, replies, strict=True)):
        try:
            outgoing.append((i, await _outgoing(call, data, reply_to)))
        except UsagiError as exc:  # a reply_to not held, an answer with nothing to carry
            refused[i] = exc
    if not refused:
        try:
            return await call.request.app[COALESCER_KEY].send(
                [item for _, item in outgoing], claim.claim if claim is not None else None)
        except operations.Refused as exc:
            found = exc.errors
    else:  # refused anyway: what else would be, so that every broken document is listed
        found = await operations.refusals(node, [item for _, item in outgoing])
    refused.update({outgoing[j][0]: why for j, why in found})
    errors: list[FieldError] = []
    for i in sorted(refused):
        why = refused[i]
        if not isinstance(why, UsagiError):
            raise why  # not the document's fault: a failure of the node
        errors.append(_broken(f"documents[{i}]", "refused", f"{why.code}: {why}"))
    raise ValidationFailedError(errors)


async def documents_send_batch(call: Call) -> web.Response:
    """Send up to MAX_BATCH documents in one request, all or none: every document is
    checked before any is sent. 202 with the single route's answers in order, or
    with ``?wait`` 201 once every ack came (202 if not all did in time)."""
    errors: list[FieldError] = []
    items, replies, digest = _batch_items(call, errors)
    wait = _wait(call, errors)
    key = _idempotency_key(call, errors)
    if errors:
        raise ValidationFailedError(errors)
    node = call.node

    async def send(claim: operations.Claimed | None) -> list[SendResult]:
        results = await _batch_sent(call, items, replies, claim)
        node.wake.set()
        return results

    async def answered(results: list[SendResult], fresh: bool) -> tuple[int, str]:
        deliveries: list[operations.Delivery | None] = [None] * len(results)
        if wait:
            deliveries = list(await asyncio.gather(*(
                operations.await_ack(node, r.cid, wait, fresh=fresh) for r in results)))
        acked = all(d is not None and d.ack is not None for d in deliveries)
        return 201 if acked else 202, json.dumps(
            [sent_json(r, d) for r, d in zip(results, deliveries, strict=True)],
            ensure_ascii=False, default=_plain)

    def unanswered(results: list[SendResult]) -> str:
        return json.dumps([sent_json(r, None) for r in results], ensure_ascii=False,
                          default=_plain)

    return await _under_key(call, key, digest, wait, send, answered, unanswered)
