"""Final training's records: the job the workers get, their epoch state, and the files
written next to the exported model (``metrics.json``, ``lineage.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_pipeline.artifacts import Record
from ray_pipeline.hpo.results import TrialRecord
from ray_pipeline.schema import BackboneConfig, DataConfig, Task, TrainingParams


class SourceTrial(Record):
    """The HPO trial a final variant refits, and how it was chosen."""

    trial: TrialRecord
    """As HPO recorded it: the refit takes its ``training`` settings and ``seed``."""
    chosen_by: Literal["selection", "config"]
    """``selection`` (the winner of selection.json) or ``config`` (final_training.source)."""
    selection_cache_key: str | None = None
    selection_run_id: str | None = None
    benchmark_run_id: str | None = None


class FinalJob(Record):
    """Everything a final-training worker needs (a plain dict across the Ray boundary)."""

    variant: str
    backbone: BackboneConfig
    data: DataConfig
    task: Task
    training: TrainingParams
    seed: int
    attempt: str
    """When this driver started: tells epochs trained before a resume from those after."""


class EpochRecord(Record):
    epoch: int
    train_loss: float
    seconds: float
    attempt: str


class FinalState(Record):
    """Saved with every epoch checkpoint, so a resumed run continues after the last epoch."""

    epochs: list[EpochRecord] = Field(default_factory=list)

    @property
    def next_epoch(self) -> int:
        return len(self.epochs)


class FinalMetrics(Record):
    """``metrics.json``."""

    variant: str
    source: SourceTrial
    task: Task
    test_metrics: dict[str, float]
    train_examples: int
    test_examples: int
    majority_label: str | None = None
    """The training data's most frequent label."""
    majority_rate: float | None = None
    """The test accuracy (token accuracy for NER) of always predicting ``majority_label``."""
    epochs: list[EpochRecord]
    resumed_from_epoch: int | None
    """The first epoch this (resumed) run trained; None when it started from scratch."""
    failures: list[str] = Field(default_factory=list)
    """The cause of each worker-group failure Ray Train recovered from (resources.max_failures)."""
    workers: int
    seconds: float


class Lineage(Record):
    """``lineage.json``: where the exported model came from."""

    final_variant: str
    final_key_hash: str
    source: SourceTrial
    training: TrainingParams
    data_fingerprint: str
    labels: list[str]
    mlflow: dict[str, str | None]
    """Run ids: hpo variant, benchmark, selection, final."""
    packages: dict[str, str]
    created_at: str
