"""Webhooks: each event POSTed to a receiver on 127.0.0.1, signed as Standard Webhooks says,
retried after a failure, logged, and sent again on replay (docs/api.md, "Webhooks")."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from usagi_p2p.company.api.server import LocalServer
from usagi_p2p.company.api.webhooks import sign
from usagi_p2p.node import operations
from usagi_p2p.node.errors import ConfigError
from usagi_p2p.node.node import Node
from usagi_p2p.peer.service import Service

from ..node.conftest import make_home, start
from .conftest import wait_until

OSAKA = "did:key:z6MkOsaka"


@dataclass
class Receiver:
    """A company system's webhook endpoint: answers each POST with the next status."""

    answers: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        status = self.answers.pop(0) if self.answers else 204
        if status == 302:
            raise web.HTTPFound(self.url + "elsewhere")
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", r.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    r.url = f"http://127.0.0.1:{port}/hooks/usagi"
    try:
        yield r
    finally:
        await runner.cleanup()


@dataclass
class Served:
    node: Node
    service: Service
    local: LocalServer


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    node, service = await start(make_home(tmp_path / "kanto", "Kanto Machine Tools"))
    # Retries after a fraction of a second: the schedule is the only thing shortened.
    local = LocalServer(node, port=0, peer_url=service.url, peer_port=service.port,
                        webhook_schedule=(0.2, 0.2))
    await local.start()
    try:
        yield Served(node, service, local)
    finally:
        await local.close()
        await service.close()
        await node.close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks' check, written out here independently of the sender."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", s)
               for s in headers["webhook-signature"].split(" "))


def test_the_signature_matches_the_specs_test_vector() -> None:
    # Standard Webhooks' published example (spec, "Signature scheme"; its libraries' tests).
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


async def test_an_event_is_posted_signed_retried_after_a_500_and_logged(served: Served) -> None:
    node = served.node
    async with receiver() as r:
        r.answers = [500]
        hook = await operations.add_webhook(node, r.url)
        await node.ledger.add_partner(OSAKA, "Osaka", "http://127.0.0.1:9", None)
        (event,) = await operations.events_after(node, 0)

        async def twice() -> bool:
            return len(r.got) >= 2

        await wait_until(twice, "the first attempt and its retry")
        for headers, body in r.got[:2]:
            assert verify(hook.secret, headers, body)
            assert headers["webhook-id"] == str(event.seq)
            sent = json.loads(body)
            assert (sent["type"], sent["seq"], sent["data"]["did"]) == (
                "partner.added", event.seq, OSAKA)

        async def logged() -> bool:
            return len(await operations.webhook_log(node, url=r.url)) >= 2

        await wait_until(logged, "both attempts in the log")
        log = await operations.webhook_log(node, url=r.url)
        assert [(a.seq, a.attempt, a.status) for a in log] == [
            (event.seq, 1, 500), (event.seq, 2, 204)]
        assert log[0].error == "answered 500" and log[1].error is None
        # A tampered body does not verify.
        headers, body = r.got[0]
        assert not verify(hook.secret, headers, body.replace(b"Osaka", b"Osakx"))

        # Replay sends it again, same id, and logs the new attempt.
        assert await operations.replay_webhook(node, [event.seq, 99_999]) == [event.seq]

        async def thrice() -> bool:
            return len(r.got) >= 3

        await wait_until(thrice, "the replay")
        headers, body = r.got[2]
        assert headers["webhook-id"] == str(event.seq) and verify(hook.secret, headers, body)

        async def replay_logged() -> bool:
            return len(await operations.webhook_log(node, seq=event.seq)) == 3

        await wait_until(replay_logged, "the replay in the log")


async def test_redirects_are_not_followed_and_failures_are_given_up(served: Served) -> None:
    node = served.node
    async with receiver() as r:
        r.answers = [302, 503, 500]
        await operations.add_webhook(node, r.url, types=["partner.changed"])
        await node.ledger.add_partner(OSAKA, "Osaka", "http://127.0.0.1:9", None)  # not wanted
        await node.ledger.set_partner(OSAKA, status="suspended")

        async def given_up() -> bool:
            return len(await operations.webhook_log(node, url=r.url)) >= 3

        await wait_until(given_up, "three attempts")
        log = await operations.webhook_log(node, url=r.url)
        assert [(a.attempt, a.status) for a in log] == [(1, 302), (2, 503), (3, 500)]
        assert "redirects are not followed" in (log[0].error or "")
        assert "given up after 3 attempts" in (log[2].error or "")
        # Only the wanted type went out, and the redirect's target was never asked.
        assert len(r.got) == 3
        assert {json.loads(b)["type"] for _, b in r.got} == {"partner.changed"}


async def test_a_webhook_is_http_or_https(served: Served) -> None:
    for url in ("ftp://127.0.0.1/x", "file:///etc/passwd", "http://", "127.0.0.1:80/x"):
        with pytest.raises(ConfigError):
            await operations.add_webhook(served.node, url)
    assert operations.webhooks(served.node) == []


def test_the_cli_adds_lists_logs_replays_and_removes(tmp_path: Path) -> None:
    from ..node.test_cli import usagi

    home = make_home(tmp_path / "kanto", "Kanto Machine Tools").path
    url = "http://127.0.0.1:9/hooks"
    added = json.loads(usagi(home, "--json", "webhook", "add", url, "--type",
                             "partner.added").stdout)
    assert added["secret"].startswith("whsec_") and added["types"] == ["partner.added"]
    assert json.loads(usagi(home, "--json", "webhook", "list").stdout) == [
        {"url": url, "types": ["partner.added"]}]
    refused = usagi(home, "webhook", "add", "ftp://127.0.0.1/x", check=False)
    assert refused.returncode != 0 and "config_error" in refused.stderr
    assert json.loads(usagi(home, "--json", "webhook", "log").stdout) == []
    # Nothing kept under these ids: nothing queued.
    assert json.loads(usagi(home, "--json", "webhook", "replay", "1-3").stdout) == {"queued": []}
    usagi(home, "webhook", "remove", url)
    assert json.loads(usagi(home, "--json", "webhook", "list").stdout) == []
