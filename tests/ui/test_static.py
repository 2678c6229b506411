"""The UI's static files: vendored files match their recorded hashes; no inline script or style."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "usagi_p2p" / "company" / "ui"
TESTS = Path(__file__).resolve().parent


def _recorded(table: Path) -> dict[str, str]:
    rows = re.findall(r"^\| ([\w.]+) \|.*\| ([0-9a-f]{64}) \|$", table.read_text(), re.M)
    return dict(rows)


def test_vendored_files_are_the_versions_recorded() -> None:
    for folder in (UI / "static", TESTS / "vendor"):
        recorded = _recorded(folder / "VENDORED.md")
        assert recorded, folder
        for name, digest in recorded.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_no_template_has_an_inline_script_style_or_handler() -> None:
    """The CSP refuses them anyway; a template that relies on one is broken."""
    for template in sorted((UI / "templates").glob("*.html")):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert "<style" not in text, template.name
        assert not re.search(r"\sstyle=", text), template.name
        assert not re.search(r"\son[a-z]+=", text), template.name
        assert "hx-on" not in text and "|safe" not in text, template.name


def test_no_asset_comes_from_elsewhere() -> None:
    for path in [*(UI / "templates").glob("*.html"), UI / "static" / "usagi.js",
                 UI / "static" / "usagi.css", UI / "static" / "print.css"]:
        assert not re.search(r"(src|href)=\"(https?:)?//", path.read_text(encoding="utf-8")), path


def test_without_a_browser_the_tests_skip_but_fail_under_ci(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from . import conftest

    monkeypatch.setattr(conftest, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        conftest.need_browser()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI: the browser tests cannot run"):
        conftest.need_browser()
