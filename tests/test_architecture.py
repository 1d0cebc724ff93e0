"""The house's rules, checked from the source: no import circle, imports run one way, the store's
interface names no backend (docs/architecture.md). Every import counts, including those inside
functions and under TYPE_CHECKING: a lazy import hides a circle, it does not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("indexer", "service", "evaluation")
# indexer's layers, lowest first: a module may import its own layer or a lower one only.
LAYERS = ("catalog", "encoders", "store", "categorizer", "pipeline")
BACKENDS = ("indexer.store.local", "indexer.store.milvus", "indexer.store.factory")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by one module (absolute and relative, any depth in the file)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` names a module; `from mod import name` names the module itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated last), or None: iterative DFS."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "indexer" and len(parts) > 1 and parts[1] in LAYERS else None


def test_the_project_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_and_lazy_imports_are_seen(tmp_path):
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    source = tmp_path / "c.py"
    source.write_text("from .. import a\ndef f():\n    from ..b import thing\n", encoding="utf-8")
    assert imports_of("pkg.sub.c", source, known) == {"pkg.a", "pkg.b"}


def test_the_store_interface_reaches_no_backend():
    graph = import_graph()
    for module in ("indexer.store.base", "indexer.store.filters", "indexer.store.lexical", "indexer.store.categories"):
        reached = reachable(graph, module)
        assert not [m for m in reached if m.startswith(BACKENDS)], module


def test_only_the_factory_names_both_backends():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith(("indexer.store.factory", "indexer.store.__init__")) or module == "indexer.store":
            continue
        local = any(t.startswith("indexer.store.local") for t in targets) and not module.startswith(
            "indexer.store.local"
        )
        milvus = any(t.startswith("indexer.store.milvus") for t in targets)
        assert not (local and milvus), module


def test_indexer_imports_run_downward():
    graph = import_graph()
    upward = [
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if layer(module) is not None and layer(target) is not None and layer(target) > layer(module)
    ]
    assert upward == []


@pytest.mark.parametrize(
    "package,forbidden",
    [("indexer", ("service", "evaluation")), ("service", ("evaluation",)), ("evaluation", ("service",))],
)
def test_packages_stand_on_indexer_only(package, forbidden):
    graph = import_graph()
    bad = [(m, t) for m, ts in graph.items() if m.split(".")[0] == package for t in ts if t.split(".")[0] in forbidden]
    assert bad == []


def test_service_and_evaluation_use_public_names_only():
    """They import `indexer.<package>` names (its __init__), never a module inside a package."""
    graph = import_graph()
    deep = [
        (m, t)
        for m, ts in graph.items()
        if m.split(".")[0] in ("service", "evaluation")
        for t in ts
        if t.startswith("indexer.") and len(t.split(".")) > 2
    ]
    assert deep == []
