"""A trial's bookkeeping where it runs: its job (built here, and only here) and its MLflow
run, opened (or found again, on a retry) when the trial starts and ended when it stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray_pipeline import tracking
from ray_pipeline.hpo.jobs import StudyJob, TrialJob
from ray_pipeline.identity import trial_key_hash
from ray_pipeline.tracking import RunRef


def start(study: StudyJob, number: int, params: dict[str, Any]) -> TrialJob:
    """Trial ``number``'s job, with its MLflow run (the same run again when a trial is
    retried)."""
    key = trial_key_hash(study.study_key_hash, params)
    run = _open(study, number, params, key)
    return TrialJob(study=study, trial=number, params=params, trial_key_hash=key, trial_run=run)


@contextmanager
def failing(run: RunRef | None) -> Iterator[None]:
    """End the trial's run FAILED if the block raises (unless the stage already ended it:
    an interruption ends it KILLED)."""
    try:
        yield
    except BaseException:
        if run is not None:
            tracking.end(run, "FAILED", only_if_running=True)
        raise


def finish(run: RunRef | None, final: dict[str, Any]) -> None:
    """Log the trial's objective, its spread and finished folds, and end its run."""
    if run is None:
        return
    keys = ("objective", "objective_std", "folds_done")
    tracking.log(run, metrics={k: float(final[k]) for k in keys if k in final})
    tracking.end(run)


def _open(job: StudyJob, number: int, params: dict[str, Any], key: str) -> RunRef | None:
    if job.parent_run is None:
        return None
    run = tracking.open_child(
        job.parent_run,
        "trial",
        tracking.run_name(job.variant, number),
        stage="hpo",
        backbone=job.backbone.name,
        variant=job.variant,
        study_key_hash=job.study_key_hash,
        trial=number,
        trial_key_hash=key,
    )
    tracking.log(run, params=params)
    return run
