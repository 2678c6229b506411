"""Tokens, scopes, the loopback guard, body limits and the two faces kept apart (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from usagi_p2p.company.api.app import Guard
from usagi_p2p.company.api.problems import NotLoopbackError
from usagi_p2p.node.node import NOTICES_PATH

from .conftest import PROBLEM, Api

RETRY = "/api/v1/outbox/retry"


def assert_problem(answer: tuple[int, dict[str, str], object], status: int, code: str) -> None:
    got, headers, body = answer
    assert (got, headers["Content-Type"].split(";")[0]) == (status, PROBLEM), answer
    assert isinstance(body, dict)
    assert (body["status"], body["code"]) == (status, code), body
    assert body["type"] == f"tag:usagi-p2p,2026:problem:{code}"
    assert body["title"] and body["detail"]


async def test_without_a_valid_token_every_route_is_401(api: Api) -> None:
    for method, path in (("GET", "/api/v1/status"), ("GET", "/api/v1/key"), ("POST", RETRY)):
        missing = await api.call(method, path)
        assert_problem(missing, 401, "unauthorized")
        assert missing[1]["WWW-Authenticate"] == 'Bearer realm="usagi"'
        for bad in ("usagi_" + "A" * 43, "not-even-ours", api.tokens["admin"] + "x"):
            wrong = await api.call(method, path, token=bad)
            assert_problem(wrong, 401, "unauthorized")
            assert 'error="invalid_token"' in wrong[1]["WWW-Authenticate"]
        basic = await api.call(method, path, headers={"Authorization": "Basic dXNhZ2k6eA=="})
        assert_problem(basic, 401, "unauthorized")


async def test_non_ascii_and_non_utf8_bearers_are_401_not_500(api: Api) -> None:
    # Once a 500 on the peer port's kick (hmac on str): sent as raw bytes here.
    for bearer in ("é€".encode(), b"usagi_\xff\xfe"):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.local.port)
        writer.write(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Authorization: Bearer " + bearer + b"\r\n\r\n")
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), raw
        assert json.loads(body)["code"] == "unauthorized"


async def test_a_revoked_token_is_refused_at_the_next_request(api: Api) -> None:
    status, _, body = await api.call("GET", "/api/v1/status", token=api.tokens["read"])
    assert status == 200, body
    # Revoked by another TokenStore, as 'usagi token revoke' in another process does.
    from usagi_p2p.company.api.tokens import TokenStore

    TokenStore(api.node.home.path).revoke("test-read")
    assert_problem(await api.call("GET", "/api/v1/status", token=api.tokens["read"]), 401,
                   "unauthorized")
    # The other tokens are untouched, and a new one works at once, without a restart.
    assert (await api.call("GET", "/api/v1/status", token=api.tokens["send"]))[0] == 200
    fresh = TokenStore(api.node.home.path).create("fresh", "read")
    assert (await api.call("GET", "/api/v1/key", token=fresh))[0] == 200


async def test_scopes_are_ordered_and_a_read_token_cannot_act(api: Api) -> None:
    before = await api.node.ledger.outbox_counts()
    denied = await api.call("POST", RETRY, token=api.tokens["read"])
    assert_problem(denied, 403, "forbidden_scope")
    assert "needs scope send" in denied[2]["detail"]
    assert await api.node.ledger.outbox_counts() == before
    for scope in ("send", "admin"):
        status, _, body = await api.call("POST", RETRY, token=api.tokens[scope])
        assert (status, body) == (200, {"requeued": 0, "pending": 0})
    for scope in ("read", "send", "admin"):
        assert (await api.call("GET", "/api/v1/status", token=api.tokens[scope]))[0] == 200


async def test_a_foreign_host_header_is_refused_before_anything_runs(api: Api) -> None:
    token = api.tokens["admin"]
    port = api.local.port
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}",
                 "127.0.0.1:1", f"[::2]:{port}", "localhost:", ""):
        answer = await api.call("POST", RETRY, token=token, headers={"Host": host})
        assert_problem(answer, 403, "not_loopback")
    # Even a route that needs no token, and an unknown path: nothing is answered but the refusal.
    assert_problem(await api.call("GET", "/api/v1/openapi.json", headers={"Host": "evil.example"}),
                   403, "not_loopback")
    assert_problem(await api.call("GET", "/nowhere", headers={"Host": "evil.example"}),
                   403, "not_loopback")
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}",
                 f"[::1]:{port}"):
        status, _, _ = await api.call("GET", "/api/v1/status", token=token,
                                      headers={"Host": host})
        assert status == 200, host


def test_the_guard_refuses_callers_that_are_not_on_this_machine() -> None:
    # Other machines cannot reach a listener bound to 127.0.0.1 at all; this is the
    # second line, for a socket that is reachable (a container's port mapping).
    guard = Guard(loopback=True, port=8471)
    for remote in ("10.0.0.5", "192.168.1.9", "::ffff:10.0.0.5", "2001:db8::1", "fe80::1%eth0"):
        request = make_mocked_request("GET", "/api/v1/status",
                                      headers={"Host": "127.0.0.1:8471"})
        request = request.clone(remote=remote)
        with pytest.raises(NotLoopbackError):
            guard.check(request)
    for remote in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        request = make_mocked_request("GET", "/api/v1/status",
                                      headers={"Host": "localhost:8471"}).clone(remote=remote)
        guard.check(request)
    # Bound elsewhere on purpose: the guard is off, the tokens alone hold.
    Guard(loopback=False).check(make_mocked_request("GET", "/", headers={"Host": "x"}).clone(
        remote="10.0.0.5"))


async def test_bodies_over_the_limit_are_413_before_reading(api: Api) -> None:
    token = api.tokens["send"]
    json_type = {"Content-Type": "application/json"}
    big = b'{"partner": "' + b"x" * (20 << 10) + b'"}'
    assert_problem(await api.call("POST", RETRY, token=token, data=big, headers=json_type),
                   413, "too_large")

    async def chunked() -> object:
        for _ in range(40):
            yield b" " * 1024

    assert_problem(await api.call("POST", RETRY, token=token, data=chunked(),
                                  headers=json_type), 413, "too_large")
    # A route that takes no body refuses any.
    assert_problem(await api.call("GET", "/api/v1/status", token=token, data=b"{}"),
                   413, "too_large")
    # A declared length over the limit is refused without a byte of the body sent.
    reader, writer = await asyncio.open_connection("127.0.0.1", api.local.port)
    writer.write(f"POST {RETRY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n"
                 f"Authorization: Bearer {token}\r\nExpect: 100-continue\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head


async def test_validation_lists_every_broken_rule(api: Api) -> None:
    token = api.tokens["send"]
    status, headers, body = await api.call(
        "POST", RETRY, token=token,
        json={"partner": 7, "requeue_undelivered": "yes", "extra": 1, "more": None})
    assert status == 422 and headers["Content-Type"].startswith(PROBLEM)
    assert body["code"] == "validation_failed"
    assert sorted((e["field"], e["code"]) for e in body["errors"]) == [
        ("extra", "unknown_field"), ("more", "unknown_field"), ("partner", "wrong_type"),
        ("requeue_undelivered", "wrong_type")]
    for bad, code in ((b"[1]", "wrong_type"), (b"{", "malformed"), (b"\xff", "malformed")):
        answer = await api.call("POST", RETRY, token=token, data=bad,
                                headers={"Content-Type": "application/json"})
        assert_problem(answer, 422, "validation_failed")
        assert answer[2]["errors"][0]["code"] == code
    form = await api.call("POST", RETRY, token=token, data=b"partner=x",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form[2]["errors"][0]["code"] == "content_type"
    # An operation's own refusal keeps its code and status from the one table.
    assert_problem(await api.call("POST", RETRY, token=token, json={"partner": "Nobody"}),
                   403, "unknown_partner")


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    token = api.tokens["admin"]
    assert_problem(await api.call("GET", "/api/v1/nothing", token=token), 404, "not_found")
    assert_problem(await api.call("DELETE", "/api/v1/status", token=token), 405,
                   "method_not_allowed")
    # The local listener never serves the peer protocol.
    for method, path in (("POST", NOTICES_PATH), ("GET", "/ipfs/bafkqaaa"), ("GET", "/nothing"),
                         ("POST", "/local/v1/kick")):
        assert_problem(await api.call(method, path, token=token), 404, "not_found")


async def test_the_peer_port_never_serves_the_company_routes(api: Api) -> None:
    token = api.tokens["admin"]
    for method, path in (("GET", "/api/v1/status"), ("POST", RETRY), ("GET", "/api/v1/key"),
                         ("GET", "/api/v1/openapi.json"), ("POST", "/local/v1/kick")):
        status, headers, body = await api.call(method, path, token=token,
                                               port=api.service.port)
        # The peer listener's own 404, in its own format: it knows no such route.
        assert (status, body["error"]) == (404, "not_found"), (path, body)
        assert headers["Content-Type"].startswith("application/json")
    assert api.local.port != api.service.port


async def test_the_local_port_may_not_be_the_peer_port(tmp_path: Path) -> None:
    from usagi_p2p.company.api.server import LocalServer
    from usagi_p2p.node.errors import ConfigError

    from ..node.conftest import make_home, start

    node, service = await start(make_home(tmp_path / "k", "Kanto"))
    try:
        with pytest.raises(ConfigError, match="peer port"):
            await LocalServer(node, port=service.port, peer_port=service.port).start()
    finally:
        await service.close()
        await node.close()


def test_a_code_without_a_row_is_answered_as_internal_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """docs/spec.md §14: a bug, not the caller's doing; the code goes to the log only."""
    from kernel.errors import UsagiError
    from usagi_p2p.company.api.problems import problem, problem_response

    # An instance, not a subclass: the walk over every error class must not see it.
    stray = UsagiError("a third party's secret detail")
    stray.code = "stray_code_without_a_row"
    body = problem(stray)
    assert (body["status"], body["code"]) == (500, "internal_error")
    assert body["type"] == "tag:usagi-p2p,2026:problem:internal_error"
    assert "secret detail" not in json.dumps(body) and "stray_code" not in json.dumps(body)
    assert "stray_code_without_a_row" in caplog.text
    response = problem_response(stray)
    assert response.status == 500 and response.text is not None
    assert json.loads(response.text)["code"] == "internal_error"
