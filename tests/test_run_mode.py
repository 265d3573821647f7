"""run.mode: one reader, consistent defaults, benchmark inheritance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ray_pipeline
from ray_pipeline.loading import load_config
from ray_pipeline.run_mode import (
    RUN_MODES,
    benchmark_run_mode,
    get_run_mode,
)
from ray_pipeline.schema import BenchmarkConfig, FinalTrainingConfig, HpoConfig, SelectionConfig
from tests.conftest import SMOKE

SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4}}


def _hpo(mode: str | None = None) -> HpoConfig:
    run = {} if mode is None else {"run": {"mode": mode}}
    return HpoConfig.model_validate({"search_space": SPACE, **run})


def test_default_is_reuse_if_exists_everywhere() -> None:
    for section in (_hpo(), SelectionConfig(), FinalTrainingConfig()):
        assert get_run_mode(section) == "reuse_if_exists"


@pytest.mark.parametrize("mode", RUN_MODES)
def test_explicit_mode_wins(mode: str) -> None:
    assert get_run_mode(_hpo(mode)) == mode


def test_benchmark_null_inherits_hpo() -> None:
    bench = BenchmarkConfig()
    assert bench.run.mode is None
    assert benchmark_run_mode(bench, _hpo("force_new")) == "force_new"
    assert benchmark_run_mode(bench, _hpo("reuse_if_exists")) == "reuse_if_exists"
    # Benchmarks are atomic: nothing to resume, so resume acts as reuse.
    assert benchmark_run_mode(bench, _hpo("resume_if_incomplete")) == "reuse_if_exists"
    own = BenchmarkConfig.model_validate({"run": {"mode": "force_new"}})
    assert benchmark_run_mode(own, _hpo("reuse_if_exists")) == "force_new"


@pytest.mark.parametrize(
    ("hpo", "benchmark"),
    [
        ("reuse_if_exists", "reuse_if_exists"),
        ("force_new", "force_new"),
        ("resume_if_incomplete", "reuse_if_exists"),
    ],
)
def test_the_schema_resolves_a_null_benchmark_mode(hpo: str, benchmark: str) -> None:
    config = load_config(SMOKE, [f"hpo.run.mode={hpo}"])
    assert get_run_mode(config.benchmark) == benchmark  # not null: it would raise
    own = load_config(SMOKE, [f"hpo.run.mode={hpo}", "benchmark.run.mode=force_new"])
    assert get_run_mode(own.benchmark) == "force_new"


def test_null_without_inheritance_is_an_error() -> None:
    with pytest.raises(ValueError, match="no mode to inherit"):
        get_run_mode(BenchmarkConfig())


def _is_run_key(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "run"


def _reads_run_mode(tree: ast.AST) -> list[int]:
    """Lines that access ``<x>.run.mode``, ``<x>["run"]`` or ``<x>.get("run")`` in code."""
    lines = []
    for node in ast.walk(tree):
        attr = (
            isinstance(node, ast.Attribute)
            and node.attr == "mode"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "run"
        )
        subscript = isinstance(node, ast.Subscript) and _is_run_key(node.slice)
        get = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and bool(node.args)
            and _is_run_key(node.args[0])
        )
        if attr or subscript or get:
            lines.append(getattr(node, "lineno", 0))
    return lines


def test_only_the_run_mode_module_reads_run_mode() -> None:
    package = Path(ray_pipeline.__file__).parent
    readers = {
        path.name: lines
        for path in package.rglob("*.py")
        if (lines := _reads_run_mode(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert set(readers) == {"run_mode.py"}, readers
