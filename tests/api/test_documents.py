"""The documents over the local API, between two real nodes on 127.0.0.1 (docs/api.md, "Documents").

Kanto sends through its API, Osaka reads (and answers) through its own: list
with cursor pages, get, block, thread, verify, send with ``?wait``, answers by
``reply_to`` only, Idempotency-Key (also raced, and after a crash either side
of the send), scopes, and bad input that changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import aiohttp
import pytest

from kernel.cid import CID
from usagi_p2p.company.api.routes import request_hash
from usagi_p2p.node import operations as ops
from usagi_p2p.node.errors import IdempotencyInProgressError
from usagi_p2p.node.operations.requests import LEASE

from .conftest import PROBLEM, Api, Two, conforms, wait_until

DOCS = "/api/v1/documents"
QUOTE = {"ref": "Q-2026-001", "currency": "JPY", "total": "12000",
         "lines": [{"text": "六角ナット M6", "qty": "1000", "unit": "pcs", "unit_price": "12",
                    "amount": "12000"}]}

jsonschema = pytest.importorskip("jsonschema")


async def inbox(api: Api, **params: str) -> list[dict[str, Any]]:
    """Every document of ``api``'s listing, page by page."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        status, _, page = await api.call("GET", DOCS, token=api.tokens["read"], params=query)
        assert status == 200, page
        found += page["documents"]
        if (cursor := page["next"]) is None:
            return found


async def held(api: Api, ref: str) -> int:
    return sum(d["ref"] == ref for d in await inbox(api))


async def test_send_wait_then_get_block_thread_verify_and_answer_by_reply_to(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    status, headers, sent = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                             params={"wait": "5"},
                                             json={"kind": "quote", "to": "Osaka Precision",
                                                   "body": {**QUOTE, "lines": [
                                                       {**QUOTE["lines"][0], "qty": 1000}]}})
    assert status == 201, sent
    conforms(sent, "SendAnswer")
    assert sent["ack"]["status"] == "received" and sent["ack"]["by"] == osaka.node.did
    cid = sent["cid"]
    assert headers["Location"] == f"{DOCS}/{cid}"

    # Osaka reads it through its own API, as `usagi --json show` shows it.
    status, _, listed = await osaka.call("GET", DOCS, token=osaka.tokens["read"],
                                         params={"direction": "in", "kind": "quote"})
    assert status == 200 and [d["cid"] for d in listed["documents"]] == [cid]
    conforms(listed, "DocumentList")
    assert listed["documents"][0]["partner"] == {"did": kanto.node.did,
                                                 "name": "Kanto Machine Tools"}
    status, _, shown = await osaka.call("GET", f"{DOCS}/{cid}", token=osaka.tokens["read"])
    assert status == 200 and shown["document"]["lines"][0]["text"] == "六角ナット M6"
    assert shown["document"]["lines"][0]["qty"] == "1000"  # a JSON integer, sent as a decimal
    conforms(shown, "Document")
    status, _, on_kanto = await kanto.call("GET", f"{DOCS}/{cid}", token=kanto.tokens["read"])
    assert on_kanto["ack"]["status"] == "received" and on_kanto["direction"] == "out"

    # The block as held: it hashes to the CID.
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{osaka.local.port}{DOCS}/{cid}/block",
            headers={"Authorization": f"Bearer {osaka.tokens['read']}"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/vnd.ipld.raw"
        block = await resp.read()
    assert CID.for_block(block) == CID.parse(cid)
    assert hashlib.sha256(block).digest() == CID.parse(cid).digest

    # Osaka orders what was quoted: reply_to and a reference only.
    status, _, order = await osaka.call("POST", DOCS, token=osaka.tokens["send"],
                                        params={"wait": "5"},
                                        json={"kind": "order", "reply_to": cid, "ref": "PO-1"})
    assert status == 201 and order["ack"]["by"] == kanto.node.did, order
    status, _, got = await kanto.call("GET", f"{DOCS}/{order['cid']}", token=kanto.tokens["read"])
    assert status == 200, got
    assert got["document"]["lines"] == shown["document"]["lines"]
    assert (got["document"]["ref"], got["document"]["prev"]) == ("PO-1", [cid])

    status, _, thread = await kanto.call("GET", f"{DOCS}/{order['cid']}/thread",
                                         token=kanto.tokens["read"])
    assert status == 200
    conforms(thread, "Thread")
    assert [(d["cid"], d["kind"], d["direction"]) for d in thread["documents"]] == [
        (cid, "quote", "out"), (order["cid"], "order", "in")]

    status, _, checks = await kanto.call("POST", f"{DOCS}/{cid}/verify",
                                         token=kanto.tokens["read"])
    assert status == 200 and checks["ok"], checks
    conforms(checks, "Verification")
    assert [c["name"] for c in checks["checks"]] == [
        "ledger", "block", "signature", "parties", "digest", "thread", "ack"]
    facts = {c["name"]: c["facts"] for c in checks["checks"]}
    assert facts["signature"] == {"signer": kanto.node.did}
    assert (facts["parties"]["from"], facts["parties"]["to"]) == (kanto.node.did, osaka.node.did)
    assert facts["ack"]["by"] == osaka.node.did and facts["ack"]["status"] == "received"


async def test_pages_list_every_document_once_while_more_arrive(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    refs = [f"Q-{i:02d}" for i in range(12)]
    await kanto.node.send_many([("quote", "Osaka Precision", {**QUOTE, "ref": r}, None)
                                for r in refs])

    async def arrived() -> bool:
        return len(await inbox(osaka, direction="in")) == 12

    await wait_until(arrived, "the twelve quotes to arrive")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"direction": "in", "limit": "5", **({"cursor": cursor} if cursor else {})}
        status, _, page = await osaka.call("GET", DOCS, token=osaka.tokens["read"],
                                           params=query)
        assert status == 200 and len(page["documents"]) <= 5
        seen += [d["ref"] for d in page["documents"]]
        pages += 1
        if pages == 1:  # one more arrives between the pages: it comes before the first
            sent = await ops.send(kanto.node, "quote", {**QUOTE, "ref": "Q-late"},
                                  to="Osaka Precision")
            assert (await kanto.node.wait_for_ack(sent.cid, 30)) is not None
        if (cursor := page["next"]) is None:
            break
    assert pages == 3 and sorted(seen) == refs  # each once, newest first
    assert seen == sorted(seen, reverse=True)
    assert [d["ref"] for d in await inbox(osaka)][0] == "Q-late"
    # Filters: since/until bound the recording time; partner and status filter.
    assert await inbox(osaka, until="2000-01-01") == []
    assert len(await inbox(osaka, partner="Kanto", status="received", since="2000-01-01")) == 13


async def test_bad_cursors_and_parameters_are_typed_problems(api: Api) -> None:
    read = api.tokens["read"]
    for cursor in ("nope", "W10", "WzEsMSwibm90LWEtY2lkIl0", "x" * 300):
        status, headers, body = await api.call("GET", DOCS, token=read,
                                               params={"cursor": cursor})
        assert (status, headers["Content-Type"].split(";")[0]) == (400, PROBLEM)
        assert body["code"] == "invalid_cursor", body
    status, _, body = await api.call("GET", DOCS, token=read, params={
        "limit": "501", "direction": "sideways", "since": "yesterday", "q": "ナット"})
    assert status == 422 and body["code"] == "validation_failed"
    assert {e["field"] for e in body["errors"]} == {"limit", "direction", "since", "q"}
    status, _, body = await api.call("GET", f"{DOCS}/{CID.for_block(b'x')}", token=read)
    assert (status, body["code"]) == (404, "unknown_document")
    status, _, body = await api.call("GET", f"{DOCS}/not-a-cid/thread", token=read)
    assert (status, body["code"]) == (400, "malformed")


async def test_send_refusals_list_every_rule_and_send_nothing(two: Two) -> None:
    kanto = two.kanto
    status, _, body = await kanto.call("POST", DOCS, token=kanto.tokens["read"],
                                       json={"kind": "quote", "to": "Osaka", "body": QUOTE})
    assert (status, body["code"]) == (403, "forbidden_scope")
    status, _, body = await kanto.call(
        "POST", DOCS, token=kanto.tokens["send"], params={"wait": "99", "x": "1"},
        headers={"Idempotency-Key": "has space"},
        json={"kind": 5, "reply_to": "nope", "response": "maybe", "bogus": 1,
              "body": {"lines": [{"qty": 1.5}, {"qty": 2, "unit_price": 0.5}]}})
    assert status == 422 and body["code"] == "validation_failed"
    assert {e["field"] for e in body["errors"]} == {
        "kind", "bogus", "reply_to", "response", "body.lines[0].qty",
        "body.lines[1].unit_price", "wait", "x", "Idempotency-Key"}, body
    status, _, body = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                       json={"kind": "order_response"})
    assert {e["field"] for e in body["errors"]} == {"to", "body", "response"}
    status, _, body = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                       json={"kind": "quote", "to": "Nobody", "body": QUOTE})
    assert (status, body["code"]) == (403, "unknown_partner")
    status, _, body = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                       json={"kind": "order", "reply_to": str(CID.for_block(b"x"))})
    assert (status, body["code"]) == (404, "unknown_document")
    assert await inbox(kanto) == []


async def test_an_idempotent_retry_gets_the_same_cid_and_sends_once(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    send = kanto.tokens["send"]
    request = {"kind": "quote", "to": "Osaka Precision", "body": {**QUOTE, "ref": "Q-idem"}}
    key = {"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"}
    first = await kanto.call("POST", DOCS, token=send, headers=key, json=request)
    assert first[0] == 202 and "Idempotent-Replayed" not in first[1]
    # The same request again, its members in another order: the same answer, nothing sent.
    # (The key quoted as the IETF draft's sf-string is the same key.)
    status, headers, body = await kanto.call(
        "POST", DOCS, token=send, params={"wait": "1"},
        headers={"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"',
                 "Content-Type": "application/json"},
        data=json.dumps(dict(reversed(request.items()))))
    assert (status, body) == (202, first[2]) and headers["Idempotent-Replayed"] == "true"
    # The same key with another request is refused; so is nothing else.
    status, _, body = await kanto.call("POST", DOCS, token=send, headers=key,
                                       json={**request, "to": "Osaka"})
    assert (status, body["code"]) == (422, "idempotency_key_reused")
    # Another token's key of the same name is its own.
    other = kanto.store.create("erp-2", "send")
    status, _, body = await kanto.call("POST", DOCS, token=other, headers=key, json=request)
    assert status == 202 and body["cid"] != first[2]["cid"]

    async def both_arrived() -> bool:
        return await held(osaka, "Q-idem") == 2

    await wait_until(both_arrived, "the two quotes to arrive")
    assert await held(kanto, "Q-idem") == 2


async def test_two_concurrent_posts_with_one_key_send_one_document(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    request = {"kind": "quote", "to": "Osaka Precision", "body": {**QUOTE, "ref": "Q-race"}}
    answers = await asyncio.gather(*[
        kanto.call("POST", DOCS, token=kanto.tokens["send"], params={"wait": "2"},
                   headers={"Idempotency-Key": "race-1"}, json=request) for _ in range(4)])
    ok = [body for status, _, body in answers if status in (201, 202)]
    busy = [body for status, _, body in answers if status == 409]
    assert ok and len(ok) + len(busy) == 4, answers
    assert {b["cid"] for b in ok} == {ok[0]["cid"]}
    assert all(b["code"] == "idempotency_in_progress" for b in busy)
    assert await held(kanto, "Q-race") == 1
    await kanto.node.wait_for_ack(CID.parse(ok[0]["cid"]), 30)
    assert await held(osaka, "Q-race") == 1
    # Once answered, a retry replays the answer.
    status, headers, body = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                             headers={"Idempotency-Key": "race-1"},
                                             json=request)
    assert status in (201, 202) and body["cid"] == ok[0]["cid"]
    assert headers["Idempotent-Replayed"] == "true"


async def test_a_crash_either_side_of_the_send_never_sends_twice(two: Two) -> None:
    """An attempt that died holding its key (lease run out): before its send the
    retry sends; after it, the retry answers with that document and sends nothing."""
    kanto = two.kanto
    token = kanto.store.check(kanto.tokens["send"])
    assert token is not None
    for ref, sent_before in (("Q-crash-before", False), ("Q-crash-after", True)):
        request = {"kind": "quote", "to": "Osaka Precision", "body": {**QUOTE, "ref": ref}}
        claimed = await ops.claim_request(kanto.node, token.id, token.name, ref,
                                          request_hash(request), hold=-LEASE - 1)
        assert isinstance(claimed, ops.Claimed) and claimed.cid is None
        first = None
        if sent_before:  # the document and the key's CID in one commit; then the crash
            first = await ops.send(kanto.node, "quote", request["body"], to="Osaka Precision",
                                   claim=claimed.claim)
        status, _, body = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                           headers={"Idempotency-Key": ref}, json=request)
        assert status == 202, body
        if first is not None:
            assert body["cid"] == str(first.cid)
        assert await held(kanto, ref) == 1
    # The abandoned attempt cannot record a document once the key is taken over.
    request = {"kind": "quote", "to": "Osaka Precision", "body": {**QUOTE, "ref": "Q-late"}}
    stale = await ops.claim_request(kanto.node, token.id, token.name, "late",
                                    request_hash(request), hold=-LEASE - 1)
    assert isinstance(stale, ops.Claimed)
    status, _, body = await kanto.call("POST", DOCS, token=kanto.tokens["send"],
                                       headers={"Idempotency-Key": "late"}, json=request)
    assert status == 202
    with pytest.raises(IdempotencyInProgressError):
        await ops.send(kanto.node, "quote", request["body"], to="Osaka Precision",
                       claim=stale.claim)
    assert await held(kanto, "Q-late") == 1
