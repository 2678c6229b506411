"""usagi export / import / profile, send --lines, inbox/outbox/thread --export: real
processes, real homes (docs/formats.md)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from usagi_p2p.formats import import_ubl, read_lines

from .conftest import make_home, serve_process, wait_serving
from .test_cli import usagi

BOMB = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
        b'&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><Invoice xmlns="urn:oasis:names:'
        b'specification:ubl:schema:xsd:Invoice-2"><ID>&c;</ID></Invoice>')


def test_lines_from_a_sheet_out_as_ubl_back_in_and_to_accounting(tmp_path: Path) -> None:
    seller = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    buyer = make_home(tmp_path / "osaka", "Osaka Precision")
    serve = serve_process(buyer.path)
    try:
        wait_serving(buyer.path, serve)
        usagi(seller.path, "partner", "add", usagi(buyer.path, "invite").stdout.strip())
        usagi(seller.path, "profile", "--country", "JP", "--tax-id", "T1234567890123",
              "--endpoint", "0188:1234567890123", "--address", "大田区1-2-3\\n3F")
        shown = json.loads(usagi(seller.path, "--json", "profile").stdout)
        assert shown["address"] == "大田区1-2-3\n3F" and shown["country"] == "JP"
        usagi(seller.path, "profile", "--partner", "Osaka", "--country", "JP",
              "--endpoint", "0188:9876543210987")
        bad = usagi(seller.path, "profile", "--country", "japan", check=False)
        assert bad.returncode != 0 and "ISO 3166" in bad.stderr

        sheet = tmp_path / "lines.csv"
        sheet.write_text("品番,品名,数量,単位,単価,金額,税率\n"
                         "HN-M6,六角ナット M6,1000,個,12,12000,10\n"
                         "BT-M8,ボルト M8,200,本,30,6000,10\n", encoding="utf-8")
        body = tmp_path / "invoice.yaml"
        body.write_text('ref: INV-7\ncurrency: JPY\nnet: "18000"\ntax_total: "1800"\n'
                        'total: "19800"\ndue: "2026-12-31T00:00:00Z"\n')
        sent = json.loads(usagi(seller.path, "--json", "send", "invoice", "--to", "Osaka",
                                str(body), "--lines", str(sheet)).stdout)
        assert sent["ack"]["status"] == "received"
        cid = sent["cid"]

        out = tmp_path / "INV-7.xml"
        usagi(seller.path, "export", cid, "--format", "ubl", "-o", str(out))
        back = import_ubl(out.read_bytes())
        assert back.kind == "invoice" and back.body["ref"] == "INV-7"
        assert [ln["ref"] for ln in back.body["lines"]] == ["HN-M6", "BT-M8"]
        assert [ln["unit"] for ln in back.body["lines"]] == ["個", "本"]
        assert back.body["parties"]["from"]["tax_id"] == "T1234567890123"
        assert back.body["parties"]["to"]["name"] == "Osaka Precision"
        assert usagi(seller.path, "export", cid).stdout.startswith("<?xml")

        looked = json.loads(usagi(seller.path, "--json", "import", str(out)).stdout)
        assert looked["kind"] == "invoice" and looked["ubl"] == "Invoice"
        assert looked["body"]["total"] == "19800"
        again = json.loads(usagi(seller.path, "--json", "import", str(out), "--send",
                                 "--to", "Osaka").stdout)
        assert again["ack"]["status"] == "received"

        # Bad input: a typed error, exit 65, nothing sent.
        before = usagi(seller.path, "--json", "outbox").stdout
        bomb = tmp_path / "bomb.xml"
        bomb.write_bytes(BOMB)
        refused = usagi(seller.path, "import", str(bomb), "--send", "--to", "Osaka", check=False)
        assert refused.returncode == 65 and "error [input_unsafe]" in refused.stderr
        formula = tmp_path / "formula.xlsx"
        from openpyxl import Workbook

        book = Workbook()
        book.active.append(["品名", "金額"])
        book.active.append(["ボルト", "=1+1"])
        book.save(formula)
        refused = usagi(seller.path, "send", "quote", "--to", "Osaka", "--lines", str(formula),
                        check=False)
        assert refused.returncode == 65 and "B2 is a formula" in refused.stderr
        assert usagi(seller.path, "--json", "outbox").stdout == before

        sheet_out = tmp_path / "sent.xlsx"
        usagi(seller.path, "outbox", "--export", str(sheet_out))
        from openpyxl import load_workbook

        rows = list(load_workbook(sheet_out).active.iter_rows(values_only=True))
        assert rows[0][:4] == ("direction", "kind", "ref", "partner")
        assert {r[2] for r in rows[1:]} == {"INV-7"} and rows[1][9] == 19800
        lines_out = tmp_path / "thread.csv"
        usagi(seller.path, "thread", cid, "--export", str(lines_out))
        table = list(csv.reader(io.StringIO(lines_out.read_text(encoding="utf-8-sig"))))
        assert table[0][:6] == ["document", "kind", "ref", "issued_at", "line", "text"]
        assert [r[5] for r in table[1:]] == ["六角ナット M6", "ボルト M8"]
        # What accounting gets back reads as lines again.
        assert [ln["text"] for ln in read_lines(lines_out.read_bytes(), "t.csv")] == \
            ["六角ナット M6", "ボルト M8"]
        received = tmp_path / "in.csv"
        usagi(buyer.path, "inbox", "--export", str(received))
        assert received.read_text(encoding="utf-8-sig").count("INV-7") == 2
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def test_export_and_import_explain_themselves(tmp_path: Path) -> None:
    for command in ("export", "import", "profile"):
        proc = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(tmp_path),
                               command, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Example:" in proc.stdout
