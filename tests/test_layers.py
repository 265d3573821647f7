"""Layers that only point down: every module of ``ray_pipeline`` sits in one layer of ``LAYERS``
(bottom first) and imports only modules of its own layer or of one below; no two modules import
each other, however indirectly. Every import counts, function-level and ``TYPE_CHECKING`` ones
too: a reader has to understand what a module names, whenever Python happens to load it.
docs/architecture.md ("Layers") describes the same order."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ray_pipeline"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundations",
        [
            "ray_pipeline.errors",
            "ray_pipeline.console",
            "ray_pipeline.naming",
            "ray_pipeline.run_mode",
            "ray_pipeline.monitoring",
            "ray_pipeline.internals",
            "ray_pipeline.dropout_masks",
            "ray_pipeline.direction",
            "ray_pipeline.layout_names",
        ],
    ),
    ("schema", ["ray_pipeline.schema"]),
    (
        "services",
        [
            "ray_pipeline.artifacts",
            "ray_pipeline.paths",
            "ray_pipeline.loading",
            "ray_pipeline.identity",
            "ray_pipeline.resources",
            "ray_pipeline.precision",
            "ray_pipeline.models",
            "ray_pipeline.metrics",
            "ray_pipeline.faults",
            "ray_pipeline.storage",
            "ray_pipeline.lease",
            "ray_pipeline.tracking",
            "ray_pipeline.run_tree",
            "ray_pipeline.cluster",
            "ray_pipeline.sessions",
        ],
    ),
    (
        "data and training",
        [
            "ray_pipeline.data",
            "ray_pipeline.training",
            "ray_pipeline.timing",
            "ray_pipeline.variants",
        ],
    ),
    ("hpo", ["ray_pipeline.hpo"]),
    ("benchmark", ["ray_pipeline.benchmark"]),
    ("selection", ["ray_pipeline.selection"]),
    ("final", ["ray_pipeline.final"]),
    ("report and status", ["ray_pipeline.report", "ray_pipeline.status"]),
    (
        "entry points",
        ["ray_pipeline.pipeline", "ray_pipeline.cli", "ray_pipeline.__main__", "ray_pipeline"],
    ),
]
"""Bottom first. An entry is a module, or a subpackage with all its modules; ``ray_pipeline``
itself stands for the package's ``__init__`` (the public facade) only."""

Graph = dict[str, set[str]]


def _module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _owning_module(name: str, modules: set[str]) -> str | None:
    """The module that ``name`` (a module, or a name inside one) is imported from."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, source: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` (its ``source``) imports, at any depth of its
    code, relative imports resolved; ``from a import b`` counts as ``a.b`` when that is a
    module, else as ``a`` (a package's ``__init__`` that Python loads on the way is not an
    import of the facade)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . / .. import: the package, or one of its parents
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        found |= {m for n in names if (m := _owning_module(n, modules)) is not None}
    return found - {module}


def import_graph() -> Graph:
    """Each module of the package -> the modules of the package it imports."""
    files = _module_files()
    modules = set(files)
    return {
        name: imports(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", modules)
        for name, path in files.items()
    }


def _in_entry(module: str, entry: str) -> bool:
    return module == entry or (entry != PACKAGE and module.startswith(f"{entry}."))


def layers_of(module: str) -> list[int]:
    """The indices (bottom 0) of the layers with an entry that holds ``module``."""
    return [
        i for i, (_, entries) in enumerate(LAYERS) if any(_in_entry(module, e) for e in entries)
    ]


def _layer(module: str) -> int | None:
    """``module``'s layer; None when it has none or several (the placement test fails)."""
    found = layers_of(module)
    return found[0] if len(found) == 1 else None


def up_arrows(graph: Graph) -> list[str]:
    """Every import of a module of a higher layer, as ``module -> imported (layer -> layer)``."""
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            low, high = _layer(module), _layer(target)
            if low is not None and high is not None and high > low:
                found.append(f"{module} -> {target} ({LAYERS[low][0]} -> {LAYERS[high][0]})")
    return found


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_order() -> str:
    """The enforced order as text, bottom first."""
    lines = [f"{i}. {name}: {', '.join(entries)}" for i, (name, entries) in enumerate(LAYERS)]
    return "layers, bottom first (a module imports only its own layer or lower):\n" + "\n".join(
        lines
    )


def test_every_module_of_the_package_is_in_exactly_one_layer() -> None:
    modules = sorted(_module_files())
    unplaced = [m for m in modules if not layers_of(m)]
    twice = [
        f"{m} ({', '.join(LAYERS[i][0] for i in layers_of(m))})"
        for m in modules
        if len(layers_of(m)) > 1
    ]
    stale = [
        e for _, entries in LAYERS for e in entries if not any(_in_entry(m, e) for m in modules)
    ]
    problems = [f"in no layer (add it to LAYERS in {Path(__file__).name}): {m}" for m in unplaced]
    problems += [f"in more than one layer: {m}" for m in twice]
    problems += [f"a LAYERS entry that names no module: {e}" for e in stale]
    assert not problems, "\n".join(problems) + "\n\n" + layer_order()


def test_imports_only_point_down_and_form_no_cycle() -> None:
    graph = import_graph()
    arrows, loops = up_arrows(graph), cycles(graph)
    summary = f"{len(loops)} cycles, {len(arrows)} up-arrows"
    print(f"\n{layer_order()}\n{summary}")
    report = [summary]
    report += [f"up-arrow: {arrow}" for arrow in arrows]
    report += [f"cycle: {' <-> '.join(loop)}" for loop in loops]
    assert not arrows and not loops, "\n".join(report) + "\n\n" + layer_order()


def test_the_checker_sees_function_level_type_checking_and_relative_imports() -> None:
    """The checker itself: an up-import hidden in a function or under TYPE_CHECKING, written
    relative or absolute, is an up-arrow, and two modules importing each other a cycle."""
    modules = {
        "ray_pipeline",
        "ray_pipeline.metrics",
        "ray_pipeline.hpo",
        "ray_pipeline.hpo.results",
    }
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ray_pipeline.hpo.results import TrialRecord\n"
        "def f() -> None:\n    from .hpo import results\n"
    )
    found = imports("ray_pipeline.metrics", source, False, modules)
    assert found == {"ray_pipeline.hpo.results"}
    graph = {"ray_pipeline.metrics": found, "ray_pipeline.hpo.results": {"ray_pipeline.metrics"}}
    assert up_arrows(graph) == [
        "ray_pipeline.metrics -> ray_pipeline.hpo.results (services -> hpo)"
    ]
    assert cycles(graph) == [["ray_pipeline.hpo.results", "ray_pipeline.metrics"]]
