"""Signed gateway requests (RFC 9421 with Ed25519) and their replay guard."""

from __future__ import annotations

import hashlib
import time

import aiohttp
import pytest

from kernel._identity import Identity
from kernel.errors import ExpiredError, InvalidSignatureError, ReplayError
from usagi_p2p.node.httpsig import SKEW, ReplayGuard, sign_request, verify_request

from .conftest import Pair

LINES = [{"text": "M6x20 SUS304 hex bolt", "qty": "500"}]

ALICE = Identity(hashlib.sha256(b"httpsig alice").digest())
BOB = Identity(hashlib.sha256(b"httpsig bob").digest())
PATH = "/ipfs/bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
NOW = 1_800_000_000


def test_a_signed_request_verifies_and_names_its_signer() -> None:
    headers = sign_request(ALICE, "GET", PATH, "format=raw", created=NOW)
    assert verify_request(headers, "GET", PATH, "format=raw", now=NOW) == ALICE.did


@pytest.mark.parametrize(("method", "path", "query"), [
    ("POST", PATH, "format=raw"),
    ("GET", PATH[:-1] + "a", "format=raw"),
    ("GET", PATH, "format=car"),
])
def test_any_changed_component_breaks_the_signature(method: str, path: str, query: str) -> None:
    headers = sign_request(ALICE, "GET", PATH, "format=raw", created=NOW)
    with pytest.raises(InvalidSignatureError):
        verify_request(headers, method, path, query, now=NOW)


def test_outside_the_window_is_expired() -> None:
    headers = sign_request(ALICE, "GET", PATH, "format=raw", created=NOW)
    with pytest.raises(ExpiredError):
        verify_request(headers, "GET", PATH, "format=raw", now=NOW + SKEW + 1)


def test_the_same_signed_request_is_accepted_once() -> None:
    guard = ReplayGuard()

    def accept(headers: dict[str, str], now: int) -> None:
        verify_request(headers, "GET", PATH, "format=raw", now=now)
        guard.check_request(headers, now)

    headers = sign_request(ALICE, "GET", PATH, "format=raw", created=NOW)
    accept(headers, NOW)
    with pytest.raises(ReplayError):
        accept(headers, NOW + 10)
    # A fresh nonce from the same signer, and the same nonce from another signer, pass.
    accept(sign_request(ALICE, "GET", PATH, "format=raw", created=NOW), NOW + 10)
    nonce = headers["Signature-Input"].split('nonce="')[1].split('"')[0]
    accept(sign_request(BOB, "GET", PATH, "format=raw", created=NOW, nonce=nonce), NOW + 10)


def test_a_bad_signature_does_not_use_up_the_nonce() -> None:
    guard = ReplayGuard()
    headers = sign_request(ALICE, "GET", PATH, "format=raw", created=NOW)
    forged = dict(headers)
    sig = forged["Signature"]
    forged["Signature"] = sig[:12] + ("A" if sig[12] != "A" else "B") + sig[13:]
    with pytest.raises(InvalidSignatureError):
        verify_request(forged, "GET", PATH, "format=raw", now=NOW)
    assert len(guard) == 0  # nothing recorded before a request is accepted
    verify_request(headers, "GET", PATH, "format=raw", now=NOW)
    guard.check_request(headers, NOW)
    assert len(guard) == 1


def test_pairs_are_forgotten_only_once_they_can_no_longer_pass() -> None:
    guard = ReplayGuard(skew=SKEW)
    guard.check(ALICE.did, "nonce-000001", created=NOW, now=NOW)
    # Still inside the window: remembered.
    with pytest.raises(ReplayError):
        guard.check(ALICE.did, "nonce-000001", created=NOW, now=NOW + SKEW)
    # A request created in the future (allowed skew) is kept until its own window ends.
    guard.check(ALICE.did, "nonce-future", created=NOW + SKEW, now=NOW)
    guard.check(BOB.did, "nonce-000002", created=NOW + SKEW + 1, now=NOW + SKEW + 1)
    assert (ALICE.did, "nonce-000001") not in guard._seen
    with pytest.raises(ReplayError):
        guard.check(ALICE.did, "nonce-future", created=NOW + SKEW, now=NOW + 2 * SKEW)


def test_memory_is_bounded_and_a_full_guard_refuses_rather_than_forgets() -> None:
    guard = ReplayGuard(capacity=100)
    for i in range(100):
        guard.check(ALICE.did, f"nonce-{i:06d}", created=NOW, now=NOW)
    assert len(guard) == 100
    with pytest.raises(ReplayError, match="try again later"):
        guard.check(ALICE.did, "nonce-new", created=NOW, now=NOW)
    with pytest.raises(ReplayError, match="already used"):
        guard.check(ALICE.did, "nonce-000000", created=NOW, now=NOW)  # not forgotten
    # Once the window has passed, the old pairs go and new requests pass.
    guard.check(ALICE.did, "nonce-new", created=NOW + SKEW + 1, now=NOW + SKEW + 1)
    assert len(guard) == 1


def test_check_request_reads_the_verified_headers() -> None:
    guard = ReplayGuard()
    headers = sign_request(ALICE, "GET", PATH, "format=raw", created=NOW)
    assert verify_request(headers, "GET", PATH, "format=raw", now=NOW) == ALICE.did
    guard.check_request(headers, NOW)
    with pytest.raises(ReplayError):
        guard.check_request(headers, NOW + 1)


async def test_the_gateway_judges_a_signature_by_the_nodes_clock(pair: Pair) -> None:
    """The signature's time window is the node's (its injected clock), not the
    machine's: a node whose clock is an hour ahead refuses a request signed now and
    serves one signed at its own time."""
    seller, buyer = pair.seller, pair.buyer
    result = await seller.send("quote", "Osaka", {"ref": "Q-clock", "lines": LINES})
    assert await seller.wait_for_ack(result.cid, timeout=15)
    path = f"/ipfs/{result.cid}"
    ahead = time.time() + 3600
    seller.clock = lambda: ahead

    async def fetch(created: int) -> int:
        headers = sign_request(buyer.identity, "GET", path, "format=raw", created=created)
        url = seller.config.endpoint + path + "?format=raw"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
            return r.status

    assert await fetch(int(time.time())) == 404  # outside the seller's window: concealed
    assert await fetch(int(ahead)) == 200
