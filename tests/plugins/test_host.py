"""The plugin host: entry-point discovery, a third party's plugin, isolation, users."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from kernel.plugin import Finding, Plugin, contract_problems
from plugins import construction, food, machinery, medical
from usagi_p2p.node.plugin_host import PluginHost, available

from ._support import codes, doc, line

BUILT_INS = {"machinery": machinery.plugin, "food": food.plugin,
             "construction": construction.plugin, "medical": medical.plugin}


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """Install a one-module distribution by writing its dist-info on sys.path (no network)."""
    module = f"usagi_test_{name}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[usagi_p2p.plugins]\n{name} = {module}:plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


BAKERY = '''
from kernel.plugin import Finding, required_findings

class Bakery:
    name = "bakery"
    version = "0.1"
    namespace = "bakery"
    kinds = {"bakery.standing_order": ("weekdays",)}
    line_fields = {"bakery.bake_day": "the day the bread is baked"}

    def validate(self, document):
        out = required_findings(self, document)
        for i, line in enumerate(document.get("lines", [])):
            if "食パン" in line.get("text", "") and "bakery" not in line.get("ext", {}):
                out.append(Finding(self.name, "warning", f"lines[{i}]", "no_bake_day",
                                   "bread without a bake day"))
        return out

    def extract(self, line_text):
        return {"bake_day": "mon"} if "月曜" in line_text else {}

plugin = Bakery()
'''


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_built_ins_register_through_entry_points(name: str) -> None:
    assert available()[name].value == f"plugins.{name}:plugin"
    host = PluginHost.load([name])
    assert host.plugins[name] is BUILT_INS[name]
    assert host.broken == {}


@pytest.mark.parametrize("plugin", BUILT_INS.values())
def test_built_ins_meet_the_contract(plugin: Plugin) -> None:
    assert isinstance(plugin, Plugin)
    assert contract_problems(plugin) == []


def test_third_party_plugin_is_discovered_and_used(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, monkeypatch, "bakery", BAKERY)
    assert "bakery" in available()
    host = PluginHost.load(["food", "bakery"])
    assert host.broken == {}
    assert host.kinds() == {"bakery.standing_order", "food.recall"}
    assert host.extract("食パン 20斤 月曜 納品 小麦") == {
        "bakery": {"bake_day": "mon"}, "food": {"allergens": "wheat"}}
    findings = host.validate(doc("order", [line("食パン 20斤")]))
    assert codes(findings) == [("warning", "no_bake_day")]
    refused = host.validate(doc("bakery.standing_order", [line("食パン")], kinds=("bakery.standing_order",)))
    assert ("error", "required_field") in codes(refused)
    listed = {row.name: row.state for row in host.describe()}
    assert listed["bakery"] == "enabled" and listed["machinery"] == "available"


def test_plugin_that_raises_is_isolated_and_reported(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, monkeypatch, "flaky", '''
        class Flaky:
            name = version = namespace = "flaky"
            kinds = {}
            line_fields = {}
            def validate(self, document):
                raise KeyError("lines")
            def extract(self, line_text):
                raise ZeroDivisionError("oops")
        plugin = Flaky()
    ''')
    host = PluginHost.load(["flaky", "food"])
    document = doc("order", [line("鶏もも 冷蔵", "food", storage="chilled")])
    findings = host.validate(document)
    assert codes(findings) == [("warning", "plugin_failed"), ("warning", "cold_chain_missing")]
    assert "validate raised KeyError" in host.broken["flaky"]
    assert "flaky" not in host.plugins
    # Disabled for good: the next document is judged by the others alone.
    assert codes(host.validate(document)) == [("warning", "cold_chain_missing")]
    assert host.extract("牛乳") == {"food": {"allergens": "milk"}}
    assert any(r.name == "flaky" and r.state == "broken" for r in host.describe())


def test_extract_failure_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, monkeypatch, "flaky2", '''
        class Flaky:
            name = version = namespace = "flaky2"
            kinds = {}
            line_fields = {}
            def validate(self, document):
                return []
            def extract(self, line_text):
                return {"weight": 1.5}
        plugin = Flaky()
    ''')
    host = PluginHost.load(["flaky2", "machinery"])
    assert host.extract("M6x20") == {"machinery": {"thread": "M6", "length": "20"}}
    assert "not strings" in host.broken["flaky2"]


def test_plugin_that_fails_to_import_is_reported(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, monkeypatch, "broken", "import not_a_module_anywhere\nplugin = None\n")
    host = PluginHost.load(["broken", "machinery", "missing"])
    assert "ModuleNotFoundError" in host.broken["broken"]
    assert "not installed" in host.broken["missing"]
    assert list(host.plugins) == ["machinery"]


def test_contract_violation_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, monkeypatch, "rogue", '''
        class Rogue:
            name = version = namespace = "rogue"
            kinds = {"order": ()}            # a kernel kind: not namespaced
            line_fields = {"qty": "steals"}  # not namespaced either
            def validate(self, document):
                return []
            def extract(self, line_text):
                return {}
        plugin = Rogue()
    ''')
    host = PluginHost.load(["rogue"])
    assert "not namespaced" in host.broken["rogue"]
    assert host.plugins == {}


def test_users_get_their_subset() -> None:
    users = {"tanaka": {"plugins": ["construction"]}, "yamada": {"plugins": ["food"]},
             "boss": {}}
    host = PluginHost.load(["construction", "food"], users)
    text = "合板 1820×910×12mm 小麦粉"
    assert set(host.extract(text, user="tanaka")) == {"construction"}
    assert set(host.extract(text, user="yamada")) == {"food"}
    assert set(host.extract(text, user="boss")) == {"construction", "food"}
    assert set(host.extract(text)) == {"construction", "food"}
    chilled = doc("order", [line("x", "food", storage="chilled")])
    assert host.validate(chilled, user="tanaka") == []
    assert codes(host.validate(chilled, user="yamada")) == [("warning", "cold_chain_missing")]


def test_user_cannot_use_a_plugin_the_company_did_not_enable() -> None:
    host = PluginHost.load(["food"], {"tanaka": {"plugins": ["medical"]}})
    assert host.extract("GTIN 4006381333931", user="tanaka") == {}


def test_finding_levels_are_checked() -> None:
    with pytest.raises(ValueError):
        Finding("x", "fatal", "", "c", "m")  # type: ignore[arg-type]
    finding = Finding("food", "warning", "lines[0]", "c", "m")
    assert finding.to_json()["level"] == "warning" and not finding.is_error


def test_check_raises_on_errors_only() -> None:
    from usagi_p2p.node.plugin_host import PluginRejectedError, findings_json

    host = PluginHost.load(["medical"])
    unapproved = doc("medical.order", [line("stent", "medical", lot="A1")],
                     ext={"medical": {"route": ["pharmacist"]}})
    with pytest.raises(PluginRejectedError) as caught:
        host.check(unapproved)
    assert caught.value.code == "plugin_rejected"
    assert [f.code for f in caught.value.findings] == ["required_field", "approval_missing"]
    warned = host.check(doc("order", [line("x", "medical", gtin="123")]))
    assert '"code":"gtin_check_digit"' in findings_json(warned)
