"""Shared for the formats' tests: the official Peppol fixtures and their Schematron, compiled once."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kernel._support import SHARED_FIXTURES, require_fixtures

PEPPOL = SHARED_FIXTURES / "peppol"
BILLING_EXAMPLES = PEPPOL / "billing" / "rules" / "examples"
ORDERING_EXAMPLES = PEPPOL / "ordering" / "rules" / "examples"
RULES = PEPPOL / "billing" / "rules" / "sch"
TRANSPILE = SHARED_FIXTURES.parent / "tools" / "schxslt" / "transpile.xsl"

_FAILED = re.compile(r'<svrl:failed-assert\b([^>]*)>(.*?)</svrl:failed-assert>', re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')

#: (flag, rule id) of every failed assertion of one document.
Validate = Callable[[bytes], list[tuple[str, str]]]

# SchXslt 2 (../shared/tools/schxslt, "Core development") compiles all patterns
# into one mode; a rule that fires passes the pattern's id on as a *tunnel*
# parameter (next-match), so that later rules of the same pattern on the same
# node are suppressed (Schematron: one rule per node and pattern). The fallback
# template that walks into the children does not reset it, so the tunnel carries
# it down: once the root rule of a pattern fires ("/ubl:Invoice | /cn:CreditNote"),
# every rule of that pattern on every element below is "suppressed-rule" and
# never checked. Only root-context and code-list rules ran (a tampered VAT
# subtotal passed ../shared/tools/peppol_validate.py). The compiled stylesheet
# is repaired here: the children are walked with the pattern list reset.
_PATTERN = "Q{http://dmaus.name/ns/2023/schxslt}pattern"
_RESET = (f'<with-param name="{_PATTERN}" as="Q{{http://www.w3.org/2001/XMLSchema}}string*" '
          'tunnel="yes" select="()"/>')
_FALLBACK = re.compile(r'(<template match="\*" mode="[^"]+" priority="-10">)'
                       r'<apply-templates select="@\*" mode="#current"/>'
                       r'<apply-templates select="node\(\)" mode="#current"/></template>')


def repaired(xslt: str) -> str:
    """The compiled rules with the fallback walking children per pattern afresh."""
    fixed, count = _FALLBACK.subn(
        lambda m: (m.group(1) + f'<apply-templates select="@*" mode="#current">{_RESET}'
                   f'</apply-templates><apply-templates select="node()" mode="#current">'
                   f'{_RESET}</apply-templates></template>'), xslt)
    assert count >= 1, "the SchXslt fallback template changed: look at conftest.repaired again"
    return fixed


def official_examples() -> list[Path]:
    """Every official UBL example of the fixtures (empty when ../shared is absent)."""
    return sorted(PEPPOL.rglob("*.xml")) if PEPPOL.exists() else []


@pytest.fixture(scope="session")
def peppol_rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Validate]:
    """EN 16931 and Peppol BIS Billing 3.0 Schematron, compiled to XSLT once a session
    with saxonche + SchXslt 2 (as ../shared/tools/peppol_validate.py does)."""
    require_fixtures(RULES)
    require_fixtures(TRANSPILE)
    saxonche = pytest.importorskip("saxonche")
    folder = tmp_path_factory.mktemp("peppol")
    with saxonche.PySaxonProcessor(license=False) as proc:
        xslt = proc.new_xslt30_processor()
        compiled = []
        for rules in ("CEN-EN16931-UBL.sch", "PEPPOL-EN16931-UBL.sch"):
            target = folder / rules.replace(".sch", ".xsl")
            target.write_text(repaired(xslt.transform_to_string(
                source_file=str(RULES / rules), stylesheet_file=str(TRANSPILE))))
            compiled.append(xslt.compile_stylesheet(stylesheet_file=str(target)))
        count = iter(range(1 << 30))

        def validate(data: bytes) -> list[tuple[str, str]]:
            path = folder / f"doc-{next(count)}.xml"
            path.write_bytes(data)
            failed = []
            for executable in compiled:
                svrl = executable.transform_to_string(source_file=str(path))
                for attrs, _ in _FAILED.findall(svrl):
                    a = dict(_ATTR.findall(attrs))
                    failed.append((a.get("flag", "fatal"), a.get("id", "?")))
            return failed

        yield validate
