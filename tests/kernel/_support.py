"""Shared builders for the kernel tests: fixed identities, documents, fixture paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kernel._identity import Identity

#: ../shared/fixtures beside the repository (tests/kernel/x.py -> parents[2] is the repo).
SHARED_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
CODEC_FIXTURES = SHARED_FIXTURES / "ipld-codec-fixtures"

SELLER = Identity(bytes.fromhex("11" * 32))
BUYER = Identity(bytes.fromhex("22" * 32))
STRANGER = Identity(bytes.fromhex("33" * 32))

ISSUED_AT = "2025-04-01T09:30:00Z"


def require_fixtures(path: Path) -> Path:
    """Skip when the shared fixtures are absent, except under CI, where that is a failure."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared fixtures missing under CI: {path}")
        pytest.skip(f"shared fixtures not present: {path}")
    return path


def codec_fixture_paths() -> list[Path]:
    """Every positive DAG-CBOR fixture, by glob (names hold spaces and non-ASCII)."""
    return sorted((CODEC_FIXTURES / "fixtures").glob("*/*.dag-cbor"))


def order(**changes: Any) -> dict[str, Any]:
    """A minimal, valid first document: an order with one free-text line."""
    doc: dict[str, Any] = {
        "v": 1,
        "kind": "order",
        "from": BUYER.did,
        "to": SELLER.did,
        "issued_at": ISSUED_AT,
        "lines": [{"text": "M6x20 SUS304 hex bolt, 500 pcs"}],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def stable_id(value: Any) -> str:
    """A test id from repr() without memory addresses, the same in every process (pytest-xdist)."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
