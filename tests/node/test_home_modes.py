"""Issue 14, finding 16: a home is private to its owner (docs/spec.md §12, "Files at rest").

Real processes (``usagi init``, ``serve``, ``invite``, ``partner add``, ``send``)
run with the common umask 022 in homes whose folders were made 0755 before
(``mkdir ~/usagi``, systemd's ``StateDirectory=``): every folder must end 0700
and every file 0600, SQLite's -wal and -shm files included. A home left by
the old code (folder 0755, data files 0644) is made private when it is opened.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from .conftest import REPO, free_port

UMASK = 0o022


def usagi(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("USAGI_PASSPHRASE", None)
    proc = subprocess.run([sys.executable, "-m", "usagi_p2p", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=120, umask=UMASK)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def serve(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "usagi_p2p", "--home", str(home), "serve"],
                                stdout=subprocess.DEVNULL, stderr=err, umask=UMASK,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 30
    while not (home / "serve.json").exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "usagi serve did not start"
        time.sleep(0.05)
    return proc


def modes(home: Path) -> dict[str, int]:
    """Every path under ``home`` (itself as ".") with its permission bits."""
    found = {".": stat.S_IMODE(home.stat().st_mode)}
    for path in home.rglob("*"):
        found[str(path.relative_to(home))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(home: Path) -> dict[str, int]:
    found = modes(home)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (home / name).is_dir() else 0o600)}
    assert not wrong, f"open to other users in {home}: {wrong}"
    return found


def test_homes_in_0755_folders_end_private(tmp_path: Path) -> None:
    kanto, osaka = tmp_path / "kanto", tmp_path / "osaka"
    for home in (kanto, osaka):
        home.mkdir(mode=0o755)
        os.chmod(home, 0o755)  # whatever the test runner's umask
        made = usagi(home, "init", "--name", home.name.title(), "--port", str(free_port()),
                     "--insecure-no-passphrase")
        assert "was open to other users (mode 755); made it 700" in made.stderr
        assert_private(home)
    # Each file is private from its creation on: a later open finds nothing to fix.
    quiet = lambda *args: usagi(*args).stderr.count("open to other users")  # noqa: E731
    server = serve(osaka, tmp_path / "osaka.log")
    try:
        assert_private(osaka)  # the databases serve has just created, WAL files included
        assert quiet(kanto, "partner", "add", usagi(osaka, "invite").stdout.strip()) == 0
        assert_private(kanto)
        body = tmp_path / "quote.json"
        body.write_text(json.dumps({"ref": "Q-1", "lines": [{"text": "六角ナット M6"}]}))
        sent = usagi(kanto, "--json", "send", "quote", "--to", "Osaka", str(body))
        assert json.loads(sent.stdout)["ack"]["status"] == "received"
        assert "open to other users" not in sent.stderr
        # A rotated key goes to the keyring, a user's key to users/: private too.
        assert quiet(kanto, "key", "rotate", "--overlap-days", "1") == 0
        assert quiet(kanto, "user", "add", "clerk", "--insecure-no-passphrase") == 0
        keys = {name for name in assert_private(kanto) if name.endswith(".key")}
        assert len(keys) == 3 and "users/clerk.key" in keys
        # While serve runs, its WAL files and its state files exist: all private.
        running = assert_private(osaka)
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "blocks.db",
                     "blocks.db-wal", "blocks.db-shm", "config.json", "identity.key",
                     "local.token", "serve.json"):
            assert name in running, name
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)
    for home in (kanto, osaka):
        found = assert_private(home)
        assert {"ledger.db", "blocks.db", "config.json", "identity.key"} <= set(found)
    assert "open to other users" not in (tmp_path / "osaka.log").read_text()


def test_a_home_left_open_by_the_old_code_is_made_private_on_open(tmp_path: Path) -> None:
    home = tmp_path / "kanto"
    usagi(home, "init", "--name", "Kanto", "--port", str(free_port()), "--insecure-no-passphrase")
    # A serve killed outright leaves its -wal and -shm files behind; then every
    # file is opened up as the old code left them (the key file it made 0600).
    server = serve(home, tmp_path / "serve.log")
    try:
        usagi(home, "plugins", "enable", "food")  # a config rewrite while it runs
        os.chmod(home, 0o755)
        for path in home.iterdir():
            if path.name != "identity.key":
                os.chmod(path, 0o644)
    finally:
        server.kill()
        server.wait(20)
    before = modes(home)
    assert before["."] == 0o755 and before["ledger.db-wal"] == 0o644
    assert before["blocks.db-shm"] == 0o644 and before["config.json"] == 0o644
    shown = usagi(home, "--json", "status")
    assert json.loads(shown.stdout)["name"] == "Kanto"  # nothing lost
    assert_private(home)
    fixed = {line.split()[2] for line in shown.stderr.splitlines() if "made it" in line}
    assert fixed == {str(home), *(str(home / name) for name, mode in before.items()
                                  if name not in (".", "identity.key") and mode & 0o077)}


def test_a_key_file_open_to_others_is_refused_not_fixed(tmp_path: Path) -> None:
    """A key file someone may have copied is the operator's call (rotate), not ours."""
    home = tmp_path / "kanto"
    usagi(home, "init", "--name", "Kanto", "--insecure-no-passphrase")
    os.chmod(home / "identity.key", 0o644)
    refused = usagi(home, "status", check=False)
    assert refused.returncode == 78 and "readable by others" in refused.stderr
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o644
