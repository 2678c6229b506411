"""Signing in from a browser, the pages without a session, the keyboard, in both languages."""

from __future__ import annotations

from .conftest import Browser, Trade, assert_accessible, expect, sign_in, url


async def test_a_person_signs_in_with_a_one_time_link(trade: Trade, browser: Browser) -> None:
    page = await browser.page(locale="ja-JP")
    await page.goto(url(trade.buyer, "/outbox"))
    assert "/signin" in page.url  # no session: sent to sign in
    await expect(page.locator("h1")).to_have_text("サインイン")
    await assert_accessible(page)
    await sign_in(page, trade.buyer, path="/outbox")
    await expect(page.locator("h1")).to_have_text("送信箱")
    await assert_accessible(page)

    # The keyboard: the first Tab reaches the skip link, which leads to the content.
    await page.keyboard.press("Tab")
    await expect(page.locator(".skip")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()

    # A form whose CSRF token was taken out is refused with a page that says so.
    await page.goto(url(trade.buyer, "/compose"))
    await page.locator("#compose input[name=csrf_token]").evaluate("input => input.remove()")
    await page.get_by_role("button", name="送信").click()
    await expect(page.locator("h1")).to_have_text("このフォームは受け付けられません")
    await expect(page.locator(".code")).to_contain_text("csrf_failed")

    # A page that is not there, in the person's language, accessible too.
    await page.goto(url(trade.buyer, "/documents/bafkqaaa"))
    await expect(page.locator(".code")).to_contain_text("unknown_document")
    await assert_accessible(page)
