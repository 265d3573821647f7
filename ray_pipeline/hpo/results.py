"""The records HPO writes: each fold's and trial's result, and ``hpo.json`` per variant.

``FoldState`` is the fold loop's state; it computes a trial's objective (mean and spread over
its finished folds). What a trial reports to Ray Tune carries it (``trial_report.py``).
``TrialRecord`` is the one record of a trial that the later stages read: benchmark measures it,
selection ranks it, final training refits it (with its ``training`` settings and ``seed``) and
the report shows it. It is built once (``TrialRecord.of``), by the HPO stage, into
``hpo.json``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from ray_pipeline.artifacts import Record, read_json, write_json
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.jobs import StudyJob
from ray_pipeline.paths import VariantFiles
from ray_pipeline.run_tree import Origin
from ray_pipeline.schema import TrainingParams

ENQUEUED_FROM = "enqueued_from"
"""Optuna user attribute of an enqueued trial: where its parameters came from."""

TrialState = Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]


class EpochPoint(Record):
    """One epoch of a fold: a point of its learning curves (report, MLflow fold runs)."""

    epoch: int
    """1-based."""
    train_loss: float
    """Mean training loss over the epoch."""
    validation: float | None = None
    """The objective metric on the fold's validation rows after this epoch (None: the epoch
    was not evaluated; the last epoch always is, as the fold's ``objective``)."""
    learning_rate: float | None = None
    """The learning rate at the end of the epoch."""
    step_seconds: float | None = None
    """Mean seconds per optimiser step in this epoch."""
    threads: int | None = None
    """Torch threads rank 0 trained the epoch with: its reserved CPUs, more when idle cores
    were lent to it (hpo/idle_cores.py; None: recorded before it was)."""


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
    gpu_ids: list[str] = Field(default_factory=list)
    """The GPUs Ray gave the rank-0 worker (several trials may share one: fractional GPUs)."""
    precision: str | None = None
    """What it trained in: fp32, bf16 or fp16 (None: recorded before precision existed)."""
    latency_ms: float | None = None
    """Fold 0 with ``hpo.objective.latency``: the model's p95 latency (ms) at batch 1."""
    history: list[EpochPoint] = Field(default_factory=list)
    """Each epoch's point, in order (empty: recorded before histories existed)."""
    scored_epoch: int | None = None
    """The 1-based epoch whose validation scores are ``objective`` and ``metrics``: the last,
    or with ``hpo.fold_score: best`` the best (None: recorded before it existed)."""

    def curves(self, metric: str) -> dict[int, dict[str, float | None]]:
        """The learning curves by epoch (1-based, as MLflow steps): train loss, learning rate,
        step time and the validation ``metric``; the last train loss is the fold's."""
        return {
            p.epoch: {
                **p.model_dump(include={"train_loss", "learning_rate", "step_seconds"}),
                f"validation_{metric}": p.validation,
            }
            for p in self.history
        }


class FoldProgress(Record):
    """The fold in progress, as of its last epoch checkpoint."""

    fold: int
    epochs_done: int = 0
    losses: list[float] = Field(default_factory=list)
    step_seconds: float = 0.0
    seconds: float = 0.0
    """Wall time of the fold so far, over every attempt."""
    history: list[EpochPoint] = Field(default_factory=list)
    """The epochs done so far (``FoldResult.history``)."""
    best_epoch: int | None = None
    """``hpo.fold_score: best``: the 1-based epoch that scored best so far."""
    best_metrics: dict[str, float] = Field(default_factory=dict)
    """Its validation scores (rank 0)."""


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and population standard deviation of ``values`` (not empty): a trial's
    objective and its spread over folds (NaN for both when a value is NaN: a DDP rank that
    does not evaluate)."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values)


class FoldState(Record):
    """The fold loop's state, saved with every checkpoint so a retried trial resumes after its
    last finished fold, or inside a fold after its last checkpointed epoch."""

    folds: list[FoldResult] = Field(default_factory=list)
    best_fold: int | None = None
    current: FoldProgress | None = None
    """The fold being trained (epoch checkpoints only)."""
    resumes: list[str] = Field(default_factory=list)
    """Where each retry of the trial picked up, e.g. ``fold 1 epoch 2``."""

    @property
    def objective(self) -> tuple[float, float] | None:
        """The trial's objective and its spread over the finished folds only (None before the
        first fold finished; NaN on DDP ranks other than 0, which do not evaluate)."""
        return mean_and_spread([f.objective for f in self.folds]) if self.folds else None

    @property
    def latency_ms(self) -> float | None:
        """The fold-0 model's p95 latency (``hpo.objective.latency``), once fold 0 finished."""
        return self.folds[0].latency_ms if self.folds else None


class TrialRecord(Record):
    """One Optuna trial of a variant: what it ran, how it scored, where its model is."""

    variant: str
    backbone: str
    number: int
    state: TrialState
    params: dict[str, Any]
    """The hyperparameters Optuna suggested."""
    training: TrainingParams
    """The exact settings it trained with: ``hpo.training`` with ``params`` applied."""
    seed: int
    """The folds were split with ``seed``; fold ``f`` initialised its model with ``seed + f``."""
    metric: str
    objective_mean: float | None
    """Mean of ``metric`` over the folds (None before a fold finished)."""
    objective_std: float | None
    folds: list[FoldResult]
    best_fold: int | None = None
    study_key_hash: str
    trial_key_hash: str
    checkpoint: str | None = None
    """The trial's last checkpoint (its ``model/`` is the best fold's), while it is kept;
    ``<variant>/best`` (the best-fold model itself) for the best trial once the variant is
    complete."""
    resumes: list[str] = Field(default_factory=list)
    """Where each retry picked up (see FoldState.resumes): finished folds are not retrained."""
    failures: list[str] = Field(default_factory=list)
    """The cause of each failed attempt that was retried (or was the last)."""
    epochs_trained: int | None = None
    """Epochs it trained over all its folds (fewer than k_folds x epochs when a scheduler
    stopped it; None: not reported)."""
    latency_ms: float | None = None
    """With ``hpo.objective.latency``: the second objective, its fold-0 model's p95 latency (ms)
    at batch 1 and its ``max_length``."""
    enqueued_from: str | None = None
    """Where its parameters came from when they were enqueued rather than sampled: an earlier
    variant's trial (``hpo.warm_start``), ``hpo.enqueue[i]``, or ``hpo.training
    (defaults_first)`` (the untuned recipe)."""
    stopped_by: str | None = None
    """Why it stopped before its last fold, when fold racing stopped it (``hpo.racing``); a
    scheduler's stop (``hpo.scheduler``) is told by ``epochs_trained``."""

    @classmethod
    def of(
        cls,
        state: FoldState,
        *,
        number: int,
        trial_state: TrialState,
        params: dict[str, Any],
        study: StudyJob,
        trial_key_hash: str,
        checkpoint: str | None,
        failures: list[str],
        epochs_trained: int | None,
        enqueued_from: str | None,
        stopped_by: str | None = None,
    ) -> TrialRecord:
        """Trial ``number`` of ``study`` as its fold loop's ``state`` left it: the one place a
        trial's record is made."""
        objective, spread = state.objective or (None, None)
        return cls(
            variant=study.variant,
            backbone=study.backbone.name,
            number=number,
            state=trial_state,
            params=params,
            training=study.training.with_params(params),
            seed=study.seed,
            metric=study.metric,
            objective_mean=objective,
            objective_std=spread,
            folds=state.folds,
            best_fold=state.best_fold,
            study_key_hash=study.study_key_hash,
            trial_key_hash=trial_key_hash,
            checkpoint=checkpoint,
            resumes=state.resumes,
            failures=failures,
            epochs_trained=epochs_trained,
            latency_ms=state.latency_ms,
            enqueued_from=enqueued_from,
            stopped_by=stopped_by,
        )

    @property
    def fold_state(self) -> FoldState:
        """The fold loop's state this record holds (finished folds only)."""
        return FoldState(folds=self.folds, best_fold=self.best_fold, resumes=self.resumes)

    @property
    def label(self) -> str:
        """``<variant> trial <n>``, as messages name it."""
        return f"{self.variant} trial {self.number}"

    @property
    def scored_epochs(self) -> int | None:
        """The epoch count its folds were scored at: the mean of their ``scored_epoch``, rounded
        (half up), at least 1; its ``training.epochs`` with ``hpo.fold_score: last``. Final
        training refits this many epochs (None: recorded before it existed)."""
        epochs = [f.scored_epoch for f in self.folds if f.scored_epoch is not None]
        if not epochs or len(epochs) < len(self.folds):
            return None
        return max(1, math.floor(statistics.fmean(epochs) + 0.5))

    def objective_of(self, metric: str) -> tuple[float, float] | None:
        """The mean and spread over folds of ``metric`` (the trial's own objective, or another
        metric its folds recorded); None when no fold recorded it."""
        if metric == self.metric and self.objective_mean is not None:
            return self.objective_mean, self.objective_std or 0.0
        values = [f.metrics[metric] for f in self.folds if metric in f.metrics]
        return mean_and_spread(values) if values else None

    def origin(self) -> Origin:
        """What ties a later stage's run to this trial (its lineage tags)."""
        return Origin(
            backbone=self.backbone,
            variant=self.variant,
            study_key_hash=self.study_key_hash,
            trial=self.number,
            trial_key_hash=self.trial_key_hash,
        )


class HpoResult(Record):
    """``hpo.json``: every trial of a variant and the best one."""

    variant: str
    backbone: str
    study_key_hash: str
    metric: str
    direction: Direction
    num_samples: int
    k_folds: int
    """Fits per trial: the cross-validation folds, 1 with holdout."""
    evaluation: Literal["cv", "holdout"] = "cv"
    """How trials were scored (``hpo.evaluation``)."""
    trials: list[TrialRecord]
    best: TrialRecord | None
    """The complete trial with the best ``objective_mean`` (pruned and failed trials never
    win)."""
    best_checkpoint: str | None
    """``<variant>/best``: the best trial's best-fold model, kept for the benchmark
    (None until the variant is complete)."""
    train_examples: int | None = None
    """Training rows the search split into folds (``hpo.max_train_examples`` may cap them
    below what final training refits on); None: recorded before it was."""
    pareto: list[int] = Field(default_factory=list)
    """With ``hpo.objective.latency``: the complete trials no other complete trial beats on
    both the metric and latency (the Pareto front), by number; ``best`` is one of them."""
    stop_reason: str | None = None
    """Why the last run stopped launching trials before ``num_samples`` (``hpo.time_budget_s``
    or ``hpo.patience``); None when it did not."""

    @property
    def finished(self) -> int:
        return sum(t.state in ("COMPLETE", "PRUNED") for t in self.trials)


def read_hpo(files: VariantFiles) -> HpoResult | None:
    """A variant's ``hpo.json``, if written, its checkpoints as places in this tree
    (``VariantFiles.located``: a copied or moved tree reads its own)."""
    path = files.hpo_result
    if not path.is_file():
        return None
    return _with_places(read_json(path, HpoResult), files.located)


def write_hpo(files: VariantFiles, result: HpoResult) -> None:
    """Write ``hpo.json`` with its checkpoints relative to the variant directory."""
    write_json(files.hpo_result, _with_places(result, files.recorded))


def _with_places(result: HpoResult, place: Callable[[str | None], str | None]) -> HpoResult:
    """``result`` with ``place`` applied to every checkpoint it names."""

    def trial(record: TrialRecord | None) -> TrialRecord | None:
        if record is None:
            return None
        return record.model_copy(update={"checkpoint": place(record.checkpoint)})

    return result.model_copy(
        update={
            "trials": [trial(t) for t in result.trials],
            "best": trial(result.best),
            "best_checkpoint": place(result.best_checkpoint),
        }
    )
