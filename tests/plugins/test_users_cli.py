"""User keys, plugin subsets and the plugin commands, through click's runner."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from plugins.medical import plugin as medical
from usagi_p2p.company.cli.plugins import approver, extract_command, plugins_group, user_group
from usagi_p2p.node.errors import ConfigError
from usagi_p2p.node.home import Home
from usagi_p2p.node.users import add_user, approve, load_user, move_user

from ._support import doc, line


@click.group()
@click.option("--home", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cli(ctx: click.Context, home: Path, as_json: bool) -> None:
    # The same context the real 'usagi' group sets up.
    ctx.ensure_object(dict)
    ctx.obj.update(home=Home(home), json=as_json)


for command in (plugins_group, user_group, extract_command):
    cli.add_command(command)


@pytest.fixture()
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "clinic")
    home.create("Tokyo Clinic", None, seed=bytes([3]) * 32)
    return home


def run(home: Home, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home.path), *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_user_key_is_stored_like_the_node_key(home: Home) -> None:
    identity = add_user(home, "suzuki", "pw", role="pharmacist", fast_kdf=True)
    path = home.path / "users" / "suzuki.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(path.read_text())
    assert record["protection"] == "argon2id+secretbox" and "seed" not in record
    assert load_user(home, "suzuki", "pw").did == identity.did
    assert home.load_config().users["suzuki"] == {"did": identity.did, "role": "pharmacist"}
    with pytest.raises(ConfigError):
        add_user(home, "suzuki", None)
    with pytest.raises(ConfigError):
        add_user(home, "../evil", None)


def test_approve_with_user_keys(home: Home) -> None:
    add_user(home, "suzuki", None, role="pharmacist")
    add_user(home, "sato", None, role="manager")
    document = doc("medical.order", [line("stent", "medical", lot="A1")],
                   ext={"medical": {"route": ["pharmacist", "manager"]}})
    document = approve(home, document, "suzuki", None)
    assert [f.code for f in medical.validate(document)] == ["approval_missing"]
    document = approver(home, ["sato"])(document)
    assert medical.validate(document) == []


def test_plugins_list_enable_disable(home: Home) -> None:
    out = run(home, "plugins", "list")
    assert "available" in out and "medical" in out
    run(home, "plugins", "enable", "medical")
    run(home, "plugins", "enable", "food")
    assert home.load_config().plugins == ["medical", "food"]
    rows = json.loads(run(home, "--json", "plugins", "list"))
    states = {r["name"]: r["state"] for r in rows}
    assert states == {"medical": "enabled", "food": "enabled", "machinery": "available",
                      "construction": "available"}
    run(home, "plugins", "enable", "nonesuch", code=1)
    run(home, "plugins", "disable", "food")
    assert home.load_config().plugins == ["medical"]


def test_user_commands_and_extract(home: Home) -> None:
    run(home, "plugins", "enable", "construction")
    run(home, "plugins", "enable", "food")
    run(home, "user", "add", "tanaka", "--plugins", "construction", "--insecure-no-passphrase")
    assert "tanaka" in run(home, "user", "list")
    text = "合板 1820×910×12mm 小麦"
    assert set(json.loads(run(home, "--json", "extract", text, "--user", "tanaka"))) == {
        "construction"}
    run(home, "user", "move", "tanaka", "--plugins", "food")
    assert json.loads(run(home, "--json", "extract", text, "--user", "tanaka")) == {
        "food": {"allergens": "wheat"}}
    move_user(home, "tanaka", None)
    assert "plugins" not in home.load_config().users["tanaka"]
    assert "dimensions: 1820x910x12" in run(home, "extract", text)


def test_plugins_check_exit_code(home: Home, tmp_path: Path) -> None:
    run(home, "plugins", "enable", "medical")
    unapproved = doc("medical.order", [line("stent", "medical", lot="A1")],
                     ext={"medical": {"route": ["pharmacist"]}})
    path = tmp_path / "order.json"
    path.write_text(json.dumps(unapproved))
    assert "approval_missing" in run(home, "plugins", "check", str(path), code=1)
    path.write_text(json.dumps(doc("order", [line("ガーゼ")])))
    assert "0 finding(s)" in run(home, "plugins", "check", str(path))
