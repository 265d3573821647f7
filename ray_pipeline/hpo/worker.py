"""The per-worker loop of one trial: train and evaluate the k folds one after another.

Runs on every Ray Train worker (DDP over gloo on CPU, nccl on GPU), so the worker group is
started once per trial, not once per fold. After each fold all workers report; rank 0 attaches
a checkpoint holding the fold loop's state (and the model when the fold is the trial's best so
far), so a retried trial resumes after its last finished fold. Knows nothing of Tune or Optuna.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from ray_pipeline import monitoring
from ray_pipeline.data.encode import Row, encode
from ray_pipeline.data.examples import DatasetSplits
from ray_pipeline.data.splits import fold_indices, load_splits
from ray_pipeline.hpo.results import FoldResult, FoldState
from ray_pipeline.models import build_model, load_tokenizer
from ray_pipeline.schema import BackboneConfig, DataConfig, Task, TrainingParams
from ray_pipeline.tracking import RunRef
from ray_pipeline.training import batches, evaluate, make_optimizer, train_epoch

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

STATE_FILE = "fold_state.json"
MODEL_DIR = "model"


class TrialJob(BaseModel):
    """Everything a worker needs for one trial (crosses the Ray boundary as a plain dict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig
    backbone: BackboneConfig
    task: Task
    training: TrainingParams
    k_folds: int
    seed: int
    metric: str
    direction: Literal["maximize", "minimize"]
    report_every_epoch: bool
    variant: str
    study_key_hash: str
    parent_run: RunRef | None = None
    """The variant's MLflow run (None: tracking off)."""
    trial: int | None = None
    """Set by the trial driver: the Optuna trial number."""
    trial_run: RunRef | None = None
    """Set by the trial driver: the trial's MLflow run, parent of the fold runs."""
    trial_key_hash: str | None = None
    """Set by the trial driver: the hash of the study and this trial's hyperparameters."""


def _shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's share, padded by wrap-around so every rank runs the same number of steps
    (unequal step counts would leave DDP waiting on an all-reduce)."""
    total = math.ceil(len(indices) / world) * world
    padded = indices + indices[: total - len(indices)]
    return padded[rank::world]


def _restore(checkpoint: Any) -> FoldState:
    if checkpoint is None:
        return FoldState()
    with checkpoint.as_directory() as directory:
        return FoldState.model_validate_json((Path(directory) / STATE_FILE).read_text())


def _better(job: TrialJob, a: float, b: float) -> bool:
    return a > b if job.direction == "maximize" else a < b


def _summary(job: TrialJob, state: FoldState, pending: float | None = None) -> dict[str, Any]:
    """What Tune sees: the mean objective over finished folds (plus the fold in progress,
    for epoch reports), so a scheduler can compare trials after any fold."""
    values = [f.objective for f in state.folds] + ([pending] if pending is not None else [])
    return {
        "folds_done": len(state.folds),
        "objective": statistics.fmean(values),
        "objective_std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "fold_state": state.model_dump_json(),
    }


class FoldRun:
    """One fold's data, model and optimiser on this Ray Train worker (also used by
    benchmarks/hpo_overhead.py to time the one-TorchTrainer-per-fold pattern)."""

    def __init__(self, job: TrialJob, fold: int, rows: list[Row], splits: DatasetSplits) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.job, self.fold, self.rank = job, fold, ctx.get_world_rank()
        self.workers = ctx.get_world_size()
        fit, val = fold_indices(len(rows), splits.train.strata, job.k_folds, job.seed, fold)
        self.fit_rows = [rows[i] for i in _shard(fit, self.rank, ctx.get_world_size())]
        self.val_rows = [rows[i] for i in val]
        self.n_fit = len(fit)
        self.labels = splits.labels
        # Every fold starts from the backbone's weights with its own seed.
        self.model = build_model(job.backbone, job.task, splits.labels, seed=job.seed + fold)
        self.device: torch.device = ray.train.torch.get_device()
        self.ddp = ray.train.torch.prepare_model(self.model)
        p = job.training
        steps = p.epochs * math.ceil(len(self.fit_rows) / p.batch_size)
        self.optimizer, self.scheduler = make_optimizer(self.ddp, p, steps)

    def train_epoch(self, epoch: int, pad_id: int) -> tuple[float, float]:
        seed = self.job.seed * 10_007 + self.fold * 101 + epoch
        data = batches(self.fit_rows, self.job.training.batch_size, pad_id, seed, self.device)
        start = time.perf_counter()
        loss = train_epoch(self.ddp, data, self.optimizer, self.scheduler)
        return loss, time.perf_counter() - start

    def evaluate(self, pad_id: int) -> dict[str, float]:
        size = max(self.job.training.batch_size, 32)
        return evaluate(
            self.model, self.val_rows, self.labels, self.job.task, size, pad_id, self.device
        )


def _report_epoch(job: TrialJob, state: FoldState, fold: FoldRun, epoch: int, pad_id: int) -> None:
    """A mid-fold report (``report_every_epoch``): every worker reports, rank 0 evaluates."""
    import ray.train

    if fold.rank != 0:  # only rank 0's metrics reach Tune; the others join the barrier
        ray.train.report({"folds_done": len(state.folds)})
        return
    value = fold.evaluate(pad_id)[job.metric]
    ray.train.report({**_summary(job, state, pending=value), "fold": fold.fold, "epoch": epoch})


def _report(job: TrialJob, state: FoldState, fold: FoldRun, tokenizer: Any, **extra: Any) -> None:
    """All workers report (a barrier); rank 0 attaches the fold checkpoint."""
    import ray.train

    if fold.rank != 0:  # only rank 0's metrics reach Tune; the others join the barrier
        ray.train.report({"folds_done": len(state.folds)})
        return
    metrics = {**_summary(job, state), "fold": fold.fold, **extra}
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / STATE_FILE).write_text(state.model_dump_json())
        if state.best_fold == fold.fold:
            fold.model.save_pretrained(Path(directory) / MODEL_DIR)
            tokenizer.save_pretrained(Path(directory) / MODEL_DIR)
        checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"fold_{fold.fold}")


def _track_fold(job: TrialJob, result: FoldResult) -> None:
    """The fold's MLflow run under the trial's run (rank 0 holds the fold's metrics)."""
    if job.trial_run is None or job.trial is None:
        return
    from ray_pipeline import tracking

    run = tracking.open_child(
        job.trial_run,
        "fold",
        tracking.run_name(job.variant, job.trial, result.fold),
        stage="hpo",
        backbone=job.backbone.name,
        variant=job.variant,
        study_key_hash=job.study_key_hash,
        trial=job.trial,
        trial_key_hash=job.trial_key_hash,
        fold=result.fold,
    )
    numbers = {
        "objective": result.objective,
        "train_loss": result.train_loss,
        "seconds": result.seconds,
        **result.metrics,
    }
    tracking.log(run, metrics=numbers)
    tracking.end(run)
    tracking.log(job.trial_run, metrics={"fold_objective": result.objective}, step=result.fold)


def train_folds(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: the k folds of one trial, resuming after the last finished."""
    import ray.train

    job = TrialJob.model_validate(config)
    splits = load_splits(job.data)
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(job.backbone)
    rows = encode(tokenizer, splits.train, splits.label2id, job.training.max_length)
    pad_id = int(tokenizer.pad_token_id or 0)
    state = _restore(ray.train.get_checkpoint())
    if state.folds:
        print(f"resuming after {state.next_fold} of {job.k_folds} finished fold(s)")
    if state.next_fold >= job.k_folds:
        # Every fold is in the checkpoint (the trial finished just before its driver was
        # stopped): report the result again instead of training anything.
        ray.train.report({**_summary(job, state), "fold": job.k_folds - 1})
        return
    for fold_number in range(state.next_fold, job.k_folds):
        start = time.perf_counter()
        fold = FoldRun(job, fold_number, rows, splits)
        losses, step_seconds = [], 0.0
        for epoch in range(job.training.epochs):
            loss, seconds = fold.train_epoch(epoch, pad_id)
            losses.append(loss)
            step_seconds += seconds
            if job.report_every_epoch and epoch < job.training.epochs - 1:
                _report_epoch(job, state, fold, epoch, pad_id)
        metrics = fold.evaluate(pad_id) if fold.rank == 0 else {}
        result = FoldResult(
            fold=fold_number,
            objective=metrics.get(job.metric, float("nan")),
            metrics=metrics,
            train_loss=losses[-1],
            train_examples=fold.n_fit,
            validation_examples=len(fold.val_rows),
            seconds=time.perf_counter() - start,
            train_step_seconds=step_seconds,
            workers=fold.workers,
            node=ray.get_runtime_context().get_node_id(),
        )
        best = state.best_fold
        if best is None or _better(job, result.objective, state.folds[best].objective):
            best = fold_number
        state = FoldState(folds=[*state.folds, result], best_fold=best)
        if fold.rank == 0:
            _track_fold(job, result)
            monitoring.fold_seconds(job.variant, result.seconds)
        _report(job, state, fold, tokenizer, fold_metrics=json.dumps(metrics))
