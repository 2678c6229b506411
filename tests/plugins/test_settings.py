"""Plugin settings from the node's config: CLI, host, and a real two-node trade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from usagi_p2p.node.home import Home
from usagi_p2p.node.plugin_host import PluginHost

from ..node.conftest import paired
from .test_trade import make_home
from .test_users_cli import cli


def run(home: Home, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home.path), *args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture()
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "site-office", "Shibaura Builders", ["construction", "medical"])


def test_settings_reach_the_plugin() -> None:
    host = PluginHost.load(["construction", "food"], settings={
        "construction": {"schedules": {"芝浦": {"hours": "08:00-12:00", "days": "mon-fri"}}},
        "food": {"freshness_days": 5}})
    assert host.broken == {}
    assert host.plugins["construction"].schedules == {  # type: ignore[attr-defined]
        "芝浦": {"hours": "08:00-12:00", "days": "mon-fri"}}
    assert host.plugins["food"].freshness_days == 5  # type: ignore[attr-defined]
    # The module-level instance other nodes share is left alone.
    assert PluginHost.load(["food"]).plugins["food"].freshness_days == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "settings", "why"), [
    ("food", {"freshness_days": "five"}, "freshness_days"),
    ("food", {"best_before": 3}, "unexpected keyword"),
    ("medical", {"required_roles": "pharmacist"}, "required_roles"),
    ("construction", {"schedules": {"芝浦": {"hours": "8-12"}}}, "HH:MM-HH:MM"),
    ("construction", {"utc_offset_hours": 30}, "utc_offset_hours"),
    ("machinery", {"anything": 1}, "takes no arguments"),
])
def test_refused_settings_leave_the_plugin_broken_with_the_reason(
        name: str, settings: dict, why: str) -> None:
    host = PluginHost.load([name, "food" if name != "food" else "machinery"],
                           settings={name: settings})
    assert name not in host.plugins
    assert "refused its settings" in host.broken[name] and why in host.broken[name]
    assert len(host.plugins) == 1  # the other plugin runs on


def test_configure_command_validates_before_saving(home: Home) -> None:
    assert "construction: defaults" in run(home, "plugins", "configure", "construction")
    out = run(home, "plugins", "configure", "construction",
              'schedules={"芝浦": {"hours": "08:00-12:00"}}', "utc_offset_hours=9")
    assert "saved" in out
    assert home.load_config().plugin_settings == {
        "construction": {"schedules": {"芝浦": {"hours": "08:00-12:00"}}, "utc_offset_hours": 9}}
    # Refused: nothing changes on disk.
    before = home.config_path.read_bytes()
    out = run(home, "plugins", "configure", "construction", 'schedules={"x": {"hours": "8"}}',
              code=1)
    assert "not saved" in out and home.config_path.read_bytes() == before
    run(home, "plugins", "configure", "construction", "bad-key=1", code=1)
    run(home, "plugins", "configure", "nonesuch", "a=1", code=1)
    run(home, "plugins", "configure", "construction", "--unset", "utc_offset_hours")
    shown = json.loads(run(home, "--json", "plugins", "configure", "construction"))
    assert shown == {"schedules": {"芝浦": {"hours": "08:00-12:00"}}}
    run(home, "plugins", "configure", "construction", "--clear")
    assert home.load_config().plugin_settings == {}
    run(home, "plugins", "configure", "medical", 'required_roles=["pharmacist"]')
    assert home.load_config().plugin_settings == {"medical": {"required_roles": ["pharmacist"]}}
    # A bare word is a string, which required_roles refuses (a list of names).
    assert "not saved" in run(home, "plugins", "configure", "medical", "required_roles=pharmacist",
                              code=1)


async def test_a_node_judges_with_its_configured_settings(tmp_path: Path) -> None:
    seller_home = make_home(tmp_path / "lumber", "Kiba Lumber", ["construction"])
    buyer_home = make_home(tmp_path / "site", "Shibaura Builders", ["construction"])
    config = buyer_home.load_config()
    # The buyer knows its site's hours; the document does not carry them.
    config.plugin_settings = {"construction": {"schedules": {"芝浦": {"hours": "08:00-12:00"}}}}
    buyer_home.save_config(config)
    async with paired(seller_home, buyer_home) as p:
        seller, buyer = p.seller, p.buyer
        body = {"lines": [{"text": "構造用合板 1820×910×12mm"}],
                "ext": {"construction": {"site": "芝浦", "delivery_at": "2026-12-03 15:30"}}}
        result = await seller.send("delivery_note", "Shibaura", body)
        ack = await seller.wait_for_ack(result.cid, 15)
        assert ack is not None and ack[1] == "received"
        # The seller has no schedule for the site: no finding on its side.
        assert not [f for f in result.findings if f.code == "outside_site_window"]
        row = await buyer.ledger.document(result.cid)
        codes = [f["code"] for f in json.loads(row.findings or "[]")]
        assert codes == ["outside_site_window"]


@pytest.mark.parametrize("own", [["x"], 5, "abc"])
def test_settings_that_are_not_an_object_break_only_that_plugin(own: object) -> None:
    host = PluginHost.load(["food", "machinery"], settings={"food": own})  # type: ignore[dict-item]
    assert "food" in host.broken and "machinery" in host.plugins


def test_a_config_with_malformed_plugin_settings_is_a_clear_error(home: Home) -> None:
    from usagi_p2p.node.errors import ConfigError

    data = json.loads(home.config_path.read_text())
    data["plugin_settings"] = {"food": ["freshness_days", 3]}
    home.config_path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="plugin_settings"):
        home.load_config()


def test_a_json_typo_is_named(home: Home) -> None:
    out = run(home, "plugins", "configure", "construction", 'schedules={"芝浦": {"hours"}', code=1)
    assert "not valid JSON" in out
