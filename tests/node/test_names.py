"""Company names (spec section 10.1): which code points a name may hold, checked everywhere."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from kernel._identity import Identity
from kernel._signed import sign
from usagi_p2p.node.errors import InvitationError
from usagi_p2p.node.invitation import name_problem
from usagi_p2p.node.node import INTRODUCE_PATH

from .conftest import make_home, start
from .test_cli import usagi
from .test_peer_errors import post, snapshot

GOOD = ["Kanto Machine Tools", "株式会社𠮷野製作所", "Café Müller", "葛\U000e0100飾精機",  # an IVS
        "x" * 200, "六" * 66, "R&D (plant 2)", "A\u3000B"]
BAD = ["", " ", "\u3000\u00a0", "x" * 201, "六" * 67, "Osaka\x1b[31m", "Osaka\x7f", "Osaka\x85",
       "Alice\u200bCo", "Alice\u200dCo", "Alice\u200eCo", "Alice\u00adCo", "Alice\ufeffCo",
       "Osaka\u202eakasO", "Osaka\u2066", "Osaka\u2028", "Osaka\u061c", "Osaka\ue000",
       "Osaka\U000e0041", "Osaka\ufdd0", "Osaka\uffff", "Osaka\U0010fffe", "Osaka\ud800", 7, None]


@pytest.mark.parametrize("name", GOOD, ids=ascii)
def test_names_allowed(name: str) -> None:
    name_problem(name, InvitationError)


@pytest.mark.parametrize("name", BAD, ids=ascii)
def test_names_refused(name: object) -> None:
    with pytest.raises(InvitationError):
        name_problem(name, InvitationError)


def test_init_refuses_a_name_partners_would_refuse(tmp_path: Path) -> None:
    proc = usagi(tmp_path / "kanto", "init", "--name", "Kanto\u200bTools", "--insecure-no-passphrase",
                 check=False)
    assert proc.returncode == 2 and "invisible" in proc.stderr
    assert not (tmp_path / "kanto" / "config.json").exists()


async def test_an_introduction_with_an_invisible_name_is_refused(tmp_path: Path) -> None:
    """A new partner's introduction naming itself "Alice<ZWSP>Co" (to pass as Alice Co) is a
    400 invalid_invitation at a real node, and nothing stored changes."""
    node, service = await start(make_home(tmp_path / "kanto", "Kanto Machine Tools"))
    try:
        invitation = await node.invite()
        before = await snapshot(node)
        mallory = Identity.generate()
        expires = node.now() + timedelta(minutes=5)
        raw = sign(mallory, "invitation", {
            "v": 1, "type": "introduction", "name": "Alice\u200bCo", "did": mallory.did,
            "endpoint": "http://127.0.0.1:9", "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nonce": invitation.nonce})
        status, body = await post(node, raw, INTRODUCE_PATH)
        assert (status, body["error"]) == (400, "invalid_invitation")
        assert await snapshot(node) == before
        assert await node.ledger.partner(mallory.did) is None
    finally:
        await service.close()
        await node.close()
