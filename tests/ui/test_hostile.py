"""What a partner wrote is shown as text, in Japanese and in English, and runs nothing.

The seller's own name (the one its invitation gives) and its lines carry
``<script>``, ``<img onerror=…>`` and a bidi override (U+202E): the buyer's
inbox, search, the document, the thread and the answer form show them as
text, no script runs (the page is watched for dialogs, script errors and
CSP reports), and partner text sits in ``<bdi>`` so an override cannot
reorder the page around it. The same pages are checked in Japanese, then
in English after the switch.
"""

from __future__ import annotations

from pathlib import Path

from usagi_p2p.node import operations

from .conftest import Browser, assert_accessible, expect, paired, sign_in, ui_node, url

NAME = 'Evil <script>window.pwned=1</script><img src=x onerror="window.pwned=2"> 商事'
LINE = "<img src=x onerror=alert(1)> 特注品 \u202eTXT.EXE\u202c <script>alert(2)</script>"


async def test_a_partners_markup_is_text_in_both_languages(tmp_path: Path,
                                                          browser: Browser) -> None:
    async with ui_node(tmp_path / "evil", NAME) as seller, \
            ui_node(tmp_path / "osaka", "大阪精密") as buyer:
        await paired(seller, buyer)
        sent = await operations.send(seller.node, "quote", {
            "ref": "<b>Q-1</b>", "currency": "JPY", "total": "3000", "note": "<script>alert(3)</script>",
            "lines": [{"text": LINE, "qty": "3", "unit": "<i>個</i>", "unit_price": "1000",
                       "amount": "3000"}]}, to=(await operations.partners(seller.node))[0].did)
        await operations.deliver_now(seller.node)
        assert (await operations.await_ack(seller.node, sent.cid, 20)).ack is not None
        page = await browser.page(locale="ja-JP")
        await sign_in(page, buyer)

        # The inbox, in Japanese: the name and reference as text.
        row = page.locator(f"tr[data-cid='{sent.cid}']")
        await expect(row).to_contain_text(NAME)
        await expect(row).to_contain_text("<b>Q-1</b>")
        await expect(page.locator("h1")).to_have_text("受信箱")
        # Search finds the line by a Japanese word, its snippet as text.
        await page.get_by_label("検索").fill("特注品")
        await page.get_by_role("button", name="絞り込む").click()
        await expect(page.locator("tr.snippet mark")).to_have_text("特注品")
        await expect(page.locator("tr.snippet")).to_contain_text("<img src=x onerror=alert(1)>")

        # The document, in Japanese: 見積書, yen as 円, the hostile strings as text.
        await page.goto(url(buyer, f"/documents/{sent.cid}"))
        await expect(page.locator(".form-title")).to_have_text("見積書")
        await expect(page.locator(".lines")).to_contain_text("3,000円")
        line = page.locator(".lines tbody td bdi").first
        assert await line.text_content() == LINE
        await expect(page.locator(".party .name").last).to_contain_text(NAME)
        await expect(page.locator(".note")).to_have_text("<script>alert(3)</script>")
        assert await page.locator("main img").count() == 0
        assert await page.evaluate("typeof window.pwned") == "undefined"
        await expect(page.locator(".badge.bad")).to_have_count(0)
        await assert_accessible(page)
        await browser.shot(page, "document-ja")

        # The answer form carries the line as a textarea's text.
        await page.get_by_role("link", name="この見積で注文する").click()
        await expect(page.get_by_label("品名・内容 行 1", exact=True)).to_have_value(LINE)
        await assert_accessible(page)
        await browser.shot(page, "compose-ja")

        # The switch: the same document in English.
        await page.goto(url(buyer, f"/documents/{sent.cid}"))
        await page.get_by_role("link", name="English").click()
        await expect(page.locator(".form-title")).to_have_text("Quote")
        await expect(page.locator(".lines")).to_contain_text("¥3,000")
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        assert await page.evaluate("typeof window.pwned") == "undefined"
        await browser.shot(page, "document-en")
