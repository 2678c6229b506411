"""Every peer endpoint × every bad-input class: the status, the code, and nothing changed.

The table ``TABLE`` is the specification of this test and is rendered into
docs/reliability.md ("Bad input"); ``test_the_table_in_the_docs_is_this_one``
keeps the two identical. Each row names an endpoint, a bad-input class, the
expected HTTP status and error code (for a notice batch answered 200, the
code is ``ack:<status>[:<reason>]`` of the signed ack), and, where a class
cannot apply to an endpoint, why, with the nearest input that does apply.

Two real nodes run on 127.0.0.1 (tests/node/conftest.py). The ledger (every
table's row count) and the block store (every CID) of the node under attack
are snapshotted before and compared after each case.

Run ``python -m tests.faults.test_bad_input_table`` to print the table.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel import _envelope as kenvelope
from kernel import dagcbor
from kernel._identity import Identity
from kernel._messages import make_notice, open_ack
from kernel.cid import CID
from usagi_p2p.node.httpsig import sign_request
from usagi_p2p.node.invitation import make_invitation
from usagi_p2p.node.node import INTRODUCE_PATH, MAX_BODY, NOTICES_PATH, Node

from ..node.conftest import Pair, pair  # noqa: F401  (the fixture)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]
N_A = "n/a"


@dataclass(frozen=True)
class Row:
    endpoint: str
    bad: str
    status: int
    code: str
    note: str = ""


NOTICES = f"POST {NOTICES_PATH}"
INTRO = f"POST {INTRODUCE_PATH}"
GET = "GET /ipfs/{cid}"

TABLE: list[Row] = [
    Row(NOTICES, "malformed CBOR", 400, "malformed"),
    Row(NOTICES, "non-canonical CBOR", 400, "non_canonical", "indefinite-length array"),
    Row(NOTICES, "oversized", 413, "too_large", f"body of {MAX_BODY + 1} bytes"),
    Row(NOTICES, "wrong signature", 401, "invalid_signature", "one bit of the notice signature"),
    Row(NOTICES, "unknown sender", 403, "unknown_sender", "a valid notice from a stranger"),
    Row(NOTICES, "replay", 200, "ack:received",
        "the same batch twice: the earlier ack, byte for byte; nothing stored twice"),
    Row(NOTICES, "wrong recipient", 421, "wrong_recipient", "notice addressed to another DID"),
    Row(NOTICES, "tampered block", 200, "ack:rejected:decryption_failed",
        "ciphertext flipped, CID recomputed: a signed rejection, nothing stored"),
    Row(NOTICES, "CID mismatch", 422, "cid_mismatch", "pushed block does not hash to the notice's CID"),
    Row(NOTICES, "expired time", 400, "expired", "notice sent_at 2 h ago"),
    Row(INTRO, "malformed CBOR", 400, "invalid_invitation"),
    Row(INTRO, "non-canonical CBOR", 400, "invalid_invitation", "a valid introduction re-encoded "
        "with a non-minimal length"),
    Row(INTRO, "oversized", 400, "invalid_invitation",
        "5 KiB body: over the 4 KiB invitation limit (a body over 1 MiB is refused by aiohttp "
        "with 413 before the handler runs)"),
    Row(INTRO, "wrong signature", 400, "invalid_invitation", "one bit of the signature"),
    Row(INTRO, "unknown sender", 403, "unknown_partner",
        "a stranger's introduction answering no invitation of ours"),
    Row(INTRO, "replay", 200, "ok",
        "the same introduction twice: idempotent for the DID it was used by; no new partner"),
    Row(INTRO, "wrong recipient", 403, "unknown_partner",
        "an introduction answering another node's invitation (its nonce is not ours)"),
    Row(INTRO, "tampered block", 400, "invalid_invitation",
        f"{N_A}: no block travels here; the nearest is a tampered body (one byte of the "
        "signed name changed)"),
    Row(INTRO, "CID mismatch", 400, "invalid_invitation",
        f"{N_A}: no CID travels here; nearest: an introduction whose signer is not its 'did'"),
    Row(INTRO, "expired time", 400, "invalid_invitation", "expired 1 minute ago"),
    Row(GET, "malformed CBOR", 400, "malformed",
        f"{N_A}: a GET has no body; the nearest is a malformed CID in the path"),
    Row(GET, "non-canonical CBOR", 200, "ok",
        f"{N_A}: no body; nearest: the CID spelled in upper-case base32 (multibase `B`): the same "
        "CID, served"),
    Row(GET, "oversized", 400, "malformed",
        f"{N_A}: no body; nearest: a 4 KiB CID in the path"),
    Row(GET, "wrong signature", 404, "block_not_found", "concealed: same answer as an absent CID"),
    Row(GET, "unknown sender", 404, "block_not_found", "signed by a stranger: concealed"),
    Row(GET, "replay", 404, "block_not_found",
        "the same signed request again (same signer and nonce) within the 300 s window: "
        "concealed"),
    Row(GET, "wrong recipient", 404, "block_not_found",
        "an active partner who is not a party to this block: concealed"),
    Row(GET, "tampered block", 500, "server_error",
        "our own stored copy damaged on disk: the store re-hashes and refuses to serve it"),
    Row(GET, "CID mismatch", 404, "block_not_found",
        "the same multihash under the raw codec: another CID, not ours"),
    Row(GET, "expired time", 404, "block_not_found", "signature created 10 minutes ago: concealed"),
]


def markdown() -> str:
    lines = ["| endpoint | bad input | status | code | case / why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| `{r.endpoint}` | {r.bad} | {r.status} | `{r.code}` | {r.note} |" for r in TABLE]
    return "\n".join(lines)


# -- the cases ----------------------------------------------------------------------------


@dataclass
class Request:
    node: Node  # the node under attack: its ledger and store must not change
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] | None = None
    changes_allowed: bool = False


async def snapshot(node: Node) -> tuple[Any, ...]:
    counts = []
    for table in ("documents", "acks", "nonces", "outbox", "partners", "invitations"):
        async with node.ledger.db.execute(f"SELECT count(*) FROM {table}") as cur:  # noqa: S608
            counts.append((await cur.fetchone())[0])
    # Rows and bytes as stored, unverified: one case damages a block on purpose.
    async with node.store._conn.execute("SELECT cid, data FROM blocks ORDER BY cid") as cur:  # noqa: SLF001
        blocks = list(await cur.fetchall())
    return tuple(counts), blocks


async def call(req: Request) -> tuple[int, str]:
    headers = {"Content-Type": "application/cbor", **(req.headers or {})}
    async with aiohttp.ClientSession() as session, session.request(
        req.method, req.node.config.endpoint + req.path, data=req.body or None, headers=headers,
        timeout=aiohttp.ClientTimeout(30),
    ) as resp:
        raw = await resp.read()
        if resp.status == 500:
            return 500, "server_error"
        if resp.content_type == "application/json":
            answer = json.loads(raw)
            if answer.get("ok"):
                return resp.status, "ok"
            # The peer API says "error", the gateway says "code" (see docs/reliability.md).
            return resp.status, answer.get("error") or answer.get("code")
        if resp.content_type == "application/cbor":
            ack = open_ack(dagcbor.decode(raw)["acks"][0])
            return resp.status, ":".join(["ack", ack.status] + ([ack.reason] if ack.reason else []))
        return resp.status, "ok" if resp.status == 200 else raw[:40].decode(errors="replace")


def _document(sender: Node, to: str) -> dict[str, Any]:
    return {"v": 1, "kind": "quote", "from": sender.did, "to": to, "ref": "Q-bad",
            "issued_at": "2026-11-22T05:00:00Z", "lines": LINES}


def _batch(notices: list[bytes], blocks: list[bytes] | None = None) -> bytes:
    body: dict[str, Any] = {"notices": notices}
    if blocks is not None:
        body["blocks"] = blocks
    return dagcbor.encode(body)


def _flip(raw: bytes, at: int) -> bytes:
    out = bytearray(raw)
    out[at] ^= 0x01
    return bytes(out)


async def notices_case(p: Pair, bad: str) -> Request:
    seller, buyer = p.seller, p.buyer
    sealed = kenvelope.seal(_document(seller, buyer.did), seller.identity)
    good = make_notice(seller.identity, sealed.cid, buyer.did, seller.now())
    body: bytes
    if bad == "malformed CBOR":
        body = b"\xff\x00 not cbor"
    elif bad == "non-canonical CBOR":
        body = bytes.fromhex("a1676e6f7469636573") + b"\x9f\xff"
    elif bad == "oversized":
        body = b"\x00" * (MAX_BODY + 1)
    elif bad == "wrong signature":
        body = _batch([_flip(good, 10)], [sealed.block])
    elif bad == "unknown sender":
        stranger = Identity.generate()
        body = _batch([make_notice(stranger, sealed.cid, buyer.did, seller.now())], [sealed.block])
    elif bad == "replay":
        body = _batch([good], [sealed.block])
        await call(Request(buyer, "POST", NOTICES_PATH, body))  # the original delivery
    elif bad == "wrong recipient":
        body = _batch([make_notice(seller.identity, sealed.cid, Identity.generate().did, seller.now())])
    elif bad == "tampered block":
        env = dagcbor.decode(sealed.block)
        env["c"] = _flip(env["c"], len(env["c"]) - 1)
        tampered = dagcbor.encode(env)
        notice = make_notice(seller.identity, CID.for_block(tampered), buyer.did, seller.now())
        body = _batch([notice], [tampered])
    elif bad == "CID mismatch":
        body = _batch([good], [sealed.block[:-1] + b"\x00"])
    elif bad == "expired time":
        body = _batch([make_notice(seller.identity, sealed.cid, buyer.did,
                                   seller.now() - timedelta(hours=2))], [sealed.block])
    else:
        raise AssertionError(bad)
    return Request(buyer, "POST", NOTICES_PATH, body)


async def introduce_case(p: Pair, bad: str) -> Request:
    seller, buyer = p.seller, p.buyer  # the seller invited; it is the node under attack
    newcomer = Identity.generate()
    invitation = await seller.invite()
    intro = make_invitation(newcomer, "Newcomer KK", "http://127.0.0.1:9", seller.now(),
                            type="introduction", nonce=invitation.nonce)
    body: bytes
    if bad == "malformed CBOR":
        body = b"\xa3\x01garbage"
    elif bad == "non-canonical CBOR":
        signed = dagcbor.decode(intro.raw)
        # "sig" with its 64-byte length in the two-byte form (0x59 0x00 0x40): non-minimal.
        head = dagcbor.encode({"sig": signed["sig"]})
        body = intro.raw.replace(head[5:7], b"\x59\x00\x40", 1) if head[5:7] == b"\x58\x40" else b""
        assert body and body != intro.raw
    elif bad == "oversized":
        body = intro.raw + b"\x00" * 5120
    elif bad == "wrong signature":
        body = _flip(intro.raw, 8)
    elif bad == "unknown sender":
        body = make_invitation(newcomer, "Nobody", "http://127.0.0.1:9", seller.now(),
                               type="introduction").raw
    elif bad == "replay":
        body = intro.raw
        await call(Request(seller, "POST", INTRODUCE_PATH, body))  # the original introduction
    elif bad == "wrong recipient":
        other = await buyer.invite()  # another node's invitation
        body = make_invitation(newcomer, "Newcomer KK", "http://127.0.0.1:9", seller.now(),
                               type="introduction", nonce=other.nonce).raw
    elif bad == "tampered block":
        at = intro.raw.find(b"Newcomer KK")
        body = _flip(intro.raw, at)
    elif bad == "CID mismatch":
        signed = dagcbor.decode(intro.raw)
        signed["signer"] = Identity.generate().did
        body = dagcbor.encode(signed)
    elif bad == "expired time":
        body = make_invitation(newcomer, "Newcomer KK", "http://127.0.0.1:9",
                               seller.now() - timedelta(minutes=11), type="introduction",
                               nonce=invitation.nonce, valid_for=timedelta(minutes=10)).raw
    else:
        raise AssertionError(bad)
    return Request(seller, "POST", INTRODUCE_PATH, body)


async def gateway_case(p: Pair, bad: str) -> Request:
    seller, buyer = p.seller, p.buyer  # the seller serves the block it sent the buyer
    result = await seller.send("quote", "Osaka", {"ref": "Q-gw", "lines": LINES})
    assert await seller.wait_for_ack(result.cid, timeout=15)
    cid = result.cid
    path = f"/ipfs/{cid}"

    def signed(identity: Identity, path: str = path, created: int | None = None) -> Request:
        created = int(seller.clock()) if created is None else created
        return Request(seller, "GET", path + "?format=raw",
                       headers=sign_request(identity, "GET", path, "format=raw", created=created))

    if bad == "malformed CBOR":
        return signed(buyer.identity, "/ipfs/not-a-cid")
    if bad == "non-canonical CBOR":
        return signed(buyer.identity, "/ipfs/" + str(cid).upper())
    if bad == "oversized":
        return signed(buyer.identity, "/ipfs/b" + "a" * 4096)
    if bad == "wrong signature":
        headers = sign_request(buyer.identity, "GET", path, "format=raw",
                               created=int(seller.clock()))
        sig = headers["Signature"]
        headers["Signature"] = sig[:12] + ("A" if sig[12] != "A" else "B") + sig[13:]
        return Request(seller, "GET", path + "?format=raw", headers=headers)
    if bad == "unknown sender":
        return signed(Identity.generate())
    if bad == "replay":
        first = signed(buyer.identity)
        await call(first)
        return first
    if bad == "wrong recipient":
        third = Node.load(_third_home(p), None)
        await third.open()
        try:
            invitation = await third.invite()
            await seller.ledger.add_partner(third.did, "Third KK", third.config.endpoint,
                                            invitation.raw)
        finally:
            await third.close()
        return signed(third.identity)
    if bad == "tampered block":
        block = await seller.store.get(cid)
        await seller.store._conn.execute(  # noqa: SLF001 (damage the disk copy on purpose)
            "UPDATE blocks SET data = ? WHERE cid = ?", (_flip(block, len(block) - 1), cid.raw))
        await seller.store._conn.commit()  # noqa: SLF001
        return signed(buyer.identity)
    if bad == "CID mismatch":
        raw = CID.from_bytes(b"\x01\x55" + cid.raw[2:])
        return signed(buyer.identity, f"/ipfs/{raw}")
    if bad == "expired time":
        return signed(buyer.identity, created=int(seller.clock()) - 600)
    raise AssertionError(bad)


def _third_home(p: Pair) -> Any:
    from ..node.conftest import make_home

    return make_home(p.seller.home.path.parent / "third", "Third KK")


CASES: dict[str, Callable[[Pair, str], Awaitable[Request]]] = {
    NOTICES: notices_case, INTRO: introduce_case, GET: gateway_case,
}


@pytest.mark.parametrize("row", TABLE, ids=[f"{r.endpoint.split()[1]}|{r.bad}" for r in TABLE])
async def test_bad_input(pair: Pair, row: Row) -> None:  # noqa: F811 (the fixture)
    req = await CASES[row.endpoint](pair, row.bad)
    before = await snapshot(req.node)
    got = await call(req)
    assert got == (row.status, row.code), f"{row.endpoint} × {row.bad}: {got}"
    assert await snapshot(req.node) == before, f"{row.endpoint} × {row.bad} changed the node"


def test_the_table_in_the_docs_is_this_one() -> None:
    assert markdown() in DOCS.read_text(), "re-run: python -m tests.faults.test_bad_input_table"


if __name__ == "__main__":
    print(markdown())
