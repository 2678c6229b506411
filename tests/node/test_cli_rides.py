"""The CLI rides on a running node's local API (issue 16): same output, no key unlock.

Real processes and homes: the seller's key is protected and its passphrase is
not given while its ``usagi serve`` runs, so a command that works then went
through the API (opening the node would need the passphrase: bad_passphrase).
Stopped, the same commands open the node and must print the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from usagi_p2p.node.home import Home

from .conftest import REPO, free_port, make_home, serve_process, wait_serving

PASSPHRASE = "correct horse battery staple"


def usagi(home: Path, *args: str, passphrase: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("USAGI_PASSPHRASE", None)
    if passphrase is not None:
        env["USAGI_PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def serve(home: Path, passphrase: str | None = None) -> subprocess.Popen[bytes]:
    if passphrase is not None:
        os.environ["USAGI_PASSPHRASE"] = passphrase
    try:
        proc = serve_process(home)
    finally:
        os.environ.pop("USAGI_PASSPHRASE", None)
    wait_serving(home, proc)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    proc.wait(10)


def test_the_cli_rides_on_a_running_node_and_prints_the_same(tmp_path: Path) -> None:
    seller = Home(tmp_path / "kanto")
    seller.create("Kanto Machine Tools", PASSPHRASE, port=free_port())
    buyer = make_home(tmp_path / "osaka", "Osaka Precision")
    body = tmp_path / "quote.yaml"
    body.write_text('ref: Q-1\ncurrency: JPY\nlines:\n  - text: "M6 六角ナット SUS304"\n'
                    '    qty: "500"\n    unit_price: "12.50"\n')
    buyer_proc = serve(buyer.path)
    seller_proc = serve(seller.path, PASSPHRASE)
    try:
        invitation = ok(usagi(buyer.path, "invite")).strip()
        ok(usagi(seller.path, "partner", "add", invitation, passphrase=PASSPHRASE))

        # Riding: no passphrase, yet it sends and waits for the ack.
        sent = usagi(seller.path, "send", "quote", "--to", "Osaka", str(body))
        lines = ok(sent).splitlines()
        assert lines[0].startswith("sent quote bafy") and lines[1].startswith(
            "ack   received by did:key:"), sent.stdout
        cid = lines[0].split()[-1]
        note = tmp_path / "note.json"
        note.write_text('{"note": "hi"}')
        answered = json.loads(ok(usagi(seller.path, "--json", "send", "message",
                                       "--reply-to", cid, "--ref", "M-1", "--no-wait",
                                       str(note))))
        assert set(answered) == {"cid", "thread", "digest", "findings"}  # no wait: no ack
        assert answered["thread"] == cid

        reads = [("show", cid), ("--json", "show", cid), ("thread", cid),
                 ("--json", "thread", cid), ("verify", cid), ("--json", "verify", cid),
                 ("--json", "outbox"), ("outbox", "--kind", "quote"), ("--json", "inbox"),
                 ("partner", "list"), ("--json", "partner", "list"),
                 ("--json", "search", "六角ナット"), ("search", "SUS304")]
        refusals = [("show", "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"),
                    ("send", "quote", "--to", "Nobody", str(body)),
                    ("--json", "outbox", "--partner", "Nobody"),
                    ("outbox", "retry", "Nobody")]
        riding = [ok(usagi(seller.path, *args)) for args in reads]
        status = [ok(usagi(seller.path, *args)) for args in (("status",), ("--json", "status"))]
        refused = [usagi(seller.path, *args) for args in refusals]
        assert ok(usagi(seller.path, "outbox", "retry")) == "requeued 0 document(s)\n"
        # The home's own token, revoked, is made again: the command still rides.
        ok(usagi(seller.path, "token", "revoke", "cli"))
        assert "六角ナット" in ok(usagi(seller.path, "show", cid))
    finally:
        stop(seller_proc)
    try:
        # Without a node serving the home, the same commands open it themselves.
        assert usagi(seller.path, "show", cid).returncode == 77  # the passphrase is needed
        alone = [ok(usagi(seller.path, *args, passphrase=PASSPHRASE)) for args in reads]
        for args, through_api, opened in zip(reads, riding, alone, strict=True):
            assert through_api == opened, args
        for args, through_api in zip(refusals, refused, strict=True):
            opened = usagi(seller.path, *args, passphrase=PASSPHRASE)
            assert through_api.returncode == opened.returncode != 0, (args, opened.stderr)
            assert through_api.stderr == opened.stderr, args
        assert json.loads(riding[1])["document"]["lines"][0]["text"] == "M6 六角ナット SUS304"
        # status says whether a node serves the home: the one line that differs.
        alone_status = [ok(usagi(seller.path, *args, passphrase=PASSPHRASE))
                        for args in (("status",), ("--json", "status"))]
        assert status[0].replace("serving   True", "serving   False") == alone_status[0]
        assert {**json.loads(status[1]), "serving": False} == json.loads(alone_status[1])
        assert json.loads(status[1])["quotas"][0]["partner"] == "Osaka Precision"

        # A node killed without cleaning up leaves serve.json: nobody answers, the
        # command works without it.
        seller_proc = serve(seller.path, PASSPHRASE)
        stop(seller_proc, signal.SIGKILL)
        assert (seller.path / "serve.json").exists()
        assert ok(usagi(seller.path, "show", cid, passphrase=PASSPHRASE)) == riding[0]
    finally:
        stop(buyer_proc)


def test_the_responses_the_cli_offers_are_the_kernels() -> None:
    from kernel import RESPONSES
    from usagi_p2p.company.cli.documents import RESPONSES as OFFERED

    assert OFFERED == tuple(sorted(RESPONSES))
