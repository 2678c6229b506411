"""``GET /api/v1/search`` against two real nodes on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from usagi_p2p.company.api.server import LocalServer
from usagi_p2p.company.api.tokens import TokenStore

from ..node.conftest import make_home, paired
from .conftest import PROBLEM, Api
from .test_openapi import conforms

QUOTE = {"ref": "Q-2026-001", "lines": [{"text": "M6 六角ナット SUS304 500個"}]}


async def _search(api: Api, query: str, token: str | None = None) -> tuple[int, dict, object]:
    status, headers, body = await api.call("GET", f"/api/v1/search?{query}",
                                           token=token or api.tokens["read"])
    return status, headers, body


async def test_search_finds_a_quote_received_and_refuses_what_it_cannot_run(
        tmp_path: Path) -> None:
    async with paired(make_home(tmp_path / "kanto", "Kanto Machine Tools"),
                      make_home(tmp_path / "osaka", "Osaka Precision")) as pair:
        local = LocalServer(pair.buyer, port=0, peer_url=pair.buyer_service.url)
        await local.start()
        try:
            store = TokenStore(pair.buyer.home.path)
            api = Api(pair.buyer, pair.buyer_service, local,
                      {"read": store.create("viewer", "read")})
            sent = await pair.seller.send("quote", "Osaka Precision", QUOTE)
            await pair.seller.deliver_once()
            for q in ("六角ナット", "ナット", "Q-2026", "Kanto", "六角"):
                status, headers, body = await _search(api, "q=" + quote(q))
                assert status == 200, (q, body)
                conforms(body, "SearchPage")
                assert [r["cid"] for r in body["results"]] == [str(sent.cid)], q  # type: ignore[index]
            status, _, body = await _search(api, "q=" + quote("ナット") + "&partner=Kanto"
                                            "&kind=quote&direction=in&limit=5")
            assert status == 200 and len(body["results"]) == 1  # type: ignore[index]
            hit = body["results"][0]  # type: ignore[index]
            assert hit["partner"] == {"did": pair.seller.did, "name": "Kanto Machine Tools"}
            assert hit["snippet"] == {"text": "M6 六角ナット SUS304 500個", "matches": [[5, 8]]}
            status, _, body = await _search(api, "q=" + quote("ボルト"))
            assert (status, body) == (200, {"results": [], "cursor": None})
            # Hostile FTS syntax is text: an answer, never a 500.
            for q in ('"', 'NEAR("六角" "ナット")', "ナット*", "-ナット OR x", "(((", "ref:Q",
                      "\\", "%", "a\" OR \"b"):
                status, _, body = await _search(api, "q=" + quote(q))
                assert status == 200 and body["results"] == [], (q, body)  # type: ignore[index]
            # What the search cannot use: typed problems, each conforming.
            for query, code, want in (
                    ("q=", "invalid_query", 400), ("q=%20%20", "invalid_query", 400),
                    ("q=x&cursor=bogus", "invalid_query", 400),
                    ("", "validation_failed", 422), ("q=x&limit=0", "validation_failed", 422),
                    ("q=x&limit=abc", "validation_failed", 422),
                    ("q=x&direction=up", "validation_failed", 422),
                    ("q=x&q=y", "validation_failed", 422), ("q=x&sort=1", "validation_failed", 422),
                    ("q=" + "a" * 1001, "validation_failed", 422),
                    ("q=x&partner=Nobody", "unknown_partner", 403)):
                status, headers, body = await _search(api, query)
                assert (status, body["code"]) == (want, code), (query, body)  # type: ignore[index]
                assert headers["Content-Type"].startswith(PROBLEM)
                conforms(body, "Problem")
            status, _, body = await _search(api, "q=x&limit=0&direction=up&sort=1")
            assert {e["field"] for e in body["errors"]} == {"limit", "direction", "sort"}  # type: ignore[index]
        finally:
            await local.close()


@pytest.mark.parametrize("token", [None, "nonsense"])
async def test_search_needs_a_token(api: Api, token: str | None) -> None:
    status, _, body = await api.call("GET", "/api/v1/search?q=x", token=token)
    assert (status, body["code"]) == (401, "unauthorized")
