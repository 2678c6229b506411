"""``usagi``: the command line of a usagi-p2p node.

Every command takes ``--home`` (default ``$USAGI_HOME``, else a per-user data
folder) and most take ``--json`` for scripts. The passphrase of a protected
identity comes from ``$USAGI_PASSPHRASE`` or a prompt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from kernel.cid import CID
from kernel.document import RESPONSES
from kernel.errors import UsagiError

from ...node.errors import NodeError, exit_code
from ...node.home import Home, default_home, write_private
from ...node.terminal import LogFormatter, excepthook, json_text, printable

T = TypeVar("T")

EXAMPLES = {
    "init": "usagi --home ./kanto init --name 'Kanto Machine Tools' --port 8470",
    "serve": "usagi --home ./kanto serve",
    "invite": "usagi --home ./kanto invite --days 7",
    "partner add": "usagi --home ./osaka partner add usagi1:oWNzaWdYQ…",
    "send": "usagi --home ./kanto send quote --to 'Osaka Precision' quote.yaml",
}


def _passphrase(home: Home) -> str | None:
    if not home.key_is_protected():
        return None
    env = os.environ.get("USAGI_PASSPHRASE")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise click.ClickException("the identity is protected: set USAGI_PASSPHRASE")
    return str(click.prompt("Passphrase", hide_input=True))


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except UsagiError as exc:
        # The traceback is for whoever runs with -v; the message is for everyone.
        logging.getLogger("usagi.cli").info("command failed", exc_info=True)
        click.echo(printable(f"error [{exc.code}]: {exc}"), err=True)
        raise SystemExit(exit_code(exc.code)) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, CID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple: by field
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _emit(ctx: click.Context, data: Any, human: Callable[[], None]) -> None:
    if ctx.obj["json"]:
        click.echo(json_text(_jsonable(data)))
    else:
        human()


#: Columns a person copies whole (a CID, a DID, a time): never shortened.
_WHOLE: Final = frozenset({"cid", "did", "issued"})


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    """Rows as a table. Cells are plain text: names, refs and notes come from
    partners, so no Rich markup or emoji codes are read in them (``did:key:``
    must not turn into a key emoji, nor ``[/]`` into an error), and control
    characters are shown as escapes (:func:`printable`). Piped output is never
    shortened."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cells = [[Text(printable(c)) if c is not None else Text("") for c in row] for row in rows]
    table = Table(box=None, pad_edge=False)
    for i, header in enumerate(headers):
        whole = header in _WHOLE
        width = max([len(header), *(len(r[i]) for r in cells)]) if whole else None
        table.add_column(header, no_wrap=whole, min_width=width)
    for row in cells:
        table.add_row(*row)
    tty = sys.stdout.isatty()
    Console(emoji=False, highlight=False, markup=False, width=None if tty else 10_000).print(table)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            # A message may quote what a partner or a plugin wrote. (``message``
            # is typed Final: it is set once, here, before anything prints it.)
            exc.__dict__["message"] = printable(exc.message)
            raise

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Examples"):
            formatter.write_dl(list(EXAMPLES.items()))


@click.group(cls=_Group)
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Node folder (default: $USAGI_HOME or ~/.local/share/usagi-p2p).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, home: Path | None, as_json: bool, verbose: int) -> None:
    """usagi-p2p: trade documents sealed to their two parties, content-addressed, acknowledged.

    Each company runs a node; partners exchange only CIDs, signed notices and
    signed acks. See 'usagi COMMAND --help' for each command.
    """
    import logging

    level = logging.WARNING - 10 * verbose
    # Log lines carry partners' text (names, refs, reasons): one line each, escaped.
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler])
    sys.excepthook = excepthook
    ctx.ensure_object(dict)
    ctx.obj["home"] = Home(home or default_home())
    ctx.obj["json"] = as_json


def _home(ctx: click.Context) -> Home:
    home: Home = ctx.obj["home"]
    return home


async def _with_node(ctx: click.Context, fn: Callable[[Any], Awaitable[T]]) -> T:
    from ...node.node import Node

    home = _home(ctx)
    node = Node.load(home, _passphrase(home))
    async with node:
        return await fn(node)


@main.command()
@click.option("--name", required=True, help="Your company's name, as partners will see it.")
@click.option("--port", default=8470, show_default=True, help="Port the peer API listens on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 to accept partners from the network).")
@click.option("--endpoint", default=None, help="URL partners use to reach you "
              "(default http://HOST:PORT; put your public https URL here).")
@click.option("--kubo-url", default=None, help="Keep blocks in a Kubo node (RPC URL) instead "
              "of the embedded store.")
@click.option("--insecure-no-passphrase", is_flag=True,
              help="Store the key unencrypted (demos and tests only).")
@click.pass_context
def init(ctx: click.Context, name: str, port: int, host: str, endpoint: str | None,
         kubo_url: str | None, insecure_no_passphrase: bool) -> None:
    """Create this node's identity and configuration.

    Example: usagi --home ./kanto init --name "Kanto Machine Tools" --port 8470
    """
    from ...node.invitation import name_problem

    # Checked here, not at the first 'usagi invite': partners refuse invitations
    # whose name breaks the rules of spec section 10.1.
    name_problem(name, click.BadParameter)
    home = _home(ctx)
    passphrase: str | None = None
    if insecure_no_passphrase:
        click.echo("WARNING: the private key is stored WITHOUT a passphrase.", err=True)
    else:
        passphrase = os.environ.get("USAGI_PASSPHRASE")
        if passphrase is None:
            if not sys.stdin.isatty():
                raise click.ClickException("set USAGI_PASSPHRASE or use --insecure-no-passphrase")
            passphrase = click.prompt("New passphrase", hide_input=True,
                                      confirmation_prompt=True)
    try:
        identity = home.create(name, passphrase, endpoint=endpoint, port=port, host=host)
    except UsagiError as exc:
        raise click.ClickException(str(exc)) from None
    if kubo_url:
        config = home.load_config()
        config.kubo_url = kubo_url
        home.save_config(config)
    _emit(ctx, {"did": identity.did, "home": str(home.path)},
          lambda: click.echo(f"Created {printable(name)}\n  did:  {identity.did}\n"
                             f"  home: {printable(home.path)}"))


@main.command()
@click.option("--port", type=int, default=None, help="Override the configured port.")
@click.option("--quiet", is_flag=True, help="Print only warnings, not each delivery.")
@click.pass_context
def serve(ctx: click.Context, port: int | None, quiet: bool) -> None:
    """Run the node: the peer API and the delivery of the outbox, until Ctrl-C.

    Prints a line for each document received or delivered (--quiet: warnings only).

    Example: usagi --home ./kanto serve
    """
    import signal

    activity = logging.getLogger("usagi.activity")
    if not quiet:
        # Its own handler: a timestamped line a person reads in a terminal or a journal.
        handler = logging.StreamHandler(sys.stderr)
        stamp = LogFormatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        stamp.converter = time.gmtime  # UTC, like every time the node writes
        handler.setFormatter(stamp)
        activity.addHandler(handler)
        activity.propagate = False
        activity.setLevel(min(activity.getEffectiveLevel(), logging.INFO))

    from ...peer.service import Service
    from ..api.server import LocalServer

    async def run(node: Any) -> None:
        service = Service(node, port=port)
        await service.start()
        local = LocalServer(node, peer_url=service.url, peer_port=service.port)
        try:
            local.tokens.cli_secret()  # the token this home's commands show the local API
            await local.start()
        except BaseException:
            await service.close()
            raise
        state = _home(ctx).path / "serve.json"
        write_private(state, json.dumps({"pid": os.getpid(), "url": service.url,
                                         "local_url": local.url,
                                         "local_socket": local.endpoints.local_socket}))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop.set)
        click.echo(f"{printable(node.config.name)} serving on {service.url} as {node.did}",
                   err=True)
        click.echo(f"local API on {printable(local.url or local.endpoints.local_socket)}",
                   err=True)
        try:
            await service.run_forever()
        finally:
            await local.close()
            await service.close()
            state.unlink(missing_ok=True)

    _run(_with_node(ctx, run))


@main.command()
@click.option("--days", default=7, show_default=True, help="How long the invitation is valid.")
@click.pass_context
def invite(ctx: click.Context, days: int) -> None:
    """Print a signed invitation for a new partner to paste into 'usagi partner add'.

    Example: usagi --home ./kanto invite --days 7
    """
    from datetime import timedelta

    async def run(node: Any) -> Any:
        return await node.invite(timedelta(days=days))

    invitation = _run(_with_node(ctx, run))
    _emit(ctx, {"invitation": invitation.text(), "expires": invitation.expires.isoformat()},
          lambda: click.echo(invitation.text()))


@main.group()
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
    async def run(node: Any) -> Any:
        return await node.add_partner(invitation, introduce=not no_introduce)

    p = _run(_with_node(ctx, run))
    _emit(ctx, {"did": p.did, "name": p.name, "endpoint": p.endpoint},
          lambda: click.echo(f"Partner added: {printable(p.name)} ({printable(p.did)}) at "
                             f"{printable(p.endpoint)}"))


@partner.command("list")
@click.pass_context
def partner_list(ctx: click.Context) -> None:
    """List partners and their state.

    Example: usagi partner list
    """
    async def run(node: Any) -> Any:
        return await node.ledger.partners()

    rows = _run(_with_node(ctx, run))
    _emit(ctx, [{"did": p.did, "name": p.name, "endpoint": p.endpoint, "status": p.status}
                for p in rows],
          lambda: _table(["name", "status", "endpoint", "did"],
                         [[p.name, p.status, p.endpoint, p.did] for p in rows]))


def _partner_state(name: str, status: str, help_text: str) -> None:
    @partner.command(name, help=f"{help_text}\n\nExample: usagi partner {name} Osaka")
    @click.argument("who")
    @click.pass_context
    def command(ctx: click.Context, who: str) -> None:
        async def run(node: Any) -> Any:
            p = await node.resolve_partner(who)
            await node.ledger.set_partner(p.did, status=status)
            return p

        p = _run(_with_node(ctx, run))
        _emit(ctx, {"did": p.did, "status": status},
              lambda: click.echo(f"{printable(p.name)}: {status}"))


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
    from ...node.errors import PartnerError
    from ...node.invitation import name_problem

    try:
        name_problem(name, PartnerError)
    except PartnerError as exc:
        raise click.ClickException(str(exc)) from None

    async def run(node: Any) -> Any:
        p = await node.resolve_partner(who)
        await node.ledger.set_partner(p.did, name=name)
        return p

    p = _run(_with_node(ctx, run))
    _emit(ctx, {"did": p.did, "name": name},
          lambda: click.echo(f"{printable(p.name)} -> {printable(name)}"))


def _quota_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    from ...node.quota import format_size

    return [[r["partner"], f"{r['docs']:,} / {r['docs_quota']:,}",
             f"{format_size(r['bytes'])} / {format_size(r['bytes_quota'])}",
             "own" if r["own"] else "default",
             datetime.fromtimestamp(r["resets_at"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
            for r in rows]


_QUOTA_HEADERS: Final = ["partner", "documents", "bytes", "quota", "resets"]


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
    from kernel.thread import canonical

    from ...node.quota import parse_size

    try:
        size_bytes = parse_size(size) if size is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bytes") from None
    if use_default and (docs is not None or size_bytes is not None):
        raise click.UsageError("--default drops the partner's own quota; give it alone")
    home = _home(ctx)

    async def run(node: Any) -> dict[str, Any]:
        p = await node.resolve_partner(who)
        aliases = await node.ledger.aliases()
        did = await node.canonical(p.did)
        if use_default or docs is not None or size_bytes is not None:
            config = home.load_config()
            # A quota set for one of the partner's earlier keys is replaced, not kept beside.
            own = {}
            for key in [k for k in config.partner_quotas if k == did or
                        canonical(k, aliases) == did]:
                own.update(config.partner_quotas.pop(key))
            if not use_default:
                own.update({k: v for k, v in (("docs", docs), ("bytes", size_bytes))
                            if v is not None})
                config.partner_quotas[did] = own
            config.check_quotas()
            home.save_config(config)
        current = await node.ledger.partner(did)
        report: list[dict[str, Any]] = await node.quotas.report(
            [current or p], node.clock(), aliases)
        return report[0]

    row = _run(_with_node(ctx, run))
    _emit(ctx, row, lambda: _table(_QUOTA_HEADERS, _quota_rows([row])))


def _load_body(path: Path) -> dict[str, Any]:
    """A document body from a JSON or YAML file ("-" reads standard input).

    ``.json`` is read as JSON, ``.yaml``/``.yml`` as YAML; anything else (a
    pipe, a file without a suffix) as JSON if it parses, else as YAML.
    """
    import yaml

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
            data = yaml.safe_load(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{path} is not valid JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path} must hold a map of document fields")
    checked: dict[str, Any] = _no_floats(data, str(path))
    return checked


def _fill_extracted(plugins: Any, body: dict[str, Any], user: str | None) -> None:
    """Add what the plugins extract from each line's text to its ``ext``; a field
    the file gives already is kept as written."""
    for line in body.get("lines") or []:
        if not isinstance(line, dict) or not isinstance(line.get("text"), str):
            continue
        for namespace, fields in plugins.extract(line["text"], user=user).items():
            ext = line.setdefault("ext", {})
            if isinstance(ext, dict) and isinstance(ext.setdefault(namespace, {}), dict):
                for key, value in fields.items():
                    ext[namespace].setdefault(key, value)


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


async def _kick_server(home: Home) -> bool:
    """Tell a 'usagi serve' on this home to deliver now; False when none runs."""
    from ..api.client import kick

    return await kick(home.path)


@main.command()
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
@click.option("--response", type=click.Choice(sorted(RESPONSES)), default=None,
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
@click.pass_context
def send(ctx: click.Context, kind: str, file: Path | None, to: str, reply_to: str | None,
         ref: str | None, response: str | None, user: str | None, wait: bool, timeout: float,
         approve_as: tuple[str, ...], extract: bool) -> None:
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
    """
    from .plugins import approver

    if to is None and reply_to is None:
        raise click.UsageError("say who gets it: --to PARTNER, or --reply-to CID to answer "
                               "a document")
    if file is None and reply_to is None:
        raise click.UsageError("give the document as a FILE (JSON or YAML, '-' for standard "
                               "input), or answer one with --reply-to CID")
    if file is None and kind == "order_response" and response is None:
        raise click.UsageError("an order_response says --response accept, reject or counter "
                               "(or give its body as a FILE)")
    body = _load_body(file) if file is not None else {}
    home = _home(ctx)
    # Approvers' passphrases are asked for before anything is built or sent.
    prepare = approver(home, approve_as) if approve_as else None

    async def run(node: Any) -> dict[str, Any]:
        reply = CID.parse(reply_to) if reply_to else None
        partner = to
        if partner is None and reply is not None:
            answered = await node.ledger.document(reply)
            if answered is None:
                raise NodeError(f"{reply} is not in this node's ledger (see 'usagi inbox' "
                                "and 'usagi outbox')")
            partner = await node.canonical(answered.partner)  # its current key
        if file is None and reply is not None:
            from ..views import answer_body

            body.update(await answer_body(node, kind, reply))
        if ref is not None:
            body["ref"] = ref
        if response is not None:
            body["response"] = response
        if extract:
            _fill_extracted(node.plugins, body, user)
        result = (await node.send_many([(kind, partner, body, reply)], user=user,
                                       prepare=prepare))[0]
        out: dict[str, Any] = {"cid": str(result.cid), "thread": str(result.thread),
                               "digest": result.digest.hex(),
                               "findings": [f.to_json() for f in result.findings]}
        if not ctx.obj["json"]:
            click.echo(f"sent {printable(kind)} {result.cid}")
            for finding in result.findings:
                click.echo(f"  {printable(finding)}")
        if wait:
            if not await _kick_server(home):
                await node.deliver_once()
            ack = await node.wait_for_ack(result.cid, timeout)
            if ack is None:
                row = await node.ledger.document(result.cid)
                out["ack"] = None
                out["status"] = row.status if row else "unknown"
                out["reason"] = row.reason if row else None
            else:
                from kernel.messages import open_ack

                parsed = open_ack(ack[0])
                out["ack"] = {"status": parsed.status, "by": parsed.by,
                              "at": parsed.at.isoformat(), "reason": parsed.reason,
                              "signed": ack[0].hex()}
        return out

    out = _run(_with_node(ctx, run))

    def human() -> None:
        ack = out.get("ack")
        if ack:
            click.echo(f"ack   {ack['status']} by {ack['by']} at {ack['at']}"
                       + (f" ({printable(ack['reason'])})" if ack["reason"] else ""))
        elif wait:
            click.echo(f"no ack yet: {out.get('status')} "
                       f"{printable(out.get('reason') or '')}".rstrip())

    _emit(ctx, out, human)
    if wait and (not out.get("ack") or out["ack"]["status"] == "rejected"):
        raise SystemExit(1)


def _doc_rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"cid": str(r.cid), "kind": r.kind, "partner": r.partner, "ref": r.ref,
             "issued_at": r.issued_at, "status": r.status, "reason": r.reason,
             "thread": str(r.thread)} for r in rows]


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time",
                                 param_hint="--since") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _list_documents(ctx: click.Context, direction: str, partner: str | None, kind: str | None,
                    status: str | None, since: str | None, limit: int) -> None:
    since_ts = _since(since)

    async def run(node: Any) -> tuple[list[Any], dict[str, str]]:
        dids = await node.partner_dids(partner) if partner else None
        rows = await node.ledger.documents(direction=direction, partners=dids, kind=kind,
                                           status=status, since=since_ts, limit=limit,
                                           newest=True)
        names = {p.did: p.name for p in await node.ledger.partners()}
        return rows, names

    rows, names = _run(_with_node(ctx, run))
    data = _doc_rows(rows)
    _emit(ctx, data, lambda: _table(
        ["issued", "kind", "ref", "partner", "status", "cid"],
        [[d["issued_at"], d["kind"], d["ref"], names.get(d["partner"], d["partner"][:20]),
          d["status"], d["cid"]] for d in data]))


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
    )):
        fn = option(fn)
    return fn


@main.command()
@_list_options
@click.pass_context
def inbox(ctx: click.Context, partner: str | None, kind: str | None, status: str | None,
          since: str | None, limit: int) -> None:
    """Documents received from partners (the newest 50 unless -n says otherwise).

    Example: usagi inbox --partner Osaka --kind order --since 2026-12-01
    """
    _list_documents(ctx, "in", partner, kind, status, since, limit)


@main.group(invoke_without_command=True)
@_list_options
@click.pass_context
def outbox(ctx: click.Context, partner: str | None, kind: str | None, status: str | None,
           since: str | None, limit: int) -> None:
    """Documents sent, with their delivery state ('usagi outbox retry' to resend).

    Example: usagi outbox --status undelivered
    """
    if ctx.invoked_subcommand is None:
        _list_documents(ctx, "out", partner, kind, status, since, limit)


@outbox.command("retry")
@click.argument("who", required=False)
@click.pass_context
def outbox_retry(ctx: click.Context, who: str | None) -> None:
    """Queue every undelivered document (to one partner, or all) again and deliver.

    Example: usagi outbox retry Osaka
    """
    home = _home(ctx)

    async def run(node: Any) -> int:
        did = (await node.resolve_partner(who)).did if who else None
        count = int(await node.ledger.retry_undelivered(did))
        if not await _kick_server(home):
            await node.deliver_once()
        return count

    count = _run(_with_node(ctx, run))
    _emit(ctx, {"requeued": count}, lambda: click.echo(f"requeued {count} document(s)"))


@main.command()
@click.argument("cid")
@click.pass_context
def show(ctx: click.Context, cid: str) -> None:
    """Show one document as it was opened (no decryption needed).

    'usagi --json show CID' prints every field as JSON.

    Example: usagi show bafyreidzynkiwssvwptdfenz5q44kryk52ow2x2tx4yduy42k3x7t7ekhu
    """
    from ..views import show_document

    data = _run(_with_node(ctx, lambda node: show_document(node, CID.parse(cid))))
    _emit(ctx, data, lambda: _show_human(data))


def _show_human(data: dict[str, Any]) -> None:
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
    for key in ("valid_until", "due", "currency", "total", "response", "note", "user"):
        line(key.replace("_", " "), doc.get(key))
    line("thread", data["thread"] if data["thread"] != data["cid"] else None)
    line("replies to", ", ".join(str(p) for p in doc.get("prev", [])))
    lines = doc.get("lines") or []
    if lines:
        out.print(Text(""))
        _table(["#", "text", "qty", "unit", "unit price", "amount", "fields"],
               [[i + 1, ln.get("text"), ln.get("qty"), ln.get("unit"), ln.get("unit_price"),
                 ln.get("amount"),
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
    out.print(Text(""))
    ack = data["ack"]
    line("ack", f"{ack['status']}{' (' + ack['reason'] + ')' if ack['reason'] else ''} "
                f"by {ack['by']} at {ack['at']}" if ack else "none yet")
    line("cid", data["cid"])


@main.command()
@click.argument("cid")
@click.pass_context
def thread(ctx: click.Context, cid: str) -> None:
    """List the thread a document belongs to, in causal order.

    Example: usagi thread bafyrei…   (any document of the trade)
    """
    from ..views import thread_documents

    rows = _run(_with_node(ctx, lambda node: thread_documents(node, CID.parse(cid))))
    _emit(ctx, rows, lambda: _table(["issued", "kind", "ref", "direction", "status", "cid"],
                                    [[r["issued_at"], r["kind"], r["ref"], r["direction"],
                                      r["status"], r["cid"]] for r in rows]))


@main.command()
@click.argument("cid")
@click.pass_context
def verify(ctx: click.Context, cid: str) -> None:
    """Check a document end to end: block hash, signature, parties, thread, the partner's ack.

    Exit code 0 only when every check holds.

    Example: usagi verify bafyrei… && echo trusted
    """
    from ..views import verify_document

    report = _run(_with_node(ctx, lambda node: verify_document(node, CID.parse(cid))))

    def human() -> None:
        for check in report["checks"]:
            mark = "ok  " if check["ok"] else "FAIL"
            click.echo(f"{mark} {check['name']}: {printable(check['detail'])}")

    _emit(ctx, report, human)
    if not report["ok"]:
        raise SystemExit(1)


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """This node: identity, endpoint, store, partners, documents, outbox.

    Example: usagi --json status
    """
    async def run(node: Any) -> dict[str, Any]:
        return {
            "name": node.config.name,
            "did": node.did,
            "endpoint": node.config.endpoint,
            "store": node.config.kubo_url or str(node.home.blocks_path),
            "partners": len(await node.ledger.partners()),
            "sent": await node.ledger.count_documents("out"),
            "received": await node.ledger.count_documents("in"),
            "outbox": await node.ledger.outbox_counts(),
            "serving": (node.home.path / "serve.json").exists(),
            # What each partner stored in this quota period, against its quota.
            "quotas": await node.quotas.report(await node.ledger.partners(), node.clock(),
                                               await node.ledger.aliases()),
        }

    data = _run(_with_node(ctx, run))

    def human() -> None:
        for key, value in data.items():
            if key != "quotas":
                click.echo(f"{key:9} {printable(value)}")
        if data["quotas"]:
            click.echo("quotas (what each partner stored here this period):")
            _table(_QUOTA_HEADERS, _quota_rows(data["quotas"]))

    _emit(ctx, data, human)


@main.group()
def key() -> None:
    """This node's key: show it, rotate it (partners follow, with an overlap)."""


@key.command("show")
@click.pass_context
def key_show(ctx: click.Context) -> None:
    """The current DID and the retired keys kept to open old documents.

    Example: usagi key show
    """
    async def run(node: Any) -> dict[str, Any]:
        rotations = await node.ledger.own_rotations()
        return {"did": node.did, "retired": [i.did for i in node.retired],
                "rotations": [{"old": o, "new": n, "overlap_until": u} for o, n, u, _ in rotations]}

    data = _run(_with_node(ctx, run))

    def human() -> None:
        click.echo(f"current  {data['did']}")
        for did in data["retired"]:
            click.echo(f"retired  {printable(did)}")

    _emit(ctx, data, human)


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
    from datetime import timedelta

    home = _home(ctx)
    passphrase = _passphrase(home)

    async def run(node: Any) -> dict[str, Any]:
        old = node.did
        _, told = await node.rotate(passphrase, timedelta(days=overlap_days))
        return {"old": old, "new": node.did, "partners": told}

    data = _run(_with_node(ctx, run))

    def human() -> None:
        click.echo(f"rotated {data['old']}\n     -> {data['new']}")
        for name, result in data["partners"].items():
            # The partner's name and its answer (an HTTP error body) are its text.
            click.echo(f"  {printable(name)}: {printable(result)}")

    _emit(ctx, data, human)
    if any(v != "ok" for v in data["partners"].values()):
        click.echo("some partners were not told; run 'usagi key announce' when they are back",
                   err=True)


@key.command("announce")
@click.pass_context
def key_announce(ctx: click.Context) -> None:
    """Tell partners again about this node's latest rotation.

    Example: usagi key announce   (after a partner was unreachable during 'key rotate')
    """
    async def run(node: Any) -> dict[str, str]:
        # (A rotation restored from an archive keeps no statement to announce.)
        rotations = [r for r in await node.ledger.own_rotations() if r[1] == node.did and r[3]]
        if not rotations:
            raise click.ClickException("this node has no rotation statement to announce")
        told: dict[str, str] = await node.announce_rotation(rotations[0][3])
        return told

    data = _run(_with_node(ctx, run))

    def human() -> None:
        for name, result in data.items():
            click.echo(f"{printable(name)}: {printable(result)}")

    _emit(ctx, data, human)


def _register_commands() -> None:
    from .archive import archive
    from .plugins import extract_command, plugins_group, user_group
    from .tokens import token_group

    main.add_command(plugins_group)
    main.add_command(user_group)
    main.add_command(extract_command)
    main.add_command(archive)
    main.add_command(token_group)


_register_commands()


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's temporary homes.")
def demo(keep: bool) -> None:
    """Two companies on loopback trade quote -> order -> response -> delivery -> invoice.

    Example: usagi demo --keep   (keeps the two temporary homes to look at)
    """
    from ..demo import run_demo

    raise SystemExit(run_demo(keep=keep))


if __name__ == "__main__":
    main()
