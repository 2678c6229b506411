"""docs/plugins.md documents every hook of the contract and every built-in plugin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel.plugin import HOOKS, OPTIONAL_HOOKS, Plugin

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def test_hooks_list_matches_the_protocol() -> None:
    declared = set(Plugin.__annotations__) | {
        name for name in vars(Plugin) if not name.startswith("_") and callable(vars(Plugin)[name])}
    assert declared == set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    # A hook is documented by its own heading: "### `validate(document)`".
    assert re.search(rf"^### `{hook}\b", text, re.MULTILINE), f"hook {hook!r} is undocumented"


@pytest.mark.parametrize("hook", OPTIONAL_HOOKS)
def test_every_optional_hook_is_documented(hook: str) -> None:
    test_every_hook_is_documented(hook)


@pytest.mark.parametrize("name", ["machinery", "food", "construction", "medical"])
def test_every_built_in_is_documented(name: str) -> None:
    assert re.search(rf"^### {name}\b", DOC.read_text(encoding="utf-8"), re.MULTILINE)
