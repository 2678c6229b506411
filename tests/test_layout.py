"""The house inside ``usagi_p2p/``: its sub-packages and which may import which.

``../shared/tools/check_layers.py`` checks the top-level packages; this checks
the node's own faces (README "Layout"): the core node knows neither face, the
partner-facing peer listener and the archive build on the core, and the
company-facing side builds on all of them. Modules import no module that
imports them back, and the house's sizes hold (STYLE.md: a module past 600
lines explains itself in its docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "usagi_p2p"

# What each sub-package may import among usagi_p2p's own sub-packages.
ALLOWED = {
    "node": {"node"},
    "peer": {"node", "peer"},
    "archive": {"node", "archive"},
    "formats": {"node", "formats"},
    "company": {"node", "peer", "archive", "formats", "company"},
}
LONG = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The usagi_p2p modules ``path`` imports, at any depth of the file."""
    me = _module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("usagi_p2p")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("usagi_p2p"):
                continue
            found.add(module)
            # "from .pkg import module" names a module, not only a package.
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                path_of = ROOT.parent / candidate.replace(".", "/")
                if path_of.with_suffix(".py").exists() or (path_of / "__init__.py").exists():
                    found.add(candidate)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_sits_in_one_of_the_faces() -> None:
    loose = [name for name, path in _modules().items()
             if path.parent == ROOT and path.name not in {"__init__.py", "__main__.py"}]
    assert loose == [], f"put these in node/, peer/, archive/ or company/: {loose}"


def test_sub_packages_import_only_what_their_face_may() -> None:
    problems = []
    for name, path in _modules().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue
        for target in _imports(path):
            face = target.split(".")[1] if target.count(".") else ""
            if face and face in ALLOWED and face not in ALLOWED[parts[1]]:
                problems.append(f"{name} imports {target}")
    assert problems == []


def test_no_import_cycle_between_modules() -> None:
    modules = _modules()
    graph = {name: {t for t in _imports(path) if t in modules and t != name}
             for name, path in modules.items()}
    # A package's __init__ that re-exports its own modules is not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_private_name_is_imported_from_another_module() -> None:
    problems = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            own = isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("usagi_p2p"))
            if isinstance(node, ast.ImportFrom) and own:
                problems += [f"{name}: {alias.name}" for alias in node.names
                             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert problems == []


def test_long_modules_say_why() -> None:
    problems = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "lines" not in doc:
                problems.append(f"{name}: {text.count(chr(10))} lines, the docstring does not say why")
    assert problems == []


def test_no_module_shadows_the_standard_library_or_a_builtin() -> None:
    import builtins
    import sys

    taken = set(sys.stdlib_module_names) | set(dir(builtins))
    shadows = [name for name in _modules() if name.rsplit(".", 1)[-1] in taken]
    assert shadows == []


# Inside company/: its parts and which may import which (views and demo are modules).
# The web UI builds on the local API's listener (its app, events, tokens) and on the
# views; the API knows the UI only where its listener installs it (server.py); the
# CLI and the demo may start either. Nothing below imports the CLI.
COMPANY = {
    "api": {"api", "views"},
    "ui": {"ui", "api", "views"},
    "cli": {"cli", "api", "ui", "views", "demo"},
    "demo": {"api", "ui", "views", "demo"},
    "views": {"views"},
}
COMPANY_EXCEPTIONS = {("usagi_p2p.company.api.server", "ui")}


def test_company_parts_import_only_what_they_may() -> None:
    problems = []
    for name, path in _modules().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] != "company" or parts[2] not in COMPANY:
            continue
        for target in _imports(path):
            bits = target.split(".")
            if len(bits) < 3 or bits[1] != "company":
                continue
            if bits[2] not in COMPANY[parts[2]] and (name, bits[2]) not in COMPANY_EXCEPTIONS:
                problems.append(f"{name} imports {target}")
    assert problems == []
