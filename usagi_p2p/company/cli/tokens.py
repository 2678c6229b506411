"""``usagi token …``: the local API's bearer tokens (docs/api.md, "Tokens").

These commands edit ``HOME/api-tokens.json`` directly: they need neither the
passphrase nor a running node, and a running node sees each change at its
next request. A token's secret is printed once, by ``create``, and never
stored; ``list`` shows names, scopes and times only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from ...node.errors import ConfigError
from ...node.home import Home
from ...node.terminal import json_text, printable
from ..api.tokens import SCOPES, TokenStore
from .common import errors

__all__ = ["token_group"]


def _store(ctx: click.Context) -> TokenStore:
    home: Home = ctx.obj["home"]
    if not home.config_path.exists():
        raise ConfigError(f"{home.path} is not a node's home (usagi init first)")
    home.make_private()
    return TokenStore(home.path)


def _when(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


@click.group("token")
def token_group() -> None:
    """Tokens for the local API (ERP, scripts): create, list, revoke."""


@token_group.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="read", show_default=True,
              help="read < send < admin: what the token may do.")
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str) -> None:
    """Make a token and print it, once: it is stored only as a hash.

    Example: usagi token create erp --scope send
    """
    with errors():
        secret = _store(ctx).create(name, scope)
    if ctx.obj.get("json"):
        click.echo(json_text({"name": name, "scope": scope, "token": secret}))
        return
    click.echo(secret)
    click.echo(f"token {printable(name)} ({scope}) made; it is shown only now: keep it in "
               "your system's secret store", err=True)


@token_group.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Names, scopes, when made and when last used; never the secrets.

    Example: usagi token list
    """
    with errors():
        store = _store(ctx)
        tokens = store.tokens()
        used = store.last_used()
    rows: list[dict[str, Any]] = [{"name": t.name, "scope": t.scope, "created": _when(t.created),
                                   "last_used": _when(used.get(t.id))} for t in tokens]
    if ctx.obj.get("json"):
        click.echo(json_text(rows))
        return
    for row in rows:
        click.echo(f"{printable(row['name']):20} {row['scope']:6} created {row['created']}  "
                   f"last used {row['last_used'] or '-'}")


@token_group.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Remove a token: a running node refuses it from its next request on.

    Example: usagi token revoke erp
    """
    with errors():
        gone = _store(ctx).revoke(name)
    if ctx.obj.get("json"):
        click.echo(json.dumps({"revoked": gone.name}))
    else:
        click.echo(f"revoked {printable(gone.name)}")
