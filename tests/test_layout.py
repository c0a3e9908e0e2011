"""The package layout docs/architecture.md describes: no module-level import cycle, and no two modules that share
a base name for different things (the vague names of issue 21 stay gone)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("msir_core", "msir_schemas", "models", "msir_data", "training", "indexer", "app", "msir_client")
# Base names that mean the same thing wherever they stand: a package's command line, its exceptions, and the
# route modules of app/routes/, named after the endpoints (and the indexer idea) they serve.
SAME_MEANING = {"cli", "errors", "collection", "search"}
GONE = {
    "training/dataset.py", "training/validate.py", "training/runtime.py", "indexer/store.py", "indexer/db.py",
    "indexer/vector_store.py", "indexer/maintenance.py", "app/demo.py", "models/refusals.py", "indexer/refusals.py",
    "indexer/uploads.py", "app/uploads.py", "models/atomic.py", "app/metadata.py",
}  # fmt: skip


def test_no_module_level_import_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert not import_cycles(graph)


def test_the_cycle_finder_finds_a_lazy_import_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_pkg import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic_pkg import a  # lazy\n    return a\n")
    (package / "c.py").write_text("from cyclic_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic_pkg", cache_dir=None)
    assert import_cycles(graph) == [["cyclic_pkg.a", "cyclic_pkg.b"]]


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected set of modules (each reaches the others through imports)."""
    modules = sorted(graph.modules)
    # Tarjan's strongly connected components over every import, function-level (lazy) ones included.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                # A package's __init__ importing its own submodules is how packages re-export, not a cycle of ideas.
                if len(component) > 1 and not _package_reexport(component):
                    cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return cycles


def _package_reexport(component: list[str]) -> bool:
    """Every import inside the component goes from a package to its own submodule, or back to that package only
    by the ``from package import submodule`` form Python resolves to the submodule."""
    packages = {m for m in component if any(o.startswith(m + ".") for o in component)}
    return len(packages) == 1 and all(m in packages or m.startswith(next(iter(packages)) + ".") for m in component)


def test_no_two_modules_share_a_base_name_for_different_things() -> None:
    """Module files and subpackages alike: ``app/metadata.py`` beside ``indexer/metadata/`` would be two ideas under
    one name."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO)
            if "migrations" in rel.parts:
                continue
            if path.name == "__init__.py":
                if path.parent != REPO / package:  # a subpackage: its folder's name is a module name too
                    by_name[path.parent.name].append(str(rel.parent))
            elif path.name != "__main__.py":
                by_name[path.stem].append(str(rel))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1 and name not in SAME_MEANING}
    assert not shared, shared


def test_the_vague_names_are_gone() -> None:
    assert not [p for p in GONE if (REPO / p).exists()]
