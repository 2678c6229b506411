"""``usagi invite`` and ``usagi partner …``: pairing with partners and managing them.

Each command is a thin client of ``usagi_p2p.node.operations`` (spec section
10: invitations, introductions, names; section 12: quotas).
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import click

from ...node.terminal import printable
from ..views import (
    PARTNER_HEADERS,
    QUOTA_HEADERS,
    partner_json,
    partner_row,
    quota_json,
    quota_row,
)
from .common import emit, errors, ride, run, table, with_node

if TYPE_CHECKING:
    from ...node import operations as ops
    from ...node.invitation import Invitation
    from ...node.ledger import Partner
    from ...node.node import Node

__all__ = ["invite", "partner"]


@click.command()
@click.option("--days", default=7, show_default=True, help="How long the invitation is valid.")
@click.pass_context
def invite(ctx: click.Context, days: int) -> None:
    """Print a signed invitation for a new partner to paste into 'usagi partner add'.

    Example: usagi --home ./kanto invite --days 7
    """
    from ...node import operations as ops

    async def inviting(node: Node) -> Invitation:
        return await ops.invite(node, timedelta(days=days))

    invitation = run(with_node(ctx, inviting))
    emit(ctx, {"invitation": invitation.text(), "expires": invitation.expires.isoformat()},
         lambda: click.echo(invitation.text()))


@click.group()
def partner() -> None:
    """Manage partners ("synapses"): add, list, rename, suspend, resume, remove."""


@partner.command("add")
@click.argument("invitation")
@click.option("--no-introduce", is_flag=True, help="Only store the partner; do not contact it.")
@click.pass_context
def partner_add(ctx: click.Context, invitation: str, no_introduce: bool) -> None:
    """Add a partner from its invitation: introduce this node to it, and store it once
    it has accepted (if it cannot be reached, nothing is stored: run this again).
    A name another partner already has is stored as "Name (2)".

    Example: usagi --home ./osaka partner add usagi1:oWNzaWdYQ…
    """
    from ...node import operations as ops

    async def adding(node: Node) -> Partner:
        return await ops.add_partner(node, invitation, introduce=not no_introduce)

    p = run(with_node(ctx, adding))
    emit(ctx, {"did": p.did, "name": p.name, "endpoint": p.endpoint},
         lambda: click.echo(f"Partner added: {printable(p.name)} ({printable(p.did)}) at "
                            f"{printable(p.endpoint)}"))


@partner.command("list")
@click.pass_context
def partner_list(ctx: click.Context) -> None:
    """List partners and their state.

    Example: usagi partner list
    """
    rode = ride(ctx, "GET", "/api/v1/partners")
    if rode is not None:
        # Read as the ledger's Partner, which views.py prints.
        rows = [cast("Partner", SimpleNamespace(**p)) for p in rode["partners"]]
    else:
        from ...node import operations as ops

        rows = run(with_node(ctx, ops.partners))
    emit(ctx, [partner_json(p) for p in rows],
         lambda: table(PARTNER_HEADERS, [partner_row(p) for p in rows]))


def _partner_state(name: str, status: ops.PartnerStatus, help_text: str) -> None:
    @partner.command(name, help=f"{help_text}\n\nExample: usagi partner {name} Osaka")
    @click.argument("who")
    @click.pass_context
    def command(ctx: click.Context, who: str) -> None:
        from ...node import operations as ops

        async def setting(node: Node) -> ops.PartnerChange:
            return await ops.set_partner_status(node, who, status)

        change = run(with_node(ctx, setting))
        emit(ctx, {"did": change.before.did, "status": status},
             lambda: click.echo(f"{printable(change.before.name)}: {status}"))


_partner_state("suspend", "suspended", "Stop exchanging with a partner for now (refused both ways).")
_partner_state("resume", "active", "Exchange with a suspended partner again.")
_partner_state("remove", "removed", "Remove a partner: its notices and block requests are refused.")


@partner.command("rename")
@click.argument("who")
@click.argument("name")
@click.pass_context
def partner_rename(ctx: click.Context, who: str, name: str) -> None:
    """Give a partner another local name.

    Example: usagi partner rename did:key:z6Mk… "Osaka Precision (plant 2)"
    """
    from ...node import operations as ops
    from ...node.errors import PartnerError
    from ...node.invitation import name_problem

    # Before the passphrase is asked for (the operation checks it again).
    with errors():  # the operation's own error, before the passphrase is asked for
        name_problem(name, PartnerError)

    async def renaming(node: Node) -> ops.PartnerChange:
        return await ops.rename_partner(node, who, name)

    change = run(with_node(ctx, renaming))
    emit(ctx, {"did": change.before.did, "name": name},
         lambda: click.echo(f"{printable(change.before.name)} -> {printable(name)}"))


@partner.command("quota")
@click.argument("who")
@click.option("--docs", type=click.IntRange(0), default=None,
              help="Documents this partner may store here per period.")
@click.option("--bytes", "size", default=None,
              help="Bytes per period (ciphertext block + signed document), e.g. 500MiB, 2GiB.")
@click.option("--default", "use_default", is_flag=True,
              help="Drop this partner's own quota: the node's defaults apply again.")
@click.pass_context
def partner_quota(ctx: click.Context, who: str, docs: int | None, size: str | None,
                  use_default: bool) -> None:
    """Show or set what a partner may store on this node per period (a UTC day by default).

    Past its quota a partner's documents are refused with quota_exceeded (HTTP
    429, Retry-After: the end of the period); its node retries then, and they
    are delivered. A running 'usagi serve' applies a change at once.

    Example: usagi partner quota Osaka --docs 20000 --bytes 500MiB
    """
    from ...node import operations as ops
    from ...node.quota import parse_size

    try:
        size_bytes = parse_size(size) if size is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bytes") from None
    if use_default and (docs is not None or size_bytes is not None):
        raise click.UsageError("--default drops the partner's own quota; give it alone")

    async def setting(node: Node) -> ops.QuotaUsage:
        return await ops.set_quota(node, who, docs=docs, size=size_bytes, default=use_default)

    usage = run(with_node(ctx, setting))
    emit(ctx, quota_json(usage), lambda: table(QUOTA_HEADERS, [quota_row(usage)]))
