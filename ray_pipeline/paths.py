"""The outputs layout: every path and file name the pipeline writes (a contract that tests and
tools read), and the demo data cache. No other module (but ``layout_names.py``) spells a
name in this tree.

<outputs_root>/<experiment>/
  config.resolved.yaml
  mlflow.db
  mlartifacts/                 MLflow artifacts (of any store that is not a server)
  hpo/<backbone>/<variant>/    variant.json study.db (or study.journal) hpo.json
                               benchmark.json failures.jsonl best/
                               tune/round_<r>/trial_<n>/  train/trial_<n>/
  selection/selection.json
  final/<backbone>/<variant>/  variant.json model/ metrics.json lineage.json checkpoints/
                               failures.jsonl
  report/                      index.html (self-contained) leaderboard.json

With ``storage.uri`` set, what workers write (``tune/``, ``train/``, ``best/``, ``pareto/``,
``checkpoints/``) sits at the same relative path under the URI instead (``storage.py``).

Inside a checkpoint (a trial's or final training's): ``model/`` (a ``save_pretrained``
directory), ``training_state.pt`` (model, optimiser and scheduler state inside a fold or run)
and the loop's state, ``fold_state.json`` (HPO) or ``final_state.json`` (final training).

The fixed names (those inside a checkpoint, Tune's, the study file's default) are constants in
``layout_names.py``, which imports nothing of the project: the schema takes a default from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ray_pipeline.layout_names import LEASE, ROUND_PREFIX, TUNE_SNAPSHOT, VARIANT_RECORD
from ray_pipeline.naming import VariantStage, check_safe_name

if TYPE_CHECKING:
    from ray_pipeline.schema import PipelineConfig

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


def trial_name(number: int) -> str:
    """Study trial ``number``'s name in Tune and Ray Train, and so its directories under
    ``tune/round_<r>/`` and ``train/``."""
    return f"trial_{number}"


def in_round_order(names: list[str]) -> list[str]:
    """The ``round_<r>`` names among ``names``, oldest first."""
    rounds = [n for n in names if n.startswith(ROUND_PREFIX) and n[len(ROUND_PREFIX) :].isdigit()]
    return sorted(rounds, key=lambda n: int(n[len(ROUND_PREFIX) :]))


def tune_snapshots(names: list[str]) -> list[str]:
    """Tune's experiment snapshots among ``names``, oldest first (by name: a timestamp; the
    newest is the one Tune restores)."""
    prefix, suffix = TUNE_SNAPSHOT
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))


def is_uri(place: str) -> bool:
    """Whether ``place`` is a URI (``storage.uri``: ``s3://``, ``gs://``, ``file://``...)."""
    return "://" in place


def staging_for(path: Path) -> Path:
    """Where ``path`` is assembled before an atomic rename into place (a hidden sibling)."""
    return path.with_name(f".{path.name}.tmp")


@dataclass(frozen=True)
class OutputsLayout:
    """Every experiment-level path, derived from the outputs root and experiment name."""

    outputs_root: Path
    experiment: str

    @classmethod
    def of(cls, config: PipelineConfig) -> OutputsLayout:
        """The layout of ``config``'s experiment."""
        return cls(config.outputs_root, config.experiment.name)

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
        """MLflow artifacts of a store that is not a server (MLflow's default: ./mlruns)."""
        return self.root / "mlartifacts"

    @property
    def selection_file(self) -> Path:
        return self.root / "selection" / "selection.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def leaderboard_file(self) -> Path:
        return self.report_dir / "leaderboard.json"

    def stage_dir(self, stage: VariantStage, backbone: str) -> Path:
        """The directory holding one backbone's variants of ``stage``."""
        return self.root / stage / check_safe_name(backbone, "backbone name")


@dataclass(frozen=True)
class VariantFiles:
    """The files of one variant directory (HPO or final training)."""

    path: Path

    @property
    def record(self) -> Path:
        """``variant.json``: the variant's status and study key."""
        return self.path / VARIANT_RECORD

    @property
    def lease(self) -> Path:
        """``lease.json``: the run working on the variant now (``lease.py``)."""
        return self.path / LEASE

    @property
    def failures(self) -> Path:
        """``failures.jsonl``: every lost worker, trial or actor, one JSON line each."""
        return self.path / "failures.jsonl"

    # HPO
    @property
    def hpo_result(self) -> Path:
        return self.path / "hpo.json"

    @property
    def benchmark(self) -> Path:
        return self.path / "benchmark.json"

    @property
    def tune_dir(self) -> Path:
        """Ray Tune experiments, one ``round_<n>`` per run that added trials."""
        return self.path / "tune"

    def round_dir(self, number: int) -> Path:
        return self.tune_dir / f"{ROUND_PREFIX}{number}"

    @property
    def train_dir(self) -> Path:
        """Ray Train's storage: DDP trials' checkpoints (HPO), the DDP refit's run (final)."""
        return self.path / "train"

    def pareto_model(self, trial: int) -> Path:
        """A Pareto trial's best-fold model, kept for the benchmark (the best trial's is
        ``best``)."""
        return self.path / "pareto" / f"trial_{trial}"

    def trial_benchmark(self, trial: int) -> Path:
        """The benchmark of a Pareto trial other than the best (whose is ``benchmark``)."""
        return self.path / "benchmarks" / f"trial_{trial}.json"

    @property
    def best(self) -> Path:
        """The best trial's best-fold model, kept for the benchmark."""
        return self.path / "best"

    def recorded(self, place: str | None) -> str | None:
        """``place`` as a record in this variant holds it: a path inside the variant directory
        relative to it (so the tree can be copied, moved or mounted elsewhere), a place under
        ``storage.uri`` as it is."""
        if place is None or is_uri(place):
            return place
        path = Path(place)
        if path.is_absolute() and path.is_relative_to(self.path):
            return path.relative_to(self.path).as_posix()
        return place

    def located(self, recorded: str | None) -> str | None:
        """A place a record holds, as a place in this tree: a relative path under the variant
        directory. An absolute path (written before records were relative) inside this
        variant is itself; inside the same variant of another tree (a copy, or the tree before
        it moved: the path runs through ``<experiment>/<stage>/<backbone>/<variant>``) it is
        the same place here; anything else is None, never followed into another tree."""
        if recorded is None or is_uri(recorded):
            return recorded
        path = Path(recorded)
        if not path.is_absolute():
            return str(self.path / path)
        if path.is_relative_to(self.path):
            return recorded
        tail, parts = self.path.parts[-4:], path.parts
        for start in range(len(parts) - len(tail), -1, -1):
            if parts[start : start + len(tail)] == tail:
                return str(self.path.joinpath(*parts[start + len(tail) :]))
        return None

    def owns(self, place: str) -> bool:
        """Whether ``place`` (a path) lies inside this variant's directory: the only paths a
        stage working on the variant may delete."""
        return not is_uri(place) and Path(place).is_relative_to(self.path)

    def study_file(self, storage_path: str, study_name: str, journal: bool) -> Path:
        """The Optuna study file for ``hpo.checkpoint.storage_path`` (relative to the
        backbone's HPO directory, ``{study_name}`` replaced); a Journal storage's file takes
        the suffix ``.journal``."""
        path = self.path.parent / storage_path.replace("{study_name}", study_name)
        return path.with_suffix(".journal") if journal else path

    # final training
    @property
    def model(self) -> Path:
        """The exported model (``transformers.pipeline`` loads it)."""
        return self.path / "model"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def lineage(self) -> Path:
        return self.path / "lineage.json"

    @property
    def checkpoints(self) -> Path:
        """Final training's epoch checkpoints (``epoch_<n>/``), whatever ran them."""
        return self.path / "checkpoints"
