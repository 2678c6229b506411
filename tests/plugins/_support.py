"""Documents for plugin tests: kernel-valid, between two fixed parties."""

from __future__ import annotations

from typing import Any

from kernel._document import document_problems
from kernel._identity import Identity

SELLER = Identity(bytes(range(32)))
BUYER = Identity(bytes(range(1, 33)))


def doc(kind: str, lines: list[dict[str, Any]] | None = None, *, kinds: tuple[str, ...] = (),
        **fields: Any) -> dict[str, Any]:
    """A document the kernel accepts (checked here, so plugin tests start from valid input)."""
    document: dict[str, Any] = {"v": 1, "kind": kind, "from": SELLER.did, "to": BUYER.did,
                                "issued_at": "2025-04-01T00:00:00Z"}
    if lines is not None:
        document["lines"] = lines
    document.update(fields)
    problems = document_problems(document, kinds or ((kind,) if "." in kind else ()))
    assert not problems, problems
    return document


def line(text: str, namespace: str | None = None, **ext: str) -> dict[str, Any]:
    out: dict[str, Any] = {"text": text}
    if namespace:
        out["ext"] = {namespace: ext}
    return out


def codes(findings: list[Any]) -> list[tuple[str, str]]:
    return [(f.level, f.code) for f in findings]
