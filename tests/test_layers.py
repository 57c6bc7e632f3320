"""The layout stays true: imports go one way, nothing imports in a circle, no module reaches into
another's private names.

The layers, top to bottom (README, "Architecture")::

    starter  ──►  workflows  ──►  activities  ──►  taskomatic
    (client library, CLI, dev stack)                (models, inventory, hypervisor, placement)

``worker.py`` is a service beside the starter: it composes workflows and activities and never
imports the starter (the HTTP API, ``starter.api``, is part of the starter). ``lab`` (the local
libvirt lab) builds on the bottom layer only. Inside ``taskomatic``, the models never import
the inventory or the hypervisor layer, and placement and the access rules stay pure; the
workflows reach the database and libvirt only through activities.

Imports are absolute (no relative ones), made by import statements (no ``importlib`` or
``__import__``), and never reach into another module's ``_private`` names (neither by
``from m import _x`` nor by ``m._x``).

Every import counts, whether at module level, inside a function or under ``TYPE_CHECKING``: a
function-level import that only hides a cycle is still a cycle. A function-level import is fine
for start-up cost, and then says so in a comment on its line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("taskomatic", "activities", "workflows", "starter", "lab")
SERVICES = ("worker",)

# What each top-level unit may import (itself included); anything else of ours is backwards.
ALLOWED: dict[str, set[str]] = {
    "taskomatic": {"taskomatic"},
    "activities": {"activities", "taskomatic"},
    "workflows": {"workflows", "activities", "taskomatic"},
    "starter": {"starter", "workflows", "taskomatic", "lab"},
    "lab": {"lab", "taskomatic"},
    "worker": {"workflows", "activities", "taskomatic"},
}
# Sub-layers of the bottom package: (importer prefix, forbidden prefixes).
FORBIDDEN_INSIDE = [
    ("taskomatic.models", ("taskomatic.inventory", "taskomatic.hypervisor",
                           "taskomatic.placement")),
    ("taskomatic.placement", ("taskomatic.inventory", "taskomatic.hypervisor")),
    ("taskomatic.access", ("taskomatic.inventory", "taskomatic.hypervisor")),
    ("taskomatic.hypervisor", ("taskomatic.inventory",)),
    # Workflows do no I/O: they reach the database and libvirt only through activities. The
    # registry of kinds (its advisory checks run in the client) is the one module of the
    # package that is not a workflow.
    ("workflows.", ("taskomatic.inventory", "taskomatic.hypervisor")),
]
NOT_WORKFLOW_CODE = {"workflows.kinds"}
OURS = set(PACKAGES) | set(SERVICES)


@dataclass(frozen=True)
class Import:
    importer: str
    target: str           # the module imported (a name imported from a module counts as it)
    names: tuple[str, ...]
    line: int
    nested: bool          # inside a function
    commented: bool       # the line carries a comment saying why (not only a lint directive)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> Iterator[Path]:
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))
    for service in SERVICES:
        yield ROOT / f"{service}.py"


def all_modules() -> set[str]:
    return {module_name(p) for p in sources()}


def imports_of(path: Path, known: set[str]) -> list[Import]:
    return parse_imports(path.read_text(), module_name(path), known)


def parse_imports(text: str, importer: str, known: set[str]) -> list[Import]:
    lines = text.splitlines()
    tree = ast.parse(text)
    found: list[Import] = []
    nested_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    nested_lines.add(inner.lineno)
    for node in ast.walk(tree):
        targets: list[tuple[str, tuple[str, ...]]] = []
        if isinstance(node, ast.Import):
            targets = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                # ``from pkg import module`` imports the module; ``from mod import name`` the mod.
                targets.append((sub, ()) if sub in known else (node.module, (alias.name,)))
        for target, names in targets:
            if target.split(".")[0] in OURS:
                line = lines[node.lineno - 1]
                found.append(Import(importer, target, names, node.lineno,
                                    node.lineno in nested_lines, _says_why(line)))
    return found


def _says_why(line: str) -> bool:
    """True when ``line`` ends in a comment of a few words that is not a lint directive."""
    _code, sep, comment = line.partition("#")
    words = comment.strip().split()
    return bool(sep) and len(words) >= 3 and not words[0].startswith(("noqa", "type:"))


def hidden_imports(text: str) -> list[str]:
    """What escapes the import statements: relative imports, ``importlib.import_module`` and
    ``__import__`` calls, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append(f"{node.lineno}: relative import")
        elif isinstance(node, ast.Call):
            func = node.func
            name = (func.attr if isinstance(func, ast.Attribute)
                    else func.id if isinstance(func, ast.Name) else "")
            if name in ("import_module", "__import__"):
                found.append(f"{node.lineno}: {name}()")
    return found


def private_attributes(text: str, known: set[str]) -> list[str]:
    """Uses of another module's private names by attribute (``hosts._lock_host``), where the
    name before the dot is one of our modules bound by an import, as ``line: what``."""
    tree = ast.parse(text)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names
                        if a.name.split(".")[0] in OURS}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules |= {a.asname or a.name for a in node.names
                        if f"{node.module}.{a.name}" in known}
    return [f"{node.lineno}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in modules and node.attr.startswith("_")
            and not node.attr.startswith("__")]


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    known = all_modules()
    return [imp for path in sources() for imp in imports_of(path, known)]


def _unit(module: str) -> str:
    return module.split(".")[0]


def test_imports_go_one_way(graph: list[Import]) -> None:
    backwards = [f"{i.importer}:{i.line} imports {i.target}" for i in graph
                 if _unit(i.target) not in ALLOWED[_unit(i.importer)]]
    for importer_prefix, forbidden in FORBIDDEN_INSIDE:
        backwards += [f"{i.importer}:{i.line} imports {i.target}" for i in graph
                      if i.importer.startswith(importer_prefix)
                      and i.importer not in NOT_WORKFLOW_CODE
                      and i.target.startswith(forbidden)]
    assert backwards == []


def test_the_worker_never_imports_the_starter(graph: list[Import]) -> None:
    assert [i for i in graph if i.importer == "worker" and _unit(i.target) == "starter"] == []


def test_no_private_names_across_modules(graph: list[Import]) -> None:
    reaching = [f"{i.importer}:{i.line} imports {name} from {i.target}" for i in graph
                for name in i.names if name.startswith("_") and i.target != i.importer]
    assert reaching == []


def test_no_hidden_imports_nor_private_attributes() -> None:
    known = all_modules()
    found = [f"{module_name(p)}:{what}" for p in sources()
             for what in hidden_imports(p.read_text()) + private_attributes(p.read_text(), known)]
    assert found == []


def test_function_level_imports_say_why(graph: list[Import]) -> None:
    silent = [f"{i.importer}:{i.line} imports {i.target}" for i in graph
              if i.nested and not i.commented]
    assert silent == []


def test_no_import_cycles(graph: list[Import]) -> None:
    edges: dict[str, set[str]] = {}
    known = all_modules()
    for imp in graph:
        target = imp.target
        while target not in known and "." in target:  # a name imported from a package
            target = target.rsplit(".", 1)[0]
        if target in known and target != imp.importer:
            edges.setdefault(imp.importer, set()).add(target)
    cycles = [sorted(c) for c in _strongly_connected(edges) if len(c) > 1]
    assert cycles == []


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of ``edges``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            found.append(component)

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checks_can_fail() -> None:
    """A made-up cycle, backwards import, private import and silent nested import are caught."""
    assert [sorted(c) for c in _strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})
            if len(c) > 1] == [["a", "b"]]
    probe = parse_imports(
        "from starter.client import TaskomaticClient\n"
        "from taskomatic.errors import _hidden\n"
        "def f():\n    import workflows.vms\n",
        "activities.probe", all_modules())
    assert [_unit(i.target) in ALLOWED["activities"] for i in probe] == [False, True, False]
    assert [n for i in probe for n in i.names if n.startswith("_")] == ["_hidden"]
    assert [(i.nested, i.commented) for i in probe][2] == (True, False)
    assert not _says_why("    import x  # noqa: E402")
    assert _says_why("    import x  # start-up cost: 2 s")
    assert [w.split(": ")[1] for w in hidden_imports(
        "from . import x\nimport importlib\nimportlib.import_module('starter')\n"
        "__import__('starter')\n")] == ["relative import", "import_module()", "__import__()"]
    assert private_attributes("from taskomatic.inventory import hosts\nhosts._lock_host(1)\n",
                              all_modules()) == ["2: hosts._lock_host"]
