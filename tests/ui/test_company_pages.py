"""The company's own pages in a real browser: partners, archive, status, settings.

Each test drives one page's main actions against real nodes on loopback and
checks the node afterwards (through its operations), then runs the axe check
on the page as it ends up. Lean on purpose: one test per page. The third
company's name carries markup: the partners page shows it as text.
"""

from __future__ import annotations

import json
from pathlib import Path

from usagi_p2p.node import operations
from usagi_p2p.peer.service import Service

from ..api.conftest import api_node, wait_until
from .conftest import Browser, Trade, assert_accessible, sign_in, url

#: A company name a partner chooses: markup, shown as text (and it runs nothing).
HOSTILE = 'Nagoya <script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
QUOTE = {"ref": "Q-UI-7", "currency": "JPY",
         "lines": [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit_price": "12.50"}]}


async def _acked(side: object, cid: object) -> None:
    async def acked() -> bool:
        view = await operations.show_document(side.node, cid)  # type: ignore[attr-defined]
        return view.ack is not None
    await wait_until(acked, "the partner's ack")


async def test_partners_invite_copy_paste_rename_suspend_resume_remove(
        trade: Trade, browser: Browser, tmp_path: Path) -> None:
    # The buyer sent one document: the seller's page shows it in the buyer's usage.
    sent = await operations.send(trade.buyer.node, "order", QUOTE, to="Kanto")
    trade.buyer.node.wake.set()
    await _acked(trade.buyer, sent.cid)

    kanto = await browser.page()
    await kanto.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await sign_in(kanto, trade.seller, path="/partners")
    buyer_row = kanto.locator("tr", has=kanto.locator(".partner-name", has_text="Osaka Precision"))
    assert "1 / 100,000" in await buyer_row.locator("td.usage").first.inner_text()

    # Its own quota, as 'usagi partner quota Osaka --docs 20000 --bytes 500MiB'.
    await buyer_row.locator("summary", has_text="Quota").click()
    await buyer_row.locator("input[name=docs]").fill("20000")
    await buyer_row.locator("input[name=bytes]").fill("500MiB")
    await buyer_row.locator("button:has-text('Save')").click()
    await kanto.locator(".notice", has_text="applies at once").wait_for()
    usage = await operations.quota(trade.seller.node, "Osaka")
    assert (usage.docs_quota, usage.bytes_quota, usage.own) == (20000, 500 << 20, True)
    assert "1 / 20,000" in await buyer_row.locator("td.usage").first.inner_text()

    await kanto.fill("#days", "3")
    await kanto.click("text=Create invitation")
    invitation = await kanto.input_value("#invitation-text")
    assert invitation.startswith("usagi1:")
    await kanto.click("button[data-copy]")
    await kanto.locator("[data-copy-status]", has_text="Copied").wait_for()
    assert await kanto.evaluate("navigator.clipboard.readText()") == invitation
    await assert_accessible(kanto)

    # A third company pastes it, in Japanese.
    async with api_node(tmp_path / "nagoya", HOSTILE) as nagoya:
        page = await browser.page(locale="ja-JP")
        await sign_in(page, nagoya, path="/partners")
        await page.fill("#invitation", invitation)
        await page.click("button:has-text('取引先を追加')")
        await page.locator(".notice", has_text="Kanto Machine Tools").wait_for()
        await assert_accessible(page)
        did = nagoya.node.did

        await kanto.goto(url(trade.seller, "/partners"))
        row = kanto.locator("tr", has=kanto.locator(".partner-name", has_text="Nagoya"))
        assert await row.locator(".partner-name").text_content() == HOSTILE
        assert await kanto.locator("main img").count() == 0
        assert await kanto.evaluate("typeof window.pwned") == "undefined"
        await row.locator("input[name=name]").fill("Nagoya Tools (plant 2)")
        await row.locator("button:has-text('Rename')").click()
        await kanto.locator(".notice", has_text="Nagoya Tools (plant 2)").wait_for()
        assert (await operations.partner(trade.seller.node, did)).name == "Nagoya Tools (plant 2)"

        for button, state in (("Suspend", "suspended"), ("Resume", "active")):
            row = kanto.locator("tr", has=kanto.locator(".partner-name", has_text="plant 2"))
            await row.locator(f"button:has-text('{button}')").click()
            await kanto.wait_for_url("**done=*")
            assert (await operations.partner(trade.seller.node, did)).status == state
        row = kanto.locator("tr", has=kanto.locator(".partner-name", has_text="plant 2"))
        await row.locator("summary", has_text="Remove").click()
        await row.locator("button.danger").click()
        await kanto.locator(".notice", has_text="is removed").wait_for()
        assert (await operations.partner(trade.seller.node, did)).status == "removed"


async def test_archive_export_download_verify_and_status_retry(
        trade: Trade, browser: Browser, tmp_path: Path) -> None:
    sent = await operations.send(trade.seller.node, "quote", QUOTE, to="Osaka")
    trade.seller.node.wake.set()
    await _acked(trade.seller, sent.cid)

    page = await browser.page()
    await sign_in(page, trade.seller, path="/archive")
    await page.click("text=Export archive")
    link = page.locator("a:has-text('Download usagi-')")
    await link.wait_for()
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    car = tmp_path / "history.car"
    await download.save_as(car)
    assert car.stat().st_size > 0

    await page.set_input_files("#archive-file", str(car))
    await page.click("button:has-text('Verify')")
    verdict = page.locator("#verify-result .verdict.ok")
    await verdict.wait_for()
    assert "1 documents and 1 acks" in await verdict.inner_text()
    damaged = tmp_path / "damaged.car"
    data = bytearray(car.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    await page.set_input_files("#archive-file", str(damaged))
    await page.click("button:has-text('Verify')")
    await page.locator("#verify-result .verdict.bad", has_text="Not sound").wait_for()
    await assert_accessible(page)

    # A document the partner never acknowledged: the buyer's listener is down and the
    # seller gives up after one attempt; "Retry all" delivers it once it is back.
    trade.seller.node.max_attempts = 1
    await trade.buyer.service.close()
    lost = await operations.send(trade.seller.node, "invoice", {**QUOTE, "ref": "INV-LOST-1"},
                                 to="Osaka")
    trade.seller.node.wake.set()

    async def given_up() -> bool:
        return (await operations.show_document(trade.seller.node, lost.cid)).status == \
            "undelivered"
    await wait_until(given_up, "the seller to give up")
    await page.goto(url(trade.seller, "/status"))
    assert "INV-LOST-1" in await page.locator("table.documents").inner_text()
    assert await page.locator(".health.bad").count() == 1
    await assert_accessible(page)

    trade.buyer.service = Service(trade.buyer.node)
    await trade.buyer.service.start()
    await page.click("button:has-text('Retry all')")
    await page.locator(".notice", has_text="1 document(s) queued again").wait_for()
    await _acked(trade.seller, lost.cid)
    await page.goto(url(trade.seller, "/status"))
    assert await page.locator("table.documents").count() == 0


async def test_settings_plugins_users_and_a_users_read_only_view(
        trade: Trade, browser: Browser) -> None:
    node = trade.seller.node
    page = await browser.page()
    await sign_in(page, trade.seller, path="/settings")
    for name in ("construction", "food"):
        await page.click(f"button[aria-label='Enable {name}']")
        await page.locator(".notice", has_text=f"Plugin {name} enabled").wait_for()
    enabled = [p.name for p in await operations.plugin_list(operations.offline(node.home))
               if p.state == "enabled"]
    assert {"construction", "food"} <= set(enabled)

    box = "#settings-construction"
    await page.fill(box, "{not json")
    await page.click("button[aria-label='Save the settings of construction']")
    assert await page.get_attribute(box, "aria-invalid") == "true"
    assert "Not valid JSON" in await page.locator("#settings-error-construction").inner_text()
    settings = {"schedules": {"芝浦": {"hours": "08:00-12:00"}}}
    await page.fill(box, json.dumps(settings, ensure_ascii=False))
    await page.click("button[aria-label='Save the settings of construction']")
    await page.locator(".notice", has_text="Settings of construction saved").wait_for()
    assert (await operations.configure_plugin(node, "construction")).settings == settings

    await page.fill("#u-name", "tanaka")
    form = page.locator("form.add-user")
    await form.locator("input[name=plugins][value=construction]").check()
    assert not await form.locator("input[name=all_plugins]").is_checked()
    await page.check("input[name=no_passphrase]")
    await page.click("button:has-text('Add user')")
    await page.locator(".notice", has_text="User tanaka added").wait_for()
    row = page.locator("tr", has=page.locator("th bdi", has_text="tanaka"))
    await row.locator("input[name=plugins][value=food]").check()
    await row.locator("button:has-text('Save')").click()
    await page.locator(".notice", has_text="tanaka now works").wait_for()
    users = await operations.user_list(operations.offline(node.home))
    assert [(u.name, u.plugins) for u in users] == [("tanaka", ("construction", "food"))]
    await assert_accessible(page)

    row = page.locator("tr", has=page.locator("th bdi", has_text="tanaka"))
    await row.locator("button:has-text('Sign-in link')").click()
    link = await page.input_value("#signin-link")
    tanaka = await browser.page()
    await tanaka.goto(link)
    await tanaka.wait_for_url("**/inbox")
    await tanaka.goto(url(trade.seller, "/settings"))
    assert "Signed in as tanaka" in await tanaka.locator("header").inner_text()
    assert await tanaka.locator("form.add-user").count() == 0  # read-only
    refused = await tanaka.evaluate("""async () => {
        const token = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];
        const r = await fetch("/partners/invite", {method: "POST",
            headers: {"X-CSRF-Token": token, "HX-Request": "true"}, body: new URLSearchParams({days: "3"})});
        return [r.status, r.headers.get("X-Usagi-Code")];
    }""")
    assert refused == [403, "forbidden_scope"]

    await row.locator("summary", has_text="Remove").click()
    await row.locator("button.danger").click()
    await page.locator(".notice", has_text="User tanaka removed").wait_for()
    await tanaka.goto(url(trade.seller, "/inbox"))
    assert "/signin" in tanaka.url  # a removed user is signed out


def test_an_export_in_progress_shows_its_progress_and_polls() -> None:
    """The running state of the export fragment (a small history is written before
    the browser could see it): a progress bar, the counts, and htmx polling."""
    import jinja2

    from usagi_p2p.company.ui.app import HERE
    from usagi_p2p.company.ui.archive import ExportJob
    from usagi_p2p.company.ui.templating import setup_environment

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                     autoescape=True, undefined=jinja2.StrictUndefined,
                                     extensions=["jinja2.ext.i18n"])
    setup_environment(environment)
    job = ExportJob("j1", "owner", Path("/nonexistent.car"), "usagi.car", 0.0, written=1200,
                    total=3000)
    html = environment.get_template("archive_job.html").render(lang="ja", job=job, share=40,
                                                               size=None)
    assert 'hx-get="/archive/export/j1"' in html and 'hx-trigger="every 700ms"' in html
    assert '<progress id="export-meter" max="100" value="40">' in html
    assert "3,000 件中 1,200 件" in html
