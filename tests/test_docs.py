"""Docs that must match the code: every error code is in docs/spec.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import ipfs.blockstore
import ipfs.car
import ipfs.gateway
import kernel.errors
import usagi_p2p.archive_format
import usagi_p2p.archive_push
import usagi_p2p.errors
import usagi_p2p.plugin_host
from kernel.errors import LimitExceededError, UsagiError

SPEC = Path(__file__).resolve().parents[1] / "docs" / "spec.md"


def all_codes() -> set[str]:
    codes = set()
    for module in (kernel.errors, ipfs.blockstore, ipfs.car, ipfs.gateway, usagi_p2p.errors,
                   usagi_p2p.archive_format, usagi_p2p.archive_push, usagi_p2p.plugin_host):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, UsagiError):
                codes.add(cls.code)
    return codes


def test_every_error_code_is_in_the_spec() -> None:
    text = SPEC.read_text()
    missing = sorted(c for c in all_codes() if f"`{c}`" not in text)
    assert not missing, f"error codes missing from docs/spec.md: {missing}"


def test_every_signature_label_is_in_the_spec() -> None:
    from kernel.identity import LABELS

    text = SPEC.read_text()
    for label in LABELS.values():
        assert label.decode() in text


# -- spec section 13.1: the decoding limits of every structure ------------------


def _section(title_prefix: str) -> str:
    """The text of the spec section whose heading starts with ``title_prefix``."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip().startswith(title_prefix))
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level),
               len(lines))
    return "\n".join(lines[start:end])


def test_the_limits_table_is_what_the_code_decodes_with() -> None:
    from ipfs.car import CARParser
    from kernel import envelope, messages, rotation, signed
    from kernel.dagcbor import Limits
    from usagi_p2p import archive_format, invitation, node

    car = CARParser()
    code = {
        "envelope": envelope.ENVELOPE_LIMITS,
        "signed wrapper": signed.SIGNED_LIMITS,
        "document body": envelope.DOCUMENT_LIMITS,
        "notice body": messages.MESSAGE_LIMITS,
        "ack body": messages.MESSAGE_LIMITS,
        "invitation or introduction body": invitation.LIMITS,
        "rotation body": rotation.LIMITS,
        "notice batch and its answer": node.BATCH_LIMITS,
        "archive index": archive_format._INDEX_LIMITS,
        "archive manifest page body and ack bundle": archive_format.PAGE_LIMITS,
        "CAR header": Limits(max_size=car.max_header, max_depth=8, max_length=car.max_header),
    }
    table = {}
    for line in _section("13.1").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].replace(",", "").isdigit():
            name = cells[0].split(" (")[0]
            table[name] = Limits(*(int(c.replace(",", "")) for c in cells[1:]))
    assert table == code


def test_the_depth_examples_of_section_13_1() -> None:
    """Both codecs count depth as the spec says: top-level items are depth 0."""
    from kernel import dagcbor
    from kernel.cid import CID
    from kernel.dagcbor import Limits

    link = CID.for_block(b"x")
    needs = {1: 0, "a": 0, (): 0, "{}": 0, (1,): 1, ((),): 1, "{a:[]}": 1, "link": 1,
             ((1,),): 2, "{a:[1]}": 2, "{a:[link]}": 3}
    values = {(): [], "{}": {}, (1,): [1], ((),): [[]], "{a:[]}": {"a": []}, "link": link,
              ((1,),): [[1]], "{a:[1]}": {"a": [1]}, "{a:[link]}": {"a": [link]}}
    for key, depth in needs.items():
        data = dagcbor.encode(values.get(key, key))
        for decode in (dagcbor.decode, dagcbor.reference_decode):
            decode(data, Limits(max_depth=depth))
            if depth:
                with pytest.raises(LimitExceededError):
                    decode(data, Limits(max_depth=depth - 1))
