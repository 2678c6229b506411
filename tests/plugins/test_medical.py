"""medical: GS1 strings, GTIN check digits, traceability, and the approval route."""

from __future__ import annotations

from typing import Any

import pytest

from kernel import dagcbor
from kernel._identity import LABELS, Identity
from plugins.medical import (
    Medical,
    approval_message,
    gs1_check_digit,
    gtin_is_valid,
    plugin,
    sign_approval,
    with_approval,
)

from ._support import codes, doc, line

EXTRACTION = [
    ("(01)09506000134352(17)270331(10)AB1234(21)SN0001",
     {"gtin": "09506000134352", "expiry": "2027-03-31", "lot": "AB1234", "serial": "SN0001"}),
    ("(01)09506000134352(17)270300(10)L-77",  # day 00: the end of the month
     {"gtin": "09506000134352", "expiry": "2027-03-31", "lot": "L-77"}),
    ("GTIN 4006381333931 ロット AB1234 有効期限 2027/03/31",
     {"gtin": "04006381333931", "lot": "AB1234", "expiry": "2027-03-31"}),
    ("カテーテル JAN 4987123456789 シリアル番号 X9-0001 使用期限 2026年9月",
     {"gtin": "04987123456789", "serial": "X9-0001", "expiry": "2026-09-30"}),
    ("Syringe 5ml lot L2309 EXP 2026-09 S/N 12345",
     {"lot": "L2309", "serial": "12345", "expiry": "2026-09-30"}),
    ("UPC 036000291452 expiry 2026-02-28", {"gtin": "00036000291452", "expiry": "2026-02-28"}),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract(text: str, expected: dict[str, str]) -> None:
    assert plugin.extract(text) == expected


# GS1 General Specifications' example GTINs and two well-known retail codes.
VALID = ["09506000134352", "4006381333931", "036000291452", "96385074", "04912345678904"]
INVALID = ["09506000134353", "4006381333932", "036000291453", "96385075", "4006381333931x",
           "", "123", "０９５０６０００１３４３５２"]


@pytest.mark.parametrize("code", VALID)
def test_gtin_valid(code: str) -> None:
    assert gtin_is_valid(code)


@pytest.mark.parametrize("code", INVALID)
def test_gtin_invalid(code: str) -> None:
    assert not gtin_is_valid(code)


def test_check_digit() -> None:
    assert gs1_check_digit("0950600013435") == 2
    assert gs1_check_digit("400638133393") == 1


def test_bad_gtin_warns() -> None:
    document = doc("order", [line("stent", "medical", gtin="09506000134353", lot="A1")])
    assert codes(plugin.validate(document)) == [("warning", "gtin_check_digit")]


def test_masterless_line_has_no_findings() -> None:
    assert plugin.validate(doc("order", [line("ガーゼ 10箱")])) == []


def test_expired_on_delivery_warns() -> None:
    document = doc("delivery_note", [line("stent", "medical", lot="A1", expiry="2025-03-31")])
    assert codes(plugin.validate(document)) == [("warning", "expired_on_delivery")]


def test_untraceable_line_on_own_kind_warns() -> None:
    document = doc("medical.delivery_note", [line("stent")])
    assert codes(plugin.validate(document)) == [("warning", "untraceable")]


# -- the approval route ----------------------------------------------------------

SUZUKI = Identity(bytes([7]) * 32)   # pharmacist
SATO = Identity(bytes([8]) * 32)     # purchasing manager
MALLORY = Identity(bytes([9]) * 32)


def order(route: list[str] | None = None) -> dict[str, Any]:
    medical: dict[str, Any] = {"route": route if route is not None else ["pharmacist", "manager"]}
    return doc("medical.order", [line("(01)09506000134352 stent 3.0x18mm", "medical",
                                      gtin="09506000134352", lot="A1")],
               ext={"medical": medical})


def approved(document: dict[str, Any], *signers: tuple[Identity, str]) -> dict[str, Any]:
    for who, role in signers:
        document = with_approval(document, sign_approval(who, document, role))
    return document


def test_fully_approved_order_is_final() -> None:
    document = approved(order(), (SUZUKI, "pharmacist"), (SATO, "manager"))
    assert plugin.validate(document) == []
    # The approved document is still a valid DAG-CBOR document (bytes signatures).
    assert dagcbor.decode(dagcbor.encode(document)) == document


def test_approval_order_does_not_matter() -> None:
    one = approved(order(), (SUZUKI, "pharmacist"), (SATO, "manager"))
    two = approved(order(), (SATO, "manager"), (SUZUKI, "pharmacist"))
    assert plugin.validate(two) == []
    assert approval_message(one) == approval_message(two) == approval_message(order())


def test_missing_role_is_an_error() -> None:
    document = approved(order(), (SUZUKI, "pharmacist"))
    assert codes(plugin.validate(document)) == [("error", "approval_missing")]


def test_no_approvals_at_all() -> None:
    assert sorted(codes(plugin.validate(order()))) == [
        ("error", "approval_missing"), ("error", "approval_missing"), ("error", "required_field")]


def test_missing_route_is_an_error() -> None:
    document = doc("medical.order", [line("stent")])
    assert ("error", "required_field") in codes(plugin.validate(document))


def test_forged_signature_is_an_error() -> None:
    document = approved(order(), (SUZUKI, "pharmacist"), (SATO, "manager"))
    forged = dict(document["ext"]["medical"]["approvals"][1])
    forged["sig"] = MALLORY.sign("approval", approval_message(document))  # claims to be SATO
    document["ext"]["medical"]["approvals"][1] = forged
    assert codes(plugin.validate(document)) == [("error", "invalid_approval"),
                                                ("error", "approval_missing")]


def test_signature_over_another_document_is_an_error() -> None:
    other = order()
    other["lines"][0]["qty"] = "10"  # the approver saw 10 ...
    sato = sign_approval(SATO, other, "manager")
    document = approved(order(), (SUZUKI, "pharmacist"))  # ... the order sent says nothing
    document = with_approval(document, sato)
    assert codes(plugin.validate(document)) == [("error", "invalid_approval"),
                                                ("error", "approval_missing")]


def test_changing_the_document_after_approval_breaks_every_approval() -> None:
    document = approved(order(), (SUZUKI, "pharmacist"), (SATO, "manager"))
    document["lines"][0]["text"] = "stent 4.0x18mm"
    assert [c for _, c in codes(plugin.validate(document))].count("invalid_approval") == 2


def test_signature_under_another_label_is_an_error() -> None:
    document = order()
    entry = {"by": SATO.did, "role": "manager",
             "sig": SATO.sign("document", approval_message(document))}
    document = with_approval(approved(document, (SUZUKI, "pharmacist")), entry)
    assert ("error", "invalid_approval") in codes(plugin.validate(document))


def test_one_person_cannot_fill_two_roles() -> None:
    document = approved(order(), (SUZUKI, "pharmacist"), (SUZUKI, "manager"))
    assert codes(plugin.validate(document)) == [("error", "same_approver")]


def test_malformed_entry_is_an_error() -> None:
    document = with_approval(order(), {"by": SUZUKI.did, "role": "pharmacist"})
    assert ("error", "bad_approval") in codes(plugin.validate(document))


def test_company_required_role_must_be_on_route() -> None:
    strict = Medical(required_roles=["pharmacist"])
    document = approved(order(["manager"]), (SATO, "manager"))
    assert codes(strict.validate(document)) == [("error", "route_incomplete")]


def test_approval_bytes() -> None:
    # What is signed, byte for byte: label || 0x00 || DAG-CBOR(doc without approvals).
    document = approved(order(), (SUZUKI, "pharmacist"))
    entry = document["ext"]["medical"]["approvals"][0]
    assert LABELS["approval"] == b"usagi-p2p/v1/approval"
    assert approval_message(document) == dagcbor.encode(order())
    SUZUKI.party.verify("approval", dagcbor.encode(order()), entry["sig"])


def test_approvals_on_kernel_kinds_only_warn() -> None:
    base = doc("order", [line("stent")], ext={"medical": {"route": ["pharmacist"]}})
    document = with_approval(base, {"by": SUZUKI.did, "role": "pharmacist", "sig": bytes(64)})
    assert codes(plugin.validate(document)) == [("warning", "invalid_approval"),
                                                ("warning", "approval_missing")]
