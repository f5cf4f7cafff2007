"""The import graph of the package, read from the source (ast): one-directional layers, no cycles.

Layers, bottom to top: the spine (``benchmark.*`` stages, ``attacks``, ``defenses``) <- the report
(``benchmark.report``) <- tools built on it (``benchmark.audit``, gpu-check's summary) <- the presentation
(``benchmark.ui``, ``benchmark.cli`` and the command modules). Every import counts,
also the ones inside functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "attacks", "defenses")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``path`` (module ``name``) imports, each named by its own module: ``from a
    import b`` is an edge to ``a.b`` when that is a module, else to ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if base else alias.name
                if target in modules:
                    out.add(target)
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported(path, name, modules) for name, path in modules.items()}


COMMANDS = ("benchmark.cli", "benchmark.cli_options", "benchmark.gpucheck", "benchmark.audit.command")


def layer(module: str) -> int:
    """0: the spine, 1: the report, 2: tools built on the report (``bench audit``'s verdicts, gpu-check's
    summary), 3: the presentation (ui, cli and the command modules)."""
    if module in COMMANDS or module.startswith("benchmark.ui"):
        return 3
    if module.startswith("benchmark.audit") or module == "benchmark.gpucheck_report":
        return 2
    if module == "benchmark.report" or module.startswith("benchmark.report."):
        return 1
    return 0


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_is_read():
    """The walk sees the package: the CLI reaches the report and the runner, the report reads records."""
    graph = import_graph()
    assert "benchmark.report" in graph["benchmark.cli"]
    assert "benchmark.records" in graph["benchmark.report.frame"]
    assert "benchmark.sweep.cells" in graph["benchmark.sweep.plan"]


def test_no_layer_imports_upwards():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))
    assert not upward, "lower layer imports a higher one (spine <- report <- ui/cli):\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
])
def test_cycle_finder(graph, expected):
    """The checker itself finds a circle (so the two tests above can fail)."""
    assert cycles(graph) == expected


def test_the_run_path_enters_the_poisoned_set_code_from_one_place():
    """Runs, sweep workers and ``bench poison`` get their poisoned set through ``PreparedRun.poisoned_set``:
    outside the poisoned-set module itself, only the runner imports ``get_poisoned``."""
    importers = set()
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "benchmark.poisoning" \
                    and any(a.name == "get_poisoned" for a in node.names):
                importers.add(name)
    assert importers == {"benchmark.runner"}, importers
