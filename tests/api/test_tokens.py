"""Tokens at rest: hashed, private, atomic; the CLI works without a running node."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from usagi_p2p.company.api.tokens import PREFIX, TokenStore, scope_allows
from usagi_p2p.node.errors import NameTakenError

from ..node.conftest import REPO, make_home


def usagi(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_scopes_are_ordered() -> None:
    assert [scope_allows(held, "send") for held in ("read", "send", "admin")] == [
        False, True, True]
    assert scope_allows("read", "read") and not scope_allows("send", "admin")


def test_a_token_is_stored_only_as_its_hash_in_a_private_file(tmp_path: Path) -> None:
    home = make_home(tmp_path / "kanto", "Kanto")
    store = TokenStore(home.path)
    secret = store.create("erp", "send")
    assert secret.startswith(PREFIX) and len(secret) == len(PREFIX) + 43
    path = home.path / "api-tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text and secret[len(PREFIX):] not in text
    assert store.check(secret) is not None and store.check(secret + "x") is None
    with pytest.raises(NameTakenError):
        store.create("erp", "read")
    assert [t.name for t in store.tokens()] == ["erp"]  # the refused one changed nothing
    assert not [p for p in home.path.iterdir() if p.name.endswith(".tmp")]


def test_the_cli_makes_lists_and_revokes_tokens_without_a_node(tmp_path: Path) -> None:
    home = make_home(tmp_path / "kanto", "Kanto").path
    made = usagi(home, "token", "create", "erp", "--scope", "send")
    secret = made.stdout.strip()
    assert secret.startswith(PREFIX) and "shown only now" in made.stderr
    machine = json.loads(usagi(home, "--json", "token", "create", "viewer").stdout)
    assert machine["scope"] == "read" and machine["token"].startswith(PREFIX)
    listed = usagi(home, "--json", "token", "list").stdout
    assert secret not in listed and machine["token"] not in listed
    assert [(t["name"], t["scope"]) for t in json.loads(listed)] == [("erp", "send"),
                                                                      ("viewer", "read")]
    taken = usagi(home, "token", "create", "erp", check=False)
    assert (taken.returncode, "name_taken" in taken.stderr) == (65, True)
    bad = usagi(home, "token", "create", "a b", check=False)
    assert (bad.returncode, "validation_failed" in bad.stderr) == (65, True)
    assert usagi(home, "token", "create", "x", "--scope", "root", check=False).returncode == 2
    usagi(home, "token", "revoke", "erp")
    assert TokenStore(home).check(secret) is None
    gone = usagi(home, "token", "revoke", "erp", check=False)
    assert (gone.returncode, "not_found" in gone.stderr) == (66, True)
    assert usagi(home, "token", "list").stdout.count("\n") == 1


def test_usagi_serve_opens_the_local_api_and_a_unix_socket(tmp_path: Path) -> None:
    import signal
    import urllib.request

    import aiohttp  # noqa: F401  (the client the socket call below uses)

    from ..node.conftest import serve_process, wait_serving

    home = make_home(tmp_path / "kanto", "Kanto")
    config = home.load_config()
    config.local_port, config.local_socket = 0, "api.sock"
    home.save_config(config)
    secret = usagi(home.path, "token", "create", "erp").stdout.strip()
    proc = serve_process(home.path)
    try:
        wait_serving(home.path, proc)
        state = json.loads((home.path / "serve.json").read_text())
        assert state["local_url"].startswith("http://127.0.0.1:")
        assert state["local_url"] != state["url"]
        sock = home.path / "api.sock"
        assert state["local_socket"] == str(sock)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        request = urllib.request.Request(state["local_url"] + "/api/v1/status",
                                         headers={"Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback)
            body = json.loads(resp.read())
        assert body["endpoints"]["local"] == {"listen": state["local_url"], "socket": str(sock)}
        # The same through the socket, as 'curl --unix-socket' would.
        import asyncio

        async def over_socket() -> int:
            connector = aiohttp.UnixConnector(path=str(sock))
            async with aiohttp.ClientSession(connector=connector) as session, session.get(
                    "http://localhost/api/v1/key",
                    headers={"Authorization": f"Bearer {secret}"}) as resp:
                return resp.status

        assert asyncio.run(over_socket()) == 200
        # 'usagi outbox retry' and 'usagi send' wake the running node through it.
        retried = usagi(home.path, "--json", "outbox", "retry")
        assert json.loads(retried.stdout) == {"requeued": 0}
        cli = [t for t in TokenStore(home.path).tokens() if t.name == "cli"]
        assert cli and cli[0].id in TokenStore(home.path).last_used()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert not sock.exists()  # removed on the way out


def test_the_token_store_reads_the_clock_it_is_given(tmp_path: Path) -> None:
    """A node's store (usagi_p2p/company/api/server.py) runs on Node.clock."""
    store = TokenStore(tmp_path, clock=lambda: 1_800_000_000.0)
    secret = store.create("erp", "read")
    assert [t.created for t in store.tokens()] == [1_800_000_000.0]
    token = store.check(secret)
    assert token is not None
    store.note_use(token)
    assert store.last_used() == {token.id: 1_800_000_000.0}
