"""The records HPO writes: each fold's and trial's result, and ``hpo.json`` per variant."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ray_pipeline.artifacts import Record

TrialState = Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]


class FoldResult(Record):
    """One fold of one trial, as the worker loop reports it."""

    fold: int
    objective: float
    metrics: dict[str, float]
    train_loss: float
    train_examples: int
    validation_examples: int
    seconds: float
    train_step_seconds: float
    """Time spent in forward/backward/optimizer steps (excludes data, model set-up, eval)."""
    workers: int
    """DDP workers that trained the fold."""
    node: str | None = None
    """Ray node id of the rank-0 worker (which node trained it, on a multi-node cluster)."""


class FoldState(Record):
    """The fold loop's state, saved with every fold checkpoint so a retried trial resumes."""

    folds: list[FoldResult] = Field(default_factory=list)
    best_fold: int | None = None

    @property
    def next_fold(self) -> int:
        return len(self.folds)


class TrialRecord(Record):
    """One Optuna trial of a variant."""

    number: int
    state: TrialState
    params: dict[str, Any]
    objective_mean: float | None
    objective_std: float | None
    folds: list[FoldResult]
    trial_key_hash: str
    best_fold: int | None = None
    checkpoint: str | None = None
    """The best fold's checkpoint directory (model + tokenizer), while it is kept."""


class HpoResult(Record):
    """``hpo.json``: every trial of a variant and the best one."""

    variant: str
    backbone: str
    study_key_hash: str
    metric: str
    direction: Literal["maximize", "minimize"]
    num_samples: int
    k_folds: int
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_checkpoint: str | None
    """``<variant>/best``: the best trial's best-fold model, kept for benchmark and export."""

    @property
    def finished(self) -> int:
        return sum(t.state in ("COMPLETE", "PRUNED") for t in self.trials)
