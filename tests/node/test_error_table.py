"""The one error table (usagi_p2p/node/errors.py) is docs/spec.md §14, and every code has a row.

The table is data checked both ways: each row of §14 is parsed (a cell may
name several codes, statuses and exit codes, separated by ``/``) and compared
with the table; every ``code`` of every UsagiError class of the four packages,
and every code the source writes as a literal, is looked up, strictly: a code
without a row raises instead of defaulting.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from kernel.errors import UsagiError
from usagi_p2p.node.errors import TABLE, TEMPORARY, UnknownCodeError, exit_code, http_status

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kernel", "ipfs", "plugins", "usagi_p2p")


def spec_rows() -> dict[str, tuple[int, int | None]]:
    """§14 as code -> (HTTP status, exit code; None where the spec says "—")."""
    text = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    section = text[text.index("## 14. Error codes"):text.index("## 15.")]
    rows: dict[str, tuple[int, int | None]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        groups = [re.findall(r"`([a-z_0-9]+)`", g) for g in cells[0].split(" / ")]
        statuses = [int(s) for s in cells[2].split("/")]
        exits: list[int | None] = (
            [None] if cells[3] == "—" else [int(e) for e in cells[3].split("/")])

        def spread(values: list[int | None], line: str = line) -> list[int | None]:
            # One value for the whole row, or one per group of codes.
            assert len(values) in (1, len(groups)), f"§14 row does not line up: {line}"
            return values * len(groups) if len(values) == 1 else values

        for codes, status, code_exit in zip(groups, spread(list(statuses)), spread(exits),
                                            strict=True):
            assert codes, f"§14 row with an empty group of codes: {line}"
            for code in codes:
                assert code not in rows, f"{code} is in two rows of §14"
                assert status is not None
                rows[code] = (status, code_exit)
    assert len(rows) >= 60, "the §14 table was not found or not read"
    return rows


def every_error_class() -> set[type[UsagiError]]:
    """Every UsagiError subclass of every module of the four packages, imported."""
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, name + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found: set[type[UsagiError]] = set()
    todo = [UsagiError]
    while todo:
        cls = todo.pop()
        if cls.__module__.split(".")[0] in PACKAGES:
            found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


#: Codes written as literals: class attributes (also of a class no walk reaches),
#: and the answers the HTTP handlers build by hand, with their status.
_CLASS_CODE = re.compile(r'^\s+code = "([a-z_0-9]+)"', re.MULTILINE)
_ANSWER = re.compile(r'_error\((\d{3}), "([a-z_0-9]+)"|\{"error": "([a-z_0-9]+)"')


def literal_codes() -> tuple[set[str], dict[str, set[int]]]:
    raised: set[str] = set()
    answered: dict[str, set[int]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            raised.update(_CLASS_CODE.findall(text))
            for status, code, bare in _ANSWER.findall(text):
                answered.setdefault(code or bare, set()).update([int(status)] if status else [])
    return raised, answered


def test_every_row_of_section_14_is_the_table_and_back() -> None:
    spec = spec_rows()
    wrong = [f"{code}: spec {spec[code]}, table {row}" for code, row in TABLE.items()
             if code in spec and spec[code] != row]
    assert not wrong, "\n".join(wrong)
    assert not sorted(set(TABLE) - set(spec)), "in the table, not in §14"
    # The rows without an exit code are answers only (the gateway's negotiation):
    # nothing raises them, so nothing looks them up.
    answers_only = {code for code, (_, code_exit) in spec.items() if code_exit is None}
    assert sorted(set(spec) - set(TABLE)) == sorted(answers_only)


def test_every_code_of_every_error_class_has_a_row() -> None:
    spec = spec_rows()
    classes = every_error_class()
    assert len(classes) >= 50, "the walk found too few error classes"
    raised, _ = literal_codes()
    codes = {cls.code for cls in classes} | raised
    assert raised <= codes and len(raised) >= 50, "the literal scan found too few codes"
    missing = sorted(c for c in codes if c not in TABLE)
    assert not missing, f"codes with no row in usagi_p2p/node/errors.py: {missing}"
    assert not sorted(c for c in codes if c not in spec), "codes missing from §14"
    for code in codes:  # strict lookups: each answers without raising
        assert (http_status(code), exit_code(code)) == spec[code]


def test_codes_answered_by_hand_say_what_section_14_says() -> None:
    spec = spec_rows()
    _, answered = literal_codes()
    assert {"missing_format", "not_acceptable", "not_cached"} <= set(answered)
    for code, statuses in answered.items():
        assert code in spec, f"{code} is answered but not in §14"
        assert statuses <= {spec[code][0]}, (code, statuses, spec[code])


def test_every_reason_an_ack_may_call_temporary_has_a_row() -> None:
    assert TEMPORARY <= set(TABLE)


@pytest.mark.parametrize(("code", "status", "code_exit"), [
    # The six codes issue 15 found defaulting to 400 / 1.
    ("forbidden", 403, 77),
    ("pinned", 500, 74),
    ("car_malformed", 400, 65),
    ("car_truncated", 400, 65),
    ("car_unsupported_version", 400, 65),
    ("car_limit_exceeded", 400, 65),
])
def test_the_codes_that_once_defaulted(code: str, status: int, code_exit: int) -> None:
    assert (http_status(code), exit_code(code)) == (status, code_exit) == spec_rows()[code]


def test_an_unknown_code_raises_instead_of_defaulting() -> None:
    for lookup in (http_status, exit_code):
        with pytest.raises(UnknownCodeError, match="no_such_code"):
            lookup("no_such_code")
    with pytest.raises(LookupError):
        http_status("missing_format")  # an answer only: no exit code, so no row


def test_the_cli_says_a_code_without_a_row_is_internal_and_exits_70(
        capsys: pytest.CaptureFixture[str]) -> None:
    from kernel.errors import UsagiError
    from usagi_p2p.company.cli.common import fail

    # An instance, not a subclass: the walk over every subclass above must not see it.
    stray = UsagiError("a third party's error")
    stray.code = "stray_code_without_a_row"
    with pytest.raises(SystemExit) as exited:
        fail(stray)
    assert exited.value.code == 70
    err = capsys.readouterr().err
    assert "error [internal_error]: a third party's error" in err
    assert "Traceback" not in err
