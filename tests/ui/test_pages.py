"""The trading pages over HTTP (no browser): what they show, refuse and fall back to.

The browser tests (test_trade.py, test_hostile.py) drive the main flow; these
check the rest quickly: a red badge with its reason, filters and paging,
the compose form without JavaScript, a user's plugin subset, ``usagi ui``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from usagi_p2p.company.cli import main
from usagi_p2p.node import operations

from ..api.conftest import Api
from .conftest import paired, ui_node
from .test_security import _quote, _session, _signed_in


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Api, Api]]:
    async with ui_node(tmp_path / "kanto", "Kanto Machine Tools") as seller, \
            ui_node(tmp_path / "osaka", "Osaka Precision") as buyer:
        await paired(seller, buyer)
        yield seller, buyer


async def _text(http: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with http.get(url) as resp:
        text = await resp.text()
        assert resp.status == status, text[-2000:]
        return text


async def test_a_document_without_an_ack_shows_a_red_badge_with_the_reason(
        pair: tuple[Api, Api]) -> None:
    seller, buyer = pair
    await buyer.service.close()  # the partner is away: no ack comes
    sent = await operations.send(seller.node, "quote", {"lines": [{"text": "M6 bolts"}]},
                                 to="Osaka Precision")
    async with _session() as http:
        await _signed_in(http, seller)
        page = await _text(http, f"{seller.local.url}/documents/{sent.cid}")
        assert re.search(r'class="badge bad" data-check="ack"', page)
        assert "no acknowledgement yet" in page and "A check fails" in page
        assert re.search(r'class="badge ok" data-check="signature"', page)
        # The outbox lists it; its filters narrow it; an answer to one's own quote is none.
        outbox = await _text(http, f"{seller.local.url}/outbox")
        assert str(sent.cid) in outbox
        assert str(sent.cid) not in await _text(http, f"{seller.local.url}/outbox?kind=invoice")
        assert str(sent.cid) not in await _text(http, f"{seller.local.url}/outbox?since=2999-01-01")
        assert str(sent.cid) in await _text(
            http, f"{seller.local.url}/outbox?partner=Osaka+Precision&status=queued")
        assert "Order this quote" not in page


async def test_pages_of_the_inbox_and_marking_read(pair: tuple[Api, Api]) -> None:
    seller, buyer = pair
    async with _session() as http:
        token = await _signed_in(http, buyer)
        sent = [await operations.send(seller.node, "message", {"note": f"note {i}"},
                                      to=(await operations.partners(seller.node))[0].did)
                for i in range(52)]
        await operations.deliver_now(seller.node)
        for s in sent:
            assert (await operations.await_ack(seller.node, s.cid, 20)).ack is not None
        first = await _text(http, f"{buyer.local.url}/inbox")
        assert first.count('class="unread"') == 50  # a page of 50, each unread
        older = re.search(r'href="(/inbox\?cursor=[^"]+)" rel="next"', first)
        assert older
        second = await _text(http, f"{buyer.local.url}{older.group(1).replace('&amp;', '&')}")
        assert second.count("data-cid=") == 2
        async with http.post(f"{buyer.local.url}/inbox/read", data={"csrf_token": token}) as resp:
            assert resp.status == 200  # followed to the inbox
            assert 'class="unread"' not in await resp.text()
        # A search that cannot run is a page saying why, with the spec's code.
        words = "+".join(f"w{i}" for i in range(20))
        assert "invalid_query" in await _text(http, f"{buyer.local.url}/inbox?q={words}", 400)


async def test_the_compose_form_works_without_javascript(pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    async with _session() as http:
        token = await _signed_in(http, seller)
        form = _quote(token=token) | {"action": "add-line"}
        async with http.post(f"{seller.local.url}/compose", data=form) as resp:
            page = await resp.text()
            assert resp.status == 200 and page.count('name="line-text"') == 3  # 2 + template
        form = {**_quote(token=token), "action": "remove-line-0"}
        async with http.post(f"{seller.local.url}/compose", data=form) as resp:
            page = await resp.text()
            assert page.count('name="line-text"') == 2  # the one empty row + template
        # A line of numbers without its text: shown beside the line, nothing sent.
        form = {**_quote(token=token), "line-text": "", "line-qty": "3"}
        async with http.post(f"{seller.local.url}/compose", data=form) as resp:
            assert resp.status == 422
            assert "A line needs its text" in await resp.text()
        assert (await operations.page_documents(seller.node)).entries == ()
        # The kernel's refusal (a plugin kind no one declares is not offered; a
        # date that does not exist is the node's to refuse) is shown, nothing sent.
        form = {**_quote(token=token), "due": "2026-02-30"}
        async with http.post(f"{seller.local.url}/compose", data=form) as resp:
            assert resp.status == 422
            assert "invalid_document" in await resp.text()
        assert (await operations.page_documents(seller.node)).entries == ()


async def test_a_user_sees_and_extracts_with_their_plugins_only(pair: tuple[Api, Api]) -> None:
    seller, buyer = pair
    await operations.add_user(buyer.node, "chef", None, plugins=[])
    sent = await operations.send(seller.node, "quote", {"lines": [{"text": "M6x20 SUS304 bolt"}]},
                                 to="Osaka Precision", extract=True)
    await operations.deliver_now(seller.node)
    assert (await operations.await_ack(seller.node, sent.cid, 20)).ack is not None
    async with _session() as company, _session() as chef:
        await _signed_in(company, buyer)
        token = await _signed_in(chef, buyer, "chef")
        assert "thread=M6" in await _text(company, f"{buyer.local.url}/documents/{sent.cid}")
        assert "thread=M6" not in await _text(chef, f"{buyer.local.url}/documents/{sent.cid}")
        async with chef.post(f"{buyer.local.url}/compose/extract",
                             data={"text": "M6x20 SUS304 bolt", "kind": "quote"},
                             headers={"X-CSRF-Token": token}) as resp:
            assert "free text" in await resp.text()


async def test_usagi_ui_prints_a_link_that_signs_in_once(pair: tuple[Api, Api]) -> None:
    seller, _ = pair
    home = seller.node.home.path
    runner = CliRunner()
    refused = await asyncio.to_thread(runner.invoke, main, ["--home", str(home), "ui"])
    assert refused.exit_code != 0 and "usagi serve" in refused.output
    seller.local.tokens.cli_secret()
    (home / "serve.json").write_text(json.dumps({"pid": os.getpid(), "url": seller.service.url,
                                                 "local_url": seller.local.url}))
    done = await asyncio.to_thread(runner.invoke, main,
                                   ["--home", str(home), "--json", "ui", "--no-open"])
    assert done.exit_code == 0, done.output
    link = json.loads(done.output)["url"]
    assert link.startswith(f"{seller.local.url}/signin?code=")
    async with _session() as http:
        async with http.get(link) as resp:
            assert resp.status == 200
        assert "Inbox" in await _text(http, f"{seller.local.url}/inbox")
