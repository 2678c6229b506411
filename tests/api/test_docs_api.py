"""docs/api.md followed literally: its quote and its Python client, against a real pair of nodes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from ..node.conftest import REPO, make_home, start
from .conftest import Api

DOC = (REPO / "docs" / "api.md").read_text(encoding="utf-8")


def python_example() -> str:
    """The tutorial's Python client (section 2.4), as printed."""
    section = DOC[DOC.index("### 2.4 A Python client"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def curl_quote() -> dict[str, object]:
    """The JSON the tutorial's 'Send a quote' curl command posts (section 2.2)."""
    section = DOC[DOC.index("### 2.2 Send a quote"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    return dict(json.loads(block[block.index("-d '") + 4:block.rindex("'")]))


def curl_batch() -> dict[str, object]:
    """The JSON the tutorial's 'Send many at once' curl command posts (section 2.5)."""
    section = DOC[DOC.index("### 2.5 Send many at once"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    return dict(json.loads(block[block.index("-d '") + 4:block.rindex("'")]))


async def paired(api: Api, path: Path):  # type: ignore[no-untyped-def]
    osaka, service = await start(make_home(path, "Osaka Precision"))
    await api.node.add_partner((await osaka.invite()).text())
    return osaka, service


async def test_the_curl_quote_is_sent_and_acked(api: Api, tmp_path: Path) -> None:
    osaka, service = await paired(api, tmp_path / "osaka")
    try:
        status, _, body = await api.call("POST", "/api/v1/documents?wait=10",
                                         token=api.tokens["send"], json=curl_quote(),
                                         headers={"Idempotency-Key": "doc-curl-1"})
        assert status == 201, body
        assert body["ack"]["status"] == "received", body
    finally:
        await service.close()
        await osaka.close()


async def test_the_curl_batch_is_sent_and_acked(api: Api, tmp_path: Path) -> None:
    osaka, service = await paired(api, tmp_path / "osaka")
    try:
        status, _, answers = await api.call("POST", "/api/v1/batches?wait=30",
                                            token=api.tokens["send"], json=curl_batch(),
                                            headers={"Idempotency-Key": "month-end-2026-12-part-1"})
        assert status == 201, answers
        assert [a["ack"]["status"] for a in answers] == ["received", "received"]
    finally:
        await service.close()
        await osaka.close()


async def test_the_python_client_sends_a_quote_and_gets_its_ack(api: Api, tmp_path: Path) -> None:
    osaka, service = await paired(api, tmp_path / "osaka")
    script = tmp_path / "client.py"
    script.write_text(python_example(), encoding="utf-8")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, USAGI_API=api.local.url or "", USAGI_TOKEN=api.tokens["send"]))
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        cid, status = out.decode().split()
        assert status == "received"
        got = await api.call("GET", f"/api/v1/documents/{cid}", token=api.tokens["read"])
        assert got[0] == 200 and got[2]["cid"] == cid, got
        assert got[2]["document"]["ref"] == "Q-2026-002", got[2]
    finally:
        await service.close()
        await osaka.close()
