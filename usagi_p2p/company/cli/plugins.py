"""``usagi plugins …``, ``usagi user …``, ``usagi extract``: plugin and user commands.

Implements the command-line part of docs/plugins.md. The groups are plain
click objects registered on the main ``usagi`` group by ``main.py``; they read
``--home`` and ``--json`` from the context the main group sets up, and fail
through the one error path of ``common.py``.

The approval route's UX is ``usagi send medical.order … --approve-as suzuki
--approve-as sato``: the node builds the complete document (``issued_at``,
``from``, ``to``), each named user's key signs it, and only then is it sealed
and sent. :func:`approver` is what ``send`` calls for that; the user keys are
unlocked before anything is built (``USAGI_PASSPHRASE_<USER>`` or a prompt),
so a wrong passphrase sends nothing. The approvals themselves are made by the
plugin that approves the document's kind, through the optional plugin hook
``approve`` (docs/plugins.md): the same way a third party's plugin would.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ...node import users
from ...node.home import Home
from ...node.plugin_host import PluginHost, PluginInfo
from ...node.terminal import json_text, printable
from .common import errors, new_passphrase, run, user_passphrase, user_passphrase_env
from .common import home_of as _home
from .common import wants_json as _json

if TYPE_CHECKING:  # the node (aiohttp, the stores) is imported by the commands that run
    from ...node import operations as ops

__all__ = ["plugins_group", "user_group", "extract_command", "approver", "user_passphrase"]


def _split(names: str | None) -> list[str] | None:
    if names is None:
        return None
    return [n.strip() for n in names.split(",") if n.strip()]


T = TypeVar("T")


def _offline(ctx: click.Context) -> ops.PluginScope:
    """This home's plugins and users, without opening the node (no passphrase)."""
    from ...node import operations as ops

    with errors():
        return ops.offline(_home(ctx))


async def _ops(ctx: click.Context, operation: Callable[[ops.PluginScope], Awaitable[T]]) -> T:
    return await operation(_offline(ctx))


def approver(home: Home, names: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that adds an approval by each of the users ``names`` to a built document.

    Keys are unlocked now (:func:`user_passphrase`), so a missing or wrong
    passphrase fails before anything is sealed; roles come from
    ``config.users[name]["role"]`` (``usagi_p2p.node.users.approver``).
    """
    return users.approver(home, [(name, user_passphrase(home, name)) for name in names])


# -- usagi plugins ---------------------------------------------------------------


@click.group("plugins")
def plugins_group() -> None:
    """Industry plugins: list, enable, disable, configure, check a document."""


@plugins_group.command("list")
@click.pass_context
def plugins_list(ctx: click.Context) -> None:
    """Show enabled, available (installed, not enabled) and broken plugins.

    Example: usagi plugins list
    """
    from ...node import operations as ops

    rows = run(_ops(ctx, ops.plugin_list))
    if _json(ctx):
        click.echo(json_text([r.to_json() for r in rows]))
        return
    if not rows:
        click.echo("no plugins installed")
    for row in rows:
        detail = row.reason if row.state == "broken" else ", ".join(row.kinds) or "-"
        click.echo(printable(f"{row.state:<9} {row.name:<14} {row.version or '':<6} {detail}"))


@plugins_group.command("enable")
@click.argument("name")
@click.pass_context
def plugins_enable(ctx: click.Context, name: str) -> None:
    """Enable an installed plugin for this node (takes effect on the next start).

    Example: usagi plugins enable food
    """
    from ...node import operations as ops

    enabled = run(ops.enable_plugin(_offline(ctx), name))
    click.echo(printable(f"enabled {name}: {', '.join(enabled)}"))


@plugins_group.command("disable")
@click.argument("name")
@click.pass_context
def plugins_disable(ctx: click.Context, name: str) -> None:
    """Disable a plugin; documents already stored keep their fields.

    Example: usagi plugins disable food
    """
    from ...node import operations as ops

    enabled = run(ops.disable_plugin(_offline(ctx), name))
    click.echo(printable(f"disabled {name}: {', '.join(enabled) or 'no plugins enabled'}"))


@plugins_group.command("configure")
@click.argument("name")
@click.argument("settings", nargs=-1)
@click.option("--unset", "unset", multiple=True, help="Remove one setting; repeatable.")
@click.option("--clear", is_flag=True, help="Remove every setting of this plugin.")
@click.pass_context
def plugins_configure(ctx: click.Context, name: str, settings: tuple[str, ...],
                      unset: tuple[str, ...], clear: bool) -> None:
    """Show or change a plugin's settings: KEY=JSON, e.g. required_roles='["pharmacist"]'.

    Settings are the keyword arguments of the plugin's constructor
    (docs/plugins.md, "Settings"). The plugin is started with the new settings
    first; settings it refuses are not saved. Takes effect on the next start.

    Example: usagi plugins configure construction 'schedules={"芝浦": {"hours": "08:00-12:00"}}'
    """
    from ...node import operations as ops

    values: dict[str, Any] = {}
    for item in settings:
        # Reading the command line's KEY=JSON is this face's; the rules are the operation's.
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.ClickException(f"expected KEY=JSON, got {item!r}")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip()[:1] in ("{", "[", '"'):
                raise click.ClickException(f"{key}: not valid JSON: {exc}") from None
            values[key] = text  # a bare word is a string: site=Umeda
    result = run(ops.configure_plugin(_offline(ctx), name, values=values, unset=unset,
                                      clear=clear))
    if _json(ctx):
        click.echo(json_text(result.settings))
        return
    prefix = "saved; restart usagi serve to apply. " if result.changed else ""
    shown = json_text(result.settings, indent=None) if result.settings else "defaults"
    click.echo(printable(f"{prefix}{name}: {shown}"))


@plugins_group.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--user", default=None, help="Check with this user's plugins only.")
@click.pass_context
def plugins_check(ctx: click.Context, file: Path, user: str | None) -> None:
    """Print the findings of the enabled plugins on a document (JSON or YAML).

    Example: usagi plugins check order.yaml --user tanaka
    """
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        document = yaml.safe_load(text)
    else:
        document = json.loads(text)
    host = PluginHost.for_config(_home(ctx).load_config())
    findings = host.validate(document, user=user)
    if _json(ctx):
        click.echo(json_text([f.to_json() for f in findings]))
    else:
        for finding in findings:
            click.echo(printable(finding))
        click.echo(f"{len(findings)} finding(s)")
    if any(f.is_error for f in findings):
        raise SystemExit(1)


# -- usagi user --------------------------------------------------------------------


@click.group("user")
def user_group() -> None:
    """Users (employees) of this node: keys, plugin subsets, approval roles."""


@user_group.command("add")
@click.argument("name")
@click.option("--plugins", default=None, help="Comma-separated subset (default: all enabled).")
@click.option("--role", default=None, help="Role in approval routes, e.g. pharmacist.")
@click.option("--insecure-no-passphrase", is_flag=True, help="Store the key unprotected.")
@click.pass_context
def user_add(ctx: click.Context, name: str, plugins: str | None, role: str | None,
             insecure_no_passphrase: bool) -> None:
    """Create a user with an own Ed25519 key in HOME/users/NAME.key.

    The passphrase comes from USAGI_PASSPHRASE_<NAME> (upper case, - and . as
    _: sato-k reads USAGI_PASSPHRASE_SATO_K), else it is asked for twice.

    Example: usagi user add suzuki --plugins medical --role pharmacist
    """
    from ...node import operations as ops

    scope = _offline(ctx)  # a missing home fails before a passphrase is asked for
    passphrase = None
    if not insecure_no_passphrase:
        env = user_passphrase_env(name)
        with errors():
            passphrase = new_passphrase(env, f" for {name}",
                                        f"set {env} or use --insecure-no-passphrase")
    user = run(ops.add_user(scope, name, passphrase, plugins=_split(plugins), role=role))
    click.echo(json_text({"user": name, "did": user.did}, indent=None) if _json(ctx)
               else printable(f"user {name} {user.did}"))


@user_group.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """Users with their DID, plugins and role.

    Example: usagi user list
    """
    from ...node import operations as ops

    users = run(_ops(ctx, ops.user_list))
    if _json(ctx):
        click.echo(json_text({u.name: _user_entry(u) for u in users}))
        return
    for user in users:
        plugins = ",".join(user.plugins) if user.plugins is not None else "(all enabled)"
        click.echo(printable(f"{user.name:<16} {plugins:<24} {user.role or '-':<12} "
                             f"{user.did}"))


def _user_entry(user: ops.UserInfo) -> dict[str, Any]:
    # The entry as the config records it: what 'user list --json' has always shown.
    entry: dict[str, Any] = {"did": user.did}
    if user.plugins is not None:
        entry["plugins"] = list(user.plugins)
    if user.role:
        entry["role"] = user.role
    return entry


@user_group.command("move")
@click.argument("name")
@click.option("--plugins", default=None, help="The new comma-separated subset.")
@click.option("--all", "all_plugins", is_flag=True, help="Work with every enabled plugin.")
@click.pass_context
def user_move(ctx: click.Context, name: str, plugins: str | None, all_plugins: bool) -> None:
    """Move a user to other plugins: a config change, nothing is migrated.

    Example: usagi user move tanaka --plugins food
    """
    from ...node import operations as ops

    if (plugins is None) == (not all_plugins):
        raise click.UsageError("give either --plugins a,b or --all")
    run(ops.move_user(_offline(ctx), name, None if all_plugins else _split(plugins)))
    click.echo(printable(f"user {name}: "
                         f"{plugins if plugins is not None else 'all enabled plugins'}"))


# -- usagi extract -----------------------------------------------------------------


@click.command("extract")
@click.argument("text")
@click.option("--user", default=None, help="Use this user's plugins only.")
@click.pass_context
def extract_command(ctx: click.Context, text: str, user: str | None) -> None:
    """Print what each enabled plugin extracts from a line of free text.

    Example: usagi extract "M6x20 SUS304 hex bolt" --user tanaka
    """
    from ...node import operations as ops


    async def extracting() -> tuple[list[PluginInfo], ops.Preview]:
        scope = _offline(ctx)
        return await ops.plugin_list(scope), await ops.extract_preview(scope, [text], user=user)

    rows, preview = run(extracting())
    result = preview.lines[0].fields
    if _json(ctx):
        click.echo(json_text(result))
        return
    if not result and not any(row.state == "enabled" for row in rows):
        click.echo("no plugins are enabled, so nothing is extracted; see 'usagi plugins list' "
                   "and 'usagi plugins enable NAME' (the line is valid as free text)")
    elif not result:
        click.echo("nothing recognised (the line is still valid as free text)")
    for namespace, fields in result.items():
        click.echo(f"{printable(namespace)}:")
        for key, value in fields.items():
            click.echo(f"  {printable(key)}: {printable(value)}")
    broken = {row.name: row.reason for row in rows if row.state == "broken"}
    for name, reason in {**broken, **preview.broken}.items():
        click.echo(printable(f"plugin {name} is broken: {reason}"), err=True)
