"""The outputs layout (a contract that tests and tools read) and the demo data cache.

<outputs_root>/<experiment>/
  config.resolved.yaml
  mlflow.db
  mlartifacts/                 the embedded MLflow store's artifacts
  hpo/<backbone>/<variant>/    variant.json study.db tune/ hpo.json benchmark.json best/
  selection/selection.json
  final/<backbone>/<variant>/  model/ metrics.json lineage.json checkpoints/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ray_pipeline.naming import VariantStage, check_safe_name

DATA_CACHE_ENV = "RAY_PIPELINE_DATA_CACHE"
DATA_CACHE_TOKEN = "{data_cache}"


def data_cache_dir() -> Path:
    """Where demo data is cached: $RAY_PIPELINE_DATA_CACHE, else ~/.cache/ray_pipeline/data."""
    configured = os.environ.get(DATA_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "ray_pipeline" / "data"


def expand_data_cache(path: Path) -> Path:
    """Replace a leading ``{data_cache}`` in a configured path with ``data_cache_dir()``."""
    text = str(path)
    if text.startswith(DATA_CACHE_TOKEN):
        return data_cache_dir() / text[len(DATA_CACHE_TOKEN) :].lstrip("/\\")
    return path


@dataclass(frozen=True)
class OutputsLayout:
    """Every path the pipeline writes, derived from the outputs root and experiment name."""

    outputs_root: Path
    experiment: str

    @property
    def root(self) -> Path:
        return self.outputs_root / check_safe_name(self.experiment, "experiment name")

    @property
    def resolved_config(self) -> Path:
        return self.root / "config.resolved.yaml"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """The embedded MLflow store's artifacts (MLflow would use ./mlruns otherwise)."""
        return self.root / "mlartifacts"

    @property
    def selection_file(self) -> Path:
        return self.root / "selection" / "selection.json"

    def stage_dir(self, stage: VariantStage, backbone: str) -> Path:
        """The directory holding one backbone's variants of ``stage``."""
        return self.root / stage / check_safe_name(backbone, "backbone name")
