"""Commercial integrity between two real nodes: arithmetic findings and the three-way match
(docs/commerce.md) through the operations and ``usagi match`` / ``show`` / ``verify``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kernel import Discrepancy, Match
from kernel.cid import CID
from usagi_p2p.node import operations as ops
from usagi_p2p.node.errors import UnknownDocumentError

from .conftest import Pair, make_home, paired
from .test_cli import usagi

BOLT = {"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit": "pcs", "unit_price": "12.50"}
TEA = {"text": "煎茶 1kg (来客用)", "qty": "2", "unit": "pcs", "unit_price": "3001"}


def invoice_body(bolts: str) -> dict[str, Any]:
    """A qualified invoice: bolts at 10 %, tea at the reduced 8 %, rounded down once per rate."""
    amount = str(int(bolts) * 125 // 10)
    net = int(amount) + 6002
    tax10 = int(amount) // 10
    return {"ref": "INV-1", "currency": "JPY", "rounding": "down",
            "lines": [{**BOLT, "qty": bolts, "amount": amount, "tax_category": "S",
                       "tax_rate": "10"},
                      {**TEA, "amount": "6002", "tax_category": "AA", "tax_rate": "8"}],
            "tax": [{"category": "S", "rate": "10", "taxable": amount, "amount": str(tax10)},
                    {"category": "AA", "rate": "8", "taxable": "6002", "amount": "480"}],
            "net": str(net), "tax_total": str(tax10 + 480), "total": str(net + tax10 + 480),
            "payment_terms": "end of next month",
            "parties": {"from": {"name": "Kanto Machine Tools", "tax_id": "T5040001082442",
                                 "country": "JP"},
                        "to": {"name": "Osaka Precision", "tax_id": "T8120001077316"}}}


async def trade(pair: Pair, delivered: tuple[str, ...], billed: str) -> list[CID]:
    """quote -> order -> delivery notes (``delivered`` bolts each) -> invoice of ``billed`` bolts."""
    seller, buyer = pair.seller, pair.buyer

    async def sent(node: Any, kind: str, body: dict[str, Any], reply_to: CID | None) -> CID:
        result = await ops.send(node, kind, body, to=None if reply_to else "Osaka",
                                reply_to=reply_to)
        await ops.deliver_now(node)
        assert (await ops.await_ack(node, result.cid, 15)).status == "received"
        return result.cid

    quote = await sent(seller, "quote", {"ref": "Q-1", "currency": "JPY", "lines": [BOLT, TEA]},
                       None)
    order = await sent(buyer, "order", {"ref": "PO-1", "currency": "JPY", "lines": [BOLT, TEA]},
                       quote)
    cids = [quote, order]
    for i, qty in enumerate(delivered):
        lines = [{"text": "m6x20 sus304 hex bolts", "qty": qty, "unit": "pcs"}]
        if i == 0:
            lines.append({"text": "煎茶 1kg（来客用）", "qty": "2"})
        cids.append(await sent(seller, "delivery_note", {"ref": f"DN-{i + 1}", "lines": lines},
                               order))
    cids.append(await sent(seller, "invoice", invoice_body(billed), cids[-1]))
    return cids


async def test_a_clean_thread_matches_on_both_sides(pair: Pair) -> None:
    cids = await trade(pair, ("300", "200"), "500")
    for node in (pair.seller, pair.buyer):
        for cid in (cids[0], cids[-1]):  # any document of the thread names it
            m = await ops.match_documents(node, cid)
            assert isinstance(m, Match) and m.ok and m.findings == (), m.findings
            assert [str(c) for c, _ in m.documents] == [str(c) for c in cids]
            assert m.summary == ("clean: 2 items agree across 1 quote, 1 order, "
                                 "2 delivery notes, 1 invoice")
    view = await ops.show_document(pair.buyer, cids[-1])
    assert view.arithmetic == () and view.document["tax"][1]["amount"] == "480"
    assert await ops.document_arithmetic(pair.buyer, cids[-1]) == ()


async def test_over_billing_is_found_and_changes_nothing(pair: Pair) -> None:
    cids = await trade(pair, ("300", "180"), "500")
    before = await ops.list_documents(pair.buyer, "in", limit=100)
    m = await ops.match_documents(pair.buyer, cids[-1])
    assert not m.ok
    assert [f.code for f in m.findings if f.level == "warning"] == ["billed_not_delivered"]
    assert m.summary == ("1 to check: M6x20 SUS304 hex bolt: quoted 500, ordered 500, "
                         "delivered 480, invoiced 500: 20 pcs billed but not delivered")
    # A finding is a warning: the invoice was received and verifies.
    assert (await ops.verify_document(pair.buyer, cids[-1])).ok
    assert await ops.list_documents(pair.buyer, "in", limit=100) == before


async def test_arithmetic_findings_are_shown_never_refused(pair: Pair) -> None:
    body = invoice_body("500")
    body["tax"][0]["amount"] = "626"
    body["parties"]["from"]["tax_id"] = "T1040001082442"
    result = await ops.send(pair.seller, "invoice", body, to="Osaka")
    await ops.deliver_now(pair.seller)
    assert (await ops.await_ack(pair.seller, result.cid, 15)).status == "received"
    for node in (pair.seller, pair.buyer):
        found = await ops.document_arithmetic(node, result.cid)
        assert all(isinstance(d, Discrepancy) for d in found)
        assert [(d.code, d.path) for d in found] == [
            ("tax_amount", "tax[0].amount"), ("tax_total", "tax_total"),
            ("tax_id", "parties.from.tax_id")]
        assert (await ops.show_document(node, result.cid)).arithmetic == found
        report = await ops.verify_document(node, result.cid)
        assert report.ok and report.arithmetic == found
    with pytest.raises(UnknownDocumentError):
        await ops.match_documents(pair.buyer, CID.for_block(b"never sent"))
    with pytest.raises(UnknownDocumentError):
        await ops.document_arithmetic(pair.buyer, CID.for_block(b"never sent"))


def test_usagi_match_show_and_verify(tmp_path: Path) -> None:
    seller_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    buyer_home = make_home(tmp_path / "osaka", "Osaka Precision")

    async def run() -> list[CID]:
        async with paired(seller_home, buyer_home) as pair:
            return await trade(pair, ("300", "180"), "500")

    cids = asyncio.run(run())
    invoice = str(cids[-1])
    proc = usagi(buyer_home.path, "match", invoice, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "1 to check: M6x20 SUS304 hex bolt: quoted 500, ordered 500, delivered 480, "
        "invoiced 500: 20 pcs billed but not delivered")
    assert "warning [billed_not_delivered]" in proc.stdout and "煎茶 1kg (来客用)" in proc.stdout
    data = json.loads(usagi(buyer_home.path, "--json", "match", str(cids[0]), check=False).stdout)
    assert data["ok"] is False and data["currency"] == "JPY"
    assert [(i["ordered"], i["delivered"], i["invoiced"]) for i in data["items"]] == \
        [("500", "480", "500"), ("2", "2", "2")]
    assert [line["paired_by"] for line in data["items"][0]["lines"]] == \
        ["base", "text", "similar", "similar", "text"]
    shown = usagi(buyer_home.path, "show", invoice).stdout
    assert "tax         S 10 % of 6250: 625" in shown and "T5040001082442" in shown
    assert "arithmetic" not in shown  # the invoice's own figures add up
    verify = usagi(buyer_home.path, "--json", "verify", invoice)
    assert json.loads(verify.stdout)["arithmetic"] == []
    bad = usagi(buyer_home.path, "match", "bafyreinotacid", check=False)
    assert bad.returncode != 0 and "malformed" in bad.stderr
