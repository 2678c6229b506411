"""Docs that must match the code: every error code is in docs/spec.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import ipfs.blockstore
import ipfs.car
import ipfs.gateway
import kernel.errors
import usagi_p2p.archive_format
import usagi_p2p.archive_push
import usagi_p2p.errors
import usagi_p2p.plugin_host
from kernel.errors import UsagiError

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
