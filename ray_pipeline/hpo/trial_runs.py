"""A trial's bookkeeping where it runs: its job (built here, and only here) and its MLflow
run, opened (or found again, on a retry) when the trial starts; the trial ends it inside
``tracking.tracked`` after ``log_result``.
"""

from __future__ import annotations

from typing import Any

from ray_pipeline import run_tree, tracking
from ray_pipeline.hpo.jobs import StudyJob, TrialJob
from ray_pipeline.hpo.results import FoldState
from ray_pipeline.hpo.trial_report import trial_run_metrics
from ray_pipeline.identity import trial_key_hash
from ray_pipeline.tracking import RunRef


def start(study: StudyJob, number: int, params: dict[str, Any]) -> TrialJob:
    """Trial ``number``'s job, with its MLflow run (the same run again when a trial is
    retried) holding its parameters."""
    key = trial_key_hash(study.study_key_hash, params)
    job = TrialJob(study=study, trial=number, params=params, trial_key_hash=key)
    if study.parent_run is None:
        return job
    run = run_tree.open_trial_run(study.parent_run, job.origin())
    tracking.log(run, params=params)
    return job.model_copy(update={"trial_run": run})


def log_result(run: RunRef | None, state: FoldState | None) -> None:
    """Log the trial's objective, its spread and its finished folds to its run."""
    if run is not None:
        tracking.log(run, metrics=trial_run_metrics(state or FoldState()))
