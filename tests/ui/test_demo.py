"""``usagi demo --ui``: the demo's trade, then both nodes stay up with sign-in links until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp

from ..node.conftest import REPO


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 120.0) -> str:
    """The child's output up to the line holding ``marker`` (a bound on waiting)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("the demo ended early:\n" + "".join(lines))
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError("the demo did not get there in time:\n" + "".join(lines))


async def _sign_in_and_look(links: dict[str, str]) -> None:
    """Each link signs a browser in once; the inbox shows what the other side sent."""
    expected = {"Osaka Precision": "INV-2026-3301", "Kanto Machine Tools": "PO-88231"}
    for name, link in links.items():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(link) as signed_in:
                assert signed_in.status == 200
            base = link.split("/signin", 1)[0]
            async with http.get(base + "/inbox") as inbox:
                assert inbox.status == 200 and str(inbox.url).endswith("/inbox")
                assert expected[name] in await inbox.text()
            async with http.get(link) as again:
                assert again.status == 403  # the code worked once


def test_demo_ui_keeps_both_nodes_with_sign_in_links_until_ctrl_c() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "usagi_p2p", "demo", "--ui"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env)
    try:
        shown = _read_until(proc, "press Ctrl-C")
        assert "demo passed" in shown
        links = dict(re.findall(r"^  (Kanto Machine Tools|Osaka Precision)\s+(http://\S+)$",
                                shown, re.MULTILINE))
        root = re.search(r"usagi --home (\S+)/kanto ui", shown).group(1)  # type: ignore[union-attr]
        assert set(links) == {"Kanto Machine Tools", "Osaka Precision"} and os.path.isdir(root)
        asyncio.run(_sign_in_and_look(links))
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, rest
        assert "stopping both nodes" in rest
        assert not os.path.exists(root)  # the temporary homes are gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
