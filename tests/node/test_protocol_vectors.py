"""The node's vectors in tests/vectors: invitations, signed HTTP requests, notice batches.

The kernel's operations run in tests/kernel/test_vectors.py; these need the
node's code (usagi_p2p/node/invitation.py, httpsig.py) or a real node: a notice
batch is handed to a real Node (its own home, SQLite ledger and block store)
whose identity and clock are the vector's, and a refused batch must leave
nothing stored.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from kernel import dagcbor
from kernel._document import parse_time
from kernel._identity import Identity
from kernel.cid import CID
from kernel.errors import UsagiError
from usagi_p2p.node.home import Home
from usagi_p2p.node.invitation import parse_invitation
from usagi_p2p.node.node import Node

from ..kernel.test_vectors import FILES, KERNEL_OPERATIONS
from ..test_docs import all_codes

NODE_OPERATIONS = frozenset({"invitation", "parse_invitation", "http_signature",
                             "verify_http_signature", "notice_batch"})
#: name -> vector, read once (the test functions are async: no file I/O in them).
NODE_VECTORS = {p.name: v for p in FILES
                if (v := json.loads(p.read_text(encoding="utf-8")))["operation"] in NODE_OPERATIONS}


def test_every_vector_has_a_runner() -> None:
    operations = {json.loads(p.read_text(encoding="utf-8"))["operation"] for p in FILES}
    assert operations <= KERNEL_OPERATIONS | NODE_OPERATIONS
    assert NODE_OPERATIONS <= operations


@pytest.mark.parametrize("name", sorted(NODE_VECTORS))
async def test_vector(name: str, tmp_path: Path) -> None:
    vector = NODE_VECTORS[name]
    expect = vector["expect"]
    assert expect == "success" or expect in all_codes()
    run = RUNNERS[vector["operation"]]
    if expect == "success":
        await run(vector["inputs"], vector["expected"], tmp_path)
    else:
        with pytest.raises(UsagiError) as info:
            await run(vector["inputs"], vector["expected"], tmp_path)
        assert info.value.code == expect


async def _invitation(inputs: dict[str, Any], expected: dict[str, Any], _: Path) -> None:
    from kernel._signed import sign

    signer = Identity(bytes.fromhex(inputs["signer_seed"]))
    body = {"v": 1, "type": inputs["type"], "name": inputs["name"], "did": signer.did,
            "endpoint": inputs["endpoint"], "expires": inputs["expires"],
            "nonce": bytes.fromhex(inputs["nonce"])}
    assert dagcbor.encode(body).hex() == expected["body"]
    raw = sign(signer, "invitation", body)
    assert raw.hex() == expected["signed"]
    text = "usagi1:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert text == expected["text"]
    now = parse_time(inputs["now"])
    # An introduction travels as the signed bytes, an invitation as text: both read alike.
    invitation = parse_invitation(raw if inputs["type"] == "introduction" else text, now=now)
    assert (invitation.type, invitation.name, invitation.did, invitation.nonce.hex()) == \
        (inputs["type"], inputs["name"], signer.did, inputs["nonce"])
    assert invitation.text() == text


async def _parse_invitation(inputs: dict[str, Any], expected: dict[str, Any], _: Path) -> None:
    invitation = parse_invitation(inputs["text"], now=parse_time(inputs["now"]))
    assert (invitation.did, invitation.name) == (expected["did"], expected["name"])


async def _http_signature(inputs: dict[str, Any], expected: dict[str, Any], _: Path) -> None:
    from usagi_p2p.node.httpsig import sign_request, verify_request

    signer = Identity(bytes.fromhex(inputs["signer_seed"]))
    headers = sign_request(signer, inputs["method"], inputs["path"], inputs["query"],
                           created=inputs["created"], nonce=inputs["nonce"])
    assert headers == expected["headers"]
    # The signature is Ed25519 over label || 0x00 || the base string, byte for byte.
    signature = signer.sign("request", expected["signature_base"].encode("utf-8"))
    assert headers["Signature"] == f"usagi=:{base64.b64encode(signature).decode()}:"
    assert verify_request(headers, inputs["method"], inputs["path"], inputs["query"],
                          now=inputs["now"]) == expected["keyid"]


async def _verify_http_signature(inputs: dict[str, Any], expected: dict[str, Any], _: Path) -> None:
    from usagi_p2p.node.httpsig import verify_request

    verify_request(inputs["headers"], inputs["method"], inputs["path"], inputs["query"],
                   now=inputs["now"])


async def _notice_batch(inputs: dict[str, Any], expected: dict[str, Any], tmp: Path) -> None:
    home = Home(tmp / "receiver")
    home.create("Receiver", None, seed=bytes.fromhex(inputs["receiver_seed"]), port=9)
    now = parse_time(inputs["now"]).timestamp()
    node = Node.load(home, None, clock=lambda: now)
    async with node:
        for did in inputs["partners"]:
            await node.ledger.add_partner(did, did[-8:], "http://127.0.0.1:9", None)
        try:
            acks = await node.receive(bytes.fromhex(inputs["body"]))
        except UsagiError:
            assert await node.ledger.count_documents("in") == 0  # refused whole: nothing kept
            assert [cid async for cid, _ in node.store.blocks()] == []
            raise
        assert [a.hex() for a in acks] == expected["acks"]
        stored = sorted([str(cid) async for cid, _ in node.store.blocks()])
        assert stored == sorted(expected["stored"])
        for cid in expected["stored"]:
            assert await node.ledger.document(CID.parse(cid)) is not None


RUNNERS = {
    "invitation": _invitation,
    "parse_invitation": _parse_invitation,
    "http_signature": _http_signature,
    "verify_http_signature": _verify_http_signature,
    "notice_batch": _notice_batch,
}
assert set(RUNNERS) == NODE_OPERATIONS
