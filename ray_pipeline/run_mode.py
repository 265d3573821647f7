"""run.mode: one type, one reader. No other module reads ``run.mode``.

| mode                 | HPO / final training                | benchmark          | selection   |
|----------------------|-------------------------------------|--------------------|-------------|
| reuse_if_exists      | reuse latest (resume if unfinished) | keep current ones, | reuse cache |
|                      |                                     | re-measure stale   |             |
| force_new            | create the next variant             | benchmark again    | recompute   |
| resume_if_incomplete | resume latest if unfinished,        | not allowed (as    | not allowed |
|                      | else create the next variant        | reuse if inherited)|             |
| null                 | -                                   | HPO's (resolved by | -           |
|                      |                                     | the schema)        |             |
"""

from __future__ import annotations

from typing import Literal, Protocol

RunMode = Literal["reuse_if_exists", "force_new", "resume_if_incomplete"]
RUN_MODES: tuple[RunMode, ...] = ("reuse_if_exists", "force_new", "resume_if_incomplete")
ReuseMode = Literal["reuse_if_exists", "force_new"]
"""Selection's and the benchmark's modes (their results are written whole: nothing to resume)."""


class _HasMode(Protocol):
    @property
    def mode(self) -> str | None: ...


class HasRunSection(Protocol):
    """Any stage section with a ``run:`` block."""

    @property
    def run(self) -> _HasMode: ...


def get_run_mode(section: HasRunSection) -> RunMode:
    """The stage's run mode, its ``run.mode``: the schema holds every stage's default and
    resolves benchmark's null (``benchmark_run_mode``). Raises ValueError for a null (a
    ``BenchmarkConfig`` outside a ``PipelineConfig``, which has no mode to inherit)."""
    mode = section.run.mode
    if mode is None:
        raise ValueError("run.mode is null: no mode to inherit outside a PipelineConfig")
    if mode not in RUN_MODES:  # the schema rejects these; guard against hand-built objects
        raise ValueError(f"unknown run mode {mode!r}; choose one of {', '.join(RUN_MODES)}")
    return mode


def benchmark_run_mode(benchmark: HasRunSection, hpo: HasRunSection) -> ReuseMode:
    """The benchmark stage's mode, as the schema resolves it: its own, or (null) the HPO
    stage's. Benchmarks are written atomically, so there is nothing to resume: an inherited
    ``resume_if_incomplete`` acts as ``reuse_if_exists``."""
    own = benchmark.run.mode
    mode = get_run_mode(hpo if own is None else benchmark)
    return "force_new" if mode == "force_new" else "reuse_if_exists"
