"""The web UI in a real browser: Debian's Chromium driven by Playwright, two real nodes.

Each test gets a seller and a buyer node on loopback (peer service and local
listener, paired), and a Chromium launched from ``/usr/bin/chromium`` (or
``$USAGI_CHROMIUM``): downloaded browser builds are not available on these
machines. Without a browser (or Playwright) the tests are skipped with the
reason; under ``CI=1`` they fail instead. Every page a test opens is watched:
a Content-Security-Policy violation, a JavaScript error or a dialog (what an
injected script would do) fails the test when the page is checked
(:meth:`Browser.check`). With ``USAGI_UI_ARTIFACTS=DIR`` the tests leave
screenshots of the pages they visit in DIR, for a person to look at
(nothing compares them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from usagi_p2p.company.api.server import LocalServer
from usagi_p2p.company.api.tokens import SCOPES
from usagi_p2p.company.ui import issue_signin, signin_url

from ..api.conftest import Api
from ..node.conftest import make_home, start

try:  # the tests' assertions; without Playwright the browser fixture skips (fails under CI)
    from playwright.async_api import expect
except ImportError:  # pragma: no cover
    expect = None

VENDOR = Path(__file__).resolve().parent / "vendor"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def chromium_path() -> str | None:
    """The browser to drive: ``$USAGI_CHROMIUM``, else Debian's, else one on PATH."""
    for candidate in (os.environ.get("USAGI_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def need_browser() -> str:
    """The browser's path; skip (fail under CI=1) when there is none."""
    reason = None
    try:
        import playwright  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    path = chromium_path()
    if reason is None and path is None:
        reason = ("no Chromium: 'make test' installs Debian's (apt-get install chromium "
                  "fonts-noto-cjk) as root; elsewhere install one or set USAGI_CHROMIUM")
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: the browser tests cannot run: {reason}")
        pytest.skip(reason)
    assert path is not None
    return path


@dataclass
class Watched:
    """A page and what went wrong on it."""

    page: Any
    problems: list[str] = field(default_factory=list)


@dataclass
class Browser:
    browser: Any
    #: Where a test may leave screenshots (a person looks at them; nothing compares them).
    artifacts: Path
    pages: list[Watched] = field(default_factory=list)

    async def page(self, *, locale: str = "en-US", **options: Any) -> Any:
        """A new page in a new context (its own cookies) in ``locale``."""
        context = await self.browser.new_context(locale=locale, **options)
        page = await context.new_page()
        watched = Watched(page)

        def console(message: Any) -> None:
            text = message.text
            if message.type == "error" and ("Content Security Policy" in text
                                            or "Refused to" in text):
                watched.problems.append(f"CSP: {text}")

        page.on("console", console)
        page.on("pageerror", lambda exc: watched.problems.append(f"script error: {exc}"))

        async def dialog(d: Any) -> None:
            watched.problems.append(f"a dialog opened: {d.message}")
            await d.dismiss()

        page.on("dialog", dialog)
        self.pages.append(watched)
        return page

    async def shot(self, page: Any, name: str) -> None:
        """A screenshot for a person to look at, when USAGI_UI_ARTIFACTS names a folder."""
        if os.environ.get("USAGI_UI_ARTIFACTS"):
            await page.screenshot(path=str(self.artifacts / f"{name}.png"), full_page=True)

    def check(self) -> None:
        """No page had a CSP violation, a script error or a dialog."""
        problems = [p for w in self.pages for p in w.problems]
        assert problems == []


@contextlib.asynccontextmanager
async def chromium(artifacts: Path) -> AsyncIterator[Browser]:
    path = need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=path, args=CHROMIUM_ARGS,
                                               headless=True)
        try:
            yield Browser(browser, artifacts)
        finally:
            await browser.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    async with chromium(Path(os.environ.get("USAGI_UI_ARTIFACTS") or tmp_path)) as b:
        yield b
        b.check()


@dataclass
class Trade:
    """Two companies, paired: the seller invited, the buyer accepted."""

    seller: Api
    buyer: Api


@contextlib.asynccontextmanager
async def ui_node(path: Path, name: str, plugins: tuple[str, ...] = ("machinery",)
                  ) -> AsyncIterator[Api]:
    """A real node (peer service, local listener with the UI) with ``plugins`` enabled."""
    home = make_home(path, name)
    home.update_config(lambda config: config.plugins.extend(plugins))
    node, service = await start(home)
    local = LocalServer(node, port=0, peer_url=service.url, peer_port=service.port)
    await local.start()
    try:
        yield Api(node, service, local, {s: local.tokens.create(f"test-{s}", s) for s in SCOPES})
    finally:
        await local.close()
        await service.close()
        await node.close()


async def paired(seller: Api, buyer: Api) -> None:
    await buyer.node.add_partner((await seller.node.invite()).text())


@pytest.fixture
async def trade(tmp_path: Path) -> AsyncIterator[Trade]:
    async with ui_node(tmp_path / "kanto", "Kanto Machine Tools") as seller, \
            ui_node(tmp_path / "osaka", "Osaka Precision") as buyer:
        await paired(seller, buyer)
        yield Trade(seller, buyer)


def url(side: Api, path: str = "/") -> str:
    assert side.local.url is not None
    return side.local.url + path


async def sign_in(page: Any, side: Api, user: str | None = None, path: str = "/inbox") -> None:
    """Sign ``page``'s browser in to ``side``'s UI with a one-time link, as a person does."""
    assert side.local.url is not None
    code = issue_signin(side.node.home, user)
    await page.goto(signin_url(side.local.url, code) + "&next=" + path)
    # The sign-in page moves on by itself (a refresh); wait until it has.
    await page.wait_for_url(lambda at: at == side.local.url + path)
    await page.wait_for_load_state()


async def assert_accessible(page: Any) -> None:
    """axe-core (vendored) finds no serious or critical violation on the page as it is."""
    await page.evaluate((VENDOR / "axe.min.js").read_text(encoding="utf-8"))
    violations = await page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations
              .filter(v => v.impact === "serious" || v.impact === "critical")
              .map(v => ({id: v.id, impact: v.impact, help: v.help,
                          nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
        }""")
    assert violations == [], f"{page.url}: {violations}"
