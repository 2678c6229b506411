"""``make screenshots``: a PNG of every page of the web UI, in Japanese and in English.

Two real nodes on loopback (Kanto Machine Tools sells, Osaka Precision buys)
trade as the demo does (``usagi_p2p.company.demo.STEPS``, then ``OVERBILLED``,
whose invoice bills bolts not delivered: the match page); a third partner
that went away leaves one document undelivered, the seller has a user and
the four industry plugins. Then Debian's Chromium (Playwright) signs in to
the seller's UI (and the buyer's, for its inbox) and photographs each page
at 1280 px wide, whole, to ``docs/screenshots/PAGE-LANG.png``.

    python tools/screenshots.py [--out docs/screenshots] [--only inbox,partners]

Needs Playwright and a Chromium (``/usr/bin/chromium`` or ``$USAGI_CHROMIUM``)
and, for Japanese, a CJK font (Debian: ``fonts-noto-cjk``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from usagi_p2p.company.api.server import LocalServer  # noqa: E402
from usagi_p2p.company.demo import OVERBILLED, PLUGIN_LINES, STEPS  # noqa: E402
from usagi_p2p.company.ui import issue_signin, signin_url  # noqa: E402
from usagi_p2p.node import operations  # noqa: E402
from usagi_p2p.node.home import Home  # noqa: E402
from usagi_p2p.node.node import Node  # noqa: E402
from usagi_p2p.peer.service import Service  # noqa: E402

LANGUAGES = {"ja": "ja-JP", "en": "en-US"}
WIDTH, HEIGHT = 1280, 860


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chromium() -> str:
    for candidate in (os.environ.get("USAGI_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("no Chromium: apt-get install chromium fonts-noto-cjk, or set "
                     "USAGI_CHROMIUM")


class Company:
    """A node with its peer service and local listener (the UI)."""

    def __init__(self, root: Path, name: str) -> None:
        self.home = Home(root / name.split()[0].lower())
        self.home.create(name, None, port=_free_port())
        self.home.update_config(lambda c: setattr(c, "plugins", list(PLUGIN_LINES)))
        self.node = Node.load(self.home, None)
        self.service = Service(self.node)
        self.local: LocalServer | None = None

    async def start(self) -> None:
        await self.node.open()
        await self.service.start()
        self.local = LocalServer(self.node, port=0, peer_url=self.service.url,
                                 peer_port=self.service.port)
        await self.local.start()

    def url(self, path: str) -> str:
        assert self.local is not None and self.local.url is not None
        return self.local.url + path

    async def close(self) -> None:
        if self.local is not None:
            await self.local.close()
        await self.service.close()
        await self.node.close()


async def _trade(seller: Company, buyer: Company,
                 steps: list[tuple[str, str, dict[str, Any]]] = STEPS) -> list[Any]:
    """The demo's documents (its trade, or ``steps``), each delivered and acknowledged;
    their CIDs. The first call pairs the two companies."""
    if not await operations.partners(buyer.node):
        await operations.add_partner(buyer.node, (await operations.invite(seller.node)).text())
    sides = {"seller": (seller, "Osaka"), "buyer": (buyer, "Kanto")}
    previous, cids = None, []
    for side, kind, body in steps:
        company, to = sides[side]
        result = await operations.send(company.node, kind, body, to=to, reply_to=previous,
                                       extract=True)
        company.node.wake.set()
        delivery = await operations.await_ack(company.node, result.cid, timeout=30)
        assert delivery.ack is not None, f"{kind}: no ack"
        previous = result.cid
        cids.append(result.cid)
    return cids


async def _away_partner(root: Path, seller: Company) -> None:
    """A partner that went away: one invoice to it is undelivered (the status page)."""
    nagoya = Company(root, "Nagoya Tools")
    await nagoya.start()
    await operations.add_partner(nagoya.node, (await operations.invite(seller.node)).text())
    await nagoya.close()
    seller.node.max_attempts = 1
    sent = await operations.send(seller.node, "invoice", {
        "ref": "INV-2026-3390", "currency": "JPY",
        "lines": [{"text": "Cutting oil 20 L", "qty": "2", "unit_price": "9800"}]},
        to="Nagoya")
    seller.node.wake.set()
    for _ in range(400):
        if (await operations.show_document(seller.node, sent.cid)).status == "undelivered":
            break
        await asyncio.sleep(0.05)
    seller.node.max_attempts = seller.node.config.max_attempts


async def _sign_in(page: Any, company: Company, path: str) -> None:
    await page.goto(signin_url(company.url(""), issue_signin(company.home)) + "&next=" + path)
    await page.wait_for_url(f"**{path}")


Shot = Callable[[Any], Awaitable[None]]


async def run(out: Path, only: set[str] | None) -> list[Path]:
    from playwright.async_api import async_playwright

    root = Path(tempfile.mkdtemp(prefix="usagi-shots-"))
    seller, buyer = Company(root, "Kanto Machine Tools"), Company(root, "Osaka Precision")
    written: list[Path] = []
    try:
        for company in (seller, buyer):
            await company.start()
        cids = await _trade(seller, buyer)
        overbilled = await _trade(seller, buyer, OVERBILLED)  # the match's warning
        await _away_partner(root, seller)
        await operations.add_user(seller.node, "tanaka", None, plugins=["construction"],
                                  role="site-manager")
        car = root / "kanto.car"

        async def invite(page: Any) -> None:
            await page.click("form[action='/partners/invite'] button[type=submit]")
            await page.wait_for_selector("#invitation-text")

        async def export(page: Any) -> None:
            await page.click("form[action='/archive/export'] button[type=submit]")
            link = page.locator("a[href$='/download']")
            await link.wait_for()
            if not car.exists():
                async with page.expect_download() as info:
                    await link.click()
                await (await info.value).save_as(car)
            await page.set_input_files("#archive-file", str(car))
            await page.click("form[action='/archive/verify'] button[type=submit]")
            await page.wait_for_selector("#verify-result .verdict")

        # (name, company, path, what to do before the picture)
        pages: list[tuple[str, Company, str, Shot | None]] = [
            ("inbox", buyer, "/inbox", None),
            ("outbox", seller, "/outbox", None),
            ("search", buyer, "/inbox?q=%E5%85%AD%E8%A7%92", None),
            ("document-invoice", buyer, f"/documents/{cids[-1]}", None),
            ("document-overbilled", buyer, f"/documents/{overbilled[-1]}", None),
            ("document-quote", buyer, f"/documents/{cids[0]}", None),
            ("compose", seller, "/compose", None),
            ("compose-answer", buyer, f"/compose?reply_to={cids[0]}&kind=order", None),
            ("partners", seller, "/partners", invite),
            ("archive", seller, "/archive", export),
            ("status", seller, "/status", None),
            ("settings", seller, "/settings", None),
        ]
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(
                executable_path=_chromium(), headless=True,
                args=["--no-sandbox", "--disable-gpu", "--font-render-hinting=none"])
            for language, locale in LANGUAGES.items():
                for name, company, path, before in pages:
                    if only and name not in only:
                        continue
                    context = await browser.new_context(
                        locale=locale, viewport={"width": WIDTH, "height": HEIGHT},
                        device_scale_factor=1)
                    page = await context.new_page()
                    await _sign_in(page, company, path)
                    if before is not None:
                        await before(page)
                    await page.wait_for_load_state("networkidle")
                    target = out / f"{name}-{language}.png"
                    await page.screenshot(path=str(target), full_page=True)
                    written.append(target)
                    print(f"  {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
                    await context.close()
                if not only or "print" in only:
                    context = await browser.new_context(locale=locale, viewport={
                        "width": 794, "height": 1123})
                    page = await context.new_page()
                    await _sign_in(page, buyer, f"/documents/{cids[-1]}")
                    await page.emulate_media(media="print")
                    target = out / f"print-invoice-{language}.png"
                    await page.screenshot(path=str(target), full_page=True)
                    written.append(target)
                    print(f"  {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
                    await context.close()
            await browser.close()
    finally:
        for company in (seller, buyer):
            await company.close()
        shutil.rmtree(root, ignore_errors=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--only", default="", help="Comma-separated page names.")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n} or None
    args.out.mkdir(parents=True, exist_ok=True)
    written = asyncio.run(run(args.out, only))
    print(f"screenshots: {len(written)} PNGs in {args.out}")


if __name__ == "__main__":
    main()
