"""Docs that must match the code: every error code is in docs/spec.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import ipfs.blockstore
import ipfs.car
import ipfs.gateway
import kernel.errors
import usagi_p2p.archive.push
import usagi_p2p.archive.structures
import usagi_p2p.node.errors
import usagi_p2p.node.plugin_host
from kernel.errors import LimitExceededError, UsagiError

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec.md"


def all_codes() -> set[str]:
    codes = set()
    for module in (kernel.errors, ipfs.blockstore, ipfs.car, ipfs.gateway, usagi_p2p.node.errors,
                   usagi_p2p.archive.structures, usagi_p2p.archive.push, usagi_p2p.node.plugin_host):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, UsagiError):
                codes.add(cls.code)
    return codes


def test_every_error_code_is_in_the_spec() -> None:
    text = SPEC.read_text()
    missing = sorted(c for c in all_codes() if f"`{c}`" not in text)
    assert not missing, f"error codes missing from docs/spec.md: {missing}"


def _every_error_class() -> set[type[UsagiError]]:
    """Every UsagiError subclass of every module of the four packages, imported."""
    import importlib
    import pkgutil

    import ipfs
    import kernel
    import plugins
    import usagi_p2p

    for package in (kernel, ipfs, plugins, usagi_p2p):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found: set[type[UsagiError]] = set()
    todo = [UsagiError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


#: Codes answered as literals rather than raised: the gateway's negotiation, the body cap.
_LITERAL_CODE = re.compile(r'_error\(\d+, "([a-z_]+)"|\{"error": "([a-z_]+)"')


def test_every_error_code_in_the_code_is_in_section_14() -> None:
    """Not only the modules listed above: every class of every module, and every code
    the HTTP handlers answer with as a literal, is named in spec section 14."""
    codes = {cls.code for cls in _every_error_class()
             if cls.__module__.split(".")[0] in ("kernel", "ipfs", "plugins", "usagi_p2p")}
    for package in ("kernel", "ipfs", "plugins", "usagi_p2p"):
        for path in (ROOT / package).rglob("*.py"):
            for match in _LITERAL_CODE.finditer(path.read_text(encoding="utf-8")):
                codes.add(match.group(1) or match.group(2))
    table = _section("14.")
    missing = sorted(c for c in codes if f"`{c}`" not in table)
    assert not missing, f"error codes missing from docs/spec.md section 14: {missing}"


# -- cross-references: every §N (and, in the spec, "section N") resolves ------------

_HEADING = re.compile(r"^#+\s+(\d+[a-z]?(?:\.\d+)*)\.?\s", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_SECTION_SIGN = re.compile(r"§(\d+[a-z]?(?:\.\d+)*)((?:\s*[–-]\s*§?\d+[a-z]?(?:\.\d+)*)?)")
_SECTION_WORD = re.compile(r"\bsections? (\d+[a-z]?(?:\.\d+)*)"
                           r"((?:(?:–|, | and )\d+[a-z]?(?:\.\d+)*)*)")
#: What a reference points into: the last of these before it, in its clause.
_MARKER = re.compile(r"(?:docs/)?\b([\w-]+)\.md\b|\b(RFC \d+)|\b(spec)\b|(SPEC-NOTES)")
DOCS = ROOT / "docs"


def _sections(path: Path) -> set[str]:
    return set(_HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))))


def _target(text: str, at: int, here: Path) -> Path | None:
    """The document a reference at ``at`` points into; None for an outside one (an RFC)."""
    clause = max(text.rfind(". ", 0, at), text.rfind("; ", 0, at), text.rfind("\n\n", 0, at))
    markers = list(_MARKER.finditer(text, clause + 1, at))
    if not markers:
        return here
    name, rfc, spec, notes = markers[-1].groups()
    if rfc or notes:
        return None
    if spec:
        return SPEC
    path = DOCS / f"{name}.md"
    return path if path.exists() else None


def _references(path: Path) -> list[tuple[str, Path | None, str]]:
    text = _FENCE.sub(lambda m: "\n" * m.group().count("\n"), path.read_text(encoding="utf-8"))
    found = []
    patterns = [_SECTION_SIGN] + ([_SECTION_WORD] if path == SPEC else [])
    for pattern in patterns:
        for match in pattern.finditer(text):
            # The spec says "section N" of itself only; other documents get "§".
            target = SPEC if pattern is _SECTION_WORD else _target(text, match.start(), path)
            numbers = [match.group(1), *re.findall(r"\d+[a-z]?(?:\.\d+)*", match.group(2))]
            found += [(number, target, match.group()) for number in numbers]
    return found


def test_every_cross_reference_resolves() -> None:
    """A reader following "§10b", "docs/car.md §1.4" or "section 13.1" finds the section."""
    broken = []
    for path in sorted(DOCS.glob("*.md")):
        for number, target, where in _references(path):
            if target is not None and number not in _sections(target):
                broken.append(f"{path.name}: {where!r} -> {target.name} has no section {number}")
    assert not broken, "\n".join(broken)


def test_every_document_the_spec_names_exists() -> None:
    for path in (SPEC, DOCS / "archive.md", DOCS / "car.md", DOCS / "plugins.md"):
        for name in re.findall(r"\bdocs/([\w-]+\.md)", path.read_text(encoding="utf-8")):
            assert (DOCS / name).exists(), f"{path.name} names docs/{name}, which does not exist"


def test_the_reference_checker_sees_references() -> None:
    """Guard the guard: the checker finds the spec's own and other documents' references."""
    refs = {(n, t.name if t else None) for n, t, _ in _references(SPEC)}
    assert {("13.1", "spec.md"), ("2", "archive.md"), ("1.4", "car.md"), ("7", "plugins.md"),
            ("3.8.1", None)} <= refs


def test_every_signature_label_is_in_the_spec() -> None:
    from kernel._identity import LABELS

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
    from kernel import _envelope as envelope
    from kernel import _messages as messages
    from kernel import _rotation as rotation
    from kernel import _signed as signed
    from kernel.dagcbor import Limits
    from usagi_p2p.archive import structures as archive_format
    from usagi_p2p.node import invitation, receiving

    car = CARParser()
    code = {
        "envelope": envelope.ENVELOPE_LIMITS,
        "signed wrapper": signed.SIGNED_LIMITS,
        "document body": envelope.DOCUMENT_LIMITS,
        "notice body": messages.MESSAGE_LIMITS,
        "ack body": messages.MESSAGE_LIMITS,
        "invitation or introduction body": invitation.LIMITS,
        "rotation body": rotation.LIMITS,
        "notice batch and its answer": receiving.BATCH_LIMITS,
        "archive index": archive_format._INDEX_LIMITS,
        "archive manifest page body, ack bundle and partner list": archive_format.PAGE_LIMITS,
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


def test_every_test_the_docs_cite_exists() -> None:
    """A claim in the docs names the test that shows it (``tests/x.py::test_y``, or
    ``::test_y`` for the file named last): each must exist, so a renamed or deleted
    test cannot leave a claim without its proof."""
    cite = re.compile(r"(tests/[\w/]+\.py)?::(test_\w+)(?![\w*])")
    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        current: str | None = None
        for match in cite.finditer(doc.read_text()):
            current = match.group(1) or current
            if current is None:
                missing.append(f"{doc.name}: ::{match.group(2)} with no file before it")
                continue
            path = ROOT / current
            if not path.exists() or not re.search(
                    rf"^(async )?def {match.group(2)}\b", path.read_text(), re.M):
                missing.append(f"{doc.name}: {current}::{match.group(2)}")
    assert not missing, "docs cite tests that do not exist:\n" + "\n".join(missing)


def test_the_spec_error_table_is_the_code_table() -> None:
    """Each row of spec section 14 with one HTTP status and one exit code: every
    code in it maps to exactly those (usagi_p2p/node/errors.py, the one table)."""
    text = SPEC.read_text()
    table = text[text.index("## 14. Error codes"):text.index("## 15.")]
    checked, wrong = 0, []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"\d{3}", cells[-2]) \
                or not re.fullmatch(r"\d+", cells[-1]):
            continue
        for code in re.findall(r"`([a-z_0-9]+)`", cells[0]):
            checked += 1
            got = (usagi_p2p.node.errors.http_status(code), usagi_p2p.node.errors.exit_code(code))
            if got != (int(cells[-2]), int(cells[-1])):
                wrong.append(f"{code}: spec {cells[-2]}/{cells[-1]}, code {got[0]}/{got[1]}")
    assert checked >= 40, "the section 14 table was not found or not read"
    assert not wrong, "\n".join(wrong)
