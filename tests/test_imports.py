"""The package's import graph, read from the source (ast): no circle between modules, and nothing below the top
imports the CLI or the Python API (cli.py and api.py are the top: they parse options and call one function below).

An import counts wherever it stands, inside a function (a lazy import) or under ``if TYPE_CHECKING`` included, as
/work/shared/tools/import_cycles.py counts it: a lazy import hides a circle from Python, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tunelab

PACKAGE = "tunelab"
SRC = Path(tunelab.__file__).resolve().parent
TOP = {"tunelab.cli", "tunelab.api"}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = (PACKAGE, *f.relative_to(SRC).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imported(name: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    """The package's modules one import statement names (``from a import b`` names a, and a.b where b is one)."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        out.add(base)
        out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m in mods}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            deps |= _imported(name, path, node, mods)
        # a module's own package (imported by Python anyway) and the top-level package (its lazy re-exports) aside
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".") and d != PACKAGE}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_below_imports_the_cli_or_the_api():
    upward = sorted((m, d) for m, deps in import_graph().items() for d in deps & TOP
                    if m not in TOP and m != PACKAGE and not m.endswith("__main__"))
    assert not upward, "imports of the top from below: " + ", ".join(f"{m} -> {d}" for m, d in upward)


def test_the_checks_see_circles_and_lazy_imports():
    """The graph is read as the design counts it: a circle made only by a lazy import is found."""
    graph = import_graph()
    assert "tunelab.training" in graph["tunelab.comparison.worker"]  # a lazy import inside run()
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
