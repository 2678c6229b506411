"""The first routes: status, key, and a retry that really delivers (docs/api.md §2)."""

from __future__ import annotations

import json
from pathlib import Path

from usagi_p2p.company.api import client
from usagi_p2p.company.api.routes import version
from usagi_p2p.company.api.tokens import CLI_TOKEN, TokenStore
from usagi_p2p.peer.service import Service

from ..node.conftest import make_home, paired
from .conftest import Api, wait_until

RETRY = "/api/v1/outbox/retry"


async def test_status_says_who_and_where(api: Api) -> None:
    status, headers, body = await api.call("GET", "/api/v1/status", token=api.tokens["read"])
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body == {
        "name": "Kanto Machine Tools", "did": api.node.did, "version": version(),
        "endpoints": {"peer": {"listen": api.service.url, "public": api.node.config.endpoint},
                      "local": {"listen": f"http://127.0.0.1:{api.local.port}", "socket": None}},
        "outbox": {"pending": 0, "delivered": 0, "undelivered": 0},
        # what 'usagi status' shows too (the command prints it when it rides)
        "store": str(api.node.home.blocks_path), "partners": 0,
        "documents": {"sent": 0, "received": 0}, "quotas": [],
    }
    assert version() != "unknown"


async def test_key_is_the_nodes_public_key(api: Api) -> None:
    status, _, body = await api.call("GET", "/api/v1/key", token=api.tokens["read"])
    assert status == 200
    assert body == {"did": api.node.did, "public_key": api.node.identity.public_key.hex(),
                    "retired": []}


async def test_retry_delivers_what_was_given_up_and_refusals_change_nothing(
        tmp_path: Path) -> None:
    from usagi_p2p.company.api.server import LocalServer

    seller_home = make_home(tmp_path / "kanto", "Kanto Machine Tools")
    config = seller_home.load_config()
    config.max_attempts, config.retry_base = 1, 0.05  # give up at the first failure
    seller_home.save_config(config)
    async with paired(seller_home, make_home(tmp_path / "osaka", "Osaka Precision")) as pair:
        seller = pair.seller
        local = LocalServer(seller, port=0, peer_url=pair.seller_service.url)
        await local.start()
        try:
            tokens = TokenStore(seller.home.path)
            send, read = tokens.create("erp", "send"), tokens.create("viewer", "read")
            # The partner goes down; the document is tried once and given up on.
            buyer_port = pair.buyer_service.port
            await pair.buyer_service.close()
            sent = await seller.send("quote", "Osaka Precision",
                                     {"ref": "Q-1", "lines": [{"text": "六角ナット M6"}]})

            async def given_up() -> bool:
                return (await seller.ledger.outbox_counts()).get("undelivered") == 1

            await wait_until(given_up, "the quote to be given up on")
            api = Api(seller, pair.seller_service, local, {"send": send, "read": read})
            # Refused calls do nothing: a read token, a foreign Host.
            assert (await api.call("POST", RETRY, token=read))[0] == 403
            assert (await api.call("POST", RETRY, token=send,
                                   headers={"Host": "evil.example"}))[0] == 403
            assert (await api.call("POST", RETRY, token=send,
                                   json={"partner": "Osaka Precision", "bogus": 1}))[0] == 422
            assert await given_up()
            status, _, body = await api.call("GET", "/api/v1/status", token=read)
            assert body["outbox"] == {"pending": 0, "delivered": 0, "undelivered": 1}

            # The partner is back; one call queues the quote again and delivers it.
            pair.buyer_service = Service(pair.buyer, port=buyer_port)
            await pair.buyer_service.start()
            status, _, body = await api.call("POST", RETRY, token=send,
                                             json={"partner": "Osaka Precision"})
            assert (status, body["requeued"]) == (200, 1), body
            ack = await seller.wait_for_ack(sent.cid, timeout=30)
            assert ack is not None and ack[1] in ("received", "accepted")
            held = await pair.buyer.ledger.document(sent.cid)
            assert held is not None and held.direction == "in"
            status, _, body = await api.call("GET", "/api/v1/status", token=read)
            assert body["outbox"] == {"pending": 0, "delivered": 1, "undelivered": 0}
        finally:
            await local.close()


async def test_the_cli_kick_goes_through_the_local_api(api: Api) -> None:
    home = api.node.home.path
    assert await client.kick(home) is False  # no serve.json: nothing runs on this home
    (home / "serve.json").write_text(json.dumps({"pid": 0, "url": api.service.url,
                                                 "local_url": api.local.url,
                                                 "local_socket": None}))
    assert await client.kick(home) is True
    # With the home's own token, made on demand, of scope admin; its secret in local.token.
    (cli,) = [t for t in TokenStore(home).tokens() if t.name == CLI_TOKEN]
    assert cli.scope == "admin"
    assert cli.id in TokenStore(home).last_used()  # the running node saw it used
    secret = (home / "local.token").read_text().strip()
    assert api.store.check(secret) == cli
    # Revoked, it is made afresh by the next command.
    TokenStore(home).revoke(CLI_TOKEN)
    assert await client.kick(home) is True
    assert (home / "local.token").read_text().strip() != secret
