"""The usagi CLI as a person runs it: real processes, real homes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kernel.cid import CID

from .conftest import REPO, Pair, make_home


def usagi(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("USAGI_PASSPHRASE", None)
    proc = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_explains_every_command_with_an_example(tmp_path: Path) -> None:
    out = usagi(tmp_path, "--help").stdout
    for command in ("init", "serve", "invite", "partner", "send", "inbox", "outbox", "show",
                    "thread", "verify", "status", "demo", "archive", "plugins"):
        assert command in out
    assert "Examples" in out
    assert "Example:" in usagi(tmp_path, "send", "--help").stdout


def test_init_protects_the_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    home = tmp_path / "kanto"
    env = dict(os.environ, PYTHONPATH=str(REPO), USAGI_PASSPHRASE="correct horse")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "usagi_p2p", "--home", str(home), *a],
        capture_output=True, text=True, env=env, timeout=60)
    assert run("init", "--name", "Kanto").returncode == 0
    record = json.loads((home / "identity.key").read_text())
    assert record["protection"] == "argon2id+secretbox" and "seed" not in record
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    assert run("init", "--name", "Kanto").returncode != 0
    wrong = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), "status"],
                           capture_output=True, text=True, timeout=60,
                           env=dict(env, USAGI_PASSPHRASE="wrong"))
    assert wrong.returncode == 77 and "bad_passphrase" in wrong.stderr


def test_send_without_a_server_then_archive_round_trip(tmp_path: Path) -> None:
    from usagi_p2p.node.home import Home

    seller = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    buyer = make_home(tmp_path / "osaka", "Osaka Precision")
    serve_log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([sys.executable, "-m", "usagi_p2p", "--home", str(buyer.path),
                              "serve"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                             stderr=serve_log)
    try:
        from .conftest import wait_serving

        wait_serving(buyer.path, serve)
        invitation = usagi(buyer.path, "invite").stdout.strip()
        assert invitation.startswith("usagi1:")
        usagi(seller.path, "partner", "add", invitation)
        body = tmp_path / "quote.yaml"
        body.write_text('ref: Q-1\ncurrency: JPY\nlines:\n  - text: "M6x20 SUS304 hex bolt"\n'
                        '    qty: "500"\n    unit_price: "12.50"\n')
        sent = json.loads(usagi(seller.path, "--json", "send", "quote", "--to", "Osaka",
                                str(body)).stdout)
        assert sent["ack"]["status"] == "received"
        cid = sent["cid"]
        verify = usagi(seller.path, "verify", cid)
        assert "ok   ack: received" in verify.stdout
        shown = usagi(seller.path, "show", cid).stdout
        assert "quote Q-1" in shown and "to Osaka Precision (out, delivered)" in shown
        assert "M6x20 SUS304 hex bolt" in shown and "12.50" in shown
        assert "ack         received by did:key:" in shown
        full = json.loads(usagi(seller.path, "--json", "show", cid).stdout)
        assert full["document"]["lines"][0]["unit_price"] == "12.50"
        assert full["ack"]["status"] == "received" and full["partner"]["name"] == "Osaka Precision"
        floats = tmp_path / "bad.yaml"
        floats.write_text("lines:\n  - text: bolts\n    unit_price: 12.50\n")
        bad = usagi(seller.path, "send", "quote", "--to", "Osaka", str(floats), check=False)
        assert bad.returncode != 0 and "quoted decimals" in bad.stderr
    finally:
        serve.terminate()
        serve.wait(10)
        serve_log.close()
    # 'usagi serve' tells a person what arrived, with the partner's name.
    assert f"received quote Q-1 from Kanto Machine Tools ({cid})" in \
        (tmp_path / "serve.log").read_text()

    car = tmp_path / "kanto.car"
    usagi(seller.path, "archive", "export", "--out", str(car))
    usagi(seller.path, "archive", "verify", str(car))
    # A fresh home with the same identity gets the history back.
    restored = Home(tmp_path / "restored")
    restored.create("Kanto Machine Tools", None,
                    seed=bytes.fromhex(json.loads(seller.key_path.read_text())["seed"]))
    usagi(restored.path, "archive", "import", str(car))
    shown = json.loads(usagi(restored.path, "--json", "outbox").stdout)
    assert [d["cid"] for d in shown] == [cid]
    assert usagi(restored.path, "verify", cid, check=False).returncode == 0
    # Another company's node refuses the archive.
    assert usagi(buyer.path, "archive", "import", str(car), check=False).returncode == 77


def test_tables_print_partner_text_as_text(tmp_path: Path) -> None:
    import asyncio

    from kernel._identity import Identity
    from usagi_p2p.node.node import Node

    home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    other = Identity.generate()

    async def add() -> None:
        async with Node.load(home, None) as node:
            # A name a partner could choose: Rich markup and an emoji code, as text.
            await node.ledger.add_partner(other.did, "[/] :key: [bold]Osaka[/bold]",
                                          "http://127.0.0.1:9", None)

    asyncio.run(add())
    out = usagi(home.path, "partner", "list").stdout
    assert "[/] :key: [bold]Osaka[/bold]" in out
    assert other.did in out  # whole, and "did:key:" is not an emoji
    assert "\U0001f511" not in out
    # Renaming to a name with a control character or a direction override is refused.
    for bad in ("Osaka\x1b[31m", "Osaka\u202eakasO"):
        refused = usagi(home.path, "partner", "rename", other.did, bad, check=False)
        assert refused.returncode != 0 and "control characters" in refused.stderr


def test_an_invitation_with_a_control_character_in_its_name_is_refused() -> None:
    from datetime import UTC, datetime

    import pytest

    from kernel._identity import Identity
    from kernel._signed import sign
    from usagi_p2p.node.errors import InvitationError
    from usagi_p2p.node.invitation import parse_invitation

    who = Identity.generate()
    now = datetime(2026, 12, 2, tzinfo=UTC)
    for name in ("Osaka\x1b]0;pwned\x07", "Osaka\u202e", " "):
        raw = sign(who, "invitation", {"v": 1, "type": "invitation", "name": name, "did": who.did,
                                       "endpoint": "http://127.0.0.1:8470",
                                       "expires": "2026-12-09T00:00:00Z", "nonce": b"\x01" * 16})
        with pytest.raises(InvitationError):
            parse_invitation(raw, now=now)


def test_a_bad_body_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for text, expected in (("note: [unclosed\n", "not valid JSON or YAML"),
                           ("- just\n- a list\n", "must hold a map"),
                           ("lines:\n  - text: bolts\n    unit_price: 12.5\n", "quoted decimals")):
        proc = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home.path), "send",
                               "quote", "--to", "Osaka", "-"], input=text, capture_output=True,
                              text=True, env=env, timeout=60)
        assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_inbox_and_outbox_show_the_newest_and_filter(tmp_path: Path) -> None:
    import asyncio

    from kernel._identity import Identity
    from usagi_p2p.node.node import Node

    home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    other = Identity.generate()

    async def queue() -> None:
        async with Node.load(home, None) as node:
            await node.ledger.add_partner(other.did, "Osaka Precision", "http://127.0.0.1:9", None)
            # No delivery loop runs: these stay queued, which is all the listing needs.
            await node.send_many([("quote", "Osaka", {"ref": f"Q-{i:03d}"}, None)
                                  for i in range(60)])
            await node.send_many([("order", "Osaka", {"ref": "PO-last"}, None)])

    asyncio.run(queue())
    rows = json.loads(usagi(home.path, "--json", "outbox").stdout)
    assert len(rows) == 50 and rows[-1]["ref"] == "PO-last"  # the newest 50, oldest first
    assert [r["ref"] for r in json.loads(usagi(home.path, "--json", "outbox", "-n", "2").stdout)] \
        == ["Q-059", "PO-last"]
    orders = json.loads(usagi(home.path, "--json", "outbox", "--kind", "order").stdout)
    assert [r["ref"] for r in orders] == ["PO-last"]
    assert len(json.loads(usagi(home.path, "--json", "outbox", "--partner", "Osaka",
                                "-n", "1000").stdout)) == 61
    assert json.loads(usagi(home.path, "--json", "outbox", "--status", "delivered").stdout) == []
    assert json.loads(usagi(home.path, "--json", "inbox", "--since", "2999-01-01").stdout) == []
    bad = usagi(home.path, "outbox", "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "not a date" in bad.stderr


def test_text_a_partner_wrote_cannot_drive_the_terminal(tmp_path: Path) -> None:
    import asyncio

    from usagi_p2p.node.terminal import printable

    from .conftest import paired

    assert printable("Q\x1b[31m-1\nack") == "Q\\x1b[31m-1\\nack"
    assert printable("平日午前中\u3000納品") == "平日午前中\u3000納品"  # ordinary text untouched
    assert printable("a\u202eb") == "a\\u202eb"

    seller_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    buyer_home = make_home(tmp_path / "osaka", "Osaka Precision")
    forged = "Q-1\x1b[31m\nack         received by did:key:zFAKE"

    async def trade() -> str:
        async with paired(seller_home, buyer_home) as p:
            seller = p.seller
            result = await seller.send("quote", "Osaka", {"ref": forged, "note": "x\x1b]0;t\x07",
                                                          "lines": [{"text": "bolt\r\x1b[2K"}]})
            assert await seller.wait_for_ack(result.cid, 15)
            return str(result.cid)

    cid = asyncio.run(trade())
    shown = usagi(buyer_home.path, "show", cid).stdout
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown
    assert "Q-1\\x1b[31m\\nack" in shown and "bolt\\r\\x1b[2K" in shown
    # The forged line is not a line of its own: the only ack line is the real one.
    assert [ln for ln in shown.splitlines() if ln.startswith("ack")] == \
        [ln for ln in shown.splitlines() if ln.startswith("ack") and "zFAKE" not in ln]
    listed = usagi(buyer_home.path, "inbox").stdout
    assert "\x1b" not in listed and "Q-1\\x1b[31m" in listed


def test_every_command_explains_itself_with_an_example() -> None:
    import click

    from usagi_p2p.company.cli.main import main

    def walk(command: click.Command, path: list[str]) -> list[str]:
        if isinstance(command, click.Group):
            return [p for name, sub in command.commands.items() for p in walk(sub, [*path, name])]
        return [] if "Example" in (command.help or "") else [" ".join(path)]

    assert walk(main, []) == []


def test_the_serve_log_escapes_what_a_partner_wrote(caplog) -> None:  # noqa: ANN001
    import logging

    from kernel.cid import CID
    from usagi_p2p.node.intake import log_batch
    from usagi_p2p.node.ledger import DocumentRow

    cid = CID.for_block(b"x")
    row = DocumentRow(cid, "in", "did:key:z", "order", cid, "PO-1\n2026-12-02T00:00:00Z forged",
                      "2026-12-02T00:00:00Z", 0.0, "received", None, b"", b"", None)
    with caplog.at_level(logging.INFO, logger="usagi.activity"):
        log_batch("received", "from", [(row, "Osaka\x1b[2J")])
    [line] = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "\x1b" not in line
    assert "PO-1\\n2026-12-02T00:00:00Z forged" in line and "Osaka\\x1b[2J" in line


def test_a_reply_goes_to_whoever_sent_the_document(tmp_path: Path) -> None:
    import asyncio

    from .conftest import paired

    seller_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    buyer_home = make_home(tmp_path / "osaka", "Osaka Precision")
    body = tmp_path / "order.yaml"
    body.write_text("ref: PO-9\nlines:\n  - text: bolts\n")

    async def trade() -> tuple[dict, str]:
        async with paired(seller_home, buyer_home) as p:
            seller = p.seller
            quote = await seller.send("quote", "Osaka", {"ref": "Q-9"})
            assert await seller.wait_for_ack(quote.cid, 15)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "usagi_p2p", "--home", str(buyer_home.path), "--json",
                "send", "order", "--reply-to", str(quote.cid), str(body),
                env=dict(os.environ, PYTHONPATH=str(REPO)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            return json.loads(out), str(quote.cid)

    sent, quote_cid = asyncio.run(trade())
    assert sent["ack"]["status"] == "received" and sent["thread"] == quote_cid
    nobody = usagi(buyer_home.path, "send", "order", str(body), check=False)
    assert nobody.returncode == 2 and "--reply-to" in nobody.stderr


def test_send_extract_fills_plugin_fields_and_keeps_the_files_own(tmp_path: Path) -> None:
    import asyncio

    from kernel import _envelope as kenvelope
    from kernel._signed import open_signed

    from .conftest import paired

    seller_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    config = seller_home.load_config()
    config.plugins = ["machinery"]
    seller_home.save_config(config)
    buyer_home = make_home(tmp_path / "osaka", "Osaka Precision")
    body = tmp_path / "quote.yaml"
    body.write_text('ref: Q-X\nlines:\n  - text: "M6x20 SUS304 hex bolt"\n'
                    '    ext: {machinery: {material: "A2-70"}}\n  - text: "いつもの部品"\n')

    async def trade() -> dict:
        async with paired(seller_home, buyer_home) as p:
            buyer = p.buyer
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "usagi_p2p", "--home", str(seller_home.path), "--json",
                "send", "quote", "--to", "Osaka", "--extract", str(body),
                env=dict(os.environ, PYTHONPATH=str(REPO)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            from kernel.cid import CID

            row = await buyer.ledger.document(CID.parse(json.loads(out)["cid"]))
            return open_signed(row.signed, "document", "from", kenvelope.DOCUMENT_LIMITS).body

    document = asyncio.run(trade())
    bolt, plain = document["lines"]
    assert bolt["ext"]["machinery"]["material"] == "A2-70"  # the file's own value stays
    assert bolt["ext"]["machinery"]["thread"] == "M6"  # filled from the text
    assert "ext" not in plain  # nothing recognised: free text as written


def test_json_output_names_the_fields_of_kernel_results() -> None:
    """--json prints a kernel result (a NamedTuple) as an object, not a bare list."""
    from datetime import UTC, datetime

    from kernel._envelope import Sealed
    from kernel.cid import CID
    from usagi_p2p.company.cli.common import jsonable as _jsonable

    cid = CID.for_block(b"block")
    sealed = Sealed(cid, b"\x01", b"\x02", b"\x12\x20" + bytes(32))
    at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    assert _jsonable({"sealed": sealed, "at": at, "cids": (cid,)}) == {
        "sealed": {"cid": str(cid), "block": "01", "signed": "02", "digest": "1220" + "00" * 32},
        "at": "2026-12-03T09:00:00+00:00",
        "cids": [str(cid)],
    }


async def test_an_answer_without_a_file_takes_what_it_answers(pair: Pair) -> None:
    """`send order --reply-to QUOTE` orders what was quoted; `--response` and
    `--ref` fill in the rest. Run by the CLI while both nodes serve."""
    import asyncio

    from kernel._signed import open_signed
    from usagi_p2p.node.operations import CARRIED

    quote = {"ref": "Q-7", "currency": "JPY", "total": "6250", "note": "valid 30 days",
             "lines": [{"text": "M6x20 SUS304 hex bolt", "qty": "500", "unit_price": "12.50"}]}
    sent = await pair.seller.send("quote", "Osaka", quote)
    assert await pair.seller.wait_for_ack(sent.cid, 10) is not None
    buyer_home = pair.buyer.home.path

    answered = await asyncio.to_thread(
        usagi, buyer_home, "--json", "send", "order", "--reply-to", str(sent.cid),
        "--ref", "PO-1042")
    order_cid = json.loads(answered.stdout)["cid"]
    row = await pair.buyer.ledger.document(CID.parse(order_cid))
    assert row is not None
    order = open_signed(row.signed, "document", "from").body
    assert {k: order[k] for k in CARRIED} == {k: quote[k] for k in CARRIED}
    assert order["ref"] == "PO-1042" and "note" not in order  # only what carries over
    assert order["prev"] == [sent.cid] and order["thread"] == sent.cid
    assert order["to"] == pair.seller.did

    accepted = await asyncio.to_thread(
        usagi, pair.seller.home.path, "--json", "send", "order_response",
        "--reply-to", order_cid, "--response", "accept")
    response_cid = CID.parse(json.loads(accepted.stdout)["cid"])
    response = open_signed((await pair.seller.ledger.document(response_cid)).signed,  # type: ignore[union-attr]
                           "document", "from").body
    assert response["response"] == "accept" and response["lines"] == quote["lines"]

    # Neither a FILE nor a document to answer: a usage error, nothing sent.
    lost = await asyncio.to_thread(usagi, buyer_home, "send", "order", "--to", "Kanto",
                                   check=False)
    assert lost.returncode == 2 and "give the document as a FILE" in lost.stderr
    # An order_response without its answer, an answer to the wrong kind of
    # document, a kind that is not filled in, a document without lines: refused.
    sent_before = len(await pair.seller.ledger.documents(direction="out"))
    buyer_before = len(await pair.buyer.ledger.documents(direction="out"))
    note = await pair.seller.send("message", "Osaka", {"note": "hello"})
    bare = await pair.seller.send("quote", "Osaka", {"ref": "Q-8", "note": "call us"})
    for cid in (note.cid, bare.cid):
        assert await pair.seller.wait_for_ack(cid, 10) is not None
    refusals = [
        (pair.seller.home.path, "order_response", order_cid, (), "says --response"),
        (pair.seller.home.path, "order_response", str(sent.cid), ("--response", "accept"),
         "is a quote; an order_response is filled in from order"),
        (buyer_home, "cancel", order_cid, (), "a cancel is not filled in"),
        (buyer_home, "order", str(note.cid), (), "is a message"),
        (buyer_home, "order", str(bare.cid), (), "has no lines to carry over"),
    ]
    for home, kind, cid, extra, why in refusals:
        refused = await asyncio.to_thread(usagi, home, "send", kind, "--reply-to", cid, *extra,
                                          check=False)
        assert refused.returncode != 0 and why in refused.stderr, (kind, refused.stderr)
    assert len(await pair.seller.ledger.documents(direction="out")) == sent_before + 2
    assert len(await pair.buyer.ledger.documents(direction="out")) == buyer_before


def test_a_config_error_exits_with_one_code_from_every_command(tmp_path: Path) -> None:
    """One error path: config_error is 78 (spec section 14) from init and from status."""
    home = make_home(tmp_path / "kanto", "Kanto Machine Tools").path
    again = usagi(home, "init", "--name", "Kanto", "--insecure-no-passphrase", check=False)
    none = usagi(tmp_path / "nowhere", "status", check=False)
    (home / "config.json").write_text("{")
    broken = [usagi(home, *args, check=False) for args in (("status",), ("plugins", "list"),
                                                          ("partner", "list"))]
    for proc in (again, none, *broken):
        assert proc.returncode == 78, proc.stderr
        assert "error [config_error]" in proc.stderr and "Traceback" not in proc.stderr


def _no_tty(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``usagi`` with standard input not a terminal (nobody to ask) and ``env`` set."""
    base = dict(os.environ, PYTHONPATH=str(REPO))
    for key in [k for k in base if k.startswith("USAGI_PASSPHRASE")]:
        del base[key]
    return subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), *args],
                          input="", capture_output=True, text=True, env=dict(base, **env),
                          timeout=120)


def test_token_commands_fail_on_the_one_error_path(tmp_path: Path) -> None:
    """A missing home is config_error, 78, from the token commands as from status."""
    for args in (("token", "create", "erp"), ("token", "list"), ("token", "revoke", "erp")):
        proc = _no_tty(tmp_path / "nowhere", *args)
        assert proc.returncode == 78, proc.stderr
        assert "error [config_error]" in proc.stderr and "usagi init first" in proc.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_missing_passphrase_is_bad_passphrase_when_nobody_can_be_asked(tmp_path: Path) -> None:
    from usagi_p2p.node.errors import exit_code
    from usagi_p2p.node.home import Home

    home = Home(tmp_path / "kanto")
    home.create("Kanto", "correct horse", fast_kdf=True)
    for args, hint in ((("status",), "set USAGI_PASSPHRASE"),
                       (("--home", str(tmp_path / "new"), "init", "--name", "New"),
                        "set USAGI_PASSPHRASE or use --insecure-no-passphrase"),
                       (("user", "add", "sato-k"), "set USAGI_PASSPHRASE_SATO_K or use")):
        proc = _no_tty(home.path, *args)
        assert proc.returncode == exit_code("bad_passphrase") == 77, proc.stderr
        assert "error [bad_passphrase]" in proc.stderr and hint in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists() and "sato-k" not in home.load_config().users


def test_user_passphrases_are_read_from_one_variable_name(tmp_path: Path) -> None:
    """``sato-k`` and ``k.ito`` read USAGI_PASSPHRASE_SATO_K and _K_ITO, in ``user add``
    as where a key is unlocked (``--approve-as``)."""
    import io

    import pytest

    from usagi_p2p.company.cli.common import user_passphrase, user_passphrase_env
    from usagi_p2p.node.errors import PassphraseError
    from usagi_p2p.node.home import Home
    from usagi_p2p.node.users import load_user

    home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    for name, env in (("sato-k", "USAGI_PASSPHRASE_SATO_K"), ("k.ito", "USAGI_PASSPHRASE_K_ITO")):
        assert user_passphrase_env(name) == env
        added = _no_tty(home.path, "user", "add", name, **{env: f"pw of {name}"})
        assert added.returncode == 0, added.stderr
        assert load_user(Home(home.path), name, f"pw of {name}").did in added.stdout
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", io.StringIO(""))
            mp.delenv(env, raising=False)
            with pytest.raises(PassphraseError, match=env):
                user_passphrase(home, name)
            mp.setenv(env, f"pw of {name}")
            assert user_passphrase(home, name) == f"pw of {name}"
