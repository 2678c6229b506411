"""The node's plugins and users: what is enabled, what a line would become, who works here.

Part of ``usagi_p2p.node.operations`` (see there). docs/plugins.md says what
plugins and users are; these are the looks a face takes at them and the
changes it makes to them.

Each operation takes a :class:`PluginScope`: a running :class:`Node` is one,
and :func:`offline` makes one from a home alone, for the commands that need
neither the passphrase nor a running node (``usagi plugins …``, ``usagi
user …``, ``usagi extract``). Changes are written to the home's config and
take effect when the node starts next; every rule is checked before anything
is written, so a refused change leaves the config as it was.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from kernel.plugin import Finding

from .. import users as _users
from ..errors import ConfigError, PluginConfigError
from ..home import Config, Home
from ..plugin_host import PluginHost, PluginInfo, available

__all__ = ["PluginScope", "offline", "LinePreview", "Preview", "UserInfo", "PluginSettings",
           "plugin_list", "extract_preview", "user_list", "enable_plugin", "disable_plugin",
           "configure_plugin", "add_user", "move_user", "remove_user"]

_LINE_PATH: Final = re.compile(r"lines\[(\d+)\]")


class PluginScope(Protocol):
    """What these operations need of a node: its home and its plugin host.

    A running :class:`~usagi_p2p.node.node.Node` is one; :func:`offline`
    makes one without opening the node.
    """

    @property
    def home(self) -> Home: ...

    @property
    def plugins(self) -> PluginHost: ...


@dataclass(frozen=True, slots=True)
class _Offline:
    home: Home
    plugins: PluginHost


def offline(home: Home) -> PluginScope:
    """The plugins and users of the node at ``home``, read from its config
    without opening the node (no passphrase, no ledger); ConfigError for a
    missing or broken config."""
    return _Offline(home, PluginHost.for_config(home.load_config()))


@dataclass(frozen=True, slots=True)
class LinePreview:
    """What the plugins make of one line of free text."""

    text: str
    #: Per plugin namespace, the fields it extracts (what a send fills in).
    fields: dict[str, dict[str, str]]
    #: The plugins' findings on this line, with the line filled in.
    findings: tuple[Finding, ...]


@dataclass(frozen=True, slots=True)
class Preview:
    lines: tuple[LinePreview, ...]
    #: Findings on the document as a whole (not on one of its lines).
    findings: tuple[Finding, ...]
    #: The plugins that looked.
    plugins: tuple[str, ...]
    #: Plugins that failed while looking (name -> reason): disabled for this preview.
    broken: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user of this node as its config records it; never its key."""

    name: str
    did: str | None
    #: The plugin subset the user works with; None: every enabled plugin.
    plugins: tuple[str, ...] | None
    #: The user's role in approval routes, if any.
    role: str | None


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """A plugin's settings as the config holds them (the constructor's keyword arguments)."""

    name: str
    settings: dict[str, Any]
    #: Whether this call changed (and saved) them.
    changed: bool


async def plugin_list(node: PluginScope) -> list[PluginInfo]:
    """The running node's plugins: enabled, broken, then installed but not enabled."""
    return node.plugins.describe()


async def extract_preview(node: PluginScope, lines: Sequence[str], *, kind: str = "quote",
                          plugins: Sequence[str] | None = None, user: str | None = None
                          ) -> Preview:
    """What the running node's plugins extract from each line and what they would
    say about a ``kind`` with those lines: nothing is built, sent or stored.

    ``plugins`` narrows to some of the enabled plugins, ``user`` to a user's
    subset (both: the plugins in both). ConfigError for a plugin that is not
    enabled or a user the config does not know.
    """
    host = node.plugins
    users = node.home.load_config().users
    if user is not None and user not in users:
        raise ConfigError(f"no user {user!r} (see 'usagi user list')")
    chosen = dict(host.plugins)
    if plugins is not None:
        missing = [p for p in plugins if p not in chosen]
        if missing:
            raise ConfigError(f"not enabled on this node: {', '.join(missing)}")
        chosen = {n: p for n, p in chosen.items() if n in plugins}
    # A host of its own: a plugin failing here is disabled for this preview only.
    preview_host = PluginHost(chosen, {}, users, host.installed)
    extracted = [preview_host.extract(text, user=user) for text in lines]
    document = {"v": 1, "kind": kind,
                "lines": [{"text": text, "ext": fields} if fields else {"text": text}
                          for text, fields in zip(lines, extracted, strict=True)]}
    per_line: list[list[Finding]] = [[] for _ in lines]
    whole: list[Finding] = []
    for finding in preview_host.validate(document, user=user):
        match = _LINE_PATH.match(finding.path)
        index = int(match.group(1)) if match else -1
        (per_line[index] if 0 <= index < len(lines) else whole).append(finding)
    return Preview(
        tuple(LinePreview(text, fields, tuple(found))
              for text, fields, found in zip(lines, extracted, per_line, strict=True)),
        tuple(whole), tuple(name for name, _ in preview_host.for_user(user)),
        dict(preview_host.broken))


async def user_list(node: PluginScope) -> list[UserInfo]:
    """The users the config records (``usagi user list``), by name."""
    users = node.home.load_config().users
    return [_user_info(name, entry) for name, entry in sorted(users.items())]


def _user_info(name: str, entry: Mapping[str, Any]) -> UserInfo:
    subset = entry.get("plugins")
    return UserInfo(name, entry.get("did"), tuple(subset) if isinstance(subset, list) else None,
                    entry.get("role") or None)


async def enable_plugin(node: PluginScope, name: str) -> tuple[str, ...]:
    """Enable the installed plugin ``name`` (from the next start on); the enabled plugins.

    PluginConfigError if it is not installed or does not start with this
    node's settings for it. Enabling an enabled plugin changes nothing.
    """
    home = node.home
    installed = available()
    if name not in installed:
        raise PluginConfigError(f"no plugin {name!r} is installed; available: "
                                f"{', '.join(sorted(installed)) or 'none'}")

    def enable(config: Config) -> tuple[str, ...]:
        # Under the config's lock, on the config as it is now (other processes write it).
        host = PluginHost.load([name], settings=config.plugin_settings)
        if name in host.broken:
            raise PluginConfigError(f"plugin {name} is broken: {host.broken[name]}")
        if name not in config.plugins:
            config.plugins.append(name)
        return tuple(config.plugins)

    return await asyncio.to_thread(home.update_config, enable)


async def disable_plugin(node: PluginScope, name: str) -> tuple[str, ...]:
    """Disable ``name`` (from the next start on); the plugins still enabled.

    Documents already stored keep their fields. PluginConfigError if it is not enabled.
    """
    def disable(config: Config) -> tuple[str, ...]:
        if name not in config.plugins:
            raise PluginConfigError(f"{name} is not enabled")
        config.plugins.remove(name)
        return tuple(config.plugins)

    return await asyncio.to_thread(node.home.update_config, disable)


async def configure_plugin(node: PluginScope, name: str, *,
                           values: Mapping[str, Any] | None = None, unset: Sequence[str] = (),
                           clear: bool = False) -> PluginSettings:
    """Change the settings of plugin ``name``: drop all (``clear``), then each of
    ``unset``, then set ``values``; with none of them, only show them.

    The plugin is started with the new settings first: settings it refuses
    are not saved (PluginConfigError with its reason), nor are any for a
    plugin that is not installed or a setting to unset that it does not have.
    """
    if name not in available():
        raise PluginConfigError(f"no plugin {name!r} is installed")
    changed = bool(values or unset or clear)

    def configure(config: Config) -> dict[str, Any]:
        current: dict[str, Any] = {} if clear else dict(config.plugin_settings.get(name, {}))
        for key in unset:
            if key not in current:
                raise PluginConfigError(f"{name} has no setting {key!r}")
            del current[key]
        current.update(values or {})
        if changed:
            host = PluginHost.load([name], settings={name: current})
            if name in host.broken:
                raise PluginConfigError(f"not saved: {host.broken[name]}")
            if current:
                config.plugin_settings[name] = current
            else:
                config.plugin_settings.pop(name, None)
        return current

    # A change is made to the config as it is under the lock (others write it too).
    if changed:
        current = await asyncio.to_thread(node.home.update_config, configure)
    else:
        current = configure(node.home.load_config())
    return PluginSettings(name, current, changed)


async def add_user(node: PluginScope, name: str, passphrase: str | None, *,
                   plugins: Sequence[str] | None = None, role: str | None = None) -> UserInfo:
    """Create user ``name`` with an own key (``passphrase`` protects it; None: stored
    unprotected) working with ``plugins`` (None: every enabled plugin).

    ConfigError for a name that is not allowed or a user that exists.
    """
    # Not on the event loop: the key's argon2id costs ~1 s and 256 MiB (a serving
    # node's web UI adds users while it keeps answering partners).
    await asyncio.to_thread(_users.add_user, node.home, name, passphrase, plugins=plugins,
                            role=role)
    return _user_info(name, node.home.load_config().users[name])


async def move_user(node: PluginScope, name: str, plugins: Sequence[str] | None) -> UserInfo:
    """Give user ``name`` another plugin subset (None: every enabled plugin).

    A config change: documents already sent keep their fields. ConfigError
    for a user the config does not know.
    """
    config = _users.move_user(node.home, name, plugins)
    return _user_info(name, config.users[name])


async def remove_user(node: PluginScope, name: str) -> None:
    """Forget user ``name``; its key file is kept, renamed, because past approvals
    name its DID. ConfigError for a user the config does not know."""
    _users.remove_user(node.home, name)
