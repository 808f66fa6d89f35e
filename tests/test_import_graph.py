"""The layering of datakd, checked on its import graph (every import statement, lazy and TYPE_CHECKING too).

LAYERS is the one place the layering is written down (docs/extending.md draws it): a module may import
modules of its own layer or of a lower one, never of a higher one, and the module graph has no cycle. A new
top-level module or package must be placed in a layer here, or the test fails. No exceptions are needed
today: Ray stays optional because `pba.search` imports `pba.trainable` (a Ray Tune class) inside the
function that starts a search, which is an ordinary downward-or-sideways edge the walk sees and accepts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "datakd"

# Lowest first. Entries are module names or package prefixes (``datakd.losses`` covers its submodules).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "datakd",
            "datakd.errors",
            "datakd.validation",
            "datakd.registry",
            "datakd.config",
            "datakd.checkpoint",
            "datakd.faults",
        ),
    ),
    ("models and data", ("datakd.models", "datakd.data")),
    (
        "api: the method interface",
        ("datakd.api", "datakd.adversarial", "datakd.metrics", "datakd.dense_metrics"),
    ),
    ("losses", ("datakd.losses",)),
    ("targets", ("datakd.targets",)),
    ("augmenters", ("datakd.augmenters",)),
    ("events", ("datakd.events",)),
    ("engine", ("datakd.engine",)),
    ("jobs", ("datakd.jobs", "datakd.pba", "datakd.sweep", "datakd.quickstart", "datakd.report")),
    ("interface", ("datakd.commands", "datakd.plots", "datakd.cli", "datakd.__main__")),
]


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """``datakd.x.y`` → file, for every module of the package (``__init__`` stands for its package)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The datakd module that `name` (a module or a module attribute) belongs to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every datakd module `module` imports anywhere in its body (functions and TYPE_CHECKING blocks too).

    ``from datakd.x import y`` counts as an import of ``datakd.x.y`` when that is a module, else of
    ``datakd.x`` (the module defining ``y``).
    """
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        for target in targets:
            if target == "datakd" or target.startswith("datakd."):
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    found.add(owner)
    return found


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "datakd" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                here, there = LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0]
                bad.append(f"{module} ({here}) imports {target} ({there})")
    return bad


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the module graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_names() if layer_of(m) < 0)
    assert not unplaced, f"place these modules in LAYERS (tests/test_import_graph.py): {unplaced}"


def test_no_upward_imports():
    bad = upward_imports(graph())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_lazy_upward_imports_and_cycles(tmp_path):
    """The checker itself: a lazy import inside a function counts, and a two-module cycle is found."""
    pkg = tmp_path / "datakd"
    (pkg / "losses").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "losses" / "__init__.py").write_text("")
    (pkg / "losses" / "a.py").write_text("def f():\n    from datakd.engine import trainer\n")
    (pkg / "losses" / "b.py").write_text("from datakd.losses import c\n")
    (pkg / "losses" / "c.py").write_text("from . import b\n")
    (pkg / "engine").mkdir()
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "trainer.py").write_text("")
    modules = module_names(pkg)
    edges = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert edges["datakd.losses.a"] == {"datakd.engine.trainer"}
    assert upward_imports(edges) == [
        "datakd.losses.a (losses) imports datakd.engine.trainer (engine)",
    ]
    assert find_cycle(edges) in (
        ["datakd.losses.b", "datakd.losses.c", "datakd.losses.b"],
        ["datakd.losses.c", "datakd.losses.b", "datakd.losses.c"],
    )


@pytest.mark.parametrize("module", ["datakd.api.context", "datakd.api.run", "datakd.api.features"])
def test_api_imports_no_method_and_no_engine(module):
    """The interface package is below every method package and the engine (the point of the layering)."""
    targets = graph()[module]
    assert not [t for t in targets if layer_of(t) > layer_of(module)], targets
