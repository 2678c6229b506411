"""The optional plugin hook ``approve``: a third party's plugin approves its own kind
the way the built-in medical plugin does, through the host (docs/plugins.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import InvalidDocumentError
from kernel.plugin import OPTIONAL_HOOKS, Approving, contract_problems
from usagi_p2p.company.cli.plugins import approver as cli_approver
from usagi_p2p.node import operations as ops
from usagi_p2p.node.errors import ConfigError
from usagi_p2p.node.home import Home
from usagi_p2p.node.plugin_host import PluginHost
from usagi_p2p.node.users import add_user, approve, approver

from ..node.conftest import make_home, paired
from ._support import doc, line
from .test_host import install

#: A seal-stamp (判子) plugin as a third party would ship it: its kind requires
#: stamps, and its optional hook ``approve`` adds one, signed by the user's key.
HANKO = '''
from kernel import dagcbor
from kernel.plugin import Finding, ext_of, required_findings

def _unstamped(document):
    doc = dict(document)
    ext = dict(doc.get("ext") or {})
    hanko = {k: v for k, v in dict(ext.get("hanko") or {}).items() if k != "stamps"}
    ext.pop("hanko", None)
    if hanko:
        ext["hanko"] = hanko
    doc.pop("ext", None)
    if ext:
        doc["ext"] = ext
    return dagcbor.encode(doc)

class Hanko:
    name = "hanko"
    version = "0.1"
    namespace = "hanko"
    kinds = {"hanko.order": ("stamps",)}
    line_fields = {}

    def validate(self, document):
        out = required_findings(self, document)
        for i, stamp in enumerate(ext_of(document, "hanko").get("stamps") or []):
            if type(stamp) is not dict or type(stamp.get("sig")) is not bytes:
                out.append(Finding(self.name, "error", f"ext.hanko.stamps[{i}]", "bad_stamp",
                                   "a stamp is {by, role, sig}"))
        return out

    def extract(self, line_text):
        return {}

    def approve(self, document, approver, role):
        stamp = {"by": approver.did, "role": role,
                 "sig": approver.sign("approval", _unstamped(document))}
        doc = dict(document)
        ext = dict(doc.get("ext") or {})
        hanko = dict(ext.get("hanko") or {})
        hanko["stamps"] = [*hanko.get("stamps", []), stamp]
        ext["hanko"] = hanko
        doc["ext"] = ext
        return doc

plugin = Hanko()
'''


@pytest.fixture
def hanko(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site").mkdir()
    install(tmp_path / "site", monkeypatch, "hanko", HANKO)


def _home(path: Path, plugins: list[str]) -> Home:
    home = make_home(path, path.name.title())
    config = home.load_config()
    config.plugins = plugins
    home.save_config(config)
    return home


def test_the_optional_hook_is_part_of_the_contract(hanko: None) -> None:
    host = PluginHost.load(["hanko", "food"])
    assert host.broken == {}
    assert "approve" in OPTIONAL_HOOKS and isinstance(host.plugins["hanko"], Approving)
    assert not isinstance(host.plugins["food"], Approving)  # optional: food has none

    class NotCallable:
        name = version = namespace = "odd"
        kinds: dict[str, tuple[str, ...]] = {}
        line_fields: dict[str, str] = {}
        approve = "yes"

        def validate(self, document: object) -> list[object]:
            return []

        def extract(self, line_text: str) -> dict[str, str]:
            return {}

    assert contract_problems(NotCallable()) == [
        "the optional hook approve must be callable when present"]


def test_a_third_party_plugin_approves_its_own_kind(hanko: None, tmp_path: Path) -> None:
    home = _home(tmp_path / "tokyo", ["hanko"])
    add_user(home, "tanaka", None, role="buchou")
    add_user(home, "sato", None, role="shachou")
    host = PluginHost.for_config(home.load_config())
    draft = doc("hanko.order", [line("応接セット 一式")], kinds=("hanko.order",))
    assert [f.code for f in host.validate(draft)] == ["required_field"]
    stamped = approve(home, draft, "tanaka", None)
    stamped = approver(home, [("sato", None)])(stamped)
    assert [(s["role"], s["by"]) for s in stamped["ext"]["hanko"]["stamps"]] == [
        ("buchou", home.load_config().users["tanaka"]["did"]),
        ("shachou", home.load_config().users["sato"]["did"])]
    assert host.validate(stamped) == []
    # The CLI's approver (passphrases first) goes the same way.
    assert cli_approver(home, ["tanaka"])(draft)["ext"]["hanko"]["stamps"][0]["role"] == "buchou"
    # A kernel kind with no plugin enabled that approves: refused, nothing signed.
    plain = _home(tmp_path / "osaka", [])
    add_user(plain, "tanaka", None, role="buchou")
    with pytest.raises(ConfigError, match="no plugin"):
        approve(plain, doc("order", [line("bolts")]), "tanaka", None)
    # Two enabled plugins that approve, and nothing in the document says which: refused.
    both = _home(tmp_path / "kyoto", ["hanko", "medical"])
    add_user(both, "tanaka", None, role="buchou")
    with pytest.raises(ConfigError, match="several plugins"):
        approve(both, doc("order", [line("bolts")]), "tanaka", None)
    assert "medical" not in approve(both, doc("order", [line("bolts")], ext={"hanko": {}}),
                                    "tanaka", None)["ext"]


async def test_a_stamped_order_travels_between_two_real_nodes(hanko: None,
                                                              tmp_path: Path) -> None:
    seller_home = _home(tmp_path / "kanto", ["hanko"])
    buyer_home = _home(tmp_path / "osaka", ["hanko"])
    add_user(seller_home, "tanaka", None, role="buchou")
    body = {"lines": [{"text": "応接セット 一式"}]}
    async with paired(seller_home, buyer_home) as p:
        with pytest.raises(InvalidDocumentError):  # unstamped: the plugin's error refuses it
            await ops.send(p.seller, "hanko.order", body, to="Osaka")
        sent = await ops.send(p.seller, "hanko.order", body, to="Osaka",
                              prepare=approver(seller_home, [("tanaka", None)]))
        await ops.deliver_now(p.seller)
        assert (await ops.await_ack(p.seller, sent.cid, 15)).status == "received"
        view = await ops.show_document(p.buyer, sent.cid)
    # The buyer holds the document as the seller's user stamped it, and its plugin agrees.
    [stamp] = view.document["ext"]["hanko"]["stamps"]
    assert (stamp["role"], stamp["by"]) == \
        ("buchou", seller_home.load_config().users["tanaka"]["did"])
    assert not [f for f in view.findings if f.plugin == "hanko"]
