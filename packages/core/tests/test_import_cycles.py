"""No import cycles inside mono_llm.core, counting every import a module makes: top-level,
inside functions (lazy) and under TYPE_CHECKING. A cycle means two modules each need the
other, so neither can be read, tested or replaced alone.

One kind of edge is left out: a package's `__init__` importing its own submodules to re-export
them. Importing any submodule runs its package's `__init__` first anyway, so that edge adds no
dependency a reader could avoid."""

from __future__ import annotations

import pytest


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _strongly_connected(edges) == [["a", "b", "c"]]


def test_core_has_no_import_cycles() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("mono_llm.core", exclude_type_checking_imports=False, cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith("mono_llm.core."))
    assert "mono_llm.core.engine.core" in modules
    edges = {
        m: {
            d
            for d in graph.find_modules_directly_imported_by(m)
            if d.startswith("mono_llm.core.") and not d.startswith(m + ".")
        }
        for m in modules
    }
    assert _strongly_connected(edges) == []
