"""Issue 19 on the document page, over HTTP (no browser): taxes as a qualified invoice
shows them, figures that do not add up, the thread's three-way match, the badges in
words, and "Download UBL" (the API's bytes, or a page saying what party data is missing).
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from usagi_p2p.node import operations

from ..api.conftest import Api
from .conftest import paired, ui_node
from .test_security import _session, _signed_in

HOSTILE = "<script>alert(1)</script>\u202e"
#: A qualified invoice (適格請求書): 10 % and the reduced 8 %, tax once per rate, rounded down.
LINES = [{"text": "六角ボルト M6", "qty": "500", "unit": "pcs", "unit_price": "12",
          "amount": "6000", "tax_category": "S", "tax_rate": "10"},
         {"text": "煎茶 1kg", "qty": "2", "unit": "pcs", "unit_price": "3001", "amount": "6002",
          "tax_category": "AA", "tax_rate": "8"}]
INVOICE = {"ref": "INV-1", "currency": "JPY", "lines": LINES,
           "tax": [{"category": "S", "rate": "10", "taxable": "6000", "amount": "600"},
                   {"category": "AA", "rate": "8", "taxable": "6002", "amount": "480"}],
           "net": "12002", "tax_total": "1080", "total": "13082", "rounding": "down",
           "payment_terms": "月末締め翌月末払い", "due": "2027-01-31T00:00:00Z",
           "parties": {"from": {"name": "株式会社関東工作機械", "tax_id": "T5040001082442",
                                "address": "芝浦1-2-3\n港区", "city": "東京都",
                                "postal_code": "108-0023", "country": "JP",
                                "endpoint": "0188:5040001082442"},
                       "to": {"name": "大阪精密株式会社", "tax_id": "T8120001077316",
                              "city": "大阪市", "country": "JP",
                              "endpoint": "0188:8120001077316"}}}


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Api, Api]]:
    async with ui_node(tmp_path / "kanto", "Kanto Machine Tools") as seller, \
            ui_node(tmp_path / "osaka", "Osaka Precision") as buyer:
        await paired(seller, buyer)
        yield seller, buyer


async def _text(http: aiohttp.ClientSession, url: str, status: int = 200,
                lang: str = "en") -> str:
    async with http.get(url, headers={"Accept-Language": lang}) as resp:
        text = await resp.text()
        assert resp.status == status, text[-2000:]
        return text


async def _send(side: Api, kind: str, body: dict[str, Any], reply_to: Any = None) -> Any:
    partner = (await operations.partners(side.node))[0].did
    sent = await operations.send(side.node, kind, body, to=partner, reply_to=reply_to)
    await operations.deliver_now(side.node)
    assert (await operations.await_ack(side.node, sent.cid, 20)).ack is not None
    return sent.cid


def _cells(page: str) -> str:
    """The page's text without tags (figures sit in cells and spans)."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page)))


async def test_a_qualified_invoice_shows_its_taxes_parties_and_a_clean_match(
        pair: tuple[Api, Api]) -> None:
    seller, buyer = pair
    order = await _send(buyer, "order", {"ref": "PO-1", "currency": "JPY", "lines": [
        {k: v for k, v in line.items() if k in ("text", "qty", "unit", "unit_price")}
        for line in LINES]})
    note = await _send(seller, "delivery_note", {"ref": "DN-1", "lines": [
        {"text": line["text"], "qty": line["qty"], "unit": "pcs"} for line in LINES]},
        reply_to=order)
    invoice = await _send(seller, "invoice", INVOICE, reply_to=note)
    async with _session() as http:
        await _signed_in(http, buyer)
        url = f"{buyer.local.url}/documents/{invoice}"
        ja = await _text(http, url, lang="ja")
        text = _cells(ja)
        assert "登録番号 T5040001082442" in text and "登録番号 T8120001077316" in text
        assert "〒 108-0023" in text or "〒108-0023" in text
        assert "10% 対象 6,000円" in text and "8% 対象 6,002円" in text, text
        assert re.search(r'data-total="tax-0">600円', ja) and re.search(r'data-total="tax-1">480円', ja)
        assert re.search(r'data-total="net">12,002円', ja)
        assert re.search(r'data-total="gross">13,082円', ja)
        assert "切り捨て" in text and "月末締め翌月末払い" in text
        assert "数字が合わない" not in text  # no arithmetic warning
        # The match: clean, per item what was ordered, delivered and invoiced, in Japanese.
        assert "三者照合" in text and "問題なし" in text, text
        assert "注文 500 pcs、納品 500 pcs、請求 500 pcs" in text, text
        # The badges in Japanese words (the node's English does not show).
        assert "署名者" in text and "signed by" not in ja
        assert "UBL をダウンロード" in text
        en = _cells(await _text(http, url))
        assert "Registration No. T5040001082442" in en and "Tax at 8% on ¥6,002" in en
        assert "ordered 500 pcs, delivered 500 pcs, invoiced 500 pcs" in en
        assert "Clean: all 2 items agree across the thread." in en
        # "Download UBL": the bytes of the API's /ubl route.
        async with http.get(f"{url}/ubl") as resp:
            assert resp.status == 200 and resp.content_type == "application/xml", await resp.text()
            page_bytes = await resp.read()
        async with aiohttp.ClientSession() as api, api.get(
                f"{buyer.local.url}/api/v1/documents/{invoice}/ubl",
                headers={"Authorization": f"Bearer {buyer.tokens['read']}"}) as resp:
            assert resp.status == 200
            assert await resp.read() == page_bytes
        assert b"<cbc:CompanyID>T5040001082442</cbc:CompanyID>" in page_bytes


async def test_over_billing_and_broken_figures_show_as_warnings_in_words(
        pair: tuple[Api, Api]) -> None:
    seller, buyer = pair
    order = await _send(buyer, "order", {"ref": "PO-2", "currency": "JPY", "lines": [
        {"text": "六角ボルト M6", "qty": "500", "unit": "pcs", "unit_price": "12"}]})
    note = await _send(seller, "delivery_note", {"ref": "DN-2", "lines": [
        {"text": "六角ボルト M6", "qty": "480", "unit": "pcs"}]}, reply_to=order)
    wrong = {**INVOICE, "ref": "INV-2", "lines": [{**LINES[0], "amount": "6100"}],
             "tax": [{"category": "S", "rate": "10", "taxable": "6000", "amount": "610"}],
             "net": "6000", "tax_total": "610", "total": "6700", "payment_terms": HOSTILE,
             "parties": {"from": {**INVOICE["parties"]["from"], "name": HOSTILE,
                                  "tax_id": "T1040001082442", "address": HOSTILE}}}
    invoice = await _send(seller, "invoice", wrong, reply_to=note)
    async with _session() as http:
        await _signed_in(http, buyer)
        url = f"{buyer.local.url}/documents/{invoice}"
        en = await _text(http, url)
        # What a partner wrote on paper is text, never markup.
        assert "<script>alert(1)</script>" not in en
        assert en.count("&lt;script&gt;alert(1)&lt;/script&gt;\u202e</bdi>") == 3  # name,
        # address and payment terms
        text = _cells(en)
        assert "Line 1: quantity × unit price is ¥6,000, not ¥6,100." in text
        assert "Tax at 10%: ¥600 expected (rounded once per rate), not ¥610." in text
        assert "Net plus tax is ¥6,610, not the total of ¥6,700." in text
        assert "The sender's registration number T1040001082442 is not valid." in text
        assert "Its check digit says T5040001082442." in text
        assert "ordered 500 pcs, delivered 480 pcs, invoiced 500 pcs: " \
            "20 pcs still to deliver; 20 pcs billed but not delivered" in text, text
        assert text.count("Invoice INV-2: its figures do not add up (see that document).") == 1
        assert re.search(r"\d+ things to check before paying\.", text)
        ja = _cells(await _text(http, url, lang="ja"))
        assert "1 行目: 数量 × 単価は 6,000円 で、6,100円 ではありません。" in ja, ja
        assert "注文 500 pcs、納品 480 pcs、請求 500 pcs：未納 20 pcs；未納品の請求 20 pcs" in ja, ja
        assert "rounded once per rate" not in ja and "billed but not delivered" not in ja


async def test_ubl_without_party_data_says_what_is_missing_and_where(
        pair: tuple[Api, Api]) -> None:
    seller, buyer = pair
    invoice = await _send(seller, "invoice", {"ref": "INV-3", "currency": "JPY", "lines": [
        {"text": "bolts", "qty": "1", "unit_price": "100", "amount": "100",
         "tax_category": "S", "tax_rate": "10"}],
        "total": "110"})
    async with _session() as http:
        await _signed_in(http, seller)
        page = await _text(http, f"{seller.local.url}/documents/{invoice}/ubl", status=422)
        text = _cells(page)
        assert "UBL export needs more party data" in text
        assert "your company's country: usagi profile --country …" in text, text
        assert "the partner's electronic address (Peppol endpoint) (Osaka Precision): " \
            'usagi profile --partner "Osaka Precision" --endpoint …' in text, text
        assert "a due date or payment terms" in text
        ja = _cells(await _text(http, f"{seller.local.url}/documents/{invoice}/ubl",
                                status=422, lang="ja"))
        assert "usagi profile --country" in ja and "自社の国" in ja, ja
        # A kind with no UBL mapping has no button; the route says so as an error page.
        quote = await _send(seller, "quote", {"lines": [{"text": "bolts"}]})
        doc = await _text(http, f"{seller.local.url}/documents/{quote}")
        assert "Download UBL" not in doc
        assert "Download UBL" in await _text(http, f"{seller.local.url}/documents/{invoice}")
        await _text(http, f"{seller.local.url}/documents/{quote}/ubl", status=422)
