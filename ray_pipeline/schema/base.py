"""Shared building blocks of the schema: the base section, path fields, run sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ray_pipeline.run_mode import ReuseMode, RunMode


class PathMarker:
    """Marks a field as a path that is resolved against the config file's directory."""


ConfigPath = Annotated[Path, PathMarker()]
PositiveInt = Annotated[int, Field(ge=1)]

SEED_LIMIT = 2**32
"""Seeds lie in [0, 2**32): what NumPy's ``RandomState`` accepts."""


def _check_seed(value: int) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(
            "a seed must lie in [0, 2**32) (NumPy's RandomState takes no other); "
            "use a whole number such as 42"
        )
    return value


Seed = Annotated[int, AfterValidator(_check_seed)]
"""A random seed, checked when the config is loaded (not when a split first uses it)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


T = TypeVar("T")


def resolved(value: T | None, key: str) -> T:
    """A field whose null the schema resolves (``hpo.sampler.n_startup_trials``,
    ``selection.objective``, ``tracking.experiment_name``, ...), typed as never null."""
    if value is None:
        raise ValueError(f"{key} is null: it is resolved only when a PipelineConfig is validated")
    return value


class RunSection(Section):
    mode: RunMode = "reuse_if_exists"
    """reuse_if_exists: reuse the latest variant (resume it if incomplete; create the first
    if none). force_new: create the next variant (_v2, _v3, ...). resume_if_incomplete:
    resume the latest variant if incomplete, else create the next."""


class ReuseRunSection(Section):
    mode: ReuseMode = "reuse_if_exists"
    """reuse_if_exists: reuse the cached result when its inputs are unchanged.
    force_new: recompute."""


class BenchmarkRunSection(Section):
    mode: ReuseMode | None = None
    """reuse_if_exists: keep each variant's benchmark while it is current (its best trial,
    these settings); measure the rest. force_new: benchmark again. null: the HPO stage's mode,
    resolved when the whole config is validated (HPO's resume_if_incomplete becomes
    reuse_if_exists: a benchmark has nothing to resume)."""
