"""Ray Tune: the trial (the fold loop in-process, or one TorchTrainer) and the Tuner around it.

The only module that imports ``ray.tune``. A trial's hyperparameters come from Optuna through
``OptunaSearch`` over the variant's persisted study, so finished trials of earlier runs inform
the sampler. A one-worker trial runs the fold loop inside its Tune trial (``TuneSession``), in a
process Tune reuses for the next trial; a multi-worker trial (or trial_backend=train) drives one
Ray Train worker group. Names are deterministic: trial ``n`` of the study is ``trial_<n>`` in
the Tune experiment and its Train run, so a restored trial finds its own checkpoints. Lost
trials are retried (``resources.max_failures``) from their last checkpoint; each failure is
recorded.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ray_pipeline import console, faults, monitoring
from ray_pipeline.direction import Direction
from ray_pipeline.errors import PipelineError
from ray_pipeline.hpo import trial_runs
from ray_pipeline.hpo.jobs import StudyJob, TrialJob
from ray_pipeline.hpo.progress import SearchProgress, progress_callback
from ray_pipeline.hpo.results import CHECKPOINT_KEY
from ray_pipeline.hpo.schedulers import make_scheduler
from ray_pipeline.hpo.search_space import DefineSpace, make_sampler
from ray_pipeline.hpo.study import study_direction
from ray_pipeline.hpo.tune_state import repair_recorded_checkpoints
from ray_pipeline.hpo.worker import LATENCY, run_folds, summary, train_folds
from ray_pipeline.paths import trial_name
from ray_pipeline.resources import DRIVER_MEMORY_BYTES, TrialPlan, scaling_config
from ray_pipeline.schema import HpoConfig
from ray_pipeline.sessions import TaskSession
from ray_pipeline.storage import WorkerStorage, is_uri, name_of, parent_of

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

TRIAL_NUMBER = "optuna_trial_number"
"""Config key carrying the Optuna trial number into the trial driver."""
OBJECTIVE = "objective"
TUNE_VERBOSE = 2
"""Ray Tune's console output with ``--verbose`` (its default: the trial table); else none (our
progress lines, hpo/progress.py)."""
CHECKPOINT_PATH_KEY = "checkpoint_path"
"""Ray Train's TuneReportCallback puts a reported checkpoint's path under this key."""
NO_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
NO_SIGINT_HANDLER_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


OPTUNA_SEARCH_INTERNALS = ("_ot_trials", "_ot_study", "_completed_trials", "_study_name")
"""OptunaSearch attributes StudySearch relies on: not public API, so pyproject pins the Ray
versions this was tested with, and a construction without them fails at once, naming them."""


@dataclass(frozen=True)
class Budget:
    """When the search stops launching trials: ``hpo.time_budget_s`` after this run's first
    trial started, or ``hpo.patience`` trials finished in this run in a row without beating
    the best objective (of the whole study)."""

    time_budget_s: float | None
    patience: int | None
    direction: Direction

    def spent(self, study: Any, started: datetime.datetime) -> str | None:
        """Why no new trial may start in a search whose first trial started at ``started``
        (this run), or None."""
        now = datetime.datetime.now()
        elapsed = (now - started).total_seconds()
        if self.time_budget_s is not None and elapsed >= self.time_budget_s:
            return f"time budget of {self.time_budget_s:g} s reached after {elapsed:.0f} s"
        if self.patience is None:
            return None
        finished = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None
        ]
        best, since = None, 0
        for trial in sorted(finished, key=lambda t: t.datetime_complete):
            value = trial.values[0] if trial.state.name == "COMPLETE" else None
            improved = value is not None and (best is None or self.direction.better(value, best))
            best = value if improved else best
            if trial.datetime_complete >= started:  # an earlier run's trials set the bar only
                since = 0 if improved else since + 1
        if since >= self.patience:
            return f"patience {self.patience}: no better objective in the last {since} trials"
        return None


class StudySearch(OptunaSearch):
    """OptunaSearch that tells each trial its Optuna number, records early stops as PRUNED, and
    stops launching trials when the budget is spent (``stop_reason``)."""

    def __init__(self, *args: Any, k_folds: int, budget: Budget, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._k_folds = k_folds
        self._budget = budget
        self._started: datetime.datetime | None = None
        self.stop_reason: str | None = None
        missing = [name for name in OPTUNA_SEARCH_INTERNALS if not hasattr(self, name)]
        if missing:
            import ray

            raise PipelineError(
                f"ray {ray.__version__}: OptunaSearch no longer has {', '.join(missing)}, which "
                "ray_pipeline's search relies on; install the Ray version pyproject.toml pins"
            )

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if trial_id not in self._ot_trials:  # a new trial (not one being restored)
            if self._started is None:  # Optuna stamps trials with naive local datetimes
                self._started = datetime.datetime.now()
            reason = self.stop_reason or self._budget.spent(self._ot_study, self._started)
            if reason is not None:
                self.stop_reason = reason
                return Searcher.FINISHED
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params
        monitoring.trial_event(self._study_name, "started")
        return {**params, TRIAL_NUMBER: self._ot_trials[trial_id].number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if math.isnan(float(result.get(OBJECTIVE, math.nan))):
            return  # no fold finished yet: nothing for Optuna to learn from
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
        """The best metric so far (the first objective; with latency as the second, the best
        metric on the Pareto front) as a Ray metric."""
        study = self._ot_study
        if study is None:
            return
        values = [float(t.values[0]) for t in study.best_trials if t.values]
        if values:
            best = study_direction(study).best_value(values)
            monitoring.best_objective(self._study_name, best)


@dataclass(frozen=True)
class RoundSpec:
    """What one Tune round needs; plain values so Tune can pickle it for restore."""

    job: dict[str, Any]
    train_dir: str
    plan: dict[str, Any]
    failure_log: str | None
    """Where a trial's Ray Train controller records worker-group failures: the variant's
    ``failures.jsonl`` on shared storage. None with ``storage.uri``: the controller runs on
    the trial's node, which cannot reach the driver's disk (it prints them; the trial's own
    failure is recorded by ``RecordRetries`` on the driver)."""


class TuneSession(TaskSession):
    """The fold loop inside the Tune trial itself: one worker, this process's CPU/GPU."""

    def checkpoint(self) -> Any | None:
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


def _start_trial(config: dict[str, Any], spec: RoundSpec) -> TrialJob:
    params = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
    return trial_runs.start(StudyJob.model_validate(spec.job), int(config[TRIAL_NUMBER]), params)


def _trial_in_process(config: dict[str, Any], spec: RoundSpec) -> None:
    """A one-worker trial: the fold loop right here, in the (reused) Tune trial process."""
    job = _start_trial(config, spec)
    with trial_runs.failing(job.trial_run):
        state = run_folds(job, TuneSession())
    trial_runs.finish(job.trial_run, summary(state))


def _trial_driver(config: dict[str, Any], spec: RoundSpec) -> None:
    """A worker-group trial (DDP, or trial_backend=train): one TorchTrainer whose workers run
    the fold loop."""
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    job = _start_trial(config, spec)
    label = f"hpo {job.study.variant} trial {job.trial}"
    trainer = TorchTrainer(
        train_folds,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=scaling_config(TrialPlan(**spec.plan)),
        run_config=RunConfig(
            name=trial_name(job.trial),
            storage_path=spec.train_dir,
            callbacks=[
                TuneReportCallback(),  # type: ignore[no-untyped-call,list-item]
                faults.train_failure_callback(
                    Path(spec.failure_log) if spec.failure_log else None,
                    job.trial,
                    label,
                    "the trial ends and Tune retries it",
                ),
            ],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            # Retries happen once, at the trial: Tune restarts this driver, whose trainer (same
            # name and storage) resumes the Train run from its last checkpoint. Retrying in
            # Train as well would multiply the attempts of a failure that always recurs.
            failure_config=faults.train_failure_config(0),
        ),
    )
    with trial_runs.failing(job.trial_run):
        result = trainer.fit()
    trial_runs.finish(job.trial_run, result.metrics or {})


def _trainable(spec: RoundSpec) -> Any:
    from ray import tune

    plan = TrialPlan(**spec.plan)
    if plan.in_process:  # the trial holds its worker's CPU/GPU and trains right there
        trial = tune.with_parameters(_trial_in_process, spec=spec)
        return tune.with_resources(
            trial, {"cpu": plan.cpus_per_worker, "gpu": plan.gpus_per_worker}
        )
    driver = tune.with_parameters(_trial_driver, spec=spec)
    return tune.with_resources(driver, {"cpu": 0, "memory": DRIVER_MEMORY_BYTES})


class RecordRetries(Callback):
    """Prints and records (``failures.jsonl``) each failed trial attempt with its cause."""

    def __init__(self, failure_log: str, label: str, max_failures: int) -> None:
        self.failure_log, self.label, self.max_failures = failure_log, label, max_failures

    def _record(self, trial: Trial, outcome: str) -> None:
        number = int(trial.config.get(TRIAL_NUMBER, -1))
        cause = faults.last_tune_error(trial.error_file)
        print(f"{self.label}: trial {number} failed ({cause}); {outcome}")
        faults.record_failure(Path(self.failure_log), number, "tune", cause)

    def on_trial_recover(self, iteration: int, trials: Any, trial: Trial, **info: Any) -> None:
        attempt = trial.run_metadata.num_failures
        self._record(trial, f"retry {attempt} of {self.max_failures} from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: Any, trial: Trial, **info: Any) -> None:
        self._record(trial, f"no retries left (resources.max_failures={self.max_failures})")


def _dirname(trial: Trial) -> str:
    return trial_name(int(trial.config.get(TRIAL_NUMBER, -1)))


def run_round(
    *,
    experiment_dir: str,
    study_name: str,
    storage: BaseStorage,
    hpo: HpoConfig,
    job: StudyJob,
    plan: TrialPlan,
    num_samples: int,
    train_dir: str,
    failure_log: Path,
    done_before: int = 0,
    best: tuple[float, int] | None = None,
) -> tuple[ResultGrid, str | None]:
    """Run up to ``num_samples`` new trials of the study as a fresh Tune experiment; return its
    results and why it stopped launching trials early (a budget), if it did.
    ``experiment_dir`` and ``train_dir`` are places (a path, or under ``storage.uri``);
    ``done_before`` and ``best`` (objective, trial) are the earlier rounds', for the progress
    lines."""
    from ray import tune

    mode = job.direction.mode
    # Seed per round: a top-up round must not replay the first round's suggestions.
    seed = job.seed + len(storage.get_all_trials(storage.get_study_id_from_name(study_name)))
    budget = Budget(hpo.time_budget_s, hpo.patience, job.direction)
    # With latency as a second objective Optuna gets both values (and no intermediate ones).
    metric: str | list[str] = [OBJECTIVE, LATENCY] if hpo.objective.latency else OBJECTIVE
    modes: str | list[str] = [mode, "min"] if hpo.objective.latency else mode
    search = StudySearch(
        space=DefineSpace(hpo.search_space),
        metric=metric,
        mode=modes,
        sampler=make_sampler(hpo.sampler, seed, hpo.search_space),
        study_name=study_name,
        storage=storage,
        k_folds=job.k_folds,
        budget=budget,
    )
    spec = _round_spec(job, train_dir, plan, failure_log)
    tuner = tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=make_scheduler(hpo.scheduler, job.k_folds, job.training.epochs, mode),
            num_samples=num_samples,
            max_concurrent_trials=plan.max_concurrent_trials,
            trial_name_creator=_dirname,
            trial_dirname_creator=_dirname,
            # The next trial reuses a finished trial's process and its cached data and model.
            reuse_actors=plan.in_process,
        ),
        run_config=tune.RunConfig(
            name=name_of(experiment_dir),
            storage_path=parent_of(experiment_dir),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            # The last checkpoint holds everything: the fold state and the best fold's model.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                *_callbacks(job, plan, failure_log),
                progress_callback(
                    SearchProgress(
                        label=f"hpo {job.backbone.name}",
                        total=done_before + num_samples,
                        done_before=done_before,
                        k_folds=job.k_folds,
                        epochs=job.training.epochs,
                        metric=job.metric,
                        direction=job.direction,
                        parallel=plan.max_concurrent_trials,
                        best=None if hpo.objective.latency else best,
                    ),
                    TRIAL_NUMBER,
                ),
            ],
            verbose=TUNE_VERBOSE if console.verbose() else 0,
        ),
    )
    return _fit(tuner), search.stop_reason


def _fit(tuner: Any) -> ResultGrid:
    """``tuner.fit()`` with this module's Tune settings in the environment for its duration
    only (they would otherwise change a caller's own Tune runs in the same process)."""
    settings = {
        # No TensorBoard logger (JSON and CSV are added explicitly): its import costs ~3 s
        # of every search, and MLflow holds the curves.
        NO_AUTO_LOGGERS_ENV: "1",
        # Snapshots are forced by num_to_keep=1 at every checkpoint; they are small and cheap.
        SNAPSHOT_WARNING_ENV: "0",
        # Ctrl-C raises KeyboardInterrupt, as SIGTERM does: the stage ends its open runs KILLED
        # and the CLI exits 130. Tune's own handler would end the round quietly, as if its
        # unfinished trials had failed.
        NO_SIGINT_HANDLER_ENV: "1",
    }
    if not console.verbose():
        # Tune's newer console output prints its experiment table and results path even at
        # verbose=0; the older one, at 0, prints nothing. Our progress lines replace both.
        settings[NEW_OUTPUT_ENV] = "0"
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update({k: v for k, v in settings.items() if saved[k] is None})
    try:
        with warnings.catch_warnings():
            # The define-by-run space also runs the sampler's model (GP, CMA-ES), which can
            # take seconds: expected, not the misuse Ray's warning is about.
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the")
            grid: ResultGrid = tuner.fit()
        return grid
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def _round_spec(job: StudyJob, train_dir: str, plan: TrialPlan, failure_log: Path) -> RoundSpec:
    shared = not is_uri(train_dir)  # else trials run where the driver's disk is out of reach
    log = str(failure_log) if shared else None
    return RoundSpec(job.model_dump(mode="json"), train_dir, asdict(plan), log)


def _callbacks(job: StudyJob, plan: TrialPlan, failure_log: Path) -> list[Any]:
    """Tune's JSON and CSV result files and the retry recorder."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    label = f"hpo {job.backbone.name}"
    return [
        JsonLoggerCallback(),  # type: ignore[no-untyped-call]
        CSVLoggerCallback(),  # type: ignore[no-untyped-call]
        RecordRetries(str(failure_log), label, plan.max_failures),
    ]


def restore_round(
    experiment_dir: str, job: StudyJob, plan: TrialPlan, train_dir: str, failure_log: Path
) -> ResultGrid | None:
    """Continue an interrupted round: finished trials stay finished, unfinished ones resume
    from their last fold checkpoint. None when there is nothing restorable."""
    from ray import tune

    if not tune.Tuner.can_restore(experiment_dir):
        return None
    for note in repair_recorded_checkpoints(experiment_dir):
        print(f"hpo {job.backbone.name}: {note}")
    spec = _round_spec(job, train_dir, plan, failure_log)
    tuner = tune.Tuner.restore(
        experiment_dir,
        trainable=_trainable(spec),
        resume_unfinished=True,
        resume_errored=False,
    )
    return _fit(tuner)


def round_results(grid: ResultGrid, where: WorkerStorage) -> dict[int, dict[str, Any]]:
    """Each trial's last reported metrics (and error), by Optuna trial number; a checkpoint
    as a place in ``where``."""
    out: dict[int, dict[str, Any]] = {}
    for result in grid:  # type: ignore[attr-defined]  # ResultGrid supports iteration
        config = result.config or {}
        if TRIAL_NUMBER not in config:
            continue
        metrics = dict(result.metrics or {})
        # The trial's last checkpoint (its model/ is the best fold's): Tune's own for an
        # in-process trial, the one Ray Train reported for a worker-group trial.
        if result.checkpoint is not None:
            metrics[CHECKPOINT_KEY] = where.located(result.checkpoint.path)
        elif CHECKPOINT_PATH_KEY in metrics:
            metrics[CHECKPOINT_KEY] = where.located(metrics[CHECKPOINT_PATH_KEY])
        if result.error is not None:  # a task error's first line names the task, not why
            metrics["error"] = faults.cause_of(getattr(result.error, "cause", None) or result.error)
        out[int(config[TRIAL_NUMBER])] = metrics
    return out
