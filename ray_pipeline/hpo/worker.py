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
from ray_pipeline.hpo.cache import Prepared, prepared
from ray_pipeline.hpo.fold_run import FoldRun, fold_scores, with_best_epoch
from ray_pipeline.hpo.jobs import TrialJob
from ray_pipeline.hpo.results import EpochPoint, FoldProgress, FoldResult, FoldState
from ray_pipeline.hpo.trial_report import TrialReport, fold_run_metrics
from ray_pipeline.layout_names import CHECKPOINT_MODEL, FOLD_STATE
from ray_pipeline.sessions import Session, TrainSession, placement, quiet_checkpoints


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
    scored_epoch, scores = fold_scores(job, fold, progress, last)
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
        progress = with_best_epoch(job, fold, progress, epoch, scores)
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
    """The fold's MLflow run under the trial's run (rank 0 holds the fold's metrics). A fold
    that logged this objective already is not logged again: its process was lost after
    logging it and before Tune registered the fold's checkpoint, and the retry trained the
    fold's last epoch again from the epoch checkpoint before. A retry that scored differently
    logs again: the latest value is the one ``hpo.json`` holds."""
    if job.trial_run is None:
        return
    opened = run_tree.open_fold_run(job.trial_run, job.origin(), result.fold)
    with tracking.tracked(opened) as run:
        if not _logged_as(tracking.logged(run, "objective").get(0), result.objective):
            tracking.log(run, metrics=fold_run_metrics(result))
            tracking.log_history(run, result.curves(job.study.metric))
    earlier = tracking.logged(job.trial_run, "fold_objective").get(result.fold)
    if not _logged_as(earlier, result.objective):
        tracking.log(job.trial_run, metrics={"fold_objective": result.objective}, step=result.fold)


def _logged_as(logged: float | None, value: float) -> bool:
    """Whether a value MLflow holds (None: nothing logged) is ``value`` (NaN is NaN)."""
    return logged is not None and (logged == value or (math.isnan(logged) and math.isnan(value)))


def train_folds(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of a worker-group trial (DDP, or trial_backend=train)."""
    run_folds(TrialJob.model_validate(config), TrainSession())
