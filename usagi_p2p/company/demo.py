"""``usagi demo`` / ``make demo``: two companies trade end to end on loopback.

Kanto Machine Tools (seller) and Osaka Precision (buyer) each run a node as
its own process (``usagi serve``) with a temporary home. They pair with one
invitation, then trade quote -> order -> order_response -> two partial
delivery notes -> a qualified invoice with its taxes (10 % and the reduced
8 %); every step is sealed to both, content-addressed and acknowledged.
Both sides verify the whole thread, a third party's key opens nothing, the
buyer's three-way match of the thread is clean, and a second trade, billed
for more than was delivered, shows the over-billing finding.

``usagi demo --ui`` then keeps both nodes running and prints a one-time
sign-in link to each company's web UI (docs/ui.md), until Ctrl-C: a newcomer
sees the same trade in the browser, from either side.

The demo is a face like the CLI: it does what it shows through the node's
operations (``usagi_p2p.node.operations``), nothing of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from decimal import ROUND_DOWN, Decimal
from functools import partial
from pathlib import Path
from typing import Any

from kernel import Identity, Match, open_ack, open_envelope
from kernel.cid import CID
from kernel.errors import NotRecipientError

from ..node import operations as ops
from ..node.home import Home
from ..node.node import Node
from ..node.terminal import printable
from .api.client import kick

SELLER = "Kanto Machine Tools"
BUYER = "Osaka Precision"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, USAGI_HOME=str(home))
    return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "usagi_p2p", "--home", str(home), "serve"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
    )


async def _wait_serving(home: Home, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (home.path / "serve.json").exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the node in {home.path} exited with {proc.returncode}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the node in {home.path} did not start in {timeout} s")


LINES = [
    {"text": "M6x20 SUS304 hex bolt DIN 933", "qty": "500", "unit": "pcs", "unit_price": "12.50"},
    {"text": "φ10 4-flute carbide end mill, TiAlN", "qty": "20", "unit": "pcs",
     "unit_price": "4800"},
    {"text": "六角ナット M6 SUS304", "qty": "500", "unit": "pcs", "unit_price": "3.20"},
    # Food and drink: Japan's reduced consumption tax rate, 8 %.
    {"text": "煎茶 1kg (来客用)", "qty": "2", "unit": "pcs", "unit_price": "3001"},
]

#: The parties as a qualified invoice (適格請求書) names them: registration numbers
#: are "T" and a 13-digit number whose first digit is its check digit (docs/commerce.md).
PARTIES = {"from": {"name": "株式会社関東工作機械 (Kanto Machine Tools)", "tax_id": "T5040001082442",
                    "address": "芝浦1-2-3\n港区", "city": "東京都", "postal_code": "108-0023",
                    "country": "JP", "endpoint": "0188:5040001082442"},
           "to": {"name": "大阪精密株式会社 (Osaka Precision)", "tax_id": "T8120001077316",
                  "city": "大阪市", "country": "JP", "endpoint": "0188:8120001077316"}}


def _invoice(ref: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A qualified invoice of ``lines``: amounts, tax once per rate (rounded down), totals.

    Food and drink at the reduced 8 % (``AA``), the rest at 10 % (``S``). The
    demo computes the figures as an accounting system would; the node only
    checks them (``usagi show`` lists what does not add up).
    """
    yen = Decimal(1)
    taxed = []
    for line in lines:
        reduced = line["text"].startswith("煎茶")
        amount = (Decimal(line["qty"]) * Decimal(line["unit_price"])).quantize(yen)
        taxed.append({**line, "amount": str(amount), "tax_category": "AA" if reduced else "S",
                      "tax_rate": "8" if reduced else "10"})
    groups: dict[tuple[str, str], Decimal] = {}
    for line in taxed:
        key = (line["tax_category"], line["tax_rate"])
        groups[key] = groups.get(key, Decimal(0)) + Decimal(line["amount"])
    tax = [{"category": c, "rate": r, "taxable": str(t),
            "amount": str((t * Decimal(r) / 100).quantize(yen, rounding=ROUND_DOWN))}
           for (c, r), t in groups.items()]
    net = sum((Decimal(line["amount"]) for line in taxed), Decimal(0))
    tax_total = sum((Decimal(t["amount"]) for t in tax), Decimal(0))
    return {"ref": ref, "currency": "JPY", "lines": taxed, "tax": tax, "net": str(net),
            "tax_total": str(tax_total), "total": str(net + tax_total), "rounding": "down",
            "payment_terms": "月末締め翌月末払い (end of month, paid the end of the next month)",
            "parties": PARTIES, "due": "2027-01-31T00:00:00Z"}


def _part(line: dict[str, Any], qty: str) -> dict[str, Any]:
    return {"text": line["text"], "qty": qty, "unit": line["unit"]}


STEPS: list[tuple[str, str, dict[str, Any]]] = [
    ("seller", "quote", {"ref": "Q-2026-0117", "currency": "JPY", "lines": LINES,
                         "valid_until": "2026-12-31T00:00:00Z",
                         "note": "Prices incl. delivery to Osaka."}),
    ("buyer", "order", {"ref": "PO-88231", "currency": "JPY", "lines": LINES,
                        "note": "Deliver to plant 2, dock 3."}),
    ("seller", "order_response", {"ref": "OR-88231", "response": "accept",
                                  "note": "Ships within 5 working days."}),
    # Two partial deliveries: 300 bolts first, then the other 200 with the rest.
    ("seller", "delivery_note", {"ref": "DN-55102",
                                 "lines": [_part(LINES[0], "300"), *LINES[1:]],
                                 "note": "Lot 2611-A, 3 cartons."}),
    ("seller", "delivery_note", {"ref": "DN-55103", "lines": [_part(LINES[0], "200")],
                                 "note": "Lot 2611-B, the remaining bolts."}),
    ("seller", "invoice", _invoice("INV-2026-3301", LINES)),
]

#: A second trade: 480 bolts delivered, 500 invoiced (what the match must catch).
OVERBILLED: list[tuple[str, str, dict[str, Any]]] = [
    ("buyer", "order", {"ref": "PO-88240", "currency": "JPY", "lines": LINES[:1]}),
    ("seller", "delivery_note", {"ref": "DN-55140", "lines": [_part(LINES[0], "480")]}),
    ("seller", "invoice", _invoice("INV-2026-3340", LINES[:1])),
]


async def _steps(homes: dict[str, Home], steps: list[tuple[str, str, dict[str, Any]]],
                 quiet: bool = False) -> list[CID] | None:
    """Send each step as an answer to the one before; the CIDs, or None when an ack
    did not come."""
    previous = None
    cids = []
    for side, kind, body in steps:
        home = homes[side]
        other = BUYER if side == "seller" else SELLER
        async with Node.load(home, None) as node:
            result = await ops.send(node, kind, body, to=other, reply_to=previous)
            await ops.deliver_now(node, wake=partial(kick, home.path))
            delivery = await ops.await_ack(node, result.cid, timeout=20)
        if delivery.ack is None:
            print(f"  {kind}: no ack in time")
            return None
        ack = delivery.ack
        who = SELLER if side == "seller" else BUYER
        if quiet:
            print(f"  {kind:15} {body.get('ref', '')}: {who} -> {other}, ack {ack.status}")
        else:
            digest = open_ack(ack.signed).digest  # shown to make the receipt visible
            print(f"{kind:15} {who} -> {other}")
            print(f"  cid  {result.cid}")
            print(f"  ack  {ack.status} by {ack.by[:32]}… at {ack.at.isoformat()}")
            print(f"       digest {digest.hex() if digest else '-'}")
        previous = result.cid
        cids.append(result.cid)
    return cids


def _print_match(match: Match) -> None:
    print(f"  {printable(match.summary)}")
    for item in match.items:
        print(f"    {printable(item.summary)}")
    for finding in match.findings:
        print(f"    {finding.level}: {finding.code}")


async def _ubl(home: Home, cid: CID) -> bool:
    """The invoice as the seller's accounting system takes it: a Peppol BIS 3 UBL Invoice."""
    from ..formats import Parties, export_ubl, import_ubl

    async with Node.load(home, None) as node:
        source = await ops.export_source(node, cid)
    xml = export_ubl(source.document, Parties(source.sender, source.receiver),
                     reference=source.reference, order_reference=source.order_reference)
    back = import_ubl(xml)
    same = all(back.body.get(k) == source.document.get(k) for k in ("net", "tax_total", "total"))
    print(f"  as UBL 2.1 (Peppol BIS Billing 3.0, 'usagi export CID --format ubl'): "
          f"{len(xml):,} bytes; read back, its totals {'agree' if same else 'DIFFER'}")
    return same


async def _commerce(homes: dict[str, Home], cids: list[CID]) -> bool:
    """The invoice's taxes, the thread's three-way match, and an over-billed trade's."""
    ok = True
    print("\nthe invoice as a qualified invoice (適格請求書): tax once per rate")
    async with Node.load(homes["buyer"], None) as node:
        view = await ops.show_document(node, cids[-1])
        match = await ops.match_documents(node, cids[-1])
    doc = view.document
    for party in ("from", "to"):
        print(f"  {party:4} {printable(doc['parties'][party]['name'])}, "
              f"{doc['parties'][party]['tax_id']}")
    for t in doc["tax"]:
        print(f"  tax  {t['category']:2} {t['rate']:>2} % of {t['taxable']:>6} JPY: {t['amount']:>5}")
    print(f"  net {doc['net']} + tax {doc['tax_total']} = total {doc['total']} JPY; "
          f"figures that do not add up: {len(view.arithmetic)}")
    ok = ok and view.arithmetic == ()
    ok = await _ubl(homes["seller"], cids[-1]) and ok
    print("\nthe three-way match of the thread (the buyer's node, before paying)")
    _print_match(match)
    ok = ok and match.ok and not match.findings

    print("\na second trade: 480 bolts delivered, 500 invoiced")
    over = await _steps(homes, OVERBILLED, quiet=True)
    if over is None:
        return False
    async with Node.load(homes["buyer"], None) as node:
        match = await ops.match_documents(node, over[-1])
    _print_match(match)
    return ok and [f.code for f in match.findings if f.level == "warning"] == \
        ["billed_not_delivered"]


async def _trade(seller: Home, buyer: Home) -> int:
    homes = {"seller": seller, "buyer": buyer}
    print("pairing: Kanto invites, Osaka pastes the invitation")
    async with Node.load(seller, None) as node:
        invitation = await ops.invite(node)
    print(f"  invitation: {invitation.text()[:60]}…")
    async with Node.load(buyer, None) as node:
        partner = await ops.add_partner(node, invitation.text())
    print(f"  Osaka now trades with {printable(partner.name)}; Kanto learned of Osaka by "
          "introduction\n")

    cids = await _steps(homes, STEPS)
    if cids is None:
        return 1

    print("\nverifying the thread on both sides")
    ok = True
    for side, home in homes.items():
        async with Node.load(home, None) as node:
            report = await ops.verify_document(node, cids[-1])
        failed = [c for c in report.checks if not c.ok]
        thread_check = next(c for c in report.checks if c.name == "thread")
        print(f"  {side:6} {'ok' if report.ok else 'FAILED'}: {printable(thread_check.detail)}")
        for check in failed:
            print(f"         {check.name}: {printable(check.detail)}")
        ok = ok and report.ok

    print("\na third party holding every block but neither party's key")
    stranger = Identity.generate()
    async with Node.load(seller, None) as node:
        for cid in cids:
            block = await ops.document_block(node, cid)
            try:
                open_envelope(block, stranger, cid)
                print(f"  {cid}: OPENED (this must never happen)")
                ok = False
            except NotRecipientError:
                print(f"  {cid}: {len(block)} bytes, cannot open (not a recipient)")

    ok = await _commerce(homes, cids) and ok
    ok = await _plugin_trades(seller, buyer) and ok

    print("\nthe seller's history as a sealed archive, then verified")
    from ..archive.archive import export_archive, verify_archive

    car = seller.path.parent / "kanto-archive.car"
    async with Node.load(seller, None) as node:
        exported = await export_archive(node, car)
        checked = await asyncio.to_thread(verify_archive, car, node.identity)
    keyless = await asyncio.to_thread(verify_archive, car)
    print(f"  {car.name}: {exported.documents} documents, {exported.acks} acks, root {exported.root}")
    print(f"  without keys: {keyless.blocks} blocks, hashes and links ok")
    print(f"  with keys: {checked.documents} documents, {checked.acks} acks, "
          f"{checked.threads} thread(s) verified")
    return 0 if ok else 1


PLUGIN_LINES = {
    "machinery": ("quote", ["M6x20 SUS304 hex bolt", "φ10 4-flute carbide end mill",
                            "NSK 6204ZZ"]),
    "food": ("order", ["鶏もも 2kg 冷蔵 賞味期限 2026/11/25 ロット L-1122",
                       "小麦粉 25kg 常温"]),
    "construction": ("delivery_note", ["構造用合板 1820×910×12mm ±0.5mm 現場: 芝浦"]),
    "medical": ("order", ["(01)09506000134353(17)270331(10)AB1234 stent"]),
}


async def _plugin_trades(seller: Home, buyer: Home) -> bool:
    """One trade per industry plugin: what each extracts from free text, what it finds."""
    print("\nindustry plugins on the same kernel (both nodes enable all four)")
    ok = True
    async with Node.load(seller, None) as node:
        for name, (kind, texts) in PLUGIN_LINES.items():
            lines = []
            print(f"  {name}: {kind}")
            preview = await ops.extract_preview(node, texts, kind=kind)
            for text, line in zip(texts, preview.lines, strict=True):
                extracted = line.fields
                fields = extracted.get(name, {})
                shown = ", ".join(f"{k}={v}" for k, v in fields.items()) or "(free text)"
                print(f"    {printable(text)}")
                print(f"      -> {printable(shown)}")
                lines.append({"text": text, **({"ext": extracted} if extracted else {})})
            result = await ops.send(node, kind, {"ref": f"{name.upper()}-1", "lines": lines},
                                    to=BUYER)
            await ops.deliver_now(node, wake=partial(kick, seller.path))
            delivery = await ops.await_ack(node, result.cid, timeout=20)
            for finding in result.findings:
                print(printable(f"      {finding.level}: {finding.code}: {finding.message}"))
            status = delivery.ack.status if delivery.ack else "no ack"
            print(f"    sent {result.cid}, ack {status}")
            ok = ok and delivery.ack is not None and delivery.ack.status == "received"
    return ok


def _ui_links(homes: list[Home], root: Path) -> None:
    """Print a sign-in link to each company's web UI (on its local listener)."""
    from .ui import issue_signin, signin_url

    print("\nthe web UI of each company (each link signs a browser in once, within 15 minutes):")
    for home in homes:
        state = json.loads((home.path / "serve.json").read_text())
        url = signin_url(str(state["local_url"]), issue_signin(home))
        print(f"  {home.load_config().name:20} {url}")
    print(f"a new link: usagi --home {root}/kanto ui   (or {root}/osaka)")
    print("both nodes keep running; press Ctrl-C to stop them", flush=True)


def _wait_for_interrupt(procs: list[subprocess.Popen[bytes]]) -> int:
    """Until Ctrl-C or SIGTERM (0), or until a node stops by itself (1)."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # 'kill' stops the nodes too, as Ctrl-C does
    # Ctrl-C set here too, not left to what the process was started with: a
    # parent that ignores SIGINT (some do for their children) must not leave the
    # nodes running for ever.
    signal.signal(signal.SIGINT, stop)
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping both nodes", flush=True)
        return 0
    print("a node stopped by itself; see its log", file=sys.stderr)
    return 1


def run_demo(keep: bool = False, ui: bool = False) -> int:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="usagi-demo-"))
    procs = []
    try:
        seller = Home(root / "kanto")
        buyer = Home(root / "osaka")
        for home, name in ((seller, SELLER), (buyer, BUYER)):
            home.create(name, None, port=_free_port())
            home.update_config(lambda config: setattr(config, "plugins", list(PLUGIN_LINES)))
        print(f"two nodes in {root} (keys stored without passphrase: demo only)")
        for home in (seller, buyer):
            procs.append(_start(home.path, root / f"{home.path.name}.log"))
        for home, proc in zip((seller, buyer), procs, strict=True):
            asyncio.run(_wait_serving(home, proc))
            url = json.loads((home.path / "serve.json").read_text())["url"]
            print(f"  {home.load_config().name:20} {url}  pid {proc.pid}")
        print()
        code = asyncio.run(_trade(seller, buyer))
        print(f"\ndemo {'passed' if code == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s")
        if ui and code == 0:
            _ui_links([seller, buyer], root)
            code = _wait_for_interrupt(procs)
        return code
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if keep:
            print(f"homes kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
