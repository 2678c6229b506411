"""The harness itself: a browser signs in to a real node's UI, in both languages."""

from __future__ import annotations

from .conftest import Browser, Trade, assert_accessible, sign_in, url


async def test_a_person_signs_in_with_a_one_time_link(trade: Trade, browser: Browser) -> None:
    page = await browser.page(locale="ja-JP")
    await page.goto(url(trade.buyer, "/inbox"))
    assert "/signin" in page.url  # no session: sent to sign in
    await sign_in(page, trade.buyer)
    assert await page.locator("h1").inner_text() == "受信箱"
    await assert_accessible(page)
