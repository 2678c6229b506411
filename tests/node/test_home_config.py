"""config.json is changed by several processes at once (a running serve through
the operations, CLI commands in others): ``Home.update_config`` makes each
read-modify-write whole, and every write replaces the file at once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from usagi_p2p.node.errors import ConfigError
from usagi_p2p.node.home import Home

ROUNDS = 50

#: One writer: ROUNDS times, add one to a counter both writers share and to its own.
WRITER = """
import sys
from usagi_p2p.node.home import Home

home, me, rounds = Home(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def bump(config):
    config.quota_docs += 1
    own = config.partner_quotas.setdefault(me, {"docs": 0})
    own["docs"] += 1

for _ in range(rounds):
    home.update_config(bump)
"""


def test_two_processes_lose_no_update_and_the_file_is_always_json(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create("Kanto Machine Tools", None, fast_kdf=True)
    home.update_config(lambda config: setattr(config, "quota_docs", 0))
    root = Path(__file__).resolve().parents[2]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(home.path), f"did:key:z{i}",
                                 str(ROUNDS)], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
               for i in (1, 2)]
    reads = 0
    while any(w.poll() is None for w in writers):
        json.loads(home.config_path.read_text())  # never a half-written file
        reads += 1
    assert [w.returncode for w in writers] == [0, 0]
    config = home.load_config()
    assert config.quota_docs == 2 * ROUNDS
    assert config.partner_quotas == {"did:key:z1": {"docs": ROUNDS}, "did:key:z2": {"docs": ROUNDS}}
    assert reads > 0
    # No temporary file is left behind; the config and its lock are the owner's only.
    assert sorted(p.name for p in home.path.iterdir() if "config" in p.name) == \
        ["config.json", "config.lock"]
    for name in ("config.json", "config.lock"):
        assert stat.S_IMODE((home.path / name).stat().st_mode) == 0o600


def test_a_change_that_fails_writes_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create("Kanto Machine Tools", None, fast_kdf=True)
    before = home.config_path.read_bytes()

    def bad(config: object) -> None:
        setattr(config, "quota_docs", 7)
        raise ConfigError("refused")

    with pytest.raises(ConfigError):
        home.update_config(bad)
    assert home.config_path.read_bytes() == before
    assert home.update_config(lambda config: config.name) == "Kanto Machine Tools"


def test_a_private_file_is_replaced_whole_and_owner_only(tmp_path: Path) -> None:
    """``write_private`` (serve.json, tokens, sign-in codes): 0600 whatever the umask,
    written to a temporary file and renamed over the old one, so a process that
    reads it as soon as it exists (``usagi send`` finding a running node, the tests
    waiting for serve) finds a whole file; nothing temporary is left behind. Before,
    serve.json was created empty and then written, and a reader could see ''."""
    from usagi_p2p.node.home import write_private

    path = tmp_path / "serve.json"
    old = os.umask(0)
    try:
        write_private(path, json.dumps({"url": "http://127.0.0.1:1"}))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        inode = path.stat().st_ino
        write_private(path, json.dumps({"url": "http://127.0.0.1:2"}))
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:2"}
    assert path.stat().st_ino != inode  # a new file renamed over, not the old one rewritten
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["serve.json"]
