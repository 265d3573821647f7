"""One fold of a trial on one worker (``FoldRun``): its rows, model, optimiser, scheduler and
precision, its training state for checkpoints, and which epoch scores it (the last, or with
``hpo.fold_score: best`` the best, whose weights the fold keeps). The fold loop
(``hpo/worker.py``) drives it; knows nothing of Tune or Optuna.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray_pipeline.data.encode import Row
from ray_pipeline.data.splits import fold_indices, holdout_indices
from ray_pipeline.hpo.cache import Prepared, fresh_model
from ray_pipeline.hpo.jobs import TrialJob
from ray_pipeline.hpo.results import FoldProgress
from ray_pipeline.layout_names import BEST_EPOCH_MODEL, TRAINING_STATE
from ray_pipeline.precision import Amp, resolve
from ray_pipeline.sessions import Session
from ray_pipeline.training import (
    batches,
    evaluate,
    make_optimizer,
    optimizer_steps,
    per_worker_batch,
    shard,
    train_epoch,
)


def fit_and_validation(job: TrialJob, inputs: Prepared, fold: int) -> tuple[list[int], list[Row]]:
    """The training rows a fold fits (indices) and the rows it is scored on (rank 0 evaluates
    them all): a cross-validation fold of the training split, or with holdout the whole
    training split and the validation split (without one, a held-out part of the training
    split)."""
    rows, study = inputs.rows, job.study
    train = inputs.splits.train
    if study.holdout is None:
        fit, val = fold_indices(len(rows), train.strata, study.k_folds, study.seed, fold)
    elif inputs.validation_rows is not None:
        return list(range(len(rows))), inputs.validation_rows
    else:
        fit, val = holdout_indices(train, study.holdout, study.seed)
    return fit, [rows[i] for i in val]


class FoldRun:
    """One fold's data shard, model and optimiser on this worker (also used by
    benchmarks/hpo_overhead.py to time the one-TorchTrainer-per-fold pattern)."""

    def __init__(self, job: TrialJob, fold: int, inputs: Prepared, session: Session) -> None:
        self.job, self.fold, self.inputs, self.workers = job, fold, inputs, session.world_size
        rows, splits = inputs.rows, inputs.splits
        fit, self.val_rows = fit_and_validation(job, inputs, fold)
        self.fit_rows = [rows[i] for i in shard(fit, session.rank, session.world_size)]
        self.n_fit = len(fit)
        p = job.training
        # Every fold starts from the backbone's weights with its own seed.
        self.model = fresh_model(
            job.study.backbone, job.study.task, splits.labels, job.study.seed + fold, p
        )
        self.device = session.device
        self.ddp = session.prepare(self.model)
        # batch_size is the trial's batch over all its workers, as in final training.
        self.batch_size = per_worker_batch(p.batch_size, session.world_size)
        per_epoch = optimizer_steps(
            len(self.fit_rows), self.batch_size, p.gradient_accumulation_steps
        )
        self.steps_per_epoch = per_epoch
        self.optimizer, self.scheduler = make_optimizer(self.ddp, p, p.epochs * per_epoch)
        precision = resolve(p.precision, self.device, "hpo.training.precision")
        self.amp = Amp(precision, self.device)
        self.best_weights: dict[str, Any] | None = None
        """``hpo.fold_score: best`` (rank 0): the best epoch's weights so far, on the CPU."""

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        seed = self.job.study.seed * 10_007 + self.fold * 101 + epoch
        p, pad = self.job.training, self.inputs.pad_id
        data = batches(
            self.fit_rows,
            self.batch_size,
            pad,
            seed,
            self.device,
            group_by_length=p.group_by_length,
        )
        start = time.perf_counter()
        loss = train_epoch(self.ddp, data, self.optimizer, self.scheduler, self.amp, p)
        return loss, time.perf_counter() - start

    def learning_rate(self) -> float:
        """The scheduler's learning rate now (after the last optimiser step)."""
        return float(self.scheduler.get_last_lr()[0])

    def latency_ms(self) -> float | None:
        """The search's second objective (``hpo.objective.latency``): p95 milliseconds of a
        forward pass at batch 1 over ``max_length`` tokens, on this worker's device and in the
        trial's precision; None when latency is not an objective."""
        settings = self.job.study.latency
        if settings is None:
            return None
        import torch

        from ray_pipeline.timing import fixed_length_batch, summarise, time_forward

        batch = fixed_length_batch(
            self.val_rows, 1, self.job.training.max_length, self.inputs.pad_id
        )
        self.model.eval()
        with torch.inference_mode(), self.amp.autocast():
            timings = time_forward(
                self.model, batch, settings.iterations, settings.warmup, self.device
            )
        return summarise(1, timings).p95_ms

    def evaluate(self) -> dict[str, float]:
        size = self.job.training.evaluation_batch
        labels, pad = self.inputs.splits.labels, self.inputs.pad_id
        return evaluate(
            self.model, self.val_rows, labels, self.job.study.task, size, pad, self.device
        )

    def keep_best_weights(self) -> None:
        """Remember the model as it is now: the fold's best epoch so far."""
        self.best_weights = {
            k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
        }

    def restore_best_weights(self) -> None:
        """Put the remembered best epoch's weights back into the model."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)

    def save_training_state(self, path: Path) -> None:
        import torch

        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.amp.state_dict(),
            },
            path / TRAINING_STATE,
        )
        if self.best_weights is not None:
            torch.save(self.best_weights, path / BEST_EPOCH_MODEL)

    def load_training_state(self, path: Path) -> None:
        import torch

        saved = torch.load(path / TRAINING_STATE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.amp.load_state_dict(saved.get("scaler"))
        if (path / BEST_EPOCH_MODEL).is_file():
            self.best_weights = torch.load(
                path / BEST_EPOCH_MODEL, map_location="cpu", weights_only=True
            )


def fold_scores(
    job: TrialJob, fold: FoldRun, progress: FoldProgress, last: dict[str, float]
) -> tuple[int, dict[str, float]]:
    """The epoch (1-based) whose ``scores`` are the fold's and those scores: the last epoch's
    (``last``), or with ``hpo.fold_score: best`` the best epoch's, whose weights the model then
    takes back (it is the fold's model: kept as the best fold's, timed for latency)."""
    epochs = job.training.epochs
    metric, direction = job.study.metric, job.study.direction
    if job.study.fold_score != "best" or progress.best_epoch is None or not last:
        return epochs, last
    if direction.better(last[metric], progress.best_metrics[metric]):
        return epochs, last
    fold.restore_best_weights()
    return progress.best_epoch, progress.best_metrics


def with_best_epoch(
    job: TrialJob, fold: FoldRun, progress: FoldProgress, epoch: int, scores: dict[str, float]
) -> FoldProgress:
    """``progress`` after 0-based ``epoch`` scored ``scores`` (rank 0): with
    ``hpo.fold_score: best``, the best epoch so far and its weights (an earlier epoch wins a
    tie: fewer epochs to refit)."""
    metric = job.study.metric
    if job.study.fold_score != "best" or not scores:
        return progress
    best = progress.best_metrics.get(metric)
    if best is not None and not job.study.direction.better(scores[metric], best):
        return progress
    fold.keep_best_weights()
    return progress.model_copy(update={"best_epoch": epoch + 1, "best_metrics": scores})
