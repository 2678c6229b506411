"""The issue's main flow in a real browser: quote, order, order response, delivery note, invoice.

The seller composes a quote with a free-text line and a structured one; the
buyer's inbox shows it without a reload; the buyer opens it (green badges),
orders it in one click; the seller accepts, delivers and invoices; both
threads show the five documents, all acknowledged. Along the way: live
extraction beside a line, an inline validation error that sends nothing, the
print view of the invoice, and the axe check of each kind of page.
"""

from __future__ import annotations

import re
from typing import Any

from usagi_p2p.node import operations

from .conftest import Browser, Trade, assert_accessible, expect, sign_in, url

FREE = "図面No.A-1234 の特注シャフト 加工一式"
STRUCTURED = "六角ボルト M6x20 SUS304"


async def _send(page: Any) -> str:
    """Press Send; the CID of the document it opened."""
    await page.get_by_role("button", name=re.compile("^(Send|送信)$")).click()
    await page.wait_for_url(re.compile(r"/documents/b[a-z2-7]+\?sent=1"))
    return page.url.split("/documents/")[1].split("?")[0]


async def _answer(page: Any, label: str) -> None:
    await page.get_by_role("link", name=label, exact=True).click()
    await page.wait_for_url(re.compile(r"/compose\?"))


async def test_a_whole_trade_in_two_browsers(trade: Trade, browser: Browser) -> None:
    seller = await browser.page(locale="en-US")
    buyer = await browser.page(locale="en-US")
    await sign_in(seller, trade.seller)
    await sign_in(buyer, trade.buyer)  # the buyer waits on its inbox

    # The seller writes a quote: one line free text, one the machinery plugin knows.
    await seller.goto(url(trade.seller, "/compose"))
    await seller.get_by_label("To", exact=True).select_option("Osaka Precision")
    await seller.get_by_label("Reference", exact=True).fill("Q-2026-001")
    await seller.get_by_label("Description, line 1", exact=True).fill(FREE)
    await seller.get_by_role("button", name="Add line").click()
    await seller.get_by_label("Description, line 2", exact=True).fill(STRUCTURED)
    rows = seller.locator("[data-lines] tbody tr")
    await expect(rows.nth(1).locator(".extract")).to_contain_text("thread=M6")  # live
    await seller.get_by_label("Quantity, line 2", exact=True).fill("1,000")
    await seller.get_by_label("Unit price, line 2", exact=True).fill("twelve")
    await _send_refused(seller)
    await expect(seller.get_by_text("Write a number, such as 1200 or 12.50.")).to_be_visible()
    assert await operations.page_documents(trade.seller.node) == operations.DocumentPage((), None)
    await seller.get_by_label("Unit price, line 2", exact=True).fill("12")
    await seller.get_by_label("Amount, line 2", exact=True).fill("12000")
    await seller.get_by_label("Quantity, line 1", exact=True).fill("1")
    await seller.get_by_label("Amount, line 1", exact=True).fill("250000")
    await seller.get_by_label("Total", exact=True).fill("262000")
    await assert_accessible(seller)
    await browser.shot(seller, "compose-en")
    quote = await _send(seller)
    await expect(seller.locator("[role=status].notice")).to_contain_text("Sent.")
    # The buyer's signed receipt turns the last badge green (live, if it came after the page).
    await expect(seller.locator(".badge.ok[data-check='ack']")).to_be_visible()

    # The buyer's inbox shows it without a reload, marked unread.
    row = buyer.locator(f"tr[data-cid='{quote}']")
    await expect(row).to_be_visible()
    await expect(row).to_have_class(re.compile("unread"))
    await assert_accessible(buyer)
    await browser.shot(buyer, "inbox-en")
    await row.get_by_role("link").click()
    await expect(buyer.locator("h1")).to_have_text("Quote")
    await expect(buyer.locator(".lines")).to_contain_text(FREE)
    await expect(buyer.locator(".lines")).to_contain_text("¥262,000")
    await expect(buyer.locator(".badge.bad")).to_have_count(0)
    await expect(buyer.locator(".badge.ok[data-check='signature']")).to_be_visible()
    await expect(buyer.locator(".badge.ok[data-check='ack']")).to_be_visible()
    await buyer.get_by_role("button", name="Verify again").click()
    await expect(buyer.get_by_text("checked again just now")).to_be_visible()
    await assert_accessible(buyer)
    await browser.shot(buyer, "quote-en")

    # One click orders what was quoted: the form comes filled as send --reply-to fills it.
    await _answer(buyer, "Order this quote")
    await expect(buyer.get_by_label("Description, line 2", exact=True)).to_have_value(STRUCTURED)
    await buyer.get_by_label("Reference", exact=True).fill("PO-88231")
    order = await _send(buyer)

    # The seller accepts, delivers and invoices, each from the document before. The
    # order shows in the seller's inbox first (live): opening it before it has
    # arrived would find nothing to answer (seen on a busy CI host).
    await seller.goto(url(trade.seller, "/inbox"))
    await seller.locator(f"tr[data-cid='{order}']").get_by_role("link").click()
    await _answer(seller, "Accept")
    response = await _send(seller)
    await _answer(seller, "Create delivery note")
    await seller.get_by_label("Reference", exact=True).fill("DN-1")
    delivery = await _send(seller)
    await _answer(seller, "Create invoice")
    await seller.get_by_label("Reference", exact=True).fill("INV-1")
    await seller.get_by_label("Due", exact=True).fill("2027-01-31")
    invoice = await _send(seller)
    await assert_accessible(seller)

    # Both timelines: five documents, each acknowledged (live, as the acks arrive).
    for page, side in ((seller, trade.seller), (buyer, trade.buyer)):
        await page.goto(url(side, f"/documents/{invoice}"))
        items = page.locator(".timeline li")
        await expect(items).to_have_count(5)
        await expect(page.locator(".timeline li.acked")).to_have_count(5)
        kinds = [await items.nth(i).get_attribute("data-kind") for i in range(5)]
        assert kinds == ["quote", "order", "order_response", "delivery_note", "invoice"]
    await expect(buyer.locator(".timeline")).to_contain_text("Sent by Kanto Machine Tools")
    await expect(buyer.locator(".timeline li[data-kind='order_response']")).to_contain_text(
        "Accepted")
    # The thread's three-way match under the form: every item agrees (issue 19).
    await expect(buyer.locator(".match .match-state.ok")).to_contain_text("Clean: all")
    await browser.shot(buyer, "invoice-en")
    cids = [quote, order, response, delivery, invoice]
    assert len(set(cids)) == 5

    # The invoice printed (emulated print media): the form, and no navigation.
    await buyer.emulate_media(media="print")
    await expect(buyer.locator("header.top")).to_be_hidden()
    await expect(buyer.locator(".answers")).to_be_hidden()
    await expect(buyer.locator(".verification")).to_be_hidden()
    await expect(buyer.locator(".match")).to_be_hidden()
    await expect(buyer.locator(".form-sheet h1")).to_have_text("Invoice")
    await expect(buyer.locator(".lines")).to_be_visible()
    await browser.shot(buyer, "invoice-print")


async def _send_refused(page: Any) -> None:
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_text("Nothing was sent. Please correct the marked fields.")).to_be_visible()
