"""The fold loop of one trial: train and evaluate the k folds one after another.

One loop, two homes (docs/hpo.md): inside the Ray Tune trial itself when the trial has one
worker (``tuning.TuneSession``: a reused process with cached data and weights), or on every
worker of one Ray Train worker group per trial (``TrainSession``: DDP over gloo on CPU, nccl on
GPU). Either way every epoch is reported (``global_step``, ``fold``, ``epoch``); the trial's
``objective`` is the mean over finished folds only (NaN until the first fold finishes).

Rank 0 attaches a checkpoint at the end of every fold, and after every epoch when epoch
checkpoints are on. It holds the loop's state, the best fold's model so far and, inside a fold,
the model/optimiser/scheduler state: a retried trial never trains a finished fold again and
loses at most one epoch. Knows nothing of Tune or Optuna.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray_pipeline import monitoring, run_tree, tracking
from ray_pipeline.data.encode import Row
from ray_pipeline.data.splits import fold_indices, holdout_indices
from ray_pipeline.hpo.cache import Prepared, fresh_model, prepared
from ray_pipeline.hpo.jobs import TrialJob
from ray_pipeline.hpo.results import EpochPoint, FoldProgress, FoldResult, FoldState
from ray_pipeline.hpo.trial_report import TrialReport, fold_run_metrics
from ray_pipeline.layout_names import (
    BEST_EPOCH_MODEL,
    CHECKPOINT_MODEL,
    FOLD_STATE,
    TRAINING_STATE,
)
from ray_pipeline.precision import Amp, resolve
from ray_pipeline.sessions import Session, TrainSession, placement, quiet_checkpoints
from ray_pipeline.training import (
    batches,
    evaluate,
    make_optimizer,
    optimizer_steps,
    per_worker_batch,
    shard,
    train_epoch,
)


def _fit_and_validation(job: TrialJob, inputs: Prepared, fold: int) -> tuple[list[int], list[Row]]:
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
        fit, self.val_rows = _fit_and_validation(job, inputs, fold)
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

        saved = torch.load(path / TRAINING_STATE, map_location=self.device)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.amp.load_state_dict(saved.get("scaler"))
        if (path / BEST_EPOCH_MODEL).is_file():
            self.best_weights = torch.load(path / BEST_EPOCH_MODEL, map_location="cpu")


def _report_of(
    job: TrialJob,
    state: FoldState,
    fold: int,
    epoch: int,
    loss: float,
    epoch_objective: float | None = None,
    fold_metrics: dict[str, float] | None = None,
) -> TrialReport:
    """What Tune sees after 0-based ``epoch`` of ``fold`` (``TrialReport``): the trial's
    objective never includes an unfinished fold."""
    return TrialReport.of(
        state,
        step=fold * job.training.epochs + epoch + 1,
        fold=fold,
        epoch=epoch,
        train_loss=loss,
        epoch_objective=epoch_objective,
        latency=job.study.latency is not None,
        fold_metrics=fold_metrics,
    )


def _report(
    session: Session,
    report: TrialReport,
    best_model: Path,
    fold: FoldRun | None = None,
    *,
    checkpoint: bool = True,
) -> None:
    """Every worker reports (a barrier); rank 0 attaches the checkpoint: the state, the best
    model so far and, with ``fold``, the fold's training state."""
    if session.rank != 0 or not checkpoint:
        session.report(report.to_metrics(), None)
        return
    with tempfile.TemporaryDirectory(prefix="ray_pipeline_ckpt_") as directory:
        path = Path(directory)
        (path / FOLD_STATE).write_text(report.fold_state.model_dump_json())
        if best_model.is_dir():
            shutil.copytree(best_model, path / CHECKPOINT_MODEL)
        if fold is not None:
            fold.save_training_state(path)
        session.report(report.to_metrics(), path)


def _resume(
    job: TrialJob, session: Session, inputs: Prepared, best_model: Path
) -> tuple[FoldState, FoldRun | None]:
    """The state of the last checkpoint (and the fold it was inside), or a fresh start."""
    checkpoint = session.checkpoint()
    if checkpoint is None:
        return FoldState(), None
    fold = None
    with checkpoint.as_directory() as directory:
        path = Path(directory)
        state = FoldState.model_validate_json((path / FOLD_STATE).read_text())
        if (path / CHECKPOINT_MODEL).is_dir():
            shutil.copytree(path / CHECKPOINT_MODEL, best_model)
        if state.current is not None:
            fold = FoldRun(job, state.current.fold, inputs, session)
            fold.load_training_state(path)
    current = state.current
    where = (
        f"fold {current.fold} epoch {current.epochs_done}"
        if current
        else f"fold {len(state.folds)}"
    )
    if session.rank == 0:
        inside = (
            f", inside fold {current.fold} after {current.epochs_done} epoch(s)" if current else ""
        )
        print(
            f"{job.study.variant} trial {job.trial}: resuming after {len(state.folds)} of "
            f"{job.study.k_folds} finished fold(s){inside}"
        )
    return state.model_copy(update={"resumes": [*state.resumes, where]}), fold


def run_folds(job: TrialJob, session: Session) -> FoldState:
    """The k folds of one trial, resuming where the last checkpoint left off."""
    quiet_checkpoints()
    inputs = prepared(job.study.data, job.study.backbone, job.training.max_length)
    with tempfile.TemporaryDirectory(prefix="ray_pipeline_best_") as keep:
        best_model = Path(keep) / CHECKPOINT_MODEL  # rank 0: the best fold's model so far
        state, fold = _resume(job, session, inputs, best_model)
        if len(state.folds) >= job.study.k_folds:
            # Every fold is in the checkpoint (the trial finished just before its process was
            # stopped): report the result again instead of training anything.
            last = state.folds[-1]
            report = _report_of(job, state, last.fold, job.training.epochs - 1, last.train_loss)
            _report(session, report, best_model)
            return state
        for number in range(len(state.folds), job.study.k_folds):
            run = fold if fold is not None else FoldRun(job, number, inputs, session)
            state = _train_fold(job, session, state, run, best_model)
            fold = None
    return state


def _train_fold(
    job: TrialJob, session: Session, state: FoldState, fold: FoldRun, best_model: Path
) -> FoldState:
    """Train the fold's remaining epochs, evaluate it and report it with a checkpoint."""
    progress = _train_epochs(job, session, state, fold, best_model)
    begin = time.perf_counter()
    last = fold.evaluate() if session.rank == 0 else {}
    scored_epoch, scores = _fold_scores(job, fold, progress, last)
    objective = scores.get(job.study.metric, math.nan)
    result = FoldResult(
        fold=fold.fold,
        objective=objective,
        metrics=scores,
        scored_epoch=scored_epoch,
        train_loss=progress.losses[-1],
        train_examples=fold.n_fit,
        validation_examples=len(fold.val_rows),
        seconds=progress.seconds + time.perf_counter() - begin,
        train_step_seconds=progress.step_seconds,
        workers=fold.workers,
        precision=fold.amp.precision,
        latency_ms=fold.latency_ms() if fold.fold == 0 and session.rank == 0 else None,
        history=_with_last_validation(
            progress.history, job.training.epochs, last.get(job.study.metric, math.nan)
        ),
        **placement(),
    )
    state = _with_fold(job, session, state, fold, result, best_model)
    if session.rank == 0:
        _track_fold(job, result)
        monitoring.fold_seconds(job.study.variant, result.seconds)
    last_epoch = job.training.epochs - 1
    report = _report_of(job, state, fold.fold, last_epoch, result.train_loss, fold_metrics=scores)
    _report(session, report, best_model)
    return state


def _fold_scores(
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


def _with_best_epoch(
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


def _train_epochs(
    job: TrialJob, session: Session, state: FoldState, fold: FoldRun, best_model: Path
) -> FoldProgress:
    """Train the fold's epochs not yet done, reporting each but the last (with an epoch
    checkpoint when they are on; evaluated when reported to a scheduler or scored for
    ``hpo.fold_score: best``); the caller evaluates the last."""
    epochs = job.training.epochs
    progress = state.current or FoldProgress(fold=fold.fold)
    for epoch in range(progress.epochs_done, epochs):
        threads = session.fit_threads()
        begin = time.perf_counter()
        loss, seconds = fold.train_epoch(epoch)
        elapsed = time.perf_counter() - begin
        last = epoch == epochs - 1
        score = None  # the last epoch is evaluated by the caller
        scores: dict[str, float] = {}
        if job.evaluates_every_epoch and not last:
            scores = fold.evaluate() if session.rank == 0 else {}
            score = scores.get(job.study.metric, math.nan)
        point = epoch_point(
            epoch, loss, seconds, fold.steps_per_epoch, fold.learning_rate(), score, threads
        )
        progress = progress.model_copy(
            update={
                "epochs_done": epoch + 1,
                "losses": [*progress.losses, loss],
                "step_seconds": progress.step_seconds + seconds,
                "seconds": progress.seconds + elapsed,
                "history": [*progress.history, point],
            }
        )
        progress = _with_best_epoch(job, fold, progress, epoch, scores)
        if last:
            break
        state = state.model_copy(update={"current": progress})
        report = _report_of(job, state, fold.fold, epoch, loss, score)
        saved = fold if job.epoch_checkpoints else None
        _report(session, report, best_model, saved, checkpoint=saved is not None)
    return progress


def _with_fold(
    job: TrialJob,
    session: Session,
    state: FoldState,
    fold: FoldRun,
    result: FoldResult,
    best_model: Path,
) -> FoldState:
    """``state`` with the finished fold; rank 0 keeps its model when it is the best fold."""
    best = state.best_fold
    if best is None or job.study.direction.better(result.objective, state.folds[best].objective):
        best = fold.fold
        if session.rank == 0:
            shutil.rmtree(best_model, ignore_errors=True)
            fold.model.save_pretrained(best_model)
            fold.inputs.tokenizer.save_pretrained(best_model)
    return FoldState(folds=[*state.folds, result], best_fold=best, resumes=state.resumes)


def epoch_point(
    epoch: int,
    loss: float,
    train_seconds: float,
    steps: int,
    learning_rate: float,
    validation: float | None,
    threads: int | None = None,
) -> EpochPoint:
    """The learning-curve point of 0-based ``epoch``: ``train_seconds`` spread over its
    ``steps`` optimiser steps, and the validation score when the epoch was evaluated (NaN,
    as ranks other than 0 have it, is no score)."""
    return EpochPoint(
        epoch=epoch + 1,
        train_loss=loss,
        validation=None if validation is None or math.isnan(validation) else validation,
        learning_rate=learning_rate,
        step_seconds=train_seconds / steps if steps > 0 else None,
        threads=threads,
    )


def _with_last_validation(
    history: list[EpochPoint], epochs: int, objective: float
) -> list[EpochPoint]:
    """``history`` with ``objective``, the last epoch's score, as its validation score."""
    if not history or history[-1].epoch != epochs or math.isnan(objective):
        return history
    return [*history[:-1], history[-1].model_copy(update={"validation": objective})]


def _track_fold(job: TrialJob, result: FoldResult) -> None:
    """The fold's MLflow run under the trial's run (rank 0 holds the fold's metrics)."""
    if job.trial_run is None:
        return
    opened = run_tree.open_fold_run(job.trial_run, job.origin(), result.fold)
    with tracking.tracked(opened) as run:
        tracking.log(run, metrics=fold_run_metrics(result))
        tracking.log_history(run, result.curves(job.study.metric))
    tracking.log(job.trial_run, metrics={"fold_objective": result.objective}, step=result.fold)


def train_folds(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of a worker-group trial (DDP, or trial_backend=train)."""
    run_folds(TrialJob.model_validate(config), TrainSession())
