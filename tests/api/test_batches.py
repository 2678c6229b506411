"""Many documents at once over the local API, between two real nodes on 127.0.0.1.

``POST /api/v1/batches`` (docs/api.md, "Send many at once"): all sent with
their acks, or none (every broken rule listed with its item's index), one
Idempotency-Key for the batch, at most MAX_BATCH documents, scope send. And
the coalescing of ``POST /api/v1/documents``: concurrent requests share one
ledger transaction, each with its own CID, findings and errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kernel.cid import CID
from usagi_p2p.company.api.documents import MAX_BATCH
from usagi_p2p.company.api.routes import request_hash
from usagi_p2p.company.api.sending import COALESCER_KEY, Coalescer
from usagi_p2p.node import operations as ops
from usagi_p2p.node.operations.requests import LEASE

from .conftest import PROBLEM, Api, Two, conforms, wait_until

BATCHES = "/api/v1/batches"
DOCS = "/api/v1/documents"


def invoice(ref: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "invoice", "to": "Osaka Precision",
            "body": {"ref": ref, "currency": "JPY", "total": 12000,
                     "lines": [{"text": "六角ナット M6", "qty": 1000, "unit": "pcs",
                                "unit_price": "12", "amount": "12000"}], **extra}}


async def refs(api: Api) -> list[str]:
    status, _, page = await api.call("GET", DOCS, token=api.tokens["read"],
                                     params={"limit": "500"})
    assert status == 200, page
    return sorted(d["ref"] for d in page["documents"])


def coalescer(api: Api) -> Coalescer:
    assert api.local.app is not None
    return api.local.app[COALESCER_KEY]


async def test_a_batch_is_sent_in_order_and_answered_once_every_ack_came(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    batch = {"documents": [invoice(f"INV-{i:03d}") for i in range(5)]}
    before = coalescer(kanto).flushes
    status, headers, answers = await kanto.call("POST", BATCHES, token=kanto.tokens["send"],
                                                params={"wait": "10"}, json=batch)
    assert status == 201, answers
    assert headers["Content-Type"].startswith("application/json")
    assert len(answers) == 5 and len({a["cid"] for a in answers}) == 5
    for answer in answers:
        conforms(answer, "SendAnswer")
        assert answer["ack"]["status"] == "received"
    assert coalescer(kanto).flushes == before + 1  # one transaction for the five
    # In order: the i-th answer is the i-th document.
    for i, answer in enumerate(answers):
        status, _, document = await kanto.call("GET", f"{DOCS}/{answer['cid']}",
                                               token=kanto.tokens["read"])
        assert status == 200 and document["document"]["ref"] == f"INV-{i:03d}", document
    assert await refs(osaka) == [f"INV-{i:03d}" for i in range(5)]
    # Without ?wait: 202 at once, each answer its CID.
    status, _, answers = await kanto.call("POST", BATCHES, token=kanto.tokens["send"],
                                          json={"documents": [invoice("INV-100")]})
    assert status == 202 and "ack" not in answers[0], answers


async def test_one_broken_document_refuses_the_batch_and_lists_every_rule(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    send = kanto.tokens["send"]
    batch = {"documents": [
        invoice("INV-ok-1"),
        {"kind": "invoice", "to": "Osaka Precision", "body": {"total": 1.5}, "bogus": 1},
        "not an object",
        invoice("INV-ok-2"),
    ]}
    status, headers, body = await kanto.call("POST", BATCHES, token=send, json=batch,
                                             params={"wait": "99"})
    assert (status, body["code"]) == (422, "validation_failed")
    assert headers["Content-Type"].startswith(PROBLEM)
    assert {e["field"] for e in body["errors"]} == {
        "documents[1].body.total", "documents[1].bogus", "documents[2]", "wait"}, body
    # Rules only the node can check (an unknown partner, a body the kernel refuses,
    # an answer to a document it does not hold): listed too, nothing sent.
    unknown = str(CID.for_block(b"none"))
    status, _, body = await kanto.call("POST", BATCHES, token=send, json={"documents": [
        invoice("INV-ok-3"), {**invoice("INV-x"), "to": "Nobody"},
        {"kind": "order", "reply_to": unknown}]})
    assert status == 422, body
    assert [(e["field"], e["code"], e["message"].split(":")[0]) for e in body["errors"]] == [
        ("documents[1]", "refused", "unknown_partner"),
        ("documents[2]", "refused", "unknown_document")]
    status, _, body = await kanto.call("POST", BATCHES, token=send, json={"documents": [
        invoice("INV-ok-4"), invoice("INV-y", currency="JPYX"), invoice("INV-z", lines="x")]})
    assert status == 422, body
    assert [(e["field"], e["message"].split(":")[0]) for e in body["errors"]] == [
        ("documents[1]", "invalid_document"), ("documents[2]", "invalid_document")]
    conforms(body, "Problem")
    await asyncio.sleep(0.3)
    assert await refs(kanto) == [] and await refs(osaka) == []


async def test_too_many_documents_is_a_typed_problem_and_sends_nothing(api: Api) -> None:
    batch = {"documents": [invoice(f"INV-{i}") for i in range(MAX_BATCH + 1)]}
    status, _, body = await api.call("POST", BATCHES, token=api.tokens["send"], json=batch)
    assert (status, body["code"]) == (422, "validation_failed")
    assert body["errors"] == [{"field": "documents", "code": "too_many",
                               "message": f"at most {MAX_BATCH} documents a batch; send the "
                                          "rest in another"}]
    status, _, body = await api.call("POST", BATCHES, token=api.tokens["send"],
                                     json={"documents": []})
    assert (status, body["errors"][0]["field"]) == (422, "documents")
    assert await refs(api) == []


async def test_a_read_token_cannot_send_a_batch(api: Api) -> None:
    status, _, body = await api.call("POST", BATCHES, token=api.tokens["read"],
                                     json={"documents": [invoice("INV-r")]})
    assert (status, body["code"]) == (403, "forbidden_scope")
    status, _, body = await api.call("POST", BATCHES, json={"documents": [invoice("INV-r")]})
    assert (status, body["code"]) == (401, "unauthorized")
    assert await refs(api) == []


async def test_an_idempotent_batch_retry_gets_the_same_cids_and_sends_once(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    send = kanto.tokens["send"]
    batch = {"documents": [invoice(f"INV-K{i}") for i in range(3)]}
    key = {"Idempotency-Key": "month-end-2026-12"}
    status, headers, first = await kanto.call("POST", BATCHES, token=send, headers=key,
                                              json=batch)
    assert status == 202 and "Idempotent-Replayed" not in headers
    status, headers, again = await kanto.call("POST", BATCHES, token=send, headers=key,
                                              params={"wait": "1"}, json=batch)
    assert (status, again) == (202, first) and headers["Idempotent-Replayed"] == "true"
    # Another body under the same key is refused, and sends nothing.
    status, _, body = await kanto.call("POST", BATCHES, token=send, headers=key,
                                       json={"documents": batch["documents"][:2]})
    assert (status, body["code"]) == (422, "idempotency_key_reused")
    # The single route's key space is the token's too: the same key there is another request.
    status, _, body = await kanto.call("POST", DOCS, token=send, headers=key,
                                       json=batch["documents"][0])
    assert (status, body["code"]) == (422, "idempotency_key_reused")

    async def arrived() -> bool:
        return len(await refs(osaka)) == 3

    await wait_until(arrived, "the three invoices to arrive")
    assert await refs(kanto) == ["INV-K0", "INV-K1", "INV-K2"]


async def test_concurrent_sends_share_a_transaction_and_keep_their_own_errors(two: Two) -> None:
    """POST /api/v1/documents coalesced: a bad neighbour fails only itself."""
    kanto, osaka = two.kanto, two.osaka
    send = kanto.tokens["send"]
    before = coalescer(kanto).flushes
    requests = [invoice(f"INV-C{i:02d}") for i in range(12)]
    requests[3] = invoice("INV-bad", currency="JPYX")  # passes the API's rules, not the kernel's
    requests[7] = {**invoice("INV-who"), "to": "Nobody"}
    answers = await asyncio.gather(*(
        kanto.call("POST", DOCS, token=send, params={"wait": "10"},
                   headers={"Idempotency-Key": f"c-{i}"}, json=r)
        for i, r in enumerate(requests)))
    for i, (status, _, body) in enumerate(answers):
        if i == 3:
            assert (status, body["code"]) == (422, "invalid_document"), body
        elif i == 7:
            assert (status, body["code"]) == (403, "unknown_partner"), body
        else:
            assert status == 201 and body["ack"]["status"] == "received", body
    good = [body["cid"] for i, (_, _, body) in enumerate(answers) if i not in (3, 7)]
    assert len(set(good)) == 10
    assert coalescer(kanto).flushes - before < 10  # fewer transactions than documents
    assert len(await refs(osaka)) == 10
    # The refused ones' keys sent nothing: a retry after a fix sends.
    status, _, body = await kanto.call("POST", DOCS, token=send, headers={"Idempotency-Key": "c-3"},
                                       json=invoice("INV-bad", currency="JPYX"))
    assert (status, body["code"]) == (422, "invalid_document")


async def test_a_batch_whose_attempt_died_after_sending_is_answered_with_its_cids(two: Two
                                                                                  ) -> None:
    """The documents and the key's CIDs in one commit, then the crash (its lease ran
    out): the retry answers with those documents, in order, and sends nothing."""
    kanto = two.kanto
    token = kanto.store.check(kanto.tokens["send"])
    assert token is not None
    batch = {"documents": [invoice(f"INV-D{i}") for i in range(3)]}
    claimed = await ops.claim_request(kanto.node, token.id, token.name, "died",
                                      request_hash(batch, "POST /api/v1/batches"),
                                      hold=-LEASE - 1)
    assert isinstance(claimed, ops.Claimed) and claimed.cids == ()
    items = [ops.Outgoing("invoice", "Osaka Precision",
                          {**d["body"], "total": "12000", "lines": [
                              {**d["body"]["lines"][0], "qty": "1000"}]})
             for d in batch["documents"]]
    [sent] = await ops.send_groups(kanto.node, [(items, claimed.claim)])
    assert not isinstance(sent, Exception)
    status, _, answers = await kanto.call("POST", BATCHES, token=kanto.tokens["send"],
                                          headers={"Idempotency-Key": "died"}, json=batch)
    assert status == 202, answers
    assert [a["cid"] for a in answers] == [str(r.cid) for r in sent]
    assert await refs(kanto) == ["INV-D0", "INV-D1", "INV-D2"]
