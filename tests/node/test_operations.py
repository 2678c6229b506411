"""The node's operations (usagi_p2p.node.operations) against two real nodes:
typed values in, typed values out, typed errors, nothing printed."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kernel.cid import CID
from kernel.plugin import Finding
from usagi_p2p.node import operations as ops
from usagi_p2p.node.errors import NodeError, PartnerError
from usagi_p2p.node.ledger import Partner

from .conftest import Pair

QUOTE = {"ref": "Q-1", "currency": "JPY", "total": "6250",
         "lines": [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit_price": "12.50"}]}


async def test_a_trade_through_the_operations_returns_typed_values(pair: Pair) -> None:
    seller, buyer = pair.seller, pair.buyer
    sent = await ops.send(seller, "quote", QUOTE, to="Osaka")
    await ops.deliver_now(seller)
    delivery = await ops.await_ack(seller, sent.cid, 15)
    assert isinstance(delivery, ops.Delivery) and isinstance(delivery.ack, ops.AckView)
    assert (delivery.status, delivery.ack.status, delivery.ack.by) == \
        ("received", "received", buyer.did)
    assert isinstance(delivery.ack.at, datetime) and delivery.ack.at.tzinfo is not None

    # The buyer answers without a body of its own: what was quoted, its ref on top.
    order = await ops.answer(buyer, "order", sent.cid, {"ref": "PO-1"})
    assert (await ops.await_ack(buyer, order.cid, 15)).status == "received"
    [entry] = await ops.list_documents(buyer, "out", partner="Kanto")
    assert isinstance(entry, ops.DocumentEntry)
    assert (entry.cid, entry.kind, entry.ref, entry.partner, entry.partner_name,
            entry.thread, entry.status) == (order.cid, "order", "PO-1", seller.did,
                                            "Kanto Machine Tools", sent.cid, "delivered")
    assert await ops.list_documents(buyer, "in", kind="order") == []
    assert await ops.list_documents(buyer, "in", since=datetime(2999, 1, 1, tzinfo=UTC)) == []

    view = await ops.show_document(seller, order.cid)
    assert isinstance(view, ops.DocumentView)
    assert (view.direction, view.partner, view.partner_name, view.thread) == \
        ("in", buyer.did, "Osaka Precision", sent.cid)
    assert view.document["lines"] == QUOTE["lines"] and view.document["prev"] == [sent.cid]
    assert all(isinstance(f, Finding) for f in view.findings)
    assert view.ack is not None and view.ack.by == seller.did  # the seller's own ack

    thread = await ops.thread_documents(seller, order.cid)
    assert [(t.cid, t.kind, t.direction) for t in thread] == \
        [(sent.cid, "quote", "out"), (order.cid, "order", "in")]
    report = await ops.verify_document(seller, order.cid)
    assert isinstance(report, ops.Verification) and report.ok
    assert [c.name for c in report.checks] == \
        ["ledger", "block", "signature", "parties", "digest", "thread", "ack"]
    missing = await ops.verify_document(seller, CID.for_block(b"never sent"))
    assert not missing.ok and [(c.name, c.ok) for c in missing.checks] == [("ledger", False)]


async def test_refusals_are_typed_and_send_nothing(pair: Pair) -> None:
    seller = pair.seller
    note = await ops.send(seller, "message", {"note": "hello"}, to="Osaka")
    before = len(await ops.list_documents(seller, "out", limit=1000))
    with pytest.raises(NodeError, match="is a message"):
        await ops.answer(seller, "order", note.cid)
    with pytest.raises(NodeError, match="not in this node's ledger"):
        await ops.answer_body(seller, "order", CID.for_block(b"unknown"))
    with pytest.raises(PartnerError):
        await ops.send(seller, "quote", QUOTE, to="Nobody")
    with pytest.raises(PartnerError):
        await ops.send(seller, "quote", QUOTE)  # neither a partner nor a document to answer
    assert len(await ops.list_documents(seller, "out", limit=1000)) == before


async def test_partner_operations(pair: Pair) -> None:
    seller = pair.seller
    [osaka] = await ops.partners(seller)
    assert isinstance(osaka, Partner) and osaka.status == "active"
    change = await ops.set_partner_status(seller, "Osaka", "suspended")
    assert (change.before.status, change.after.status) == ("active", "suspended")
    assert [p.status for p in await ops.partners(seller)] == ["suspended"]
    await ops.set_partner_status(seller, osaka.did, "active")
    renamed = await ops.rename_partner(seller, "Osaka", "Osaka Precision (plant 2)")
    assert (renamed.before.name, renamed.after.name) == (osaka.name, "Osaka Precision (plant 2)")
    with pytest.raises(PartnerError, match="control characters"):
        await ops.rename_partner(seller, "Osaka", "Osaka\x1b[31m")
    assert [p.name for p in await ops.partners(seller)] == ["Osaka Precision (plant 2)"]

    usage = await ops.set_quota(seller, "Osaka", docs=20_000, size=500 << 20)
    assert isinstance(usage, ops.QuotaUsage)
    assert (usage.did, usage.docs_quota, usage.bytes_quota, usage.own) == \
        (osaka.did, 20_000, 500 << 20, True)
    assert seller.home.load_config().partner_quotas[osaka.did] == \
        {"docs": 20_000, "bytes": 500 << 20}
    assert (await ops.quota(seller, "Osaka")).own
    assert not (await ops.set_quota(seller, "Osaka", default=True)).own
    assert osaka.did not in seller.home.load_config().partner_quotas

    invitation = await ops.invite(pair.buyer)
    assert invitation.text().startswith("usagi1:")
    status = await ops.node_status(seller)
    assert isinstance(status, ops.NodeStatus) and status.partners == 1
    assert [q.partner for q in status.quotas] == ["Osaka Precision (plant 2)"]
    info = await ops.key_info(seller)
    assert (info.did, info.retired, info.rotations) == (seller.did, (), ())
    with pytest.raises(NodeError, match="no rotation statement"):
        await ops.announce_key(seller)


def test_no_face_reaches_into_the_ledger() -> None:
    """The faces ask the operations; only the core node touches ``node.ledger``."""
    root = Path(__file__).resolve().parents[2] / "usagi_p2p"
    found = []
    for face in ("company", "peer"):
        for path in sorted((root / face).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr == "ledger":
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []


async def test_plugin_and_user_changes_are_operations_that_check_before_writing(
        tmp_path: Path) -> None:
    """What 'usagi plugins …' and 'usagi user …' do, on a home without its node."""
    from usagi_p2p.node.errors import ConfigError, PluginConfigError

    from .conftest import make_home

    home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    assert await ops.enable_plugin(ops.offline(home), "food") == ("food",)
    assert await ops.enable_plugin(ops.offline(home), "food") == ("food",)  # no twice
    before = home.config_path.read_bytes()
    refusals = [ops.enable_plugin(ops.offline(home), "nonesuch"),
                ops.disable_plugin(ops.offline(home), "medical"),
                ops.configure_plugin(ops.offline(home), "food", values={"freshness_days": "x"}),
                ops.configure_plugin(ops.offline(home), "food", unset=["nothing"]),
                ops.configure_plugin(ops.offline(home), "nonesuch", values={"a": 1})]
    for refused in refusals:
        with pytest.raises(PluginConfigError) as caught:
            await refused
        assert caught.value.code == "plugin_error"
    assert home.config_path.read_bytes() == before
    shown = await ops.configure_plugin(ops.offline(home), "food", values={"freshness_days": 5})
    assert (shown.settings, shown.changed) == ({"freshness_days": 5}, True)
    assert home.load_config().plugin_settings == {"food": {"freshness_days": 5}}
    assert (await ops.configure_plugin(ops.offline(home), "food")).changed is False

    added = await ops.add_user(ops.offline(home), "sato-k", None, plugins=["food"], role="qa")
    assert (added.name, added.plugins, added.role) == ("sato-k", ("food",), "qa")
    assert added.did == home.load_config().users["sato-k"]["did"]
    moved = await ops.move_user(ops.offline(home), "sato-k", None)
    assert moved.plugins is None and await ops.user_list(ops.offline(home)) == [moved]
    await ops.remove_user(ops.offline(home), "sato-k")
    assert await ops.user_list(ops.offline(home)) == []
    with pytest.raises(ConfigError):
        await ops.move_user(ops.offline(home), "sato-k", ["food"])
    assert await ops.disable_plugin(ops.offline(home), "food") == ()
