"""``usagi archive export|verify|import|push`` (docs/archive.md, "Commands").

A click group registered by ``usagi_p2p.company.cli.main`` under ``main``; it reads the
home and ``--json`` flag from the parent context like every other command.
Exit codes: 0 on success, 1 when the archive is damaged (the message names
the first failing CID), 3 when it is sound but partial (documents that do not
verify are listed; import restored the rest and quarantined those), 77 when
it is another company's archive, 69 when the IPFS node or pinning service did
not pin it: the codes of the node's one table (docs/spec.md section 14), on
the one error path of ``common.py``.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ...node.errors import exit_code
from ...node.terminal import json_text, printable
from .common import passphrase, run, with_node

#: A sound archive with documents that do not verify (docs/archive.md, "Quarantine").
PARTIAL = "archive_partial"


def _date(text: str | None) -> float | None:
    """A date or date-time (ISO 8601); a naive one is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"not an ISO date or date-time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _quarantined(ctx: click.Context, report: Any, what: str) -> None:
    """List the documents that did not verify, then exit with the partial code."""
    if not report.quarantined:
        return
    if not (ctx.obj and ctx.obj.get("json")):
        click.echo(f"PARTIAL: {len(report.quarantined)} document(s) do not verify; {what}:")
        for q in report.quarantined:
            click.echo(f"  {q.cid} [{q.code}] {printable(q.reason)}")
    raise SystemExit(exit_code(PARTIAL))


def _quarantine_json(report: Any) -> list[dict[str, str]]:
    return [{"cid": str(q.cid), "code": q.code, "reason": q.reason} for q in report.quarantined]


def _out(ctx: click.Context, data: dict[str, Any], text: str) -> None:
    if ctx.obj and ctx.obj.get("json"):
        click.echo(json_text({k: str(v) if v is not None and not isinstance(
            v, int | float | bool | dict | list) else v for k, v in data.items()}))
    else:
        # Values read from an archive (its author, its times) are escaped where
        # they are put into ``text``; each line is escaped once more here.
        click.echo("\n".join(printable(line) for line in text.split("\n")))


@click.group()
def archive() -> None:
    """Sealed CAR archives of the trade history: export, verify, import, push.

    Anyone may hold an archive (an IPFS node, a pinning service, a USB stick);
    only this node can read it.
    """


@archive.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--partner", default=None, help="Only the documents with this partner.")
@click.option("--since", default=None, help="Recorded at or after this date (ISO 8601, UTC).")
@click.option("--until", default=None, help="Recorded before this date (ISO 8601, UTC).")
@click.pass_context
def export(ctx: click.Context, out: Path, partner: str | None, since: str | None,
           until: str | None) -> None:
    """Write the history to one sealed CAR v1 file.

    Example: usagi --home ./kanto archive export --out kanto-2025.car
    """
    from rich.progress import Progress

    from ...archive.archive import export_archive

    async def exporting(node: Any) -> Any:
        did = (await node.resolve_partner(partner)).did if partner else None
        if not sys.stderr.isatty():
            return await export_archive(node, out, partner=did, since=_date(since),
                                        until=_date(until))
        with Progress(transient=True) as bar:
            task = bar.add_task("exporting", total=None)
            return await export_archive(
                node, out, partner=did, since=_date(since), until=_date(until),
                progress=lambda done, total: bar.update(task, completed=done, total=total))

    report = run(with_node(ctx, exporting))
    _out(ctx, {"root": report.root, "documents": report.documents, "acks": report.acks,
               "pages": report.pages, "bytes": report.bytes, "file": str(out)},
         f"{out}: {report.documents} documents, {report.acks} acks, {report.pages} pages, "
         f"{report.bytes} bytes\nroot {report.root}")


@archive.command()
@click.argument("car", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--keys/--no-keys", default=None,
              help="Open everything with this node's key (default: when the home exists).")
@click.pass_context
def verify(ctx: click.Context, car: Path, keys: bool | None) -> None:
    """Check an archive: framing, hashes and links; with keys, every signature and thread.

    Example: usagi --home ./kanto archive verify kanto-2025.car
    """
    from ...archive.archive import verify_archive

    home = ctx.obj["home"]
    identity: list[Any] | None = None
    if keys or (keys is None and home.exists()):
        secret = passphrase(home)
        # The current key first, then the rotated ones: what was sealed before a
        # rotation opens with the key it was sealed to.
        identity = [home.load_identity(secret), *home.load_keyring(secret)]

    async def verifying() -> Any:
        import asyncio

        return await asyncio.to_thread(verify_archive, car, identity)

    r = run(verifying())
    detail = (f", {r.documents} documents, {r.acks} acks, {r.threads} threads"
              + (f" ({r.partial_threads} cut by the time window)" if r.partial_threads else "")
              + f", by {printable(r.by)}, created {printable(r.created_at)}") if r.keyed \
        else " (without keys)"
    _out(ctx, {"ok": not r.quarantined, "root": r.root, "keyed": r.keyed, "blocks": r.blocks,
               "pages": r.pages, "documents": r.documents, "acks": r.acks,
               "threads": r.threads, "partial_threads": r.partial_threads,
               "quarantined": _quarantine_json(r)},
         f"{'PARTIAL' if r.quarantined else 'OK'} {car}: root {r.root}, {r.blocks} blocks, "
         f"{r.pages} pages{detail}")
    _quarantined(ctx, r, "import restores the rest and quarantines these")


@archive.command(name="import")
@click.argument("car", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_(ctx: click.Context, car: Path) -> None:
    """Restore an archive of this node (a fresh home with the same identity too).

    Example: usagi --home ./kanto archive import kanto-2025.car
    """
    from ...archive.archive import import_archive

    r = run(with_node(ctx, lambda node: import_archive(node, car)))
    restored = r.documents - len(r.quarantined)
    _out(ctx, {"ok": not r.quarantined, "root": r.root, "documents": restored, "acks": r.acks,
               "quarantined": _quarantine_json(r)},
         f"imported {car}: {restored} documents, {r.acks} acks, {r.threads} threads verified"
         + (f"; {len(r.quarantined)} quarantined" if r.quarantined else ""))
    _quarantined(ctx, r, "kept apart in the ledger's quarantine table, not imported")


@archive.command()
@click.argument("car", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ipfs-api", required=True, help="Kubo RPC URL, e.g. http://127.0.0.1:5001")
@click.option("--pinning-service", default=None, help="IPFS Pinning Service API base URL.")
@click.option("--token", default=None, help="Its access token (default $USAGI_PINNING_TOKEN).")
@click.pass_context
def push(ctx: click.Context, car: Path, ipfs_api: str, pinning_service: str | None,
         token: str | None) -> None:
    """Import the archive into an IPFS node, pin it there (and at a pinning service).

    Example: usagi archive push kanto-2025.car --ipfs-api http://127.0.0.1:5001
    """
    from ...archive.push import push_archive

    r = run(push_archive(car, ipfs_api, pinning_service=pinning_service,
                          token=token or os.environ.get("USAGI_PINNING_TOKEN")))
    _out(ctx, {"ok": True, "root": r.root, "pinned": r.pinned, "service": r.service_status,
               "requestid": r.request_id},
         f"pinned {r.root} on {printable(ipfs_api)}"
         + (f"; pinning service: {printable(r.service_status)} "
            f"(request {printable(r.request_id)})" if r.service_status else ""))
