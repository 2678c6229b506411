"""The parties on paper: this company's profile and its partners', and what an export needs.

Part of ``usagi_p2p.node.operations`` (see there). A document may say who
its parties are on paper (``parties``, docs/spec.md §5); what it leaves out,
a UBL export takes from the node's own records: ``profile`` in config.json
for this company, ``partner_profiles`` for each partner, and otherwise the
names the node knows (its own name, the partner's). docs/formats.md,
"Parties", says which field comes from where.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kernel.cid import CID

from ..errors import NodeError
from ..home import Config, Home
from ..node import Node
from .documents import show_document, thread_documents

__all__ = ["PARTY_FIELDS", "ExportSource", "profile", "set_profile", "export_source"]

#: The fields of a party on paper, with their largest size in UTF-8 bytes (spec §5).
PARTY_FIELDS: Final[Mapping[str, int]] = {
    "name": 800, "tax_id": 800, "address": 16_000, "city": 800, "postal_code": 800,
    "country": 2, "endpoint": 800, "contact": 800}
_COUNTRY: Final = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class ExportSource:
    """What a format needs to write one document: the document as opened, its two
    parties as this node knows them (``sender`` is its ``from``), the reference
    to use when it has none (its CID), and the ``ref`` of the order it answers."""

    cid: CID
    document: dict[str, Any]
    sender: dict[str, str]
    receiver: dict[str, str]
    reference: str
    order_reference: str | None


def _checked(fields: Mapping[str, str | None]) -> dict[str, str | None]:
    problems = []
    for key, value in fields.items():
        if key not in PARTY_FIELDS:
            problems.append(f"{key}: not a party field ({', '.join(PARTY_FIELDS)})")
        elif key == "country" and value and not _COUNTRY.fullmatch(str(value)):
            problems.append("country: an ISO 3166-1 alpha-2 code such as JP")
        elif value is not None and (not isinstance(value, str)
                                    or len(value.encode("utf-8", "surrogatepass")) > PARTY_FIELDS[key]):
            problems.append(f"{key}: text of at most {PARTY_FIELDS[key]} bytes")
    if problems:
        raise NodeError("; ".join(problems))
    return dict(fields)


async def profile(node: Node, partner: str | None = None) -> dict[str, str]:
    """This company's profile, or (``partner``: a name, prefix or DID) the partner's."""
    config = node.home.load_config()
    if partner is None:
        return dict(config.profile)
    did = (await node.resolve_partner(partner)).did
    return dict(config.partner_profiles.get(did, {}))


async def set_profile(node: Node, fields: Mapping[str, str | None],
                      partner: str | None = None) -> dict[str, str]:
    """Set (a value) or clear (None, "") fields of this company's profile or a
    partner's; returns the profile as saved. Checked whole before anything is saved."""
    changes = _checked(fields)
    did = (await node.resolve_partner(partner)).did if partner is not None else None
    return _save(node.home, changes, did)


def _save(home: Home, changes: Mapping[str, str | None], did: str | None) -> dict[str, str]:
    def change(config: Config) -> dict[str, str]:
        target = config.profile if did is None else config.partner_profiles.setdefault(did, {})
        for key, value in changes.items():
            if value:
                target[key] = value
            else:
                target.pop(key, None)
        if did is not None and not target:
            config.partner_profiles.pop(did, None)
        return dict(target)

    result: dict[str, str] = home.update_config(change)
    return result


async def export_source(node: Node, cid: CID) -> ExportSource:
    """The document ``cid`` with its parties as this node knows them (docs/formats.md)."""
    view = await show_document(node, cid)
    document = view.document
    config = node.home.load_config()
    own = {"name": config.name, **config.profile}
    partner_profile = dict(config.partner_profiles.get(await node.canonical(view.partner), {}))
    if view.partner_name and "name" not in partner_profile:
        partner_profile["name"] = view.partner_name
    sender, receiver = (own, partner_profile) if view.direction == "out" else (partner_profile, own)
    order_reference = None
    if document.get("kind") != "order":
        for entry in await thread_documents(node, cid):
            if entry.cid == cid:
                break
            if entry.kind == "order" and entry.ref:
                order_reference = entry.ref
    return ExportSource(cid, document, sender, receiver, document.get("ref") or str(cid),
                        order_reference)
