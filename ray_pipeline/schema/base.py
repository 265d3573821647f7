"""Shared building blocks of the schema: the base section, path fields, run sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ray_pipeline.run_mode import RunMode


class PathMarker:
    """Marks a field as a path that is resolved against the config file's directory."""


ConfigPath = Annotated[Path, PathMarker()]
PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RunSection(Section):
    mode: RunMode = "reuse_if_exists"
    """reuse_if_exists: reuse the latest variant (resume it if incomplete; create the first
    if none). force_new: create the next variant (_v2, _v3, ...). resume_if_incomplete:
    resume the latest variant if incomplete, else create the next."""


class ReuseRunSection(Section):
    mode: Literal["reuse_if_exists", "force_new"] = "reuse_if_exists"
    """reuse_if_exists: reuse the cached result when its inputs are unchanged.
    force_new: recompute."""


class BenchmarkRunSection(Section):
    mode: Literal["reuse_if_exists", "force_new"] | None = None
    """null: inherit the HPO stage's mode. reuse_if_exists: keep each variant's benchmark
    while it is current (its best trial, these settings); measure the rest. force_new:
    benchmark again."""
