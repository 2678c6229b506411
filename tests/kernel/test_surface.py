"""The kernel's public surface is what the other layers import, and nothing more.

STYLE.md (h11, age): private modules, a small public ``__init__``. The other
layers (``ipfs``, ``plugins``, ``usagi_p2p``) import names from ``kernel``
itself or from its public modules (``kernel.dagcbor``, ``kernel.cid``,
``kernel.errors``, ``kernel.plugin``), and only names those list in
``__all__``; modules whose names start with ``_`` are the kernel's own.
Tests, benchmarks and tools may reach inside.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import sys
from pathlib import Path

import kernel

ROOT = Path(__file__).resolve().parents[2]
OTHER_LAYERS = ("ipfs", "plugins", "usagi_p2p")
PUBLIC_MODULES = {"kernel", "kernel.dagcbor", "kernel.cid", "kernel.errors", "kernel.plugin"}


def _public(module: str) -> set[str]:
    return set(importlib.import_module(module).__all__)


def _kernel_imports() -> list[tuple[str, str, str]]:
    """(file:line, module, name) for every import of the kernel in the other layers."""
    found = []
    for layer in OTHER_LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            where = str(path.relative_to(ROOT))
            for node in ast.walk(tree):
                module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
                if isinstance(node, ast.ImportFrom) and node.level == 0 and module.startswith("kernel"):
                    found += [(f"{where}:{node.lineno}", node.module or "", a.name) for a in node.names]
                elif isinstance(node, ast.Import):
                    found += [(f"{where}:{node.lineno}", a.name, "") for a in node.names
                              if a.name.startswith("kernel")]
    return found


def test_other_layers_import_only_the_public_surface() -> None:
    problems = []
    for where, module, name in _kernel_imports():
        if module not in PUBLIC_MODULES:
            problems.append(f"{where}: imports the private module {module}")
        elif name and name not in _public(module) and f"{module}.{name}" not in PUBLIC_MODULES:
            problems.append(f"{where}: {name} is not in {module}.__all__")
    assert problems == []


def test_the_surface_is_what_is_used() -> None:
    """Every name ``kernel`` exports is imported by another layer (or is a public module)."""
    used = {name for _, module, name in _kernel_imports() if module == "kernel"}
    modules = {m.split(".")[1] for m in PUBLIC_MODULES if "." in m}
    # A name a public module also exports may be imported from there instead.
    elsewhere = {n for m in PUBLIC_MODULES - {"kernel"} for n in _public(m)}
    unused = set(kernel.__all__) - used - modules - elsewhere
    # The kernel's core verbs stay exported for other distributions even where this node
    # happens not to import one of them.
    assert unused <= {"Ack", "KERNEL_KINDS", "Party", "Rotation", "Sealed", "validate_document"}


def test_every_exported_name_exists_and_none_shadows_a_builtin() -> None:
    for module in sorted(PUBLIC_MODULES):
        names = _public(module)
        mod = importlib.import_module(module)
        assert all(hasattr(mod, n) for n in names), module
        assert not names & set(dir(builtins)), f"{module} exports a builtin's name"
        assert not any(n.startswith("_") for n in names), module


def test_private_modules_are_marked() -> None:
    modules = {p.stem for p in (ROOT / "kernel").glob("*.py")} - {"__init__"}
    public = {m.split(".")[1] for m in PUBLIC_MODULES if "." in m}
    assert all(m.startswith("_") for m in modules - public)
    assert not ({m.lstrip("_") for m in modules} & set(sys.stdlib_module_names) - {"errors"})
