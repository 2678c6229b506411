"""Partners, plugins, users and archives over the local API, against real nodes (docs/api.md)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from usagi_p2p.archive.archive import export_archive, verify_archive
from usagi_p2p.company.api.server import LocalServer
from usagi_p2p.company.api.tokens import SCOPES
from usagi_p2p.node import operations as ops
from usagi_p2p.node.users import add_user

from ..node.conftest import make_home, start
from .conftest import Api, api_node
from .test_auth import assert_problem
from .test_openapi import conforms

CAR = "application/vnd.ipld.car"


@contextlib.asynccontextmanager
async def configured(path: Path, name: str, **config: Any) -> AsyncIterator[Api]:
    """As conftest.api_node, with config fields set before the node starts."""
    home = make_home(path, name)
    settings = home.load_config()
    for key, value in config.items():
        setattr(settings, key, value)
    home.save_config(settings)
    node, service = await start(home)
    local = LocalServer(node, port=0, peer_url=service.url, peer_port=service.port)
    await local.start()
    try:
        tokens = {scope: local.tokens.create(f"test-{scope}", scope) for scope in SCOPES}
        yield Api(node, service, local, tokens)
    finally:
        await local.close()
        await service.close()
        await node.close()


def names(body: dict[str, Any]) -> list[str]:
    return [p["name"] for p in body["partners"]]


async def test_two_nodes_pair_through_the_api_and_manage_each_other(tmp_path: Path) -> None:
    async with api_node(tmp_path / "kanto", "Kanto Machine Tools") as a, \
            api_node(tmp_path / "osaka", "Osaka Precision") as b, \
            api_node(tmp_path / "kobe", "Kobe Gear Works") as c:
        # A read token may look but not invite, add or change.
        assert_problem(await a.call("POST", "/api/v1/invitations", token=a.tokens["read"]),
                       403, "forbidden_scope")
        assert_problem(await a.call("POST", "/api/v1/invitations", token=a.tokens["send"]),
                       403, "forbidden_scope")
        assert_problem(await a.call("POST", "/api/v1/invitations", token=a.tokens["admin"],
                                    json={"valid_for": 0, "x": 1}), 422, "validation_failed")
        status, _, invitation = await a.call("POST", "/api/v1/invitations",
                                             token=a.tokens["admin"], json={"valid_for": 3})
        assert status == 201, invitation
        assert (invitation["did"], invitation["name"]) == (a.node.did, "Kanto Machine Tools")
        assert invitation["invitation"].startswith("usagi1:")
        conforms(invitation, "Invitation")

        assert_problem(await b.call("POST", "/api/v1/partners", token=b.tokens["read"],
                                    json={"invitation": invitation["invitation"]}),
                       403, "forbidden_scope")
        assert (await b.call("GET", "/api/v1/partners", token=b.tokens["read"]))[2] == \
            {"partners": []}
        status, _, added = await b.call("POST", "/api/v1/partners", token=b.tokens["admin"],
                                        json={"invitation": invitation["invitation"]})
        assert status == 201, added
        assert (added["did"], added["name"], added["status"]) == \
            (a.node.did, "Kanto Machine Tools", "active")
        # Both list each other: B added A; A took B's introduction.
        assert names((await b.call("GET", "/api/v1/partners", token=b.tokens["read"]))[2]) == \
            ["Kanto Machine Tools"]
        status, _, listed = await a.call("GET", "/api/v1/partners", token=a.tokens["read"])
        assert status == 200 and names(listed) == ["Osaka Precision"]
        conforms(listed, "PartnerList")
        conforms(added, "Partner")
        assert listed["partners"][0]["did"] == b.node.did
        # A bad paste is the spec's invalid_invitation.
        assert_problem(await b.call("POST", "/api/v1/partners", token=b.tokens["admin"],
                                    json={"invitation": "usagi1:nonsense"}),
                       400, "invalid_invitation")

        # C pairs with A too, so that A has two partners whose names may clash.
        invitation = (await a.call("POST", "/api/v1/invitations", token=a.tokens["admin"]))[2]
        assert (await c.call("POST", "/api/v1/partners", token=c.tokens["admin"],
                             json={"invitation": invitation["invitation"]}))[0] == 201

        # One partner, by DID, by name, by prefix; an unknown one is 404 not_found.
        for key in (b.node.did, "Osaka Precision", "osaka"):
            status, _, got = await a.call("GET", f"/api/v1/partners/{key}",
                                          token=a.tokens["read"])
            assert (status, got["did"]) == (200, b.node.did), (key, got)
        assert_problem(await a.call("GET", "/api/v1/partners/Nagoya", token=a.tokens["read"]),
                       404, "not_found")
        assert_problem(await a.call("PATCH", "/api/v1/partners/Nagoya", token=a.tokens["admin"],
                                    json={"name": "x"}), 404, "not_found")

        # Rename: a read token cannot; a clash is 409 name_taken; nothing changed.
        kobe = f"/api/v1/partners/{c.node.did}"
        assert_problem(await a.call("PATCH", kobe, token=a.tokens["read"],
                                    json={"name": "Kobe"}), 403, "forbidden_scope")
        assert_problem(await a.call("PATCH", kobe, token=a.tokens["admin"],
                                    json={"name": "Osaka Precision"}), 409, "name_taken")
        bad = await a.call("PATCH", kobe, token=a.tokens["admin"],
                           json={"name": "\u202eevil", "status": "removed"})
        assert_problem(bad, 422, "validation_failed")
        assert {(e["field"], e["code"]) for e in bad[2]["errors"]} == \
            {("name", "invalid"), ("status", "unknown_field")}
        assert names((await a.call("GET", "/api/v1/partners", token=a.tokens["read"]))[2]) == \
            ["Kobe Gear Works", "Osaka Precision"]
        status, _, renamed = await a.call("PATCH", kobe, token=a.tokens["admin"],
                                          json={"name": "Kobe Gears"})
        assert (status, renamed["name"], renamed["did"]) == (200, "Kobe Gears", c.node.did)
        assert (await ops.partner(a.node, c.node.did)).name == "Kobe Gears"

        # Suspend, resume, remove: the partner's state as the CLI sets it.
        suspended = f"{kobe}/suspended"
        assert_problem(await a.call("PUT", suspended, token=a.tokens["send"]),
                       403, "forbidden_scope")
        assert (await a.call("PUT", suspended, token=a.tokens["admin"]))[2]["status"] == \
            "suspended"
        assert (await ops.partner(a.node, c.node.did)).status == "suspended"
        assert (await a.call("DELETE", suspended, token=a.tokens["admin"]))[2]["status"] == \
            "active"
        status, _, removed = await a.call("DELETE", kobe, token=a.tokens["admin"])
        assert (status, removed["status"]) == (200, "removed")
        assert (await ops.partner(a.node, c.node.did)).status == "removed"

        # Usage against quotas; an own quota set and dropped (admin only).
        usage = f"/api/v1/partners/{b.node.did}/usage"
        status, _, used = await a.call("GET", usage, token=a.tokens["read"])
        assert status == 200 and (used["did"], used["docs"], used["own"]) == \
            (b.node.did, 0, False)
        assert used["docs_quota"] == a.node.config.quota_docs
        conforms(used, "QuotaUsage")
        quota = f"/api/v1/partners/{b.node.did}/quota"
        assert_problem(await a.call("PUT", quota, token=a.tokens["read"], json={"docs": 5}),
                       403, "forbidden_scope")
        broken = await a.call("PUT", quota, token=a.tokens["admin"], json={"docs": -1, "y": 2})
        assert {(e["field"], e["code"]) for e in broken[2]["errors"]} == \
            {("docs", "invalid"), ("y", "unknown_field")}
        assert_problem(await a.call("PUT", quota, token=a.tokens["admin"], json={}),
                       422, "validation_failed")
        status, _, own = await a.call("PUT", quota, token=a.tokens["admin"],
                                      json={"docs": 5, "bytes": 4096})
        assert (status, own["docs_quota"], own["bytes_quota"], own["own"]) == \
            (200, 5, 4096, True)
        assert (await a.call("GET", usage, token=a.tokens["read"]))[2]["docs_quota"] == 5
        status, _, dropped = await a.call("DELETE", quota, token=a.tokens["admin"])
        assert (status, dropped["own"], dropped["docs_quota"]) == \
            (200, False, a.node.config.quota_docs)


async def test_extract_preview_returns_the_plugins_fields_and_findings(tmp_path: Path) -> None:
    async with configured(tmp_path / "kanto", "Kanto Machine Tools",
                          plugins=["machinery", "food"]) as api:
        add_user(api.node.home, "tanaka", None, plugins=["food"])
        status, _, listed = await api.call("GET", "/api/v1/plugins", token=api.tokens["read"])
        assert status == 200
        by_name = {p["name"]: p for p in listed["plugins"]}
        assert by_name["machinery"]["enabled"] and by_name["food"]["enabled"]
        assert by_name["machinery"]["version"] and \
            "machinery.thread" in by_name["machinery"]["fields"]
        assert "machinery.design_spec" in by_name["machinery"]["kinds"]
        assert not by_name["medical"]["enabled"] and by_name["medical"]["state"] == "available"
        conforms(listed, "PluginList")

        extract = "/api/v1/plugins/extract"
        status, _, preview = await api.call("POST", extract, token=api.tokens["read"],
                                            json={"text": "M6x20 SUS304 hex bolt, 500 pcs"})
        assert status == 200, preview
        [line] = preview["lines"]
        assert line["fields"] == {"machinery": {"thread": "M6", "length": "20",
                                                "material": "SUS304", "part_type": "hex_bolt"}}
        assert line["findings"] == [] and preview["plugins"] == ["machinery", "food"]
        conforms(preview, "ExtractPreview")

        # Findings per line (frozen goods without a temperature) and on the whole document.
        status, _, preview = await api.call(
            "POST", extract, token=api.tokens["read"],
            json={"lines": ["M6x20 SUS304 hex bolt", "冷凍 マグロ 10kg"],
                  "kind": "machinery.design_spec"})
        assert status == 200, preview
        first, second = preview["lines"]
        assert first["findings"] == [] and second["fields"]["food"]["storage"] == "frozen"
        assert [f["code"] for f in second["findings"]] == ["cold_chain_missing"]
        assert second["findings"][0]["path"].startswith("lines[1].")
        assert any(f["plugin"] == "machinery" and f["level"] == "error"
                   for f in preview["findings"])  # a design spec needs its drawing number

        # A subset: by plugins, by user (tanaka works with food only).
        for narrowed in ({"plugins": ["food"]}, {"user": "tanaka"}):
            status, _, preview = await api.call(
                "POST", extract, token=api.tokens["read"],
                json={"text": "M6x20 SUS304 hex bolt", **narrowed})
            assert (status, preview["plugins"], preview["lines"][0]["fields"]) == \
                (200, ["food"], {}), narrowed

        # Every broken rule at once; nothing sent or stored.
        bad = await api.call("POST", extract, token=api.tokens["read"],
                             json={"text": "a", "lines": ["b", 3], "plugins": ["medical"],
                                   "user": "nobody", "extra": True})
        assert_problem(bad, 422, "validation_failed")
        assert {(e["field"], e["code"]) for e in bad[2]["errors"]} == {
            ("text", "required"), ("lines[1]", "wrong_type"), ("plugins[0]", "unknown"),
            ("user", "unknown"), ("extra", "unknown_field")}
        assert await ops.list_documents(api.node, "out") == []


async def test_users_are_listed_for_admins_without_key_material(tmp_path: Path) -> None:
    async with configured(tmp_path / "kanto", "Kanto Machine Tools",
                          plugins=["machinery", "medical"]) as api:
        suzuki = add_user(api.node.home, "suzuki", None, plugins=["medical"],
                          role="pharmacist")
        tanaka = add_user(api.node.home, "tanaka", None)
        assert_problem(await api.call("GET", "/api/v1/users", token=api.tokens["send"]),
                       403, "forbidden_scope")
        status, _, body = await api.call("GET", "/api/v1/users", token=api.tokens["admin"])
        assert status == 200
        assert body == {"users": [
            {"name": "suzuki", "did": suzuki.did, "plugins": ["medical"], "role": "pharmacist"},
            {"name": "tanaka", "did": tanaka.did, "plugins": None, "role": None}]}
        conforms(body, "UserList")
        text = json.dumps(body)
        for user in ("suzuki", "tanaka"):
            key_file = (api.node.home.path / "users" / f"{user}.key").read_bytes()
            assert key_file.hex() not in text and key_file.decode("latin-1") not in text


async def test_an_archive_downloads_as_a_car_and_uploads_verify(tmp_path: Path) -> None:
    async with api_node(tmp_path / "kanto", "Kanto Machine Tools") as a, \
            api_node(tmp_path / "osaka", "Osaka Precision") as b:
        await ops.add_partner(b.node, (await ops.invite(a.node)).text())
        sent = await ops.send(a.node, "quote", {"ref": "Q-1", "lines": [{"text": "六角ナット M6"}]},
                              to="Osaka")
        await ops.deliver_now(a.node)
        assert (await ops.await_ack(a.node, sent.cid, 15)).status == "received"

        assert_problem(await a.call("GET", "/api/v1/archive", token=a.tokens["read"]),
                       403, "forbidden_scope")
        assert_problem(await a.call("GET", "/api/v1/archive?since=yesterday&x=1",
                                    token=a.tokens["admin"]), 422, "validation_failed")
        assert_problem(await a.call("GET", "/api/v1/archive?partner=Nagoya",
                                    token=a.tokens["admin"]), 404, "not_found")
        url = f"http://127.0.0.1:{a.local.port}/api/v1/archive?partner=Osaka&since=2000-01-01"
        car = tmp_path / "download.car"
        async with aiohttp.ClientSession() as session, session.get(
                url, headers={"Authorization": f"Bearer {a.tokens['admin']}"}) as resp:
            assert resp.status == 200 and resp.content_type == CAR
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert "attachment" in resp.headers["Content-Disposition"]
            root = resp.headers["Usagi-Archive-Root"]
            car.write_bytes(await resp.read())
        report = verify_archive(car, [a.node.identity])
        assert str(report.root) == root and report.documents == 1 and not report.quarantined
        assert not any((a.node.home.path / "tmp").iterdir())  # the export file is gone

        verify = "/api/v1/archive/verify"
        status, _, good = await a.call("POST", verify, token=a.tokens["read"], data=car.read_bytes(),
                                       headers={"Content-Type": CAR})
        assert status == 200, good
        assert (good["ok"], good["root"], good["documents"], good["keyed"], good["error"]) == \
            (True, root, 1, True, None)
        conforms(good, "ArchiveReport")
        # Another node's keys do not open it: a report that says so.
        status, _, foreign = await b.call("POST", verify, token=b.tokens["read"],
                                          data=car.read_bytes())
        assert status == 200 and not foreign["ok"]
        assert foreign["error"]["code"] == "archive_foreign"
        # One byte changed in the last block: the report names the failure.
        tampered = bytearray(car.read_bytes())
        tampered[-5] ^= 0x01
        status, _, bad = await a.call("POST", verify, token=a.tokens["read"],
                                      data=bytes(tampered))
        assert status == 200 and bad["ok"] is False, bad
        assert bad["error"]["code"] == "archive_invalid"
        assert "does not hash to" in bad["error"]["message"]
        conforms(bad, "ArchiveReport")
        conforms(foreign, "ArchiveReport")
        assert not any((a.node.home.path / "tmp").iterdir())


async def test_an_oversized_upload_is_413_before_it_is_stored(api: Api) -> None:
    car = api.node.home.path.parent / "some.car"
    await export_archive(api.node, car)
    size = car.stat().st_size
    api.node.config.local_upload_max = size - 1
    verify = "/api/v1/archive/verify"
    assert_problem(await api.call("POST", verify, token=api.tokens["read"],
                                  data=car.read_bytes()), 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while it arrives
        data = car.read_bytes()
        for i in range(0, len(data), 64):
            yield data[i:i + 64]

    assert_problem(await api.call("POST", verify, token=api.tokens["read"], data=chunks()),
                   413, "too_large")
    scratch = api.node.home.path / "tmp"
    assert not scratch.exists() or not any(scratch.iterdir())
    api.node.config.local_upload_max = size
    status, _, report = await api.call("POST", verify, token=api.tokens["read"],
                                       data=car.read_bytes())
    assert (status, report["ok"], report["bytes"]) == (200, True, size)
    assert_problem(await api.call("POST", verify, token=api.tokens["read"]),
                   422, "validation_failed")



def test_the_upload_limit_in_the_config_is_a_whole_number() -> None:
    from usagi_p2p.node.errors import ConfigError
    from usagi_p2p.node.home import Config

    base = {"name": "Kanto", "did": "did:key:z6Mk"}
    assert Config.from_json(base).local_upload_max == 1 << 30
    assert Config.from_json({**base, "local_upload_max": 5}).local_upload_max == 5
    for bad in ("1G", -1, 1.5, True):
        with pytest.raises(ConfigError, match="local_upload_max"):
            Config.from_json({**base, "local_upload_max": bad})


async def test_every_route_holds_its_scope(api: Api) -> None:
    """No token is 401 and a lower scope 403 on every route of the table, before its
    handler runs (so before anything changes)."""
    import re

    from usagi_p2p.company.api.routes import ROUTES

    for route in ROUTES:
        if route.scope is None:
            continue
        path = re.sub(r"\{[^}]+\}", "somebody", route.path)
        assert_problem(await api.call(route.method, path), 401, "unauthorized")
        for scope in SCOPES[:SCOPES.index(route.scope)]:
            assert_problem(await api.call(route.method, path, token=api.tokens[scope]),
                           403, "forbidden_scope")
    assert await ops.partners(api.node) == []
