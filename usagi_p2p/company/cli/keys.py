"""``usagi key show|rotate|announce``: this node's key and its rotations (spec section 10.3)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import click

from ...node.terminal import printable
from ..views import key_json
from .common import emit, home_of, passphrase, run, with_node

if TYPE_CHECKING:
    from ...node import operations as ops
    from ...node.node import Node

__all__ = ["key"]


@click.group()
def key() -> None:
    """This node's key: show it, rotate it (partners follow, with an overlap)."""


@key.command("show")
@click.pass_context
def key_show(ctx: click.Context) -> None:
    """The current DID and the retired keys kept to open old documents.

    Example: usagi key show
    """
    from ...node import operations as ops

    info = run(with_node(ctx, ops.key_info))

    def human() -> None:
        click.echo(f"current  {info.did}")
        for did in info.retired:
            click.echo(f"retired  {printable(did)}")

    emit(ctx, key_json(info), human)


@key.command("rotate")
@click.option("--overlap-days", default=14.0, show_default=True,
              help="How long partners still accept the old key.")
@click.pass_context
def key_rotate(ctx: click.Context, overlap_days: float) -> None:
    """Move to a new key: the old key signs the move, the new key confirms it, every
    active partner is told. Both keys work during the overlap; the old one is refused
    after it, but documents sealed to it keep opening here.

    Example: usagi --home ./kanto key rotate --overlap-days 14
    """
    from ...node import operations as ops

    secret = passphrase(home_of(ctx))

    async def rotate(node: Node) -> ops.KeyRotation:
        return await ops.rotate_key(node, secret, timedelta(days=overlap_days))

    done = run(with_node(ctx, rotate))

    def human() -> None:
        click.echo(f"rotated {done.old}\n     -> {done.new}")
        for name, result in done.partners.items():
            # The partner's name and its answer (an HTTP error body) are its text.
            click.echo(f"  {printable(name)}: {printable(result)}")

    emit(ctx, {"old": done.old, "new": done.new, "partners": done.partners}, human)
    if any(v != "ok" for v in done.partners.values()):
        click.echo("some partners were not told; run 'usagi key announce' when they are back",
                   err=True)


@key.command("announce")
@click.pass_context
def key_announce(ctx: click.Context) -> None:
    """Tell partners again about this node's latest rotation.

    Example: usagi key announce   (after a partner was unreachable during 'key rotate')
    """
    from ...node import operations as ops

    told = run(with_node(ctx, ops.announce_key))

    def human() -> None:
        for name, result in told.items():
            click.echo(f"{printable(name)}: {printable(result)}")

    emit(ctx, told, human)
