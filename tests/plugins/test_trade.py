"""A real two-node trade with each plugin: findings travel, approvals verify, errors refuse.

Runs two nodes on loopback in this process. Expected to fail until
:class:`PluginHost` is wired into the node: ``Node.plugins``, findings checked
in ``send_many`` (with a ``prepare`` hook for approvals) and in ``_take``, and
a ``findings`` column on ``DocumentRow``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kernel.errors import InvalidDocumentError, UsagiError
from usagi_p2p.company.cli.plugins import approver
from usagi_p2p.node.home import Home
from usagi_p2p.node.node import Node
from usagi_p2p.node.plugin_host import PluginHost
from usagi_p2p.node.users import add_user
from usagi_p2p.peer.service import Service

from ..node.conftest import free_port

PLUGINS = ["machinery", "food", "construction", "medical"]


@dataclass
class Pair:
    seller: Node
    buyer: Node
    seller_home: Home


def make_home(path: Path, name: str, plugins: list[str]) -> Home:
    home = Home(path)
    home.create(name, None, port=free_port())
    config = home.load_config()
    config.plugins = plugins
    home.save_config(config)
    return home


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    homes = (make_home(tmp_path / "kanto", "Kanto Trading", PLUGINS),
             make_home(tmp_path / "osaka", "Osaka Hospital Supply", PLUGINS))
    add_user(homes[0], "suzuki", None, plugins=["medical"], role="pharmacist")
    add_user(homes[0], "sato", None, plugins=["medical"], role="manager")
    nodes, services = [], []
    for home in homes:
        node = Node.load(home, None)
        await node.open()
        service = Service(node)
        await service.start()
        nodes.append(node)
        services.append(service)
    await nodes[1].add_partner((await nodes[0].invite()).text())
    try:
        yield Pair(nodes[0], nodes[1], homes[0])
    finally:
        for service in services:
            await service.close()
        for node in nodes:
            await node.close()


def with_extracted(texts: list[str]) -> list[dict[str, Any]]:
    """Lines as a person types them, with what the plugins suggest accepted as is."""
    host = PluginHost.load(PLUGINS)
    return [{"text": t, "qty": "1", "ext": host.extract(t)} if host.extract(t) else {"text": t}
            for t in texts]


async def trade(pair: Pair, kind: str, body: dict[str, Any], **kwargs: Any
                ) -> tuple[str, str | None, Any]:
    """Send, wait for the ack; (status, reason, the buyer's ledger row or None)."""
    result = await pair.seller.send(kind, "Osaka", body, **kwargs)
    ack = await pair.seller.wait_for_ack(result.cid, 15)
    assert ack is not None
    return ack[1], ack[2], await pair.buyer.ledger.document(result.cid)


def stored_findings(row: Any) -> list[dict[str, str]]:
    return json.loads(row.findings or "[]")


CASES = {
    "machinery": ("quote", ["M6x20 SUS304 hex bolt", "NSK 6204ZZ", "φ10 4-flute carbide end mill"],
                  []),
    "food": ("order", ["鶏もも 2kg 冷蔵 賞味期限 2025/04/03", "小麦粉 25kg 常温"],
             ["cold_chain_missing"]),
    "construction": ("delivery_note", ["構造用合板 1820×910×12mm 現場: 芝浦", "養生シート 一式"], []),
    "medical": ("order", ["(01)09506000134353(17)270331(10)AB1234 stent"], ["gtin_check_digit"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_trade_with_each_plugin(pair: Pair, name: str) -> None:
    kind, texts, expected = CASES[name]
    status, _, row = await trade(pair, kind, {"lines": with_extracted(texts)})
    assert status == "received"
    assert [f["code"] for f in stored_findings(row) if f["plugin"] == name] == expected


async def test_masterless_trade_has_no_findings(pair: Pair) -> None:
    status, _, row = await trade(pair, "order", {"lines": [{"text": "いつもの部品 一式"}]})
    assert status == "received" and stored_findings(row) == []


async def test_unapproved_medical_order_is_not_sent(pair: Pair) -> None:
    body = {"lines": [{"text": "stent", "ext": {"medical": {"lot": "A1"}}}],
            "ext": {"medical": {"route": ["pharmacist", "manager"]}}}
    before = await pair.seller.ledger.count_documents("out")
    with pytest.raises(InvalidDocumentError):
        await pair.seller.send("medical.order", "Osaka", body)
    assert await pair.seller.ledger.count_documents("out") == before


async def test_approved_medical_order_is_received_with_its_approvals(pair: Pair) -> None:
    from kernel._signed import open_signed

    body = {"lines": [{"text": "stent", "ext": {"medical": {"lot": "A1"}}}],
            "ext": {"medical": {"route": ["pharmacist", "manager"]}}}
    sign = approver(pair.seller_home, ["suzuki", "sato"])
    result = (await pair.seller.send_many([("medical.order", "Osaka", body, None)],
                                          prepare=sign))[0]
    ack = await pair.seller.wait_for_ack(result.cid, 15)
    assert ack is not None and ack[1] == "received"
    row = await pair.buyer.ledger.document(result.cid)
    document = open_signed(row.signed, "document", "from").body
    roles = [a["role"] for a in document["ext"]["medical"]["approvals"]]
    assert roles == ["pharmacist", "manager"]


async def test_receiver_rejects_what_its_plugins_refuse(pair: Pair) -> None:
    # A seller without the medical plugin may send a medical.order nobody approved;
    # the buyer, which runs medical, answers with a rejected ack.
    pair.seller.plugins = PluginHost.load([])  # type: ignore[attr-defined]
    body = {"lines": [{"text": "stent"}], "ext": {"medical": {"route": ["pharmacist"]}}}
    try:
        status, reason, row = await trade(pair, "medical.order", body)
    except UsagiError:
        pytest.fail("the seller without medical must be able to send")
    assert (status, reason, row) == ("rejected", "plugin_rejected", None)
