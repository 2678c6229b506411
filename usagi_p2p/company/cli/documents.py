"""``usagi send|inbox|outbox|show|thread|verify``: the documents of a node's trades.

Each command reads its input (a JSON or YAML body, filters), calls one
operation of ``usagi_p2p.node.operations`` and prints its result
(``usagi_p2p.company.views``); the rules live in the operations.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import click

from ...node.terminal import printable
from ..api.client import MAX_WAIT, kick
from ..views import (
    DOCUMENT_HEADERS,
    THREAD_HEADERS,
    document_json,
    entry_json,
    entry_row,
    sent_json,
    thread_json,
    thread_row,
    verification_json,
)
from . import sheets
from .common import emit, home_of, ride, run, table, wants_json, with_node

if TYPE_CHECKING:
    from kernel.cid import CID

    from ...node import operations as ops
    from ...node.node import Node

__all__ = ["send", "inbox", "outbox", "show", "thread", "verify", "load_body", "RESPONSES"]

#: ``kernel.RESPONSES`` in order (tests/node/test_cli_rides.py checks they agree),
#: written out so that ``usagi send`` does not load the kernel's document rules to start.
RESPONSES: Final = ("accept", "counter", "reject")


def _cid(text: str) -> CID:
    from kernel.cid import CID

    return CID.parse(text)


def load_body(path: Path) -> dict[str, Any]:
    """A document body from a JSON or YAML file ("-" reads standard input).

    ``.json`` is read as JSON, ``.yaml``/``.yml`` as YAML; anything else (a
    pipe, a file without a suffix) as JSON if it parses, else as YAML.
    """
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = _yaml(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise click.ClickException(f"{path} is not valid JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path} must hold a map of document fields")
    checked: dict[str, Any] = _no_floats(data, str(path))
    return checked


def _yaml(text: str) -> Any:
    """``text`` read as YAML; ValueError when it is not (yaml is loaded only for YAML)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


def _no_floats(value: Any, where: str) -> Any:
    # YAML and JSON readers turn 12.50 into a float; documents never hold one.
    if isinstance(value, float):
        raise click.ClickException(f"{where}: write numbers as quoted decimals ('12.50'), "
                                   f"not {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _no_floats(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_no_floats(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is not None and not isinstance(value, str | bool):
        return str(value)
    return value


@click.command()
@click.argument("kind")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False,
                                                        allow_dash=True, path_type=Path))
@click.option("--to", "to", default=None,
              help="Partner name, name prefix or DID (default with --reply-to: its partner).")
@click.option("--reply-to", default=None, help="CID of the document this answers "
              "(links prev and thread). Without FILE, the answer takes its currency, "
              "lines and total.")
@click.option("--ref", default=None, help="This document's own reference (e.g. PO-1042); "
              "replaces the file's.")
@click.option("--response", type=click.Choice(RESPONSES), default=None,
              help="An order_response's answer; replaces the file's.")
@click.option("--user", default=None, help="Which employee acts.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the partner's ack.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the ack.")
@click.option("--approve-as", "approve_as", multiple=True,
              help="A user whose own key approves the document (medical route); repeatable.")
@click.option("--extract", is_flag=True,
              help="Fill each line's plugin fields from its text where the body leaves them "
                   "out (what 'usagi extract' shows).")
@click.option("--lines", "lines_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The lines from a spreadsheet (.xlsx or .csv; columns by header, "
                   "e.g. 品名 数量 単位 単価 金額: docs/formats.md); replaces the body's lines.")
@click.pass_context
def send(ctx: click.Context, kind: str, file: Path | None, to: str | None, reply_to: str | None,
         ref: str | None, response: str | None, user: str | None, wait: bool, timeout: float,
         approve_as: tuple[str, ...], extract: bool, lines_file: Path | None) -> None:
    """Seal a document (JSON or YAML body) to you and a partner and send its notice.

    Prints the CID, then the partner's signed ack once it comes. Works while
    'usagi serve' runs on the same home (it delivers), and without (this
    command delivers itself). An answer (--reply-to) without a FILE orders,
    delivers or invoices what the answered document lists: its currency,
    lines and total.

    Example: usagi --home ./kanto send quote --to Osaka quote.yaml

    Example: usagi send order --reply-to bafyrei… order.yaml   (to whoever sent it)

    Example: usagi send order --reply-to bafyrei… --ref PO-1042   (what was quoted)

    Example: usagi send order_response --reply-to bafyrei… --response accept

    Example: usagi send quote --to Osaka --lines lines.xlsx --ref Q-1042
    """
    if to is None and reply_to is None:
        raise click.UsageError("say who gets it: --to PARTNER, or --reply-to CID to answer "
                               "a document")
    if file is None and reply_to is None and lines_file is None:
        raise click.UsageError("give the document as a FILE (JSON or YAML, '-' for standard "
                               "input), or answer one with --reply-to CID")
    if file is None and kind == "order_response" and response is None:
        raise click.UsageError("an order_response says --response accept, reject or counter "
                               "(or give its body as a FILE)")
    body = load_body(file) if file is not None else {}
    if lines_file is not None:
        body["lines"] = _sheet_lines(lines_file)
        if file is None:
            file = lines_file  # the body is given: not filled in from --reply-to
    fields = {k: v for k, v in (("ref", ref), ("response", response)) if v is not None}
    reply = _cid(reply_to) if reply_to else None
    # With a node serving this home, through its local API (no key to unlock).
    # Approvers sign with their own keys here (--approve-as), and the API waits
    # at most MAX_WAIT for an ack: those open the node as without one.
    if not approve_as and (not wait or 0 < timeout <= MAX_WAIT):
        request: dict[str, Any] = {"kind": kind, **fields, "extract": extract}
        request.update({k: v for k, v in (("to", to), ("reply_to", reply_to), ("user", user))
                        if v is not None})
        if file is not None:
            request["body"] = body
        query = f"?wait={timeout:g}" if wait else ""
        rode = ride(ctx, "POST", "/api/v1/documents" + query, request, timeout=timeout + 10)
        if rode is not None:
            if not wants_json(ctx):
                _print_sent(kind, rode["cid"], [_finding(f) for f in rode["findings"]])
            _print_ack(ctx, rode, wait)
            return
    from ...node import operations as ops
    from .plugins import approver

    # Approvers' passphrases are asked for before anything is built or sent.
    prepare = approver(home_of(ctx), approve_as) if approve_as else None

    async def sending(node: Node) -> dict[str, Any]:
        options: dict[str, Any] = {"to": to, "user": user, "prepare": prepare,
                                   "extract": extract}
        if file is None and reply is not None:
            result = await ops.answer(node, kind, reply, fields, **options)
        else:
            result = await ops.send(node, kind, {**body, **fields}, reply_to=reply, **options)
        if not wants_json(ctx):
            _print_sent(kind, str(result.cid), result.findings)
        delivery = None
        if wait:
            await ops.deliver_now(node, wake=lambda: kick(node.home.path))
            delivery = await ops.await_ack(node, result.cid, timeout)
        return sent_json(result, delivery)

    _print_ack(ctx, run(with_node(ctx, sending)), wait)


def _sheet_lines(path: Path) -> list[dict[str, str]]:
    """The lines of a spreadsheet (usagi_p2p.formats.sheet); a typed error exits as every one."""
    from kernel.errors import UsagiError

    from ...formats import read_lines
    from .common import fail
    from .exchange import read_input

    try:
        return read_lines(read_input(path), path.name)
    except UsagiError as exc:
        fail(exc)


def _finding(data: dict[str, Any]) -> Any:
    from kernel.plugin import Finding

    return Finding(**data)


def _print_sent(kind: str, cid: str, findings: Iterable[Any]) -> None:
    click.echo(f"sent {printable(kind)} {cid}")
    for finding in findings:
        click.echo(f"  {printable(finding)}")


def _print_ack(ctx: click.Context, out: dict[str, Any], wait: bool) -> None:
    """What ``usagi send`` prints once it is sent (and acked, with ``--wait``)."""

    def human() -> None:
        ack = out.get("ack")
        if ack:
            click.echo(f"ack   {ack['status']} by {ack['by']} at {ack['at']}"
                       + (f" ({printable(ack['reason'])})" if ack["reason"] else ""))
        elif wait:
            click.echo(f"no ack yet: {out.get('status')} "
                       f"{printable(out.get('reason') or '')}".rstrip())

    emit(ctx, out, human)
    if wait and (not out.get("ack") or out["ack"]["status"] == "rejected"):
        raise SystemExit(1)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time",
                                 param_hint="--since") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _list_documents(ctx: click.Context, direction: Literal["in", "out"], partner: str | None,
                    kind: str | None, status: str | None, since: str | None,
                    limit: int, export: Path | None = None) -> None:
    moment = _since(since)
    rows = _listed(ctx, direction, partner, kind, status, moment, limit)
    if rows is None:
        from ...node import operations as ops

        async def listing(node: Node) -> list[ops.DocumentEntry]:
            return await ops.list_documents(node, direction, partner=partner, kind=kind,
                                            status=status, since=moment, limit=limit)

        rows = run(with_node(ctx, listing))
    shown = rows
    if export is not None:
        sheets.export_documents(ctx, list(shown), export)
        return
    emit(ctx, [entry_json(e) for e in shown],
         lambda: table(DOCUMENT_HEADERS, [entry_row(e) for e in shown]))


#: Documents per page when the CLI lists through the local API (its MAX_PAGE).
_PAGE = 500


def _listed(ctx: click.Context, direction: Literal["in", "out"], partner: str | None,
            kind: str | None, status: str | None, since: datetime | None, limit: int
            ) -> list[ops.DocumentEntry] | None:
    """The newest ``limit`` documents, oldest first, from the node serving this home
    (``GET /api/v1/documents``, newest first, page by page); None when none serves it."""
    from urllib.parse import urlencode

    params = {k: v for k, v in (("direction", direction), ("partner", partner), ("kind", kind),
                                ("status", status),
                                ("since", since.isoformat() if since else None)) if v}
    listed: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(listed) < limit:
        page_params = {**params, "limit": str(min(_PAGE, limit - len(listed)))}
        if cursor:
            page_params["cursor"] = cursor
        page = ride(ctx, "GET", "/api/v1/documents?" + urlencode(page_params))
        if page is None:
            return None
        listed += page["documents"]
        cursor = page["next"]
        if not cursor:
            break
    # Read as the operations' DocumentEntry, which views.py prints (importing the
    # operations would load the node), oldest first.
    return [cast("ops.DocumentEntry", SimpleNamespace(
        cid=d["cid"], direction=d["direction"], kind=d["kind"], ref=d["ref"],
        partner=d["partner"]["did"], partner_name=d["partner"]["name"],
        issued_at=d["issued_at"], status=d["status"], reason=d["reason"], thread=d["thread"]))
            for d in reversed(listed)]


def _list_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
        click.option("--partner", default=None, help="Only this partner (name, prefix or DID)."),
        click.option("--kind", default=None, help="Only this kind, e.g. order."),
        click.option("--status", default=None,
                     help="Only this status, e.g. undelivered, rejected, received."),
        click.option("--since", default=None,
                     help="Recorded since (YYYY-MM-DD is midnight UTC, or an RFC 3339 time)."),
        click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1),
                     help="Show the newest N, oldest first."),
        click.option("--export", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Write them to FILE (.xlsx or .csv) for accounting: one row per "
                          "document with its currency and totals."),
    )):
        fn = option(fn)
    return fn


@click.command()
@_list_options
@click.pass_context
def inbox(ctx: click.Context, partner: str | None, kind: str | None, status: str | None,
          since: str | None, limit: int, export: Path | None) -> None:
    """Documents received from partners (the newest 50 unless -n says otherwise).

    Example: usagi inbox --partner Osaka --kind order --since 2026-12-01

    Example: usagi inbox --kind invoice --since 2026-12-01 --export invoices.xlsx
    """
    _list_documents(ctx, "in", partner, kind, status, since, limit, export)


@click.group(invoke_without_command=True)
@_list_options
@click.pass_context
def outbox(ctx: click.Context, partner: str | None, kind: str | None, status: str | None,
           since: str | None, limit: int, export: Path | None) -> None:
    """Documents sent, with their delivery state ('usagi outbox retry' to resend).

    Example: usagi outbox --status undelivered
    """
    if ctx.invoked_subcommand is None:
        _list_documents(ctx, "out", partner, kind, status, since, limit, export)


@outbox.command("retry")
@click.argument("who", required=False)
@click.pass_context
def outbox_retry(ctx: click.Context, who: str | None) -> None:
    """Queue every undelivered document (to one partner, or all) again and deliver.

    Example: usagi outbox retry Osaka
    """
    rode = ride(ctx, "POST", "/api/v1/outbox/retry", {"partner": who} if who else {})
    if rode is not None:
        count = int(rode["requeued"])
    else:
        from ...node import operations as ops

        async def retrying(node: Node) -> int:
            return await ops.retry_outbox(node, who, wake=lambda: kick(node.home.path))

        count = run(with_node(ctx, retrying))
    emit(ctx, {"requeued": count}, lambda: click.echo(f"requeued {count} document(s)"))


@click.command()
@click.argument("cid")
@click.pass_context
def show(ctx: click.Context, cid: str) -> None:
    """Show one document as it was opened (no decryption needed).

    'usagi --json show CID' prints every field as JSON.

    Example: usagi show bafyreidzynkiwssvwptdfenz5q44kryk52ow2x2tx4yduy42k3x7t7ekhu
    """
    target = _cid(cid)
    data = ride(ctx, "GET", f"/api/v1/documents/{target}")
    if data is None:
        from ...node import operations as ops

        async def showing(node: Node) -> ops.DocumentView:
            return await ops.show_document(node, target)

        data = document_json(run(with_node(ctx, showing)))
    shown: dict[str, Any] = data
    emit(ctx, shown, lambda: _print_document(shown))


def _print_document(data: dict[str, Any]) -> None:
    """A document as a person reads it; ``--json`` gives every field."""
    from rich.console import Console
    from rich.text import Text

    doc = data["document"]
    partner = data["partner"]["name"] or data["partner"]["did"]
    arrow = f"from {partner}" if data["direction"] == "in" else f"to {partner}"
    out = Console(emoji=False, highlight=False, markup=False,
                  width=None if sys.stdout.isatty() else 10_000)

    def line(label: str, value: Any) -> None:
        # Everything here may come from the partner: printed as escaped text.
        if value not in (None, "", []):
            out.print(Text(f"{printable(label):<11} {printable(value)}"))

    line("", f"{doc['kind']} {doc.get('ref') or ''}".rstrip())
    line("party", f"{arrow} ({data['direction']}, {data['status']}"
                  f"{': ' + data['reason'] if data['reason'] else ''})")
    line("issued", doc.get("issued_at"))
    for key in ("valid_until", "due", "currency", "net", "tax_total", "total", "rounding"):
        line(key.replace("_", " "), doc.get(key))
    line("payment", doc.get("payment_terms"))
    for key in ("response", "note", "user"):
        line(key, doc.get(key))
    parties = doc.get("parties") if isinstance(doc.get("parties"), dict) else {}
    for side in ("from", "to"):
        if isinstance(parties.get(side), dict):
            p = parties[side]
            line("issuer" if side == "from" else "addressee",
                 ", ".join(str(p[k]) for k in ("name", "tax_id", "city", "country") if p.get(k)))
    for t in doc.get("tax") or [] if isinstance(doc.get("tax"), list) else []:
        if isinstance(t, dict):
            line("tax", f"{t.get('category')} {t.get('rate')} % of {t.get('taxable')}: "
                        f"{t.get('amount')}")
    line("thread", data["thread"] if data["thread"] != data["cid"] else None)
    line("replies to", ", ".join(str(p) for p in doc.get("prev", [])))
    lines = doc.get("lines") or []
    if lines:
        out.print(Text(""))
        table(["#", "text", "qty", "unit", "unit price", "amount", "tax", "fields"],
              [[i + 1, ln.get("text"), ln.get("qty"), ln.get("unit"), ln.get("unit_price"),
                ln.get("amount"),
                f"{ln.get('tax_rate')} %" if ln.get("tax_rate") is not None else None,
                "; ".join(f"{ns}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
                          for ns, fields in (ln.get("ext") or {}).items()
                          if isinstance(fields, dict))]
               for i, ln in enumerate(lines)])
    ext = {ns: f for ns, f in (doc.get("ext") or {}).items() if isinstance(f, dict)}
    for ns, fields in ext.items():
        shown = {k: v for k, v in fields.items() if k != "approvals"}
        line(ns, ", ".join(f"{k}={v}" for k, v in shown.items()))
        for approval in fields.get("approvals", []) if isinstance(fields.get("approvals"), list) else []:
            if isinstance(approval, dict):
                line("approved", f"{approval.get('role')} by {approval.get('by')}")
    if data["findings"]:
        out.print(Text(""))
        for f in data["findings"]:
            out.print(Text(printable(f"{f['level']} [{f['plugin']}.{f['code']}] {f['path']}: "
                                     f"{f['message']}")))
    _print_arithmetic(data.get("arithmetic") or [], lambda text: out.print(Text(text)))
    out.print(Text(""))
    ack = data["ack"]
    line("ack", f"{ack['status']}{' (' + ack['reason'] + ')' if ack['reason'] else ''} "
                f"by {ack['by']} at {ack['at']}" if ack else "none yet")
    line("cid", data["cid"])


def _print_arithmetic(found: list[dict[str, Any]], echo: Callable[[str], Any]) -> None:
    """The figures that do not add up (docs/commerce.md), one warning a line."""
    if found:
        echo("")
        for d in found:
            echo(printable(f"warning [arithmetic.{d['code']}] {d['path']}: {d['message']}"))


@click.command()
@click.argument("cid")
@click.option("--export", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every line of every document of the thread to FILE (.xlsx or .csv).")
@click.pass_context
def thread(ctx: click.Context, cid: str, export: Path | None) -> None:
    """List the thread a document belongs to, in causal order.

    Example: usagi thread bafyrei…   (any document of the trade)

    Example: usagi thread bafyrei… --export trade.xlsx   (its lines, for accounting)
    """
    target = _cid(cid)
    rode = ride(ctx, "GET", f"/api/v1/documents/{target}/thread")
    if rode is not None:
        # Read as the operations' ThreadEntry, which views.py prints.
        rows = [cast("ops.ThreadEntry", SimpleNamespace(**d)) for d in rode["documents"]]
    else:
        from ...node import operations as ops

        async def threading(node: Node) -> list[ops.ThreadEntry]:
            return await ops.thread_documents(node, target)

        rows = run(with_node(ctx, threading))
    if export is not None:
        sheets.export_lines(ctx, rows, export)
        return
    emit(ctx, thread_json(rows), lambda: table(THREAD_HEADERS, [thread_row(r) for r in rows]))


@click.command()
@click.argument("cid")
@click.pass_context
def verify(ctx: click.Context, cid: str) -> None:
    """Check a document end to end: block hash, signature, parties, thread, the partner's ack.

    Exit code 0 only when every check holds.

    Example: usagi verify bafyrei… && echo trusted
    """
    target = _cid(cid)
    report = ride(ctx, "POST", f"/api/v1/documents/{target}/verify")
    if report is None:
        from ...node import operations as ops

        async def verifying(node: Node) -> ops.Verification:
            return await ops.verify_document(node, target)

        report = verification_json(run(with_node(ctx, verifying)))
    checked: dict[str, Any] = report

    def human() -> None:
        for check in checked["checks"]:
            mark = "ok  " if check["ok"] else "FAIL"
            click.echo(f"{mark} {check['name']}: {printable(check['detail'])}")
        # Figures that do not add up are warnings: they never fail the verification.
        _print_arithmetic(checked.get("arithmetic") or [], click.echo)

    emit(ctx, checked, human)
    if not checked["ok"]:
        raise SystemExit(1)
