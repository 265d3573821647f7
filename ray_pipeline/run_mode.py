"""run.mode: one type, one reader. No other module reads ``run.mode``.

| mode                 | HPO / final training                | benchmark          | selection   |
|----------------------|-------------------------------------|--------------------|-------------|
| reuse_if_exists      | reuse latest (resume if unfinished) | keep current ones, | reuse cache |
|                      |                                     | re-measure stale   |             |
| force_new            | create the next variant             | benchmark again    | recompute   |
| resume_if_incomplete | resume latest if unfinished,        | not allowed (as    | not allowed |
|                      | else create the next variant        | reuse if inherited)|             |
| null                 | -                                   | inherit HPO's      | -           |
"""

from __future__ import annotations

from typing import Literal, Protocol

RunMode = Literal["reuse_if_exists", "force_new", "resume_if_incomplete"]
RUN_MODES: tuple[RunMode, ...] = ("reuse_if_exists", "force_new", "resume_if_incomplete")


class _HasMode(Protocol):
    @property
    def mode(self) -> str | None: ...


class HasRunSection(Protocol):
    """Any stage section with a ``run:`` block."""

    @property
    def run(self) -> _HasMode: ...


def get_run_mode(section: HasRunSection, default: RunMode | None = None) -> RunMode:
    """The stage's run mode: its ``run.mode``, else ``default``.

    The schema holds every stage's default; ``default`` exists for inheritance
    (benchmark's ``null`` takes the HPO mode). Raises ValueError when both are
    missing, which the schema makes impossible for every stage but benchmark.
    """
    mode = section.run.mode
    if mode is None:
        if default is None:
            raise ValueError("run.mode is null and no mode to inherit was given")
        return default
    if mode not in RUN_MODES:  # the schema rejects these; guard against hand-built objects
        raise ValueError(f"unknown run mode {mode!r}; choose one of {', '.join(RUN_MODES)}")
    return mode


def benchmark_run_mode(benchmark: HasRunSection, hpo: HasRunSection) -> RunMode:
    """The benchmark stage's mode: its own, or (null) the HPO stage's.

    Benchmarks are written atomically, so there is nothing to resume:
    an inherited ``resume_if_incomplete`` acts as ``reuse_if_exists``.
    """
    inherited = get_run_mode(hpo)
    if inherited == "resume_if_incomplete":
        inherited = "reuse_if_exists"
    return get_run_mode(benchmark, default=inherited)
