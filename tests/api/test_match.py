"""``GET /api/v1/documents/{cid}/match`` and the ``arithmetic`` of a document, between two real
nodes on 127.0.0.1 (docs/api.md, docs/commerce.md): documents sent through the API, the match
read through each side's own API, the answers held to openapi.json."""

from __future__ import annotations

from typing import Any

import pytest

from kernel.cid import CID

from .conftest import PROBLEM, Api, Two, conforms

DOCS = "/api/v1/documents"
BOLT = {"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "12.50"}

jsonschema = pytest.importorskip("jsonschema")


async def send(api: Api, kind: str, body: dict[str, Any], *, to: str | None = None,
               reply_to: str | None = None) -> str:
    request: dict[str, Any] = {"kind": kind, "body": body}
    request.update({"to": to} if to else {"reply_to": reply_to})
    status, _, sent = await api.call("POST", DOCS, token=api.tokens["send"],
                                     params={"wait": "10"}, json=request)
    assert status == 201 and sent["ack"]["status"] == "received", sent
    return str(sent["cid"])


async def test_the_match_of_an_over_billed_thread(two: Two) -> None:
    kanto, osaka = two.kanto, two.osaka
    quote = await send(kanto, "quote", {"ref": "Q-1", "currency": "JPY", "lines": [BOLT]},
                       to="Osaka Precision")
    order = await send(osaka, "order", {"ref": "PO-1", "currency": "JPY", "lines": [BOLT]},
                       reply_to=quote)
    note = await send(kanto, "delivery_note", {"ref": "DN-1", "lines": [{**BOLT, "qty": "480"}]},
                      reply_to=order)
    invoice = await send(kanto, "invoice", {
        "ref": "INV-1", "currency": "JPY", "rounding": "down",
        "lines": [{**BOLT, "amount": "6250", "tax_category": "S", "tax_rate": "10"}],
        "tax": [{"category": "S", "rate": "10", "taxable": "6250", "amount": "625"}],
        "net": "6250", "tax_total": "625", "total": "6875",
        "parties": {"from": {"name": "Kanto Machine Tools", "tax_id": "T5040001082442"}}},
        reply_to=note)

    for api in (osaka, kanto):
        status, _, match = await api.call("GET", f"{DOCS}/{invoice}/match",
                                          token=api.tokens["read"])
        assert status == 200, match
        conforms(match, "Match")
        assert match["ok"] is False
        assert [d["cid"] for d in match["documents"]] == [quote, order, note, invoice]
        [item] = match["items"]
        assert (item["quoted"], item["ordered"], item["delivered"], item["invoiced"],
                item["ordered_price"]) == ("500", "500", "480", "500", "12.50")
        assert item["summary"].endswith("20 pcs billed but not delivered")
        assert [f["code"] for f in match["findings"] if f["level"] == "warning"] == \
            ["billed_not_delivered"]

    # The invoice's own figures add up; a wrong one would be listed, never refused.
    status, _, shown = await osaka.call("GET", f"{DOCS}/{invoice}", token=osaka.tokens["read"])
    assert status == 200 and shown["arithmetic"] == []
    conforms(shown, "Document")
    wrong = await send(kanto, "invoice", {"ref": "INV-2", "currency": "JPY", "net": "100",
                                          "lines": [{"text": "bolt", "amount": "90"}]},
                       to="Osaka Precision")
    status, _, shown = await osaka.call("GET", f"{DOCS}/{wrong}", token=osaka.tokens["read"])
    assert shown["arithmetic"] == [{"code": "net", "path": "net", "expected": "90",
                                    "found": "100", "message": "the sum of the lines is 90, not 100"}]
    conforms(shown, "Document")
    status, _, checked = await osaka.call("POST", f"{DOCS}/{wrong}/verify",
                                          token=osaka.tokens["read"])
    assert checked["ok"] is True and [d["code"] for d in checked["arithmetic"]] == ["net"]
    conforms(checked, "Verification")


async def test_match_errors_and_scope(two: Two) -> None:
    osaka = two.osaka
    unknown = CID.for_block(b"never sent")
    status, headers, problem = await osaka.call("GET", f"{DOCS}/{unknown}/match",
                                                token=osaka.tokens["read"])
    assert (status, problem["code"]) == (404, "unknown_document")
    assert headers["Content-Type"].startswith(PROBLEM)
    status, _, problem = await osaka.call("GET", f"{DOCS}/bafyreinotacid/match",
                                          token=osaka.tokens["read"])
    assert status == 400 and problem["code"] == "malformed"
    status, _, _ = await osaka.call("GET", f"{DOCS}/{unknown}/match")
    assert status == 401
