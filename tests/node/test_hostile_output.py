"""Issue 14, finding 9: nothing a partner writes can drive this node's terminal or forge a line.

Mallory is a real node on loopback (a real key, a real ledger, the real peer
API) behind a malicious front on another port: the endpoint her invitation
names. The front hands honest requests to her node and lies where the
protocol lets a partner lie: a rejected ack whose ``reason`` is a forged
receipt, HTTP error bodies, the answer to a key rotation, a fake IPFS API.
Her name, her endpoint, and every field of the document she sends (ref, note,
user, lines, plugin fields, map keys) carry the same payload: a carriage
return, ANSI colour, C1 CSI, DEL, NUL, direction overrides and isolates,
zero-width and line-separator characters, Rich markup, an emoji code, and a
newline followed by a line of its own.

Then every command of the ``usagi`` CLI runs as a real process against the
victim's home, in text and in ``--json``, and with ``usagi serve -v``
running; the list of commands is the click command tree itself, so a command
added without a case here fails this test. Each output must hold no control,
format or separator character but the newline, the payload's newline must be
an escaped ``\\n`` (never a line of its own), the markup must be printed as
written (never interpreted), and where the partner's text is shown it must be
there, escaped; in ``--json`` the partner's value must come back exact.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import click
from aiohttp import web

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._document import format_time
from kernel._messages import make_ack, open_notice
from kernel._signed import sign
from usagi_p2p.node.home import Home
from usagi_p2p.node.node import INTRODUCE_PATH, NOTICES_PATH, ROTATE_PATH, Node
from usagi_p2p.peer.service import Service

from .conftest import REPO, free_port, make_home, start

T = TypeVar("T")

PAYLOAD = ("\r\x1b[32mack   received\x1b[0m \u202eevil\u202c \u2066iso\u2069 [green]MARKUP[/] "
           ":warning: \x9b2J\x7f\x00\u200b\ufeff\u2028\u00ad\U000e0041\nFORGED-LINE")
#: The payload as a command-line argument (which cannot hold a NUL).
ARGUMENT = PAYLOAD.replace("\x00", "")
#: What a partner's name may hold today (controls and overrides are refused at pairing).
# Invisible and line-separating code points are refused in names (spec 10.1,
# tests/node/test_names.py); what a name may hold is still markup and emoji codes.
NAME = "Mallory [green]MARKUP[/] :warning: 𠮷"
ENDPOINT_TAIL = "\x1b[32m[green]MARKUP[/]\u202e\u2066:warning:\x9b\x7f\u200b\u2028\nFORGED-LINE"
UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}  # this test's own definition, not the module's


def output_problems(raw: bytes, expect: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with the output ``raw`` of one command: it must be inert,
    and show the partner's text (``expect``) where it must."""
    try:
        text = raw.decode("utf-8")  # strict: a lone surrogate or a bad byte fails
    except UnicodeDecodeError as exc:
        return [f"not UTF-8: {exc}"]
    problems = []
    bad = sorted({f"U+{ord(c):04X}" for c in text
                  if c != "\n" and unicodedata.category(c) in UNSAFE})
    if bad:
        problems.append(f"unescaped {', '.join(bad)}")
    # The payload's newline is an escape, never the start of a forged line.
    if text.count("FORGED-LINE") != text.count("\\nFORGED-LINE"):
        problems.append("a forged line of its own")
    # Rich markup and emoji codes are printed as written.
    if text.count("MARKUP") != text.count("[green]MARKUP[/]"):
        problems.append("markup interpreted")
    if "\u26a0" in text:
        problems.append("an emoji code rendered")
    problems += [f"the partner's text ({token}) is missing" for token in expect
                 if token not in text]
    return problems


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def command_path(args: tuple[str, ...]) -> str:
    """The click command an argument list runs (global options skipped)."""
    from usagi_p2p.company.cli.main import main

    command: click.Command = main
    path: list[str] = []
    rest = [a for a in args if a not in ("--json", "-v", "-vv")]
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    return " ".join(path)


def every_command() -> set[str]:
    """Every runnable command of the CLI, from its click tree."""
    from usagi_p2p.company.cli.main import main

    found: set[str] = set()

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if not isinstance(command, click.Group):
            found.add(" ".join(path))
            return
        if command.invoke_without_command and path:
            found.add(" ".join(path))
        for name, sub in command.commands.items():
            walk(sub, (*path, name))

    walk(main, ())
    return found


class Mallory:
    """A partner turned malicious: her real node, and the lying front her endpoint names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.front_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.front_port}/m/{ENDPOINT_TAIL}"
        self.refuse_introductions = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node: Node
        self.service: Service
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        home = make_home(self.root / "mallory", NAME)
        self.node, self.service = await start(home)
        self.session = aiohttp.ClientSession()
        app = web.Application(client_max_size=2 << 20)
        app.router.add_route("*", "/{tail:.*}", self.front)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.front_port).start()

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()
            await self.service.close()
            await self.node.close()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- what she says ---------------------------------------------------------

    def invitation(self, endpoint: str) -> str:
        """An invitation signed by her real key, naming ``endpoint``; her node
        knows its nonce, so the introduction that follows is honestly accepted."""
        async def make() -> str:
            nonce = os.urandom(16)
            expires = self.node.now() + timedelta(hours=1)
            await self.node.ledger.add_invitation(nonce, expires.timestamp())
            raw = sign(self.node.identity, "invitation", {
                "v": 1, "type": "invitation", "name": NAME, "did": self.node.did,
                "endpoint": endpoint, "expires": format_time(expires), "nonce": nonce})
            return "usagi1:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

        return self.run(make())

    def send(self, to: str) -> str:
        """A quote whose every field a person reads carries the payload."""
        body = {"ref": PAYLOAD, "currency": "JPY", "note": PAYLOAD, "user": PAYLOAD,
                "total": "20",
                "lines": [{"text": PAYLOAD, "qty": "2", "unit": PAYLOAD, "unit_price": "10",
                           "ref": PAYLOAD, "tax_category": PAYLOAD, "tax_rate": "10",
                           "ext": {"machinery": {"thread": PAYLOAD, PAYLOAD: PAYLOAD}}}],
                "ext": {"machinery": {"maker": PAYLOAD}},
                # The commercial fields (issue 19): shown by show, match and verify.
                "payment_terms": PAYLOAD, "net": "21", "tax_total": "2",
                "tax": [{"category": PAYLOAD, "rate": "10", "taxable": "20", "amount": "2"}],
                "parties": {"from": {"name": PAYLOAD, "tax_id": PAYLOAD, "country": "JP"}}}

        async def send() -> str:
            result = await self.node.send("quote", to, body)
            ack = await self.node.wait_for_ack(result.cid, 30)
            assert ack is not None and ack[1] == "received", ack
            return str(result.cid)

        return self.run(send())

    def rotate(self) -> None:
        told = self.run(self.node.rotate(None, timedelta(days=1), fast_kdf=True))[1]
        assert set(told.values()) == {"ok"}, told

    # -- the front -------------------------------------------------------------

    async def front(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        if path.endswith(INTRODUCE_PATH):
            if self.refuse_introductions:
                return web.Response(status=400, text=PAYLOAD)
            return await self.forward(request, INTRODUCE_PATH, body)
        if path.endswith(NOTICES_PATH):
            return await self.answer_notices(request, body)
        if path.endswith(ROTATE_PATH):
            return web.Response(status=400, text=PAYLOAD)
        if "/ipfs/" in path:
            return await self.forward(request, path[path.index("/ipfs/"):], body)
        # Anything else (the IPFS RPC API 'archive push' is pointed at): a Kubo-style error.
        return web.json_response({"Message": PAYLOAD, "Code": 0, "Type": "error"}, status=500)

    async def answer_notices(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Honest, except for documents whose ref asks for a lie: ERROR gets an
        HTTP error with the payload as its body, REJECT a signed rejection
        whose reason is the payload."""
        batch = dagcbor.decode(body)
        pushed = {}
        for block in batch.get("blocks", []):
            from kernel.cid import CID

            pushed[CID.for_block(block)] = block
        notices = [open_notice(raw) for raw in batch["notices"]]
        refs = set()
        for notice in notices:
            if notice.cid in pushed:
                opened = kenvelope.open_envelope(pushed[notice.cid], self.node.identity, notice.cid)
                refs.add(opened.document.get("ref"))
        if "ERROR" in refs:
            return web.Response(status=400, text=PAYLOAD)
        if "REJECT" in refs:
            acks = [make_ack(self.node.identity, cid=n.cid, to=n.sender, nonce=n.nonce,
                             status="rejected", at=self.node.now(), reason=PAYLOAD)
                    for n in notices]
            return web.Response(body=dagcbor.encode({"acks": acks}),
                                content_type="application/cbor")
        return await self.forward(request, NOTICES_PATH, body)

    async def forward(self, request: web.Request, path: str, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        url = f"{self.service.url}{path}"
        if request.query_string:
            url += "?" + request.query_string
        async with self.session.request(request.method, url, data=body,
                                        headers=headers) as resp:
            payload = await resp.read()
            return web.Response(status=resp.status, body=payload,
                                content_type=resp.content_type)


class Victim:
    """The CLI as a person runs it on the attacked node; every output is checked."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ran: set[str] = set()
        #: Every problem found, by command: reported together at the end.
        self.problems: list[str] = []
        self.env = dict(os.environ, PYTHONPATH=str(REPO))
        for name in ("USAGI_PASSPHRASE", "FORCE_COLOR", "NO_COLOR"):
            self.env.pop(name, None)

    def __call__(self, *args: str, expect: tuple[str, ...] = (), code: int | None = 0,
                 home: Path | None = None) -> str:
        """Run ``usagi ARGS``; check stdout and stderr; return stdout."""
        argv = ("--home", str(home or self.home), *args)
        proc = subprocess.run([sys.executable, "-m", "usagi_p2p", *argv], capture_output=True,
                              env=self.env, timeout=120)
        self.ran.add(command_path(args))
        problems = self.check(" ".join(args), proc.stdout + proc.stderr, expect)
        if code is not None and proc.returncode != code:
            problems.append(f"exit code {proc.returncode}, not {code}")
        out = proc.stdout.decode("utf-8", "replace")
        if "--json" in args and out.strip():
            values = list(strings(json.loads(out)))
            # The partner's value comes back exact: JSON's escapes are lossless.
            if "FORGED-LINE" in expect and not any(PAYLOAD in v or ENDPOINT_TAIL in v
                                                   for v in values):
                problems.append("the payload is not exact in the JSON")
            if "MARKUP" in expect and not any(NAME in v for v in values):
                problems.append("the name is not exact in the JSON")
        return out

    def check(self, label: str, raw: bytes, expect: tuple[str, ...] = ()) -> list[str]:
        # Every output, as printed, beside the homes: what to read when this fails.
        with (self.home.parent / "outputs.txt").open("ab") as record:
            record.write(b"$ usagi " + label.encode("unicode_escape") + b"\n" + raw + b"\n")
        problems = output_problems(raw, expect)
        if problems:
            # Escaped here too: a failing test must not drive the terminal either.
            shown = raw.decode("utf-8", "replace").encode("unicode_escape").decode()
            self.problems.append(f"usagi {label}"[:100].encode("unicode_escape").decode()
                                 + f": {'; '.join(problems)}\n    {shown[:600]}")
        return problems


def test_every_command_prints_a_hostile_partners_text_inert(tmp_path: Path) -> None:
    victim_home = tmp_path / "victim"
    usagi = Victim(victim_home)
    # init (a scratch home): such a name is refused (spec 10.1), its error inert too
    usagi("init", "--name", ARGUMENT, "--insecure-no-passphrase", "--port", str(free_port()),
          home=tmp_path / "scratch", code=2, expect=())
    usagi("init", "--name", "Victim Co", "--insecure-no-passphrase", "--port", str(free_port()))
    usagi("plugins", "enable", "machinery")
    config = Home(victim_home).load_config()
    config.max_attempts = 1  # a failed delivery is final at once, its reason shown
    Home(victim_home).save_config(config)
    victim_did = config.did
    serve_log = tmp_path / "serve.log"
    serve_args = ("-v", "serve")
    with serve_log.open("wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "usagi_p2p", "--home", str(victim_home),
                                   *serve_args], stdout=err, stderr=err, env=usagi.env)
    usagi.ran.add(command_path(serve_args))
    mallory = Mallory(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (victim_home / "serve.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.05)
        usagi("invite")

        # Pairing: first her front refuses the introduction with the payload as its
        # body; then it lets her node accept it. An endpoint the node refuses to
        # store is fine too (its error is checked), then she pairs with a plain one.
        mallory.refuse_introductions = True
        usagi("partner", "add", mallory.invitation(mallory.endpoint), code=None,
              expect=("FORGED-LINE",))
        mallory.refuse_introductions = False
        added = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(victim_home),
                                "partner", "add", mallory.invitation(mallory.endpoint)],
                               capture_output=True, env=usagi.env, timeout=120)
        usagi.check("partner add (a hostile endpoint)", added.stdout + added.stderr,
                    ("MARKUP", "FORGED-LINE") if added.returncode == 0 else ())
        if added.returncode != 0:
            plain = f"http://127.0.0.1:{mallory.front_port}/m"
            usagi("partner", "add", mallory.invitation(plain), expect=("MARKUP",))

        # She sends a quote; serve receives it (its log is checked at the end).
        quote = mallory.send(victim_did)
        both = ("FORGED-LINE", "MARKUP")
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "inbox", expect=both)
            usagi(*json_flag, "show", quote, expect=both)
            usagi(*json_flag, "thread", quote, expect=("FORGED-LINE",))
            usagi(*json_flag, "verify", quote)
            # Her figures do not add up (findings, exit 1) and her line is the item.
            usagi(*json_flag, "match", quote, code=1, expect=("FORGED-LINE",))
            # Her endpoint carries the forged line only if the node took it.
            usagi(*json_flag, "partner", "list",
                  expect=("MARKUP", "FORGED-LINE") if added.returncode == 0 else ("MARKUP",))
            usagi(*json_flag, "status")
            # Her text in a search result's snippet and her name (the match is marked).
            usagi(*json_flag, "search", "MARKUP", expect=("MARKUP",))
            usagi(*json_flag, "search", "FORGED-LINE", expect=("FORGED-LINE",))

        # Answering her quote: the carried lines hold her text (the findings on
        # them print it); her front rejects the order with a forged receipt.
        rejected = []
        for json_flag in ((), ("--json",)):
            out = usagi(*json_flag, "send", "order", "--reply-to", quote, "--ref", "REJECT",
                        "--timeout", "30", code=1, expect=("FORGED-LINE",))
            assert "rejected" in out
            rejected.append(json.loads(out)["cid"] if json_flag else out.split()[2])
        # A quote her front answers with an HTTP error whose body is the payload.
        body = tmp_path / "quote.json"
        body.write_text(json.dumps({"ref": "ERROR", "lines": [{"text": "M6 bolt"}]}))
        failed = []
        for json_flag in ((), ("--json",)):
            out = usagi(*json_flag, "send", "quote", "--to", mallory.node.did, str(body),
                        "--timeout", "4", code=1, expect=("FORGED-LINE",))
            failed.append(json.loads(out)["cid"] if json_flag else out.split()[2])
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "outbox", expect=("MARKUP",))
            usagi(*json_flag, "show", rejected[0], expect=both)
            usagi(*json_flag, "show", failed[0], expect=both)
            usagi(*json_flag, "verify", rejected[0], code=1, expect=("FORGED-LINE",))
            usagi(*json_flag, "thread", rejected[0], expect=("FORGED-LINE",))
            usagi(*json_flag, "match", rejected[0], code=1, expect=("FORGED-LINE",))
        usagi("outbox", "retry", mallory.node.did)

        # UBL out and in (docs/formats.md): her lines, her name, in a file and back.
        # The XML writes every unsafe character of hers as a character reference
        # (tests/formats: inert on a terminal too); to a file here, as the
        # payload's line break is then "&#xa;", not this test's "\\n".
        usagi("profile", "--country", "JP", "--endpoint", "0188:1234567890123")
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "profile")
        xml = tmp_path / "order.xml"
        usagi("export", rejected[0], "--format", "ubl", "-o", str(xml))
        usagi("import", str(xml), expect=both)
        usagi("--json", "import", str(xml), expect=("MARKUP",))

        # Archives of the history her documents are part of; a push to her "IPFS node".
        car = tmp_path / "victim.car"
        usagi("archive", "export", "--out", str(car))
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "archive", "verify", str(car))
        usagi("archive", "import", str(car))
        usagi("archive", "push", str(car), "--ipfs-api",
              f"http://127.0.0.1:{mallory.front_port}", code=None, expect=("FORGED-LINE",))

        # Her key rotation (honest), then ours: her front answers it with the payload.
        mallory.rotate()
        usagi("partner", "list", expect=("MARKUP",))
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "key", "rotate", "--overlap-days", "1", expect=both)
            usagi(*json_flag, "key", "announce", expect=both)
            usagi(*json_flag, "key", "show")

        # Plugins and users, on her document saved to a file and her line of text.
        document = tmp_path / "hers.json"
        opened = json.loads(usagi("--json", "show", quote, expect=both))["document"]
        document.write_text(json.dumps({k: v for k, v in opened.items()
                                        if k not in ("thread", "prev")}))
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "plugins", "list")
            usagi(*json_flag, "plugins", "check", str(document), code=None, expect=("MARKUP",))
            usagi(*json_flag, "extract", "M6x20 hex bolt " + ARGUMENT)
            usagi(*json_flag, "plugins", "configure", "machinery")
        usagi("plugins", "enable", "food")
        usagi("plugins", "disable", "food")
        usagi("user", "add", "clerk", "--insecure-no-passphrase")
        usagi("user", "list")
        usagi("user", "move", "clerk", "--all")

        # Managing her as a partner names her each time.
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "partner", "quota", mallory.node.did, expect=("MARKUP",))
        usagi("partner", "quota", mallory.node.did, "--docs", "5000", expect=("MARKUP",))
        usagi("partner", "suspend", mallory.node.did, expect=("MARKUP",))
        usagi("partner", "resume", mallory.node.did, expect=("MARKUP",))
        usagi("partner", "rename", mallory.node.did, "Mallory (watch)", expect=("MARKUP",))
        usagi("partner", "remove", mallory.node.did)

        # Tokens of the local API: a name that is not one is refused, its error inert.
        usagi("token", "create", "erp", "--scope", "send")
        usagi("token", "create", ARGUMENT, code=65)
        usagi("token", "revoke", ARGUMENT, code=66, expect=("FORGED-LINE",))
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "token", "list")
        usagi("token", "revoke", "erp")

        # The web UI's sign-in link; a user name that is not one is refused, its error inert.
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "ui", "--no-open")
        usagi("ui", "--user", ARGUMENT, "--no-open", code=78, expect=("FORGED-LINE",))

        # Webhooks: a URL carrying the payload is refused, its error inert.
        usagi("webhook", "add", "http://127.0.0.1:9/x" + ARGUMENT, code=78)
        hook = f"http://127.0.0.1:{free_port()}/hook"
        usagi("webhook", "add", hook, "--type", "partner.changed")
        usagi("webhook", "replay", "1-3")
        for json_flag in ((), ("--json",)):
            usagi(*json_flag, "webhook", "list")
            usagi(*json_flag, "webhook", "log")
        usagi("webhook", "remove", hook)
        usagi("demo")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        finally:
            mallory.close()
    # 'usagi serve -v': its activity lines and the node's log lines.
    log = serve_log.read_bytes()
    usagi.check("-v serve", log, both)
    assert b"received quote" in log and b"rotated its key" in log
    assert not usagi.problems, "\n".join(usagi.problems)

    missing = every_command() - usagi.ran
    assert not missing, f"commands without a hostile-output case here: {sorted(missing)}"


def test_one_escaping_rule_keeps_ordinary_text_and_escapes_each_class() -> None:
    import logging

    from usagi_p2p.node import invitation, terminal

    assert "printable" not in invitation.__all__  # one function, in one module: terminal
    printable = terminal.printable
    for ordinary in ("六角ナット M6 SUS304", "株式会社\u3000大阪精密", "φ10 end mill ±0.5mm",
                     "[green]text[/] :warning:", "葛\U000e0100飾"):  # an ideographic variation
        assert printable(ordinary) == ordinary
    for char, shown in (("\r", "\\r"), ("\n", "\\n"), ("\t", "\\t"), ("\x00", "\\x00"),
                        ("\x1b", "\\x1b"), ("\x7f", "\\x7f"), ("\x9b", "\\x9b"),
                        ("\u202e", "\\u202e"), ("\u2066", "\\u2066"), ("\u200d", "\\u200d"),
                        ("\u200b", "\\u200b"), ("\ufeff", "\\ufeff"), ("\u2028", "\\u2028"),
                        ("\u2029", "\\u2029"), ("\u061c", "\\u061c"), ("\ud800", "\\ud800"),
                        ("\U000e0041", "\\U000e0041")):
        assert printable(f"a{char}b") == f"a{shown}b"
    assert printable(printable(PAYLOAD)) == printable(PAYLOAD)  # idempotent
    assert output_problems(printable(PAYLOAD).encode()) == []

    # JSON: exact values, inert bytes, Japanese as written.
    text = terminal.json_text({"ref": PAYLOAD, "name": "六角ナット", PAYLOAD: [PAYLOAD]})
    assert json.loads(text) == {"ref": PAYLOAD, "name": "六角ナット", PAYLOAD: [PAYLOAD]}
    assert output_problems(text.encode()) == [] and "六角ナット" in text

    # A log record: one line whatever its arguments hold, and a traceback whose
    # exception message (a partner's text) cannot start a line of its own.
    formatter = terminal.LogFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("usagi.node", logging.WARNING, __file__, 1, "from %s: %s",
                               (NAME, PAYLOAD), None)
    line = formatter.format(record)
    assert "\n" not in line and output_problems(line.encode()) == []
    assert record.getMessage() == f"from {NAME}: {PAYLOAD}"  # the record itself unchanged
    try:
        try:
            raise ValueError(PAYLOAD)
        except ValueError as exc:
            raise RuntimeError(f"delivery failed: {PAYLOAD}") from exc
    except RuntimeError:
        record = logging.LogRecord("usagi.node", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    logged = formatter.format(record)
    assert output_problems(logged.encode()) == []
    assert "Traceback (most recent call last):" in logged and 'File "' in logged
    assert "RuntimeError: delivery failed: \\r\\x1b[32m" in logged
