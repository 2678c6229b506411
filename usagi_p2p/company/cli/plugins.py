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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ...node import users
from ...node.home import Config, Home
from ...node.plugin_host import PluginHost, available
from ...node.terminal import json_text, printable
from ...node.users import add_user, move_user
from .common import errors, user_passphrase
from .common import home_of as _home
from .common import wants_json as _json

__all__ = ["plugins_group", "user_group", "extract_command", "approver", "user_passphrase"]


def _split(names: str | None) -> list[str] | None:
    if names is None:
        return None
    return [n.strip() for n in names.split(",") if n.strip()]


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
    config = _home(ctx).load_config()
    rows = PluginHost.for_config(config).describe()
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
    home = _home(ctx)
    config = home.load_config()
    installed = available()
    if name not in installed:
        raise click.ClickException(f"no plugin {name!r} is installed; available: "
                                   f"{', '.join(sorted(installed)) or 'none'}")
    host = PluginHost.load([name], settings=config.plugin_settings)
    if name in host.broken:
        raise click.ClickException(f"plugin {name} is broken: {host.broken[name]}")
    def enable(config: Config) -> Config:
        if name not in config.plugins:
            config.plugins.append(name)
        return config

    if name not in config.plugins:
        config = home.update_config(enable)
    click.echo(printable(f"enabled {name}: {', '.join(config.plugins)}"))


@plugins_group.command("disable")
@click.argument("name")
@click.pass_context
def plugins_disable(ctx: click.Context, name: str) -> None:
    """Disable a plugin; documents already stored keep their fields.

    Example: usagi plugins disable food
    """
    def disable(config: Config) -> Config:
        if name not in config.plugins:
            raise click.ClickException(f"{name} is not enabled")
        config.plugins.remove(name)
        return config

    config = _home(ctx).update_config(disable)
    click.echo(printable(f"disabled {name}: {', '.join(config.plugins) or 'no plugins enabled'}"))


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
    home = _home(ctx)
    config = home.load_config()
    if name not in available():
        raise click.ClickException(f"no plugin {name!r} is installed")
    changed = bool(settings or unset or clear)

    def configure(config: Config) -> dict[str, Any]:
        current: dict[str, Any] = {} if clear else dict(config.plugin_settings.get(name, {}))
        for key in unset:
            if key not in current:
                raise click.ClickException(f"{name} has no setting {key!r}")
            del current[key]
        for item in settings:
            key, sep, text = item.partition("=")
            if not sep or not key.isidentifier():
                raise click.ClickException(f"expected KEY=JSON, got {item!r}")
            try:
                current[key] = json.loads(text)
            except json.JSONDecodeError as exc:
                if text.lstrip()[:1] in ("{", "[", '"'):
                    raise click.ClickException(f"{key}: not valid JSON: {exc}") from None
                current[key] = text  # a bare word is a string: site=Umeda
        if changed:
            host = PluginHost.load([name], settings={name: current})
            if name in host.broken:
                raise click.ClickException(f"not saved: {host.broken[name]}")
            if current:
                config.plugin_settings[name] = current
            else:
                config.plugin_settings.pop(name, None)
        return current

    # A change is made to the config as it is under the lock (others write it too).
    current = home.update_config(configure) if changed else configure(config)
    if _json(ctx):
        click.echo(json_text(current))
        return
    prefix = "saved; restart usagi serve to apply. " if changed else ""
    shown = json_text(current, indent=None) if current else "defaults"
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

    Example: usagi user add suzuki --plugins medical --role pharmacist
    """
    home = _home(ctx)
    passphrase = None
    if not insecure_no_passphrase:
        passphrase = os.environ.get("USAGI_PASSPHRASE_" + name.upper()) or (
            str(click.prompt(f"New passphrase for {name}", hide_input=True,
                             confirmation_prompt=True)))
    with errors():
        identity = add_user(home, name, passphrase, plugins=_split(plugins), role=role)
    click.echo(json_text({"user": name, "did": identity.did}, indent=None) if _json(ctx)
               else printable(f"user {name} {identity.did}"))


@user_group.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """Users with their DID, plugins and role.

    Example: usagi user list
    """
    config = _home(ctx).load_config()
    if _json(ctx):
        click.echo(json_text(config.users))
        return
    for name, entry in sorted(config.users.items()):
        plugins = ",".join(entry["plugins"]) if "plugins" in entry else "(all enabled)"
        click.echo(printable(f"{name:<16} {plugins:<24} {entry.get('role') or '-':<12} "
                             f"{entry.get('did')}"))


@user_group.command("move")
@click.argument("name")
@click.option("--plugins", default=None, help="The new comma-separated subset.")
@click.option("--all", "all_plugins", is_flag=True, help="Work with every enabled plugin.")
@click.pass_context
def user_move(ctx: click.Context, name: str, plugins: str | None, all_plugins: bool) -> None:
    """Move a user to other plugins: a config change, nothing is migrated.

    Example: usagi user move tanaka --plugins food
    """
    if (plugins is None) == (not all_plugins):
        raise click.ClickException("give either --plugins a,b or --all")
    with errors():
        move_user(_home(ctx), name, None if all_plugins else _split(plugins))
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
    host = PluginHost.for_config(_home(ctx).load_config())
    result = host.extract(text, user=user)
    if _json(ctx):
        click.echo(json_text(result))
        return
    if not result and not host.plugins:
        click.echo("no plugins are enabled, so nothing is extracted; see 'usagi plugins list' "
                   "and 'usagi plugins enable NAME' (the line is valid as free text)")
    elif not result:
        click.echo("nothing recognised (the line is still valid as free text)")
    for namespace, fields in result.items():
        click.echo(f"{printable(namespace)}:")
        for key, value in fields.items():
            click.echo(f"  {printable(key)}: {printable(value)}")
    for name, reason in host.broken.items():
        click.echo(printable(f"plugin {name} is broken: {reason}"), err=True)
