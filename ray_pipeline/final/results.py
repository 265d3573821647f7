"""Final training's records: the job the workers get, their epoch state, and the files
written next to the exported model (``metrics.json``, ``lineage.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ray_pipeline.artifacts import Record
from ray_pipeline.hpo.results import TrialRecord
from ray_pipeline.metrics import ClassScores, Confusion
from ray_pipeline.schema import BackboneConfig, DataConfig, PipelineConfig, Task, TrainingParams


class SourceTrial(Record):
    """The HPO trial a final variant refits, and how it was chosen."""

    trial: TrialRecord
    """As HPO recorded it: the refit takes its ``training`` settings and ``seed``."""
    chosen_by: Literal["selection", "config"]
    """``selection`` (the winner of selection.json) or ``config`` (final_training.source)."""
    selection_cache_key: str | None = None
    selection_run_id: str | None = None
    benchmark_run_id: str | None = None

    def choice(self) -> dict[str, Any]:
        """How it was chosen, as the final run's tags: by whom and the runs that chose it."""
        return self.model_dump(include={"chosen_by", "selection_run_id", "benchmark_run_id"})


def refit_epochs(config: PipelineConfig, trial: TrialRecord) -> tuple[int, str]:
    """How many epochs the refit trains, and why: ``final_training.epochs`` when set, else the
    epoch count the trial's folds were scored at (``TrialRecord.scored_epochs``: their mean
    best epoch with ``hpo.fold_score: best``), else the trial's epochs. An epoch is a pass over
    the refit's rows, so its optimiser steps grow with its data as the folds' did with theirs
    (docs/hpo.md#best-epoch-scores)."""
    if config.final_training.epochs is not None:
        return config.final_training.epochs, "final_training.epochs"
    scored = trial.scored_epochs
    trained = trial.training.epochs
    if scored is None or scored == trained:
        return trained, "the trial's epochs"
    each = ", ".join(str(f.scored_epoch) for f in trial.folds)
    return scored, f"the trial's best epochs ({each}; mean rounded) of {trained}"


class Refit(Record):
    """How the refit ran: ``final_training.resources`` as planned on the cluster."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    threads_per_worker: int
    """Torch intra-op threads of each worker: the CPUs it reserved."""
    device: Literal["cpu", "cuda"]
    backend: Literal["task", "train"]
    """``task``: one worker, trained in one Ray task; ``train``: a Ray Train DDP worker group."""
    batch_size_per_worker: int
    effective_batch_size: int
    """Examples per optimiser step across the workers: the source trial's batch size (rounded
    up to a multiple of ``workers``) x its ``gradient_accumulation_steps``."""


class FinalJob(Record):
    """Everything a final-training worker needs (a plain dict across the Ray boundary)."""

    variant: str
    checkpoints: str
    """The variant's epoch checkpoints directory: a place every worker reaches (under the
    shared outputs root, or under ``storage.uri``)."""
    keep_checkpoints: int
    batch_size_per_worker: int
    backbone: BackboneConfig
    data: DataConfig
    task: Task
    training: TrainingParams
    seed: int
    with_validation: bool = False
    """Train on the validation split too (``final_training.data: train_and_validation``)."""
    attempt: str
    """When this driver started: tells epochs trained before a resume from those after."""


class EpochRecord(Record):
    epoch: int
    train_loss: float
    seconds: float
    attempt: str
    workers: int = 1
    """The DDP workers that trained this epoch."""
    threads: int | None = None
    """Torch intra-op threads per worker while it trained (None: not recorded)."""
    precision: str | None = None
    """What it trained in: fp32, bf16 or fp16 (None: recorded before precision existed)."""
    learning_rate: float | None = None
    """The learning rate at the end of the epoch (None: not recorded)."""
    step_seconds: float | None = None
    """Mean seconds per optimiser step in this epoch (None: not recorded)."""


class FinalState(Record):
    """Saved with every epoch checkpoint, so a resumed run continues after the last epoch."""

    epochs: list[EpochRecord] = Field(default_factory=list)
    test_metrics: dict[str, float] | None = None
    """Set in the last epoch's checkpoint, once the refit model was evaluated."""
    per_class: dict[str, ClassScores] = Field(default_factory=dict)
    """Set with ``test_metrics``: per class, or per entity type for NER."""
    confusion: Confusion | None = None
    """Set with ``test_metrics`` for sequence classification."""
    resumed_from_epoch: int | None = None
    """The first epoch of the latest attempt that resumed from a checkpoint."""

    @property
    def next_epoch(self) -> int:
        return len(self.epochs)


class FinalMetrics(Record):
    """``metrics.json``."""

    variant: str
    source: SourceTrial
    task: Task
    test_metrics: dict[str, float]
    per_class: dict[str, ClassScores] = Field(default_factory=dict)
    """Test scores per class (per entity type for NER); empty in older metrics.json."""
    confusion: Confusion | None = None
    """Test confusion matrix (sequence classification; None for NER and older files)."""
    train_examples: int
    """The rows the refit trained on (with ``data: train_and_validation``, the training and
    validation splits together)."""
    test_examples: int
    data: Literal["train", "train_and_validation"] = "train"
    """What the refit trained on (``final_training.data``)."""
    validation_examples: int = 0
    """Of ``train_examples``, the validation split's rows (0 with ``data: train``)."""
    majority_label: str | None = None
    """The training data's most frequent label."""
    majority_rate: float | None = None
    """The test accuracy (token accuracy for NER) of always predicting ``majority_label``."""
    epochs: list[EpochRecord]
    resumed_from_epoch: int | None
    """The first epoch this (resumed) run trained; None when it started from scratch."""
    failures: list[str] = Field(default_factory=list)
    """The cause of each failed attempt that was retried (resources.max_failures)."""
    refit: Refit | None
    """None only in a metrics.json written before final_training.resources existed."""
    seconds: float

    @model_validator(mode="before")
    @classmethod
    def _older_metrics(cls, data: Any) -> Any:
        return upgrade_metrics(data)


def upgrade_metrics(data: Any) -> Any:
    """A metrics.json from before ``refit`` recorded only ``workers``: still readable."""
    if isinstance(data, dict) and "refit" not in data:
        return {**{k: v for k, v in data.items() if k != "workers"}, "refit": None}
    return data


class Lineage(Record):
    """``lineage.json``: where the exported model came from."""

    final_variant: str
    final_key_hash: str
    source: SourceTrial
    training: TrainingParams
    refit: Refit | None = None
    """None only in a lineage.json written before final_training.resources existed."""
    data: Literal["train", "train_and_validation"] = "train"
    """What the refit trained on (``final_training.data``)."""
    epochs_from: str | None = None
    """Why it trained ``training.epochs`` epochs (``refit_epochs``; None: before it existed)."""
    rows: dict[str, int] = Field(default_factory=dict)
    """Rows per split the refit used: ``train``, ``validation`` (trained on with
    ``train_and_validation``), ``test`` (only tested on)."""
    data_fingerprint: str
    labels: list[str]
    mlflow: dict[str, str | None]
    """Run ids: hpo variant, benchmark, selection, final."""
    packages: dict[str, str]
    created_at: str
