"""GET /api/v1/documents/{cid}/ubl between two real nodes (docs/formats.md, docs/api.md)."""

from __future__ import annotations

import aiohttp

from usagi_p2p.formats import import_ubl
from usagi_p2p.node import operations as ops

from .conftest import PROBLEM, Api, Two

INVOICE = {"ref": "INV-1042", "currency": "JPY", "due": "2026-12-31T00:00:00Z",
           "lines": [{"text": "六角ナット M6", "qty": "1000", "unit": "pcs", "unit_price": "12",
                      "amount": "12000", "tax_category": "S", "tax_rate": "10"}],
           "net": "12000", "tax_total": "1200", "total": "13200"}


async def get(api: Api, path: str, token: str | None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{api.local.port}{path}", headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_an_invoice_as_ubl_with_the_parties_from_the_profiles(two: Two) -> None:
    kanto = two.kanto
    await ops.set_profile(kanto.node, {"country": "JP", "tax_id": "T1234567890123",
                                       "endpoint": "0188:1234567890123", "city": "大田区"})
    await ops.set_profile(kanto.node, {"country": "JP", "endpoint": "0188:9876543210987"},
                          "Osaka")
    sent = await ops.send(kanto.node, "invoice", INVOICE, to="Osaka")
    status, kind, data = await get(kanto, f"/api/v1/documents/{sent.cid}/ubl",
                                   kanto.tokens["read"])
    assert status == 200 and kind == "application/xml"
    back = import_ubl(data)
    assert back.kind == "invoice" and back.body["total"] == "13200"
    seller, buyer = back.body["parties"]["from"], back.body["parties"]["to"]
    assert seller["name"] == "Kanto Machine Tools" and seller["tax_id"] == "T1234567890123"
    assert buyer == {"name": "Osaka Precision", "country": "JP", "endpoint": "0188:9876543210987"}
    # Nothing about Osaka's own profile is known here: 422, saying what is missing.
    await ops.set_profile(kanto.node, {"country": None}, "Osaka")
    status, kind, data = await get(kanto, f"/api/v1/documents/{sent.cid}/ubl",
                                   kanto.tokens["read"])
    assert status == 422 and kind == PROBLEM and b"export_incomplete" in data
    assert b"buyer's country" in data


async def test_no_ubl_for_a_quote_an_unknown_cid_or_no_token(two: Two) -> None:
    kanto = two.kanto
    quote = await ops.send(kanto.node, "quote", {"lines": [{"text": "bolt"}]}, to="Osaka")
    status, kind, data = await get(kanto, f"/api/v1/documents/{quote.cid}/ubl",
                                   kanto.tokens["read"])
    assert (status, kind) == (422, PROBLEM) and b"format_unsupported" in data
    unknown = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    status, _, data = await get(kanto, f"/api/v1/documents/{unknown}/ubl", kanto.tokens["read"])
    assert status == 404 and b"unknown_document" in data
    status, _, _ = await get(kanto, f"/api/v1/documents/{quote.cid}/ubl", None)
    assert status == 401
