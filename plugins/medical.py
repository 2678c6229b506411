"""The medical plugin: lot and serial traceability, expiry, GTIN, and the approval route.

Implements docs/plugins.md ("medical" and "The approval route").

Extraction reads GS1 element strings as printed under a barcode
(``(01)04912345678904(17)270331(10)AB1234(21)SN0001``) and labelled text
(``GTIN 4912345678904 ロット AB1234 有効期限 2027/03/31``), giving ``gtin``
(14 digits), ``lot``, ``serial`` and ``expiry``. Validation warns on a GTIN
whose GS1 check digit is wrong, on goods that expire before delivery and on
lines of this plugin's kinds that carry neither lot nor serial.

The approval route. A ``medical.order`` is final only when the approvers its
company requires have signed it. ``ext.medical.route`` lists the required
roles; ``ext.medical.approvals`` holds one entry per approval::

    {"by": did:key of the approver (a user key of the node),
     "role": the role approved as,
     "sig": Ed25519 over "usagi-p2p/v1/approval" || 0x00 || approval_message(doc)}

:func:`approval_message` is the document's canonical DAG-CBOR *without* the
approvals (see its docstring for the exact rule), so approvals can be added in
any order and each one covers every other field. The role claimed in an entry
is bound by the company's own signature over the whole document (the
envelope's), the approver's signature proves the person saw exactly this
document. A missing role, a signature that does not verify (forged, or made
over another document) and one approver filling two roles are errors on this
kind: the plugin marks approvals required on its own kind.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final

from kernel import Identity, dagcbor, party
from kernel.errors import UsagiError
from kernel.plugin import Finding, ext_of, required_findings

from ._text import doc_date, find_date, line_ext, normalize, parse_iso_date, utc_offset

__all__ = ["Medical", "plugin", "gtin_is_valid", "gs1_check_digit", "approval_message",
           "sign_approval", "with_approval", "APPROVAL_LABEL"]

#: The key of ``kernel._identity.LABELS`` approvals are signed under.
APPROVAL_LABEL: Final = "approval"
APPROVAL_KINDS: Final = frozenset({"medical.order"})

_GS1_RE: Final = re.compile(r"\((\d{2,4})\)\s*([!-'*-~]+?)(?=\s*\(\d{2,4}\)|\s|$)")
_GTIN_RE: Final = re.compile(r"(?:GTIN|JAN|EAN|UPC)(?:コード|code)?\s*[:#]?\s*"
                             r"(\d{14}|\d{13}|\d{12}|\d{8})(?!\d)",
                             re.I)
_LOT_RE: Final = re.compile(r"(?:ロット(?:番号|No\.?)?|\blot(?:\s*no\.?)?)\s*[:#]?\s*"
                            r"([A-Za-z0-9][A-Za-z0-9-]{0,19})",
                            re.I)
_SERIAL_RE: Final = re.compile(r"(?:シリアル(?:番号|No\.?)?|製造番号|\bS/N|\bserial(?:\s*no\.?)?|\bSN)"
                               r"\s*[:#]?\s*"
                               r"([A-Za-z0-9][A-Za-z0-9-]{0,19})", re.I)
_EXPIRY: Final = r"有効期限|使用期限|\bEXP\.?|\bexpiry(?: date)?|\bexpires?|use by"
_EXPIRY_MONTH_RE: Final = re.compile(rf"(?:{_EXPIRY})\s*[:=]?\s*"
                                     rf"(\d{{4}})\s*[-/.年]\s*(\d{{1,2}})\s*月?(?!\s*[-/.\d])",
                                     re.I)


def gs1_check_digit(body: str) -> int:
    """The GS1 mod-10 check digit for the digits before it (weights 3,1,3… from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def gtin_is_valid(code: Any) -> bool:
    """True for a GTIN-8/12/13/14 whose last digit is its GS1 check digit."""
    if type(code) is not str or not code.isascii() or not code.isdigit():
        return False
    if len(code) not in (8, 12, 13, 14):
        return False
    return gs1_check_digit(code[:-1]) == int(code[-1])


def _month_end(year: int, month: int) -> str | None:
    if not 1 <= month <= 12:
        return None
    return date(year, month, calendar.monthrange(year, month)[1]).isoformat()


def _gs1_date(text: str) -> str | None:
    """A GS1 YYMMDD date; day 00 means the last day of the month (GS1 General Specifications 3.4)."""
    if not re.fullmatch(r"\d{6}", text):
        return None
    year, month, day = 2000 + int(text[:2]), int(text[2:4]), int(text[4:])
    if day == 0:
        return _month_end(year, month)
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


# -- the approval route -----------------------------------------------------


def approval_message(document: Mapping[str, Any]) -> bytes:
    """The bytes every approval of ``document`` signs.

    The document's canonical DAG-CBOR after removing ``ext.medical.approvals``;
    then an ``ext.medical`` left empty is removed, and an ``ext`` left empty
    too, so that approving a document that had no medical fields signs the
    same bytes as the document as it was drafted.
    """
    doc = dict(document)
    ext = doc.get("ext")
    if type(ext) is dict and type(ext.get("medical")) is dict and "approvals" in ext["medical"]:
        medical = {k: v for k, v in ext["medical"].items() if k != "approvals"}
        ext = {k: v for k, v in ext.items() if k != "medical"}
        if medical:
            ext["medical"] = medical
        if ext:
            doc["ext"] = ext
        else:
            del doc["ext"]
    return dagcbor.encode(doc)


def sign_approval(approver: Identity, document: Mapping[str, Any], role: str) -> dict[str, Any]:
    """One approval entry by ``approver`` as ``role`` over ``document``."""
    signature = approver.sign(APPROVAL_LABEL, approval_message(document))
    return {"by": approver.did, "role": role, "sig": signature}


def with_approval(document: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` with ``entry`` appended to ``ext.medical.approvals``."""
    doc = dict(document)
    ext = dict(doc.get("ext") or {})
    medical = dict(ext.get("medical") or {})
    medical["approvals"] = [*medical.get("approvals", []), dict(entry)]
    ext["medical"] = medical
    doc["ext"] = ext
    return doc


class Medical:
    """Medical devices and pharmaceuticals: traceability and approvals."""

    name = "medical"
    version = "1.0"
    namespace = "medical"
    kinds: Mapping[str, tuple[str, ...]] = {
        "medical.order": ("route", "approvals"),
        "medical.delivery_note": (),
    }
    line_fields: Mapping[str, str] = {
        "medical.gtin": "GTIN-14 (GS1 check digit validated); GTIN-8/12/13 are zero-padded",
        "medical.lot": "lot (batch) number, GS1 AI (10)",
        "medical.serial": "serial number, GS1 AI (21)",
        "medical.expiry": "expiry date YYYY-MM-DD, GS1 AI (17)",
    }

    def __init__(self, *, required_roles: Sequence[str] = (), utc_offset_hours: int = 9) -> None:
        # Roles this company demands on every route, whatever a document says.
        if not isinstance(required_roles, list | tuple) or not all(
                type(r) is str and r for r in required_roles):
            raise ValueError(f"required_roles must be a list of role names, not {required_roles!r}")
        self.required_roles = tuple(required_roles)
        self.utc_offset_hours = utc_offset(utc_offset_hours)

    def extract(self, line_text: str) -> dict[str, str]:
        text = normalize(line_text)
        out: dict[str, str] = {}
        for ai, value in _GS1_RE.findall(text):
            if ai == "01" and len(value) == 14 and value.isdigit():
                out["gtin"] = value
            elif ai == "17" and _gs1_date(value):
                out["expiry"] = _gs1_date(value) or ""
            elif ai == "10":
                out["lot"] = value
            elif ai == "21":
                out["serial"] = value
        if "gtin" not in out:
            gtin = _GTIN_RE.search(text)
            if gtin:
                out["gtin"] = gtin.group(1).zfill(14)
        if "lot" not in out:
            lot = _LOT_RE.search(text)
            if lot:
                out["lot"] = lot.group(1)
        if "serial" not in out:
            serial = _SERIAL_RE.search(text)
            if serial:
                out["serial"] = serial.group(1)
        if "expiry" not in out:
            found = find_date(_EXPIRY, text)
            month = None if found else _EXPIRY_MONTH_RE.search(text)
            if found:
                out["expiry"] = found
            elif month:
                end = _month_end(int(month.group(1)), int(month.group(2)))
                if end:
                    out["expiry"] = end
        return out

    def approve(self, document: Mapping[str, Any], approver: Identity, role: str
                ) -> dict[str, Any]:
        """The optional hook ``approve`` (docs/plugins.md, section 7): ``document`` with
        ``approver``'s approval as ``role`` appended to ``ext.medical.approvals``."""
        return with_approval(document, sign_approval(approver, document, role))

    def validate(self, document: Mapping[str, Any]) -> list[Finding]:
        findings = required_findings(self, document)
        kind = document.get("kind")
        own_kind = kind in self.kinds
        delivery = doc_date(document.get("due") or (document.get("issued_at")
                            if kind in ("delivery_note", "medical.delivery_note") else None),
                            self.utc_offset_hours)
        lines = document.get("lines")
        for i, line in enumerate(lines if type(lines) is list else []):
            fields = line_ext(line, self.namespace)
            path = f"lines[{i}].ext.medical"
            if "gtin" in fields and not gtin_is_valid(fields["gtin"]):
                findings.append(Finding(self.name, "warning", f"{path}.gtin", "gtin_check_digit",
                                        f"{fields['gtin']!r} is not a GTIN with a valid GS1 "
                                        "check digit"))
            if "expiry" in fields:
                expiry = parse_iso_date(fields["expiry"])
                if expiry is None:
                    findings.append(Finding(self.name, "warning", f"{path}.expiry", "bad_date",
                                            f"expiry is a date YYYY-MM-DD: {fields['expiry']!r}"))
                elif delivery is not None and expiry < delivery:
                    findings.append(Finding(self.name, "warning", f"{path}.expiry",
                                            "expired_on_delivery",
                                            f"expires {expiry}, before delivery on {delivery}"))
            if own_kind and not (fields.get("lot") or fields.get("serial")):
                findings.append(Finding(self.name, "warning", path, "untraceable",
                                        "a medical line should carry a lot or a serial number"))
        doc_fields = ext_of(dict(document), self.namespace)
        if kind in APPROVAL_KINDS or "approvals" in doc_fields:
            findings += self._approvals(document, doc_fields, strict=kind in APPROVAL_KINDS)
        return findings

    def _approvals(self, document: Mapping[str, Any], fields: Mapping[str, Any],
                   strict: bool) -> list[Finding]:
        # Off this plugin's kinds approvals are a courtesy: checked, but only warned about.
        level: Any = "error" if strict else "warning"
        out: list[Finding] = []
        route = fields.get("route", [])
        if type(route) is not list or not all(type(r) is str and r for r in route):
            out.append(Finding(self.name, level, "ext.medical.route", "bad_route",
                               "the route is a list of role names"))
            route = []
        for role in self.required_roles:
            if role not in route:
                out.append(Finding(self.name, level, "ext.medical.route", "route_incomplete",
                                   f"this company requires the role {role!r} on every route"))
        approvals = fields.get("approvals", [])
        if type(approvals) is not list:
            return [*out, Finding(self.name, level, "ext.medical.approvals", "bad_approval",
                                  "approvals are a list of {by, role, sig}")]
        message = approval_message(document)
        approved: dict[str, str] = {}
        for i, entry in enumerate(approvals):
            path = f"ext.medical.approvals[{i}]"
            if (type(entry) is not dict or set(entry) != {"by", "role", "sig"}
                    or type(entry["role"]) is not str):
                out.append(Finding(self.name, level, path, "bad_approval",
                                   "an approval is exactly {by, role, sig}"))
                continue
            try:
                party(entry["by"]).verify(APPROVAL_LABEL, message, entry["sig"])
            except UsagiError as exc:
                out.append(Finding(self.name, level, path, "invalid_approval",
                                   f"the {entry['role']!r} approval does not verify: {exc}"))
                continue
            if entry["role"] in approved and approved[entry["role"]] != entry["by"]:
                continue  # a second approver for a role: harmless, the first counts
            approved[entry["role"]] = entry["by"]
        for role in route:
            if role not in approved:
                out.append(Finding(self.name, level, "ext.medical.approvals", "approval_missing",
                                   f"no valid approval for the role {role!r}"))
        by_person: dict[str, list[str]] = {}
        for role in route:
            if role in approved:
                by_person.setdefault(approved[role], []).append(role)
        for did, roles in by_person.items():
            if len(roles) > 1:
                out.append(Finding(self.name, level, "ext.medical.approvals", "same_approver",
                                   f"{did} approved as {', '.join(roles)}: each role of a route "
                                   "needs its own person"))
        return out


#: The entry point ``medical = "plugins.medical:plugin"`` loads this instance.
plugin = Medical()
