"""The UI's guards over real HTTP (no browser): where it is served, sign-in, sessions, CSRF, headers.

Each refusal is also checked to have changed nothing (no document sent, no
session made).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yarl

from usagi_p2p.company.ui import issue_signin
from usagi_p2p.company.ui.app import CSP
from usagi_p2p.node import operations

from ..api.conftest import Api
from .conftest import paired, ui_node


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Api, Api]]:
    async with ui_node(tmp_path / "kanto", "Kanto Machine Tools") as seller, \
            ui_node(tmp_path / "osaka", "Osaka Precision") as buyer:
        await paired(seller, buyer)
        yield seller, buyer


def _session() -> aiohttp.ClientSession:
    # 127.0.0.1 is an IP address: aiohttp keeps its cookies only when told to.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _signed_in(http: aiohttp.ClientSession, side: Api, user: str | None = None) -> str:
    """Sign ``http`` in; the page's CSRF token."""
    code = issue_signin(side.node.home, user)
    async with http.get(f"{side.local.url}/signin?code={code}") as resp:
        assert resp.status == 200
    async with http.get(f"{side.local.url}/compose") as resp:
        assert resp.status == 200
        found = re.search(r'name="csrf-token" content="([^"]+)"', await resp.text())
    assert found
    return found.group(1)


def _quote(partner: str = "Osaka Precision", token: str | None = None) -> dict[str, str]:
    form = {"kind": "quote", "partner": partner, "currency": "JPY", "line-text": "M6 bolts",
            "line-qty": "10", "line-unit": "", "line-unit_price": "", "line-amount": "",
            "line-ext": "", "action": "send", "extract": "on"}
    if token is not None:
        form["csrf_token"] = token
    return form


async def test_the_ui_is_on_the_local_listener_only(pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    async with _session() as http:
        for path in ("/inbox", "/signin", "/static/htmx.min.js", "/compose", "/documents/x",
                     "/events"):
            async with http.get(f"http://127.0.0.1:{seller.service.port}{path}",
                                allow_redirects=False) as resp:
                # The peer listener's own 404: it knows nothing of the UI.
                assert resp.status == 404, path
                assert (await resp.json())["error"] == "not_found"
        async with http.get(f"http://127.0.0.1:{seller.service.port}/") as resp:
            assert not resp.headers["Content-Type"].startswith("text/html")
            async with http.get(f"{seller.local.url}{path}", allow_redirects=False) as resp:
                assert resp.status in (200, 303, 401), path
        # DNS rebinding: a page under another host name cannot reach the UI.
        async with http.get(f"{seller.local.url}/signin",
                            headers={"Host": f"evil.example:{seller.local.port}"}) as resp:
            assert resp.status == 403
            assert (await resp.json())["code"] == "not_loopback"


async def test_without_a_session_a_page_sends_you_to_sign_in(pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    async with _session() as http:
        async with http.get(f"{seller.local.url}/inbox?kind=quote", allow_redirects=False) as resp:
            assert resp.status == 303
            target = yarl.URL(resp.headers["Location"])
            assert (target.path, target.query["next"]) == ("/signin", "/inbox?kind=quote")
        async with http.get(f"{seller.local.url}/inbox", allow_redirects=False,
                            headers={"HX-Request": "true"}) as resp:
            assert resp.status == 401 and resp.headers["HX-Redirect"].startswith("/signin")
        async with http.get(f"{seller.local.url}/signin") as resp:
            assert resp.status == 401
            assert "usagi ui" in await resp.text()
        # A cookie the node never gave is no session.
        http.cookie_jar.update_cookies({f"usagi_session_{seller.local.port}": "x" * 43})
        async with http.get(f"{seller.local.url}/inbox", allow_redirects=False) as resp:
            assert resp.status == 303


async def test_a_sign_in_link_works_once_and_the_session_is_stored_hashed(
        pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    code = issue_signin(seller.node.home)
    async with _session() as http:
        async with http.get(f"{seller.local.url}/signin?code={code}&next=//evil.example/") as resp:
            assert resp.status == 200
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            session_id = resp.cookies[f"usagi_session_{seller.local.port}"].value
            page = await resp.text()
            assert 'content="0;url=/inbox"' in page  # never a redirect off this site
        async with http.get(f"{seller.local.url}/inbox") as resp:
            assert resp.status == 200
    stored = (seller.node.home.path / "ui" / "sessions.json").read_text()
    assert session_id not in stored and code not in stored
    assert len(json.loads(stored)["sessions"]) == 1
    async with _session() as other:  # the same link again: refused, no second session
        async with other.get(f"{seller.local.url}/signin?code={code}") as resp:
            assert resp.status == 403
            assert "used already or has expired" in await resp.text()
    assert len(json.loads((seller.node.home.path / "ui" / "sessions.json").read_text())
               ["sessions"]) == 1


async def test_an_expired_link_and_an_unknown_user_sign_nobody_in(pair: tuple[Api, Api]) -> None:
    from usagi_p2p.node.errors import ConfigError

    seller, _ = pair
    stale = issue_signin(seller.node.home, ttl=-1.0)
    async with _session() as http, http.get(f"{seller.local.url}/signin?code={stale}") as resp:
        assert resp.status == 403
    with pytest.raises(ConfigError):
        issue_signin(seller.node.home, "nobody")


async def test_a_post_without_the_csrf_token_is_refused_and_does_nothing(
        pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    url = f"{seller.local.url}/compose"
    async with _session() as http:
        token = await _signed_in(http, seller)
        for form, headers in ((_quote(), {}),                       # no token
                              (_quote(token="x" + token[1:]), {}),  # a wrong one
                              (_quote(token=token), {"Origin": "http://evil.example"}),
                              (_quote(token=token), {"Sec-Fetch-Site": "cross-site"})):
            async with http.post(url, data=form, headers=headers, allow_redirects=False) as resp:
                assert resp.status == 403
                page = await resp.text()
                assert "csrf_failed" in page and "Nothing was done" in page
        assert (await operations.page_documents(seller.node)).entries == ()
        # With it, from this site, the same form sends.
        async with http.post(url, data=_quote(token=token), allow_redirects=False,
                             headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}) as resp:
            assert resp.status == 303, await resp.text()
            assert resp.headers["Location"].startswith("/documents/b")
        assert len((await operations.page_documents(seller.node)).entries) == 1
        # Signing out ends the session: its token no longer works either.
        async with http.post(f"{seller.local.url}/signout", data={"csrf_token": token},
                             allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.post(url, data=_quote(token=token), allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/signin")
        assert len((await operations.page_documents(seller.node)).entries) == 1


async def test_every_page_carries_the_security_headers(pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    async with _session() as http:
        await _signed_in(http, seller)
        for path in ("/inbox", "/outbox", "/compose", "/signin", "/static/usagi.css", "/nope"):
            async with http.get(f"{seller.local.url}{path}", allow_redirects=False) as resp:
                if path == "/nope":  # not the UI's: the API's problem answer
                    assert resp.status == 404
                    continue
                assert resp.headers["Content-Security-Policy"] == CSP, path
                assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert resp.headers["Referrer-Policy"] == "no-referrer"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(f"{seller.local.url}/documents/not-a-cid") as resp:
            assert resp.status == 400 and "malformed" in await resp.text()
            assert resp.headers["Content-Security-Policy"] == CSP


async def test_a_user_signs_in_as_themselves_and_a_removed_user_is_signed_out(
        pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    await operations.add_user(seller.node, "suzuki", None, plugins=["machinery"])
    async with _session() as http:
        token = await _signed_in(http, seller, "suzuki")
        async with http.get(f"{seller.local.url}/inbox") as resp:
            assert "Signed in as suzuki" in await resp.text()
        async with http.post(f"{seller.local.url}/compose", data=_quote(token=token),
                             allow_redirects=False) as resp:
            assert resp.status == 303
        cid = resp.headers["Location"].split("/")[2].split("?")[0]
        from kernel.cid import CID

        shown = await operations.show_document(seller.node, CID.parse(cid))
        assert shown.document["user"] == "suzuki"  # their name on what they send
        await operations.remove_user(seller.node, "suzuki")
        async with http.get(f"{seller.local.url}/inbox", allow_redirects=False) as resp:
            assert resp.status == 303
