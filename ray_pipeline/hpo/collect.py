"""``hpo.json`` of a variant: every trial of its Optuna study as this run's outcomes (else the
last ``hpo.json``) left it, and the best (and, with latency as an objective, the Pareto front).
"""

from __future__ import annotations

from typing import Any

from ray_pipeline import faults
from ray_pipeline.data.splits import load_splits
from ray_pipeline.hpo.jobs import StudyJob
from ray_pipeline.hpo.keep import pareto_front
from ray_pipeline.hpo.results import (
    ENQUEUED_FROM,
    FoldState,
    HpoResult,
    TrialRecord,
    read_hpo,
)
from ray_pipeline.hpo.trial_report import TrialOutcome
from ray_pipeline.identity import trial_key_hash
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.variants import Variant


def previous_trials(variant: Variant) -> dict[int, TrialRecord]:
    """The trials the variant's last ``hpo.json`` recorded, by number."""
    found = read_hpo(variant.files)
    return {t.number: t for t in found.trials} if found is not None else {}


def collect(
    config: PipelineConfig,
    job: StudyJob,
    variant: Variant,
    study: Any,
    outcomes: dict[int, TrialOutcome],
    previous: dict[int, TrialRecord],
    stop_reason: str | None = None,
) -> HpoResult:
    """``hpo.json``: every trial of the study as this run's outcomes (else the last
    ``hpo.json``) left it, and the best."""
    failures = faults.failures_by_trial(variant.files.failures)
    trials = [
        _record(
            job,
            frozen,
            outcomes.get(frozen.number),
            previous.get(frozen.number),
            failures.get(frozen.number, []),
        )
        for frozen in study.get_trials(deepcopy=False)
    ]
    complete = [t for t in trials if t.state == "COMPLETE" and t.objective_mean is not None]
    best = config.hpo.objective.direction.best(complete, key=lambda t: t.objective_mean or 0.0)
    front = pareto_front(complete, config.hpo.objective.direction)
    if config.hpo.objective.latency is None:
        front = []
    return HpoResult(
        variant=variant.name,
        backbone=job.backbone.name,
        study_key_hash=job.study_key_hash,
        metric=config.hpo.objective.metric,
        direction=config.hpo.objective.direction,
        num_samples=config.hpo.num_samples,
        k_folds=job.k_folds,
        evaluation="cv" if job.holdout is None else "holdout",
        trials=trials,
        best=best,
        best_checkpoint=None,
        stop_reason=stop_reason,
        pareto=front,
        train_examples=len(load_splits(job.data).train),
    )


def _record(
    job: StudyJob,
    frozen: Any,
    outcome: TrialOutcome | None,
    old: TrialRecord | None,
    failures: list[str],
) -> TrialRecord:
    """Optuna's trial ``frozen`` as its last report in this run (``outcome``) left it, else as
    the last ``hpo.json`` recorded it (``old``)."""
    checkpoint = old.checkpoint if old is not None else None
    epochs = old.epochs_trained if old is not None else None
    stopped_by = old.stopped_by if old is not None else None
    state = old.fold_state if old is not None else FoldState()
    if outcome is not None and outcome.report is not None:
        state, epochs = outcome.report.fold_state, outcome.report.global_step
        checkpoint = outcome.checkpoint or checkpoint
        stopped_by = outcome.stopped_by or stopped_by
    params = dict(frozen.params)
    return TrialRecord.of(
        state,
        number=frozen.number,
        trial_state=frozen.state.name,
        params=params,
        study=job,
        trial_key_hash=trial_key_hash(job.study_key_hash, params),
        checkpoint=checkpoint,
        failures=failures,
        epochs_trained=epochs,
        enqueued_from=frozen.user_attrs.get(ENQUEUED_FROM),
        stopped_by=stopped_by,
    )
