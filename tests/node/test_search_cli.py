"""``usagi search`` as a person and a script run it (a real child process)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kernel._identity import Identity
from usagi_p2p.node.node import Node

from .conftest import make_home
from .test_cli import usagi


def test_usagi_search_finds_marks_filters_and_reindexes(tmp_path: Path) -> None:
    home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    other = Identity.generate()

    async def queue() -> str:
        async with Node.load(home, None) as node:
            await node.ledger.add_partner(other.did, "Osaka Precision", "http://127.0.0.1:9", None)
            # No delivery loop runs: queued documents are searchable all the same.
            sent = await node.send("quote", "Osaka", {
                "ref": "Q-2026-001", "lines": [{"text": "M6 六角ナット SUS304 500個"}]})
            await node.send("quote", "Osaka", {"ref": "Q-2026-002",
                                               "lines": [{"text": "M8 ボルト"}]})
            return str(sent.cid)

    cid = asyncio.run(queue())
    found = json.loads(usagi(home.path, "--json", "search", "六角ナット").stdout)
    assert [r["cid"] for r in found["results"]] == [cid] and found["cursor"] is None
    assert found["results"][0]["snippet"] == {"text": "M6 六角ナット SUS304 500個",
                                              "matches": [[3, 8]]}
    assert found["results"][0]["partner"] == {"did": other.did, "name": "Osaka Precision"}
    human = usagi(home.path, "search", "ナット").stdout
    assert "M6 六角ナット SUS304 500個" in human and cid in human
    assert len(json.loads(usagi(home.path, "--json", "search", "Q-2026")
                          .stdout)["results"]) == 2
    assert json.loads(usagi(home.path, "--json", "search", "Q-2026", "--kind", "order")
                      .stdout)["results"] == []
    assert "nothing found" in usagi(home.path, "search", "NEAR(\"*").stdout
    bad = usagi(home.path, "search", "   ", check=False)
    assert bad.returncode == 64 and "invalid_query" in bad.stderr
    rebuilt = usagi(home.path, "search", "--reindex", "六角")
    assert "indexed 2 of 2 documents" in rebuilt.stderr and cid in rebuilt.stdout
