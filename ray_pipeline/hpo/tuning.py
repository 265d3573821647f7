"""Ray Tune: the trial driver (one TorchTrainer per trial) and the Tuner around it.

The only module that imports ``ray.tune``. A trial's hyperparameters come from Optuna through
``OptunaSearch`` over the variant's persisted study, so finished trials of earlier runs inform
the sampler. Names are deterministic: trial ``n`` of the study is ``trial_<n>`` in the Tune
experiment and its Train run, so a restored trial finds its own fold checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ray.tune.search.optuna import OptunaSearch

from ray_pipeline import monitoring, tracking
from ray_pipeline.hpo.search_space import to_distributions
from ray_pipeline.hpo.worker import TrialJob, train_folds
from ray_pipeline.identity import trial_key_hash
from ray_pipeline.resources import DRIVER_MEMORY_BYTES, TrialPlan, scaling_config
from ray_pipeline.schema import ParamSpec, SchedulerConfig, TrainingParams
from ray_pipeline.tracking import RunRef

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

TRIAL_NUMBER = "optuna_trial_number"
"""Config key carrying the Optuna trial number into the trial driver."""
OBJECTIVE = "objective"


def trial_name(number: int) -> str:
    """The name of study trial ``number`` in Tune and in Ray Train."""
    return f"trial_{number}"


class StudySearch(OptunaSearch):
    """OptunaSearch that tells each trial its Optuna number and records early stops as PRUNED."""

    def __init__(self, *args: Any, k_folds: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._k_folds = k_folds

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params
        monitoring.trial_event(self._study_name, "started")
        return {**params, TRIAL_NUMBER: self._ot_trials[trial_id].number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            # Restored after its driver died between Optuna's record and Tune's: the trial
            # re-reports its finished result, which Optuna already holds.
            log.info("trial %s already finished in the study; result not re-recorded", trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        stopped_early = (
            result is not None and result.get("folds_done", self._k_folds) < self._k_folds
        )
        if trial_id not in self._completed_trials:
            event: monitoring.TrialEvent = (
                "failed" if error else "pruned" if stopped_early else "finished"
            )
            monitoring.trial_event(self._study_name, event)
        if error or not stopped_early or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            self._report_best()
            return
        import optuna

        # A scheduler stopped the trial after some folds: its mean covers fewer folds, so it
        # must not compete with complete trials as a finished value.
        study = self._ot_study
        assert study is not None  # set up in __init__ because the space is given
        try:
            study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except (ValueError, RuntimeError) as exc:  # already told before a restore
            log.warning("trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _report_best(self) -> None:
        study = self._ot_study
        try:
            best = study.best_value if study is not None else None
        except ValueError:  # no complete trial yet
            return
        if best is not None:
            monitoring.best_objective(self._study_name, float(best))


@dataclass(frozen=True)
class RoundSpec:
    """What one Tune round needs; plain values so Tune can pickle it for restore."""

    job: dict[str, Any]
    train_dir: str
    plan: dict[str, Any]


def _trial_driver(config: dict[str, Any], spec: RoundSpec) -> None:
    """One trial: a TorchTrainer whose workers run the k folds; metrics flow back to Tune."""
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    number = int(config[TRIAL_NUMBER])
    params = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
    job = TrialJob.model_validate(spec.job)
    training = TrainingParams.model_validate({**job.training.model_dump(), **params})
    key = trial_key_hash(job.study_key_hash, params)
    trial_run = _open_trial_run(job, number, params, key)
    job = job.model_copy(
        update={
            "training": training,
            "trial": number,
            "trial_run": trial_run,
            "trial_key_hash": key,
        }
    )
    trainer = TorchTrainer(
        train_folds,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=scaling_config(TrialPlan(**spec.plan)),
        run_config=RunConfig(
            name=trial_name(number),
            storage_path=spec.train_dir,
            callbacks=[TuneReportCallback()],  # type: ignore[no-untyped-call,list-item]
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    try:
        result = trainer.fit()
    except BaseException:
        if trial_run is not None:  # unless the stage already ended it (an interruption: KILLED)
            tracking.end(trial_run, "FAILED", only_if_running=True)
        raise
    if trial_run is not None:
        final = result.metrics or {}
        keys = ("objective", "objective_std", "folds_done")
        summary: dict[str, float] = {k: float(final[k]) for k in keys if k in final}
        tracking.log(trial_run, metrics=summary)
        tracking.end(trial_run)


def _open_trial_run(job: TrialJob, number: int, params: dict[str, Any], key: str) -> RunRef | None:
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


def _trainable(spec: RoundSpec) -> Any:
    from ray import tune

    driver = tune.with_parameters(_trial_driver, spec=spec)
    return tune.with_resources(driver, {"cpu": 0, "memory": DRIVER_MEMORY_BYTES})


def _dirname(trial: Trial) -> str:
    return trial_name(int(trial.config.get(TRIAL_NUMBER, -1)))


def _scheduler(config: SchedulerConfig, k_folds: int, mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.type == "none":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    return ASHAScheduler(
        time_attr="folds_done",
        metric=OBJECTIVE,
        mode=mode,
        max_t=k_folds,
        grace_period=min(config.grace_period, k_folds),
        reduction_factor=config.reduction_factor,
    )


def _sampler(kind: Literal["tpe", "random"], seed: int) -> Any:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def run_round(
    *,
    experiment_dir: Path,
    study_name: str,
    storage: BaseStorage,
    space: dict[str, ParamSpec],
    job: TrialJob,
    plan: TrialPlan,
    scheduler: SchedulerConfig,
    sampler: Literal["tpe", "random"],
    num_samples: int,
    train_dir: Path,
) -> ResultGrid:
    """Run ``num_samples`` new trials of the study as a fresh Tune experiment."""
    from ray import tune

    mode = "max" if job.direction == "maximize" else "min"
    # Seed per round: a top-up round must not replay the first round's suggestions.
    seed = job.seed + len(storage.get_all_trials(storage.get_study_id_from_name(study_name)))
    search = StudySearch(
        space=to_distributions(space),
        metric=OBJECTIVE,
        mode=mode,
        sampler=_sampler(sampler, seed),
        study_name=study_name,
        storage=storage,
        k_folds=job.k_folds,
    )
    spec = RoundSpec(job.model_dump(mode="json"), str(train_dir), asdict(plan))
    tuner = tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=_scheduler(scheduler, job.k_folds, mode),
            num_samples=num_samples,
            max_concurrent_trials=plan.max_concurrent_trials,
            trial_name_creator=_dirname,
            trial_dirname_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment_dir.name, storage_path=str(experiment_dir.parent)
        ),
    )
    return tuner.fit()


def restore_round(
    experiment_dir: Path, job: TrialJob, plan: TrialPlan, train_dir: Path
) -> ResultGrid | None:
    """Continue an interrupted round: finished trials stay finished, unfinished ones resume
    from their last fold checkpoint. None when there is nothing restorable."""
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_dir)):
        return None
    spec = RoundSpec(job.model_dump(mode="json"), str(train_dir), asdict(plan))
    tuner = tune.Tuner.restore(
        str(experiment_dir),
        trainable=_trainable(spec),
        resume_unfinished=True,
        resume_errored=False,
    )
    return tuner.fit()


def round_results(grid: ResultGrid) -> dict[int, dict[str, Any]]:
    """Each trial's last reported metrics (and error), by Optuna trial number."""
    out: dict[int, dict[str, Any]] = {}
    for result in grid:  # type: ignore[attr-defined]  # ResultGrid supports iteration
        config = result.config or {}
        if TRIAL_NUMBER not in config:
            continue
        metrics = dict(result.metrics or {})
        if result.error is not None:
            metrics["error"] = str(result.error).splitlines()[0][:500]
        out[int(config[TRIAL_NUMBER])] = metrics
    return out
