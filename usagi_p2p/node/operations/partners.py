"""A company's partners: invitations, names, states and quotas (docs/spec.md 10, 12).

Part of ``usagi_p2p.node.operations`` (see there).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from kernel import canonical

from ..errors import ConfigError, NoSuchPartnerError, PartnerError
from ..home import Config
from ..invitation import Invitation, name_problem
from ..ledger import Partner
from ..node import Node

__all__ = ["PartnerChange", "PartnerStatus", "QuotaUsage", "invite", "add_partner", "partners",
           "partner",
           "rename_partner", "set_partner_status", "quota", "set_quota", "quota_usage"]

#: What a partner's state may be set to by the company (``usagi partner suspend`` …).
PartnerStatus = Literal["active", "suspended", "removed"]


@dataclass(frozen=True, slots=True)
class PartnerChange:
    """A partner before and after a change the company made."""

    before: Partner
    after: Partner


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """What one partner stored here in the current quota period, against its quota."""

    partner: str
    did: str
    docs: int
    docs_quota: int
    bytes: int
    bytes_quota: int
    #: Whether the partner has a quota of its own (else the node's defaults apply).
    own: bool
    #: When the period ends (seconds since the epoch).
    resets_at: float


# -- partners -----------------------------------------------------------------


async def invite(node: Node, valid_for: timedelta = timedelta(days=7)) -> Invitation:
    """A signed invitation for a new partner (docs/spec.md section 10)."""
    return await node.invite(valid_for)


async def add_partner(node: Node, invitation: str, *, introduce: bool = True) -> Partner:
    """Add the partner an invitation names, once it accepted our introduction."""
    return await node.add_partner(invitation, introduce=introduce)


async def partners(node: Node) -> list[Partner]:
    """Every partner of this node, with its state."""
    return await node.ledger.partners()


async def partner(node: Node, who: str) -> Partner:
    """The partner ``who`` names (DID, name or unique name prefix, as everywhere);
    :class:`NoSuchPartnerError` (``not_found``) when none does: for a face that
    asks for the partner itself, such as ``GET /api/v1/partners/{partner}``."""
    found = await node.ledger.find_partner(who)
    if found is None:
        raise NoSuchPartnerError(f"no partner matches {who[:200]!r}")
    return found


async def set_partner_status(node: Node, who: str, status: PartnerStatus) -> PartnerChange:
    """Suspend (``suspended``), resume (``active``) or remove (``removed``) a partner."""
    if status not in ("active", "suspended", "removed"):
        raise PartnerError(f"a partner is set active, suspended or removed, not {status!r}")
    before = await node.resolve_partner(who)
    await node.ledger.set_partner(before.did, status=status)
    return PartnerChange(before, dataclasses.replace(before, status=status))


async def rename_partner(node: Node, who: str, name: str) -> PartnerChange:
    """Give a partner another local name (unique on this node; spec section 10.1)."""
    name_problem(name, PartnerError)
    before = await node.resolve_partner(who)
    # The search index keeps the name a document was recorded under; documents
    # still queued for it (node/indexing.py) are indexed under that name first.
    await node.index_backlog()
    await node.ledger.set_partner(before.did, name=name)
    return PartnerChange(before, dataclasses.replace(before, name=name))


async def quota_usage(node: Node, partners: list[Partner], aliases: dict[str, str]
                      ) -> tuple[QuotaUsage, ...]:
    """What each of ``partners`` stored here this period, against its quota."""
    rows = await node.quotas.report(partners, node.clock(), aliases)
    return tuple(QuotaUsage(**row) for row in rows)


async def quota(node: Node, who: str) -> QuotaUsage:
    """What partner ``who`` stored here this period, against its quota."""
    return await set_quota(node, who)


async def set_quota(node: Node, who: str, *, docs: int | None = None, size: int | None = None,
                    default: bool = False) -> QuotaUsage:
    """Set partner ``who``'s own quota of documents and/or bytes per period, or drop
    it (``default``: the node's defaults apply again); with neither, change nothing.
    A running ``usagi serve`` applies a change at once (docs/spec.md section 12)."""
    if default and (docs is not None or size is not None):
        raise ConfigError("dropping a partner's own quota takes no new values")
    partner = await node.resolve_partner(who)
    aliases = await node.ledger.aliases()
    did = await node.canonical(partner.did)
    if default or docs is not None or size is not None:
        def change(config: Config) -> None:
            # A quota set for one of the partner's earlier keys is replaced, not kept beside.
            own = {}
            for key in [k for k in config.partner_quotas if k == did or
                        canonical(k, aliases) == did]:
                own.update(config.partner_quotas.pop(key))
            if not default:
                own.update({k: v for k, v in (("docs", docs), ("bytes", size)) if v is not None})
                config.partner_quotas[did] = own
            config.check_quotas()

        # Under the config lock (other processes write it too); not on the event loop.
        await asyncio.to_thread(node.home.update_config, change)
    current = await node.ledger.partner(did)
    return (await quota_usage(node, [current or partner], aliases))[0]


