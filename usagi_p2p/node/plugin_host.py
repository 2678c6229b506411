"""The plugin host: discovers plugins by entry point and runs their hooks in isolation.

Implements docs/plugins.md ("Enabling plugins", "Broken plugins"). Plugins are
found under the entry-point group ``usagi_p2p.plugins`` — the four built-ins
the same way as a third party's — and enabled by name from the node's
``config.plugins``. Users of the node (``config.users``) may be assigned a
subset (``{"tanaka": {"plugins": ["construction"]}}``); a user with no
``plugins`` entry works with everything the company enabled.

A plugin that fails to load, does not meet the contract, or raises in a hook
is recorded in :attr:`PluginHost.broken` with the reason and disabled for the
life of the host. It never takes the node down: a document a broken plugin
would have looked at is judged by the kernel and the other plugins alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from kernel.errors import InvalidDocumentError
from kernel.plugin import ENTRY_POINT_GROUP, Approving, Finding, Plugin, contract_problems

from .errors import ConfigError

if TYPE_CHECKING:
    from kernel import Identity

__all__ = ["PluginHost", "PluginInfo", "PluginRejectedError", "UnknownKindError", "available",
           "findings_json"]

log = logging.getLogger("usagi.plugins")

T = TypeVar("T")


class PluginRejectedError(InvalidDocumentError):
    """An enabled plugin found an error in the document (a field it requires on its own kind)."""

    code = "plugin_rejected"

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = [f for f in findings if f.is_error]
        super().__init__("; ".join(str(f) for f in self.findings[:10]) or None)


class UnknownKindError(InvalidDocumentError):
    """No plugin enabled on this node declares the document's kind."""

    code = "unknown_kind"


def findings_json(findings: list[Finding]) -> str:
    """Findings as the JSON text stored with a document in the ledger."""
    if not findings:
        return "[]"  # nearly every document; json.dumps costs ~3 us even for this
    return json.dumps([f.to_json() for f in findings], ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One line of ``usagi plugins list``."""

    name: str
    state: str  # "enabled", "available" or "broken"
    version: str | None
    kinds: tuple[str, ...]
    line_fields: tuple[str, ...]
    source: str | None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "version": self.version,
                "kinds": list(self.kinds), "line_fields": list(self.line_fields),
                "source": self.source, "reason": self.reason}


def available() -> dict[str, EntryPoint]:
    """Every plugin installed in this Python environment, by entry-point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _instantiate(loaded: Any, settings: Mapping[str, Any] | None = None) -> Any:
    # An entry point may name an instance (the built-ins do) or a class or
    # factory to call without arguments. Settings are the constructor's keyword
    # arguments: an instance is rebuilt from its class with them.
    if isinstance(loaded, type) or (callable(loaded) and not hasattr(loaded, "validate")):
        return loaded(**(settings or {}))
    if settings:
        return type(loaded)(**settings)
    return loaded


class PluginHost:
    """The enabled plugins of one node, each run so that its failure stays its own."""

    def __init__(self, plugins: Mapping[str, Plugin], broken: Mapping[str, str],
                 users: Mapping[str, Mapping[str, Any]] | None = None,
                 installed: Mapping[str, EntryPoint] | None = None) -> None:
        self.plugins: dict[str, Plugin] = dict(plugins)
        self.broken: dict[str, str] = dict(broken)
        self.users: dict[str, Mapping[str, Any]] = dict(users or {})
        self.installed: dict[str, EntryPoint] = dict(installed or {})

    @classmethod
    def load(cls, enabled: Iterable[str],
             users: Mapping[str, Mapping[str, Any]] | None = None,
             settings: Mapping[str, Mapping[str, Any]] | None = None) -> PluginHost:
        """Load the ``enabled`` plugins by entry-point name; report, never raise.

        ``settings[name]`` holds the keyword arguments that plugin's constructor
        takes; settings it refuses leave it broken with the reason.
        """
        settings = settings if isinstance(settings, Mapping) else {}
        installed = available()
        plugins: dict[str, Plugin] = {}
        broken: dict[str, str] = {}
        for name in dict.fromkeys(enabled):
            ep = installed.get(name)
            if ep is None:
                broken[name] = "not installed (no entry point in group usagi_p2p.plugins)"
                continue
            try:
                loaded = ep.load()
            except Exception as exc:  # any failure of third-party code is the plugin's
                broken[name] = f"failed to load {ep.value}: {type(exc).__name__}: {exc}"
                continue
            own = settings.get(name) or {}
            try:
                if not isinstance(own, Mapping) or not all(type(k) is str for k in own):
                    raise TypeError("settings must be a JSON object of keyword arguments")
                candidate = _instantiate(loaded, own)
            except Exception as exc:  # any failure of third-party code is the plugin's
                what = f"refused its settings {own!r}" if own else f"failed to start {ep.value}"
                broken[name] = f"{what}: {type(exc).__name__}: {exc}"
                continue
            problems = contract_problems(candidate)
            if problems:
                broken[name] = "does not meet the plugin contract: " + "; ".join(problems)
                continue
            if candidate.name != name:
                log.warning("plugin %r registered as %r; the entry-point name counts",
                            candidate.name, name)
            plugins[name] = candidate
        for name, reason in broken.items():
            log.warning("plugin %s disabled: %s", name, reason)
        return cls(plugins, broken, users, installed)

    @classmethod
    def for_config(cls, config: Any) -> PluginHost:
        """The host for a node's ``Config`` (its ``plugins``, ``users`` and settings)."""
        return cls.load(config.plugins, config.users, getattr(config, "plugin_settings", None))

    # -- isolation -------------------------------------------------------------

    def _call(self, name: str, hook: str, fn: Callable[[], T]) -> T | None:
        """Run one hook; on any exception disable the plugin and return None."""
        try:
            return fn()
        except Exception as exc:  # a plugin's bug must not become the node's
            self.broken[name] = f"{hook} raised {type(exc).__name__}: {exc}"
            self.plugins.pop(name, None)
            log.exception("plugin %s disabled: %s raised", name, hook)
            return None

    def for_user(self, user: str | None) -> list[tuple[str, Plugin]]:
        """The plugins ``user`` works with: their assigned subset, else all enabled."""
        assigned = self.users.get(user, {}).get("plugins") if user else None
        if assigned is None:
            return list(self.plugins.items())
        return [(n, p) for n, p in self.plugins.items() if n in assigned]

    # -- hooks -----------------------------------------------------------------

    def kinds(self) -> frozenset[str]:
        """Every kind the enabled plugins declare: what the kernel accepts beyond its own."""
        out: set[str] = set()
        for name, plugin in list(self.plugins.items()):
            declared = self._call(name, "kinds", lambda p=plugin: list(p.kinds))  # type: ignore[misc]
            out.update(declared or ())
        return frozenset(out)

    def check_kind(self, document: Mapping[str, Any], declared: frozenset[str] | None = None
                   ) -> None:
        """Raise UnknownKindError unless ``document``'s kind is the kernel's or one an
        enabled plugin declares (``declared``: :meth:`kinds`, when already at hand).

        Checked when a document is sent or received, never when a stored one is
        verified (docs/spec.md sections 5 and 12): what a node took in stays
        verifiable whatever plugins are enabled later, and nothing is taken in
        that no enabled plugin understands.
        """
        kind = document.get("kind")
        if type(kind) is not str or "." not in kind:
            return  # a kernel kind (or none: the kernel's own rules name that)
        if kind not in (self.kinds() if declared is None else declared):
            raise UnknownKindError(f"no plugin enabled on this node declares the kind {kind!r}")

    def validate(self, document: Mapping[str, Any], user: str | None = None) -> list[Finding]:
        """Findings of every plugin ``user`` works with (all enabled when None).

        A plugin that raises is disabled and leaves a warning finding with the
        code ``plugin_failed``, so the failure is visible where the document is.
        """
        findings: list[Finding] = []
        for name, plugin in self.for_user(user):
            result = self._call(name, "validate", lambda p=plugin: p.validate(document))  # type: ignore[misc]
            if result is None:
                findings.append(Finding(name, "warning", "", "plugin_failed",
                                        f"plugin disabled: {self.broken.get(name)}"))
                continue
            bad = [f for f in result if not isinstance(f, Finding)]
            if bad or not isinstance(result, list):
                self.broken[name] = "validate returned something other than a list of Finding"
                self.plugins.pop(name, None)
                findings.append(Finding(name, "warning", "", "plugin_failed",
                                        f"plugin disabled: {self.broken[name]}"))
                continue
            findings.extend(result)
        return findings

    def check(self, document: Mapping[str, Any], user: str | None = None) -> list[Finding]:
        """:meth:`validate`, raising PluginRejectedError when any finding is an error."""
        findings = self.validate(document, user)
        if any(f.is_error for f in findings):
            raise PluginRejectedError(findings)
        return findings

    def extract(self, text: str, user: str | None = None) -> dict[str, dict[str, str]]:
        """What each plugin ``user`` works with suggests for a line, by namespace."""
        out: dict[str, dict[str, str]] = {}
        for name, plugin in self.for_user(user):
            fields = self._call(name, "extract", lambda p=plugin: p.extract(text))  # type: ignore[misc]
            if not fields:
                continue
            if not isinstance(fields, dict) or not all(
                    type(k) is str and type(v) is str for k, v in fields.items()):
                # Floats or other values would make the document invalid later;
                # refuse them here, where the plugin can be named.
                self.broken[name] = "extract returned values that are not strings"
                self.plugins.pop(name, None)
                continue
            out[plugin.namespace] = fields
        return out

    def approving(self, document: Mapping[str, Any]) -> tuple[str, Approving]:
        """The plugin that adds approvals to ``document`` (its optional hook ``approve``).

        For a plugin's kind (``medical.order``) the plugin of that namespace;
        for a kernel kind the one plugin with the hook among the namespaces of
        the document's ``ext``, else among the enabled plugins. A plugin of the
        kind's namespace that is installed but not enabled approves too (with
        its default settings): sending is not restricted by the sender's own
        plugins (docs/plugins.md, ``kinds``). ConfigError when no single one does.
        """
        kind = document.get("kind")
        ext = document.get("ext")
        if type(kind) is str and "." in kind:
            wanted = [kind.split(".", 1)[0]]
        else:
            wanted = [ns for ns in ext if type(ns) is str] if type(ext) is dict else []
        found: dict[str, Approving] = {}
        for namespace in wanted:
            found.update(self._approving_in(namespace))
        if not found and not (type(kind) is str and "." in kind):
            found = {name: p for name, p in self.plugins.items() if isinstance(p, Approving)}
        if len(found) != 1:
            which = f" ({', '.join(sorted(found))})" if found else ""
            raise ConfigError(f"{'several plugins' if found else 'no plugin'}{which} approve "
                              f"documents of kind {kind!r}: see 'usagi plugins list'")
        return next(iter(found.items()))

    def _approving_in(self, namespace: str) -> dict[str, Approving]:
        enabled = {name: p for name, p in self.plugins.items() if p.namespace == namespace}
        candidates: Mapping[str, Plugin] = enabled or (
            PluginHost.load([namespace]).plugins if namespace in self.installed else {})
        return {name: p for name, p in candidates.items()
                if p.namespace == namespace and isinstance(p, Approving)}

    def approve(self, document: dict[str, Any], approver: Identity, role: str) -> dict[str, Any]:
        """``document`` with an approval by ``approver`` as ``role``, added by the plugin
        :meth:`approving` names; ConfigError when it cannot."""
        name, plugin = self.approving(document)
        approved = self._call(name, "approve",
                              lambda: plugin.approve(document, approver, role))
        if type(approved) is not dict:
            if approved is not None:
                self.broken[name] = "approve returned something other than a document"
                self.plugins.pop(name, None)
            raise ConfigError(f"plugin {name} could not approve: {self.broken.get(name)}")
        return approved

    def describe(self) -> list[PluginInfo]:
        """Enabled, then broken, then installed-but-not-enabled plugins."""
        rows: list[PluginInfo] = []
        for name, plugin in self.plugins.items():
            ep = self.installed.get(name)
            rows.append(PluginInfo(name, "enabled", str(plugin.version), tuple(sorted(plugin.kinds)),
                                   tuple(plugin.line_fields), ep.value if ep else None))
        for name, reason in self.broken.items():
            ep = self.installed.get(name)
            rows.append(PluginInfo(name, "broken", None, (), (), ep.value if ep else None, reason))
        for name, ep in sorted(self.installed.items()):
            if name not in self.plugins and name not in self.broken:
                rows.append(PluginInfo(name, "available", None, (), (), ep.value))
        return rows
