"""The import graph: no cycles among the project's modules, and layers import downwards only (DESIGN.md).

Imports are read from the source (AST), including those inside functions, which a cycle can hide behind.
"""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sim", "hw_models", "workloads", "plots")
# What a layer may import from the other packages (everything else from them is forbidden).
ALLOWED = {
    "hw_models": set(),
    "workloads": {"hw_models.loading", "hw_models.errors"},
    "plots": {"sim.results"},  # figures read saved results; they never load the simulator
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports: ``from a import b`` names module ``a.b`` when it is one, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # ``import a.b.c`` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = nx.DiGraph()
GRAPH.add_nodes_from(MODULES)
GRAPH.add_edges_from((name, target) for name, path in MODULES.items() for target in _imports(name, path))


def test_the_graph_sees_imports():
    assert ("sim.run", "hw_models.pim") in GRAPH.edges and ("hw_models.pim", "hw_models.loading") in GRAPH.edges
    assert ("workloads.accuracy", "workloads.perplexity") in GRAPH.edges  # an import inside a function
    assert ("sim.commands.plot", "plots") in GRAPH.edges


def test_no_import_cycle():
    assert not list(nx.simple_cycles(GRAPH))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_import_downwards_only(package):
    bad = sorted((name, target) for name, target in GRAPH.edges
                 if name.split(".")[0] == package and target.split(".")[0] != package
                 and target not in ALLOWED[package])
    assert not bad
