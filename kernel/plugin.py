"""The plugin contract: what an industry plugin declares and which hooks it runs.

Implements docs/plugins.md ("The contract"). A plugin is any object that has
the attributes and methods of :class:`Plugin` (a typed ``Protocol``: no base
class to inherit). It is registered under the entry-point group
``usagi_p2p.plugins``; the node discovers it there, so a third party ships a
plugin as its own package exactly like the four built-ins do.

Rules every plugin keeps (checked by :func:`contract_problems` at load time):

* Its kinds are namespaced with its own namespace (``medical.order``); bare
  kind names belong to the kernel.
* Its fields live under ``ext.<namespace>``, at document level and at line
  level; their values are strings, lists or maps of strings, never floats
  (decimals are strings, as everywhere in a document).
* ``validate`` returns findings, it does not raise. A finding is an
  ``"error"`` only for a field the plugin itself marks required on one of its
  own kinds; everything else is a ``"warning"``. Masterless stays the rule: a
  free-text line with no master data is always accepted.
* Hooks are pure: no I/O, no clock (times come from the document).

Besides the hooks every plugin has (:data:`HOOKS`), a plugin may have the
optional ones of :data:`OPTIONAL_HOOKS` (typed by their own protocols, e.g.
:class:`Approving`); the host uses an optional hook only where a plugin has it.

Nothing here performs I/O; the node's plugin host does the discovery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._identity import Identity

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOKS",
    "OPTIONAL_HOOKS",
    "Approving",
    "Finding",
    "Level",
    "Plugin",
    "contract_problems",
    "ext_of",
    "required_findings",
]

#: The entry-point group plugins register under (``pyproject.toml``).
ENTRY_POINT_GROUP: Final = "usagi_p2p.plugins"

#: Every hook of :class:`Plugin`; docs/plugins.md documents each one (a test checks).
HOOKS: Final = ("name", "version", "namespace", "kinds", "line_fields", "validate", "extract")
#: Hooks a plugin may have or not; docs/plugins.md documents each one too (a test checks).
OPTIONAL_HOOKS: Final = ("approve",)

Level = Literal["warning", "error"]
LEVELS: Final = frozenset({"warning", "error"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation by one plugin about one place in a document.

    ``path`` is dotted like the kernel's problems (``lines[2].ext.food``);
    ``code`` is a stable snake_case identifier that scripts may match on;
    ``message`` is for people.
    """

    plugin: str
    level: Level
    path: str
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"a finding's level is 'warning' or 'error', not {self.level!r}")

    @property
    def is_error(self) -> bool:
        return self.level == "error"

    def to_json(self) -> dict[str, str]:
        return {"plugin": self.plugin, "level": self.level, "path": self.path,
                "code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.level} [{self.plugin}.{self.code}] {self.path}: {self.message}"


@runtime_checkable
class Plugin(Protocol):
    """An industry plugin. Every member below is a hook documented in docs/plugins.md."""

    #: The plugin's name, as registered under the entry point (``"food"``).
    name: str
    #: The plugin's own version string (``"1.0"``), shown by ``usagi plugins list``.
    version: str
    #: The key under ``ext`` that holds this plugin's fields (usually ``name``).
    namespace: str
    #: Extra document kinds, namespaced (``"medical.order"``), each mapped to
    #: the ``ext.<namespace>`` document fields it requires.
    kinds: Mapping[str, tuple[str, ...]]
    #: Line fields this plugin understands, namespaced (``"food.best_before"``),
    #: each with a one-line description.
    line_fields: Mapping[str, str]

    def validate(self, document: Mapping[str, Any]) -> list[Finding]:
        """Findings about a document the kernel has already accepted; never raises."""
        ...

    def extract(self, line_text: str) -> dict[str, str]:
        """Fields suggested for a line's ``ext.<namespace>``, from its free text.

        Keys are field names without the namespace (``"best_before"``); values
        are strings, never floats. An empty map means nothing was recognised.
        """
        ...


@runtime_checkable
class Approving(Protocol):
    """A plugin with the optional hook ``approve``: it knows how a person of the
    company approves a document of its own (docs/plugins.md, ``approve``)."""

    def approve(self, document: Mapping[str, Any], approver: Identity, role: str
                ) -> dict[str, Any]:
        """``document`` with an approval by ``approver`` in the role ``role`` added.

        ``document`` is complete (``from``, ``to``, ``issued_at`` set) and not yet
        sealed; the approval is added where the plugin's ``validate`` looks for
        it (under ``ext.<namespace>``). Pure: the approver's key signs, nothing
        else happens. Approvals by several people must not depend on their order.
        """
        ...


def contract_problems(plugin: object) -> list[str]:
    """What keeps ``plugin`` from meeting the contract; empty when it does."""
    problems: list[str] = []
    for hook in HOOKS:
        if not hasattr(plugin, hook):
            problems.append(f"missing hook {hook!r}")
    if problems:
        return problems
    p: Any = plugin
    for attr in ("name", "version", "namespace"):
        if type(getattr(p, attr)) is not str or not getattr(p, attr):
            problems.append(f"{attr} must be a non-empty string")
    for attr in ("validate", "extract"):
        if not callable(getattr(p, attr)):
            problems.append(f"{attr} must be callable")
    for attr in OPTIONAL_HOOKS:
        if hasattr(p, attr) and not callable(getattr(p, attr)):
            problems.append(f"the optional hook {attr} must be callable when present")
    namespace = p.namespace if type(p.namespace) is str else ""
    if not isinstance(p.kinds, Mapping):
        problems.append("kinds must be a mapping of kind -> required fields")
    else:
        for kind, required in p.kinds.items():
            if type(kind) is not str or not kind.startswith(namespace + "."):
                problems.append(f"kind {kind!r} is not namespaced with {namespace!r}")
            if not isinstance(required, tuple | list | frozenset) or not all(
                    type(r) is str for r in required):
                problems.append(f"kind {kind!r}: required fields must be a sequence of names")
    if not isinstance(p.line_fields, Mapping):
        problems.append("line_fields must be a mapping of field -> description")
    else:
        for field in p.line_fields:
            if type(field) is not str or not field.startswith(namespace + "."):
                problems.append(f"line field {field!r} is not namespaced with {namespace!r}")
    return problems


def ext_of(obj: Any, namespace: str) -> dict[str, Any]:
    """``obj["ext"][namespace]`` when it is a map, else an empty map.

    Documents reach plugins after the kernel's checks, but a plugin still must
    not crash on a shape it did not expect: a missing or odd ``ext`` is empty.
    """
    if type(obj) is not dict:
        return {}
    ext = obj.get("ext")
    if type(ext) is not dict:
        return {}
    fields = ext.get(namespace)
    return fields if type(fields) is dict else {}


def required_findings(plugin: Plugin, document: Mapping[str, Any]) -> list[Finding]:
    """Error findings for required ``ext.<namespace>`` fields missing on the plugin's own kinds.

    This is the only place where the contract allows the error level by
    default: a plugin's own kind may demand its own fields. Kernel kinds are
    never refused here.
    """
    kind = document.get("kind")
    if type(kind) is not str or kind not in plugin.kinds:
        return []
    fields = ext_of(dict(document), plugin.namespace)
    return [
        Finding(plugin.name, "error", f"ext.{plugin.namespace}.{name}", "required_field",
                f"a {kind} requires ext.{plugin.namespace}.{name}")
        for name in plugin.kinds[kind]
        if fields.get(name) in (None, "", [], {})
    ]
