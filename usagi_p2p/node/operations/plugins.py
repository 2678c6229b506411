"""The node's plugins and users: what is enabled, what a line would become, who works here.

Part of ``usagi_p2p.node.operations`` (see there). docs/plugins.md says what
plugins and users are; these are the looks a face takes at them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kernel.plugin import Finding

from ..errors import ConfigError
from ..node import Node
from ..plugin_host import PluginHost, PluginInfo

__all__ = ["LinePreview", "Preview", "UserInfo", "plugin_list", "extract_preview", "user_list"]

_LINE_PATH: Final = re.compile(r"lines\[(\d+)\]")


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


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user of this node as its config records it; never its key."""

    name: str
    did: str | None
    #: The plugin subset the user works with; None: every enabled plugin.
    plugins: tuple[str, ...] | None
    #: The user's role in approval routes, if any.
    role: str | None


async def plugin_list(node: Node) -> list[PluginInfo]:
    """The running node's plugins: enabled, broken, then installed but not enabled."""
    return node.plugins.describe()


async def extract_preview(node: Node, lines: Sequence[str], *, kind: str = "quote",
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
        tuple(whole), tuple(name for name, _ in preview_host.for_user(user)))


async def user_list(node: Node) -> list[UserInfo]:
    """The users the config records (``usagi user list``), by name."""
    users = node.home.load_config().users
    out = []
    for name, entry in sorted(users.items()):
        subset = entry.get("plugins")
        out.append(UserInfo(name, entry.get("did"),
                            tuple(subset) if isinstance(subset, list) else None,
                            entry.get("role") or None))
    return out
