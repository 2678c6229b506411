"""One key-file module (usagi_p2p/node/keyfile.py) for the node's key, its keyring
and the users' keys: the format of the files written before it, byte for byte."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from kernel import Identity
from usagi_p2p.node import keyfile
from usagi_p2p.node.errors import ConfigError, PassphraseError
from usagi_p2p.node.home import Home
from usagi_p2p.node.users import add_user, load_user, user_key_is_protected

#: Key files written by the code before this module (Home._write_key, with
#: fast_kdf): the node's key under "correct horse", user suzuki's under
#: "pharmacist pass", user sato's stored without a passphrase.
FIXTURES = Path(__file__).parent / "fixtures" / "keys"
NODE, SUZUKI, SATO = (Identity(bytes(range(i, i + 32))) for i in (0, 32, 64))


def _old_home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    home.create("Kanto Machine Tools", None, seed=NODE.seed, fast_kdf=True)
    home.key_path.unlink()
    shutil.copy(FIXTURES / "identity.key", home.key_path)
    home.key_path.chmod(0o600)
    for name, identity in (("suzuki", SUZUKI), ("sato", SATO)):
        home.update_config(lambda c, n=name, i=identity: c.users.update({n: {"did": i.did}}))
        (home.path / "users").mkdir(mode=0o700, exist_ok=True)
        shutil.copy(FIXTURES / f"{name}.key", home.path / "users" / f"{name}.key")
        (home.path / "users" / f"{name}.key").chmod(0o600)
    return home


def test_keys_written_before_open_as_they_did(tmp_path: Path) -> None:
    home = _old_home(tmp_path)
    assert home.key_is_protected()
    assert home.load_identity("correct horse").did == NODE.did
    with pytest.raises(PassphraseError):
        home.load_identity("wrong")
    assert user_key_is_protected(home, "suzuki") and not user_key_is_protected(home, "sato")
    assert load_user(home, "suzuki", "pharmacist pass").did == SUZUKI.did
    assert load_user(home, "sato", None).did == SATO.did
    # A rotation keeps the old file, as it was, in the keyring, and it opens there.
    home.rotate_key(Identity(bytes(range(96, 128))), "correct horse", fast_kdf=True)
    [retired] = home.load_keyring("correct horse")
    assert retired.did == NODE.did
    kept = home.keyring_path / (NODE.did.rsplit(":", 1)[-1] + ".key")
    assert kept.read_bytes() == (FIXTURES / "identity.key").read_bytes()
    assert home.load_config().did != NODE.did


def test_an_unprotected_key_is_written_byte_for_byte_as_before(tmp_path: Path) -> None:
    path = tmp_path / "sato.key"
    keyfile.write_key(path, SATO, None, fast_kdf=True)
    assert path.read_bytes() == (FIXTURES / "sato.key").read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):  # written once, never over another
        keyfile.write_key(path, NODE, None, fast_kdf=True)


def test_a_protected_key_round_trips_and_a_user_key_shares_the_format(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create("Kanto Machine Tools", None, fast_kdf=True)
    add_user(home, "suzuki", "pass", seed=SUZUKI.seed, fast_kdf=True)
    path = home.path / "users" / "suzuki.key"
    new, old = json.loads(path.read_text()), json.loads((FIXTURES / "suzuki.key").read_text())
    assert list(new) == list(old) and new["did"] == old["did"] == SUZUKI.did
    assert new["protection"] == old["protection"] == "argon2id+secretbox"
    assert path.read_text().startswith('{\n  "v": 1,\n  "did": "' + SUZUKI.did + '",\n')
    assert keyfile.key_is_protected(path) and keyfile.key_did(path) == SUZUKI.did
    assert keyfile.read_key(path, "pass").did == SUZUKI.did
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        keyfile.read_key(path, "pass")


def test_no_module_subclasses_home_for_a_key_file() -> None:
    root = Path(__file__).resolve().parents[2] / "usagi_p2p"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert "Home" not in bases, f"{path}: {node.name} subclasses Home"
