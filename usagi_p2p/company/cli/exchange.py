"""``usagi export|import|profile``: documents as UBL out and in, the parties on paper.

The mappings are ``usagi_p2p.formats`` (docs/formats.md); what they need from
the node comes from ``usagi_p2p.node.operations`` (export_source, profile).
These commands open the node themselves (a UBL file is not JSON, which the
local API's client speaks); ``usagi import --send`` sends through
``usagi send``'s path.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ...node.terminal import json_text, printable
from .common import emit, run, with_node

if TYPE_CHECKING:
    from ...node.node import Node

__all__ = ["export_command", "import_command", "profile_command", "read_input"]

#: The most bytes read from any file given to import (the formats check their own, smaller, limits).
_READ_LIMIT = 64 << 20


def read_input(path: Path) -> bytes:
    """A file's bytes ("-": standard input), refusing to read more than a bound."""
    from ...node.errors import InputTooLargeError

    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(_READ_LIMIT + 1)
        else:
            with path.open("rb") as handle:
                data = handle.read(_READ_LIMIT + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None
    if len(data) > _READ_LIMIT:
        raise InputTooLargeError(f"{path} is over {_READ_LIMIT:,} bytes")
    return data


@click.command("export")
@click.argument("cid")
@click.option("--format", "fmt", type=click.Choice(["ubl"]), default="ubl", show_default=True,
              help="ubl: UBL 2.1 as Peppol BIS 3 (Invoice, Order, OrderResponse, DespatchAdvice).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              default=None, help="Write to FILE (default: standard output).")
@click.pass_context
def export_command(ctx: click.Context, cid: str, fmt: str, output: Path | None) -> None:
    """Write one document as UBL for an accounting system or ERP.

    An invoice becomes a Peppol BIS Billing 3.0 Invoice, an order an Order,
    an order response an OrderResponse, a delivery note a DespatchAdvice.
    Party data the document lacks comes from 'usagi profile' (docs/formats.md).

    Example: usagi export bafyrei… --format ubl -o INV-1042.xml
    """
    from kernel.cid import CID

    from ...formats import Parties, export_ubl
    from ...node import operations as ops

    target = CID.parse(cid)

    async def exporting(node: Node) -> bytes:
        source = await ops.export_source(node, target)
        return export_ubl(source.document, Parties(source.sender, source.receiver),
                          reference=source.reference, order_reference=source.order_reference)

    data = run(with_node(ctx, exporting))
    if output is None or str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)
        click.echo(f"wrote {printable(output)} ({len(data):,} bytes)", err=True)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True,
                                        path_type=Path))
@click.option("--send", "send_it", is_flag=True, help="Send it (to --to, or to whoever the "
              "document --reply-to is with); without: print the body as JSON.")
@click.option("--to", default=None, help="Partner name, name prefix or DID.")
@click.option("--reply-to", default=None, help="CID of the document this answers.")
@click.option("--user", default=None, help="Which employee acts.")
@click.pass_context
def import_command(ctx: click.Context, file: Path, send_it: bool, to: str | None,
                   reply_to: str | None, user: str | None) -> None:
    """Read a UBL Invoice, CreditNote, Order, OrderResponse or DespatchAdvice.

    Prints the document body it makes (kind, lines, totals, parties) as JSON;
    with --send, sends it. A malformed, unsafe (DTD, entities) or oversized
    file is refused with a typed error and nothing is sent.

    Example: usagi import invoice.xml            (look at it)

    Example: usagi import order.xml --send --to Osaka
    """
    from ...formats import import_ubl

    imported = run(_imported(file, import_ubl))
    if not send_it:
        emit(ctx, {"kind": imported.kind, "ubl": imported.ubl_type, "issued": imported.issued,
                   "body": imported.body},
             # A partner's text, escaped where a terminal would act on it (terminal.py).
             lambda: click.echo(json_text({"kind": imported.kind, **imported.body})))
        return
    if to is None and reply_to is None:
        raise click.UsageError("say who gets it: --to PARTNER, or --reply-to CID")
    from kernel.cid import CID

    from ...node import operations as ops
    from ..api.client import kick
    from ..views import sent_json

    reply = CID.parse(reply_to) if reply_to else None

    async def sending(node: Node) -> dict[str, Any]:
        result = await ops.send(node, imported.kind, imported.body, to=to, reply_to=reply,
                                user=user)
        await ops.deliver_now(node, wake=lambda: kick(node.home.path))
        return sent_json(result, await ops.await_ack(node, result.cid, 30.0))

    out = run(with_node(ctx, sending))
    emit(ctx, out, lambda: click.echo(f"sent {printable(imported.kind)} {out['cid']}"))


async def _imported(file: Path, reader: Any) -> Any:
    # Run inside run(): a typed error takes the one error path (common.fail).
    return reader(read_input(file))


_FIELD_OPTIONS = (("name", "Name on paper (legal name)."),
                  ("tax-id", "Tax registration id: T + 13 digits (Japan), a VAT id (EU)."),
                  ("address", "Street address; '\\n' separates lines."),
                  ("city", "City."), ("postal-code", "Postal code."),
                  ("country", "ISO 3166-1 alpha-2 code, e.g. JP."),
                  ("endpoint", "Electronic address 'scheme:id', e.g. 0188:1234567890123."),
                  ("contact", "Contact person."))


def _profile_options(fn: Any) -> Any:
    for option, text in reversed(_FIELD_OPTIONS):
        fn = click.option(f"--{option}", option.replace("-", "_"), default=None,
                          help=text + " Empty clears it.")(fn)
    return fn


@click.command("profile")
@click.option("--partner", default=None, help="The partner's profile (name, prefix or DID).")
@_profile_options
@click.pass_context
def profile_command(ctx: click.Context, /, partner: str | None, **fields: str | None) -> None:
    """Show or set this company's (or a partner's) data on paper.

    A UBL export takes what a document's own parties lack from here: Peppol
    needs each party's name, country and electronic address, and the seller's
    tax id (docs/formats.md, "Parties").

    Example: usagi profile --country JP --tax-id T1234567890123 --endpoint 0188:1234567890123

    Example: usagi profile --partner Osaka --country JP --endpoint 0188:9876543210987
    """
    from ...node import operations as ops

    changes = {k: (v.replace("\\n", "\n") if v else None) for k, v in fields.items()
               if v is not None}

    async def profiling(node: Node) -> dict[str, str]:
        if changes:
            return await ops.set_profile(node, changes, partner)
        return await ops.profile(node, partner)

    shown = run(with_node(ctx, profiling))

    def human() -> None:
        for key, value in shown.items():
            click.echo(f"{key:12} {printable(value)}")
        if not shown:
            click.echo("(empty)")

    emit(ctx, shown, human)
