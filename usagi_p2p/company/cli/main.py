"""``usagi``: the command line of a usagi-p2p node.

Every command takes ``--home`` (default ``$USAGI_HOME``, else a per-user data
folder) and most take ``--json`` for scripts. The passphrase of a protected
identity comes from ``$USAGI_PASSPHRASE`` or a prompt.

The root group and the commands about this node (``init``, ``status``,
``demo``) live here; the others by concern: ``serve`` (serve.py), partners
and invitations (partners.py), documents (documents.py), keys (keys.py),
archives (archive.py), plugins and users (plugins.py). What they share —
running, passphrases, output and the one error path — is common.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import click

from ...node.home import Home, default_home
from ...node.terminal import LogFormatter, excepthook, printable
from .common import Group, emit, home_of, new_passphrase, ride, run, table, with_node

if TYPE_CHECKING:
    from ...node.operations import NodeStatus, QuotaUsage

__all__ = ["main"]

EXAMPLES = {
    "init": "usagi --home ./kanto init --name 'Kanto Machine Tools' --port 8470",
    "serve": "usagi --home ./kanto serve",
    "invite": "usagi --home ./kanto invite --days 7",
    "partner add": "usagi --home ./osaka partner add usagi1:oWNzaWdYQ…",
    "send": "usagi --home ./kanto send quote --to 'Osaka Precision' quote.yaml",
}


class _Root(Group):
    examples = EXAMPLES


@click.group(cls=_Root)
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
    level = logging.WARNING - 10 * verbose
    # Log lines carry partners' text (names, refs, reasons): one line each, escaped.
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler])
    sys.excepthook = excepthook
    ctx.ensure_object(dict)
    ctx.obj["home"] = Home(home or default_home())
    ctx.obj["json"] = as_json


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
    home = home_of(ctx)
    passphrase: str | None = None
    if insecure_no_passphrase:
        click.echo("WARNING: the private key is stored WITHOUT a passphrase.", err=True)
    else:
        passphrase = new_passphrase("USAGI_PASSPHRASE", "",
                                    "set USAGI_PASSPHRASE or use --insecure-no-passphrase")
    # A home that exists already is a config_error, like every other home problem.
    identity = home.create(name, passphrase, endpoint=endpoint, port=port, host=host)
    if kubo_url:
        home.update_config(lambda config: setattr(config, "kubo_url", kubo_url))
    emit(ctx, {"did": identity.did, "home": str(home.path)},
         lambda: click.echo(f"Created {printable(name)}\n  did:  {identity.did}\n"
                            f"  home: {printable(home.path)}"))


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """This node: identity, endpoint, store, partners, documents, outbox.

    Example: usagi --json status
    """
    from ..views import QUOTA_HEADERS, quota_row, status_json

    rode = ride(ctx, "GET", "/api/v1/status")
    if rode is not None:
        state = _status_of(rode)
    else:
        from ...node.operations import node_status

        state = run(with_node(ctx, node_status))
    data = status_json(state)

    def human() -> None:
        for key, value in data.items():
            if key != "quotas":
                click.echo(f"{key:9} {printable(value)}")
        if state.quotas:
            click.echo("quotas (what each partner stored here this period):")
            table(QUOTA_HEADERS, [quota_row(q) for q in state.quotas])

    emit(ctx, data, human)


def _status_of(data: dict[str, Any]) -> NodeStatus:
    """``GET /api/v1/status`` read as the operations' NodeStatus, which views.py prints."""
    from datetime import datetime

    quotas = tuple(cast("QuotaUsage", SimpleNamespace(
        **{**q, "resets_at": datetime.fromisoformat(q["resets_at"].replace("Z", "+00:00"))
           .timestamp()})) for q in data["quotas"])
    return cast("NodeStatus", SimpleNamespace(
        name=data["name"], did=data["did"], endpoint=data["endpoints"]["peer"]["public"],
        store=data["store"], partners=data["partners"], sent=data["documents"]["sent"],
        received=data["documents"]["received"],
        # The ledger's counts name only the states it holds (no zeros).
        outbox={k: v for k, v in data["outbox"].items() if v}, serving=True, quotas=quotas))


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's temporary homes.")
@click.option("--ui", is_flag=True,
              help="Then keep both nodes running and print their web UI sign-in links "
                   "until Ctrl-C.")
def demo(keep: bool, ui: bool) -> None:
    """Two companies on loopback trade quote -> order -> response -> delivery -> invoice.

    Example: usagi demo --keep   (keeps the two temporary homes to look at)

    Example: usagi demo --ui     (then open the printed links: the trade in a browser)
    """
    from ..demo import run_demo

    raise SystemExit(run_demo(keep=keep, ui=ui))


def _register_commands() -> None:
    from .archive import archive
    from .commerce import match
    from .documents import inbox, outbox, send, show, thread, verify
    from .exchange import export_command, import_command, profile_command
    from .keys import key
    from .partners import invite, partner
    from .plugins import extract_command, plugins_group, user_group
    from .search import search
    from .serve import serve
    from .tokens import token_group
    from .ui import ui_command
    from .webhooks import webhook_group

    commands: list[Any] = [serve, invite, partner, send, inbox, outbox, show, thread, verify,
                           key, plugins_group, user_group, extract_command, archive, token_group,
                           search, webhook_group, match, export_command, import_command,
                           profile_command, ui_command]
    for command in commands:
        main.add_command(command)


_register_commands()


if __name__ == "__main__":
    main()
