"""Ray Tune: the trial (the fold loop in-process, or one TorchTrainer) and the Tuner around it.

The Tune integration lives in hpo/: this module (the Tuner, the trial), retries.py (its
retries), search.py (the searcher), schedulers.py and progress.py (a scheduler and a
callback); no module outside hpo/ imports ``ray.tune`` (but ``internals``, which guards what
it reads of Tune's internals). A trial's
hyperparameters come from Optuna through ``search.StudySearch`` over the variant's persisted
study, so finished trials of earlier runs inform the sampler. A one-worker trial runs the fold
loop inside its Tune trial (``TuneSession``), in a process Tune reuses for the next trial; a
multi-worker trial (or trial_backend=train) drives one Ray Train worker group. Names are
deterministic: trial ``n`` of the study is ``trial_<n>`` in the Tune experiment and its Train
run, so a restored trial finds its own checkpoints. Lost trials are retried
(``resources.max_failures``) from their last checkpoint; each failure is recorded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline import console, faults, tracking
from ray_pipeline.hpo import idle_cores, trial_runs
from ray_pipeline.hpo.jobs import StudyJob, TrialJob
from ray_pipeline.hpo.progress import SearchProgress, progress_callback
from ray_pipeline.hpo.racing import Race
from ray_pipeline.hpo.retries import FailuresOnce, RecordRetries, reuse_trial_processes
from ray_pipeline.hpo.schedulers import make_scheduler
from ray_pipeline.hpo.search import TRIAL_NUMBER, Budget, OlderSearchState, StudySearch
from ray_pipeline.hpo.search_space import DefineSpace, make_sampler
from ray_pipeline.hpo.trial_report import TrialOutcome, TrialReport
from ray_pipeline.hpo.tune_state import repair_recorded_checkpoints, torn_snapshot
from ray_pipeline.hpo.worker import run_folds, train_folds
from ray_pipeline.internals import train_checkpoint_key, tune_failures_once
from ray_pipeline.paths import is_uri, trial_name
from ray_pipeline.resources import DRIVER_MEMORY_BYTES, TrialPlan, scaling_config
from ray_pipeline.schema import HpoConfig
from ray_pipeline.sessions import TaskSession
from ray_pipeline.storage import WorkerStorage, name_of, parent_of

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial

TUNE_VERBOSE = 2
"""Ray Tune's console output with ``--verbose`` (its default: the trial table); else none (our
progress lines, hpo/progress.py)."""
NO_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
NO_SIGINT_HANDLER_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


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
    idle_cores: str | None = None
    """The name of the round's ``IdleCores`` actor, which lends one-worker CPU trials the
    cores finished trials freed in the round's tail (None: not lent)."""


class TuneSession(TaskSession):
    """The fold loop inside the Tune trial itself: one worker, this process's CPU/GPU, and on
    a CPU the idle cores the round lends it (``lender``)."""

    def __init__(self, lender: idle_cores.Lender | None = None) -> None:
        super().__init__()
        self.lender = lender if self.device.type == "cpu" else None
        self.using = self.threads

    def fit_threads(self) -> int:
        import torch

        threads = self.lender.threads() if self.lender is not None else self.threads
        if threads != self.using:
            torch.set_num_threads(threads)
            self.using = threads
        return threads

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
    plan = TrialPlan(**spec.plan)
    lender = None
    if spec.idle_cores is not None:
        lender = idle_cores.Lender(spec.idle_cores, job.trial, plan.cpus_per_worker)
    try:
        with tracking.tracked(job.trial_run, unless_ended=True) as run:
            state = run_folds(job, TuneSession(lender))
            trial_runs.log_result(run, state)
    finally:
        if lender is not None:
            lender.leave()


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
    with tracking.tracked(job.trial_run, unless_ended=True) as run:
        report = TrialReport.from_metrics(trainer.fit().metrics)
        trial_runs.log_result(run, report.fold_state if report is not None else None)


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


def _dirname(trial: Trial) -> str:
    return trial_name(int(trial.config.get(TRIAL_NUMBER, -1)))


@dataclass(frozen=True)
class Round:
    """One Tune round of a variant's study, as the driver runs (or restores) it."""

    job: StudyJob
    plan: TrialPlan
    experiment_dir: str
    """The round's Tune experiment: a place (a path, or under ``storage.uri``)."""
    train_dir: str
    """Where worker-group trials keep their Ray Train runs: a place."""
    failure_log: Path
    """The variant's ``failures.jsonl``."""

    def spec(self, lend: bool = False) -> RoundSpec:
        """What its trials get (``failure_log`` only where they can reach the driver's disk;
        with ``lend``, the name of the round's ``IdleCores`` actor)."""
        shared = not is_uri(self.train_dir)
        log = str(self.failure_log) if shared else None
        lender = self.idle_cores_name if lend else None
        job = self.job.model_dump(mode="json")
        return RoundSpec(job, self.train_dir, asdict(self.plan), log, lender)

    @property
    def idle_cores_name(self) -> str:
        study = self.job.study_key_hash[:16]
        return f"ray_pipeline_idle_cores_{study}_{name_of(self.experiment_dir)}"


def run_round(
    tune_round: Round,
    hpo: HpoConfig,
    storage: BaseStorage,
    num_samples: int,
    progress: SearchProgress,
    race: Race | None = None,
) -> tuple[ResultGrid, str | None]:
    """Run up to ``num_samples`` new trials of the study as a fresh Tune experiment, showing
    ``progress`` (and racing trials between folds with ``race``, which then holds why it
    stopped each); return its results and why it stopped launching trials early (a budget),
    if it did."""
    from ray import tune

    job, plan = tune_round.job, tune_round.plan
    search = _searcher(job, hpo, storage)
    # Not with latency as an objective: a trial times its model with the threads it has.
    lend = plan.lend_idle_cores and job.latency is None
    lender = idle_cores.start(tune_round.idle_cores_name) if lend else None
    callbacks = [*_callbacks(tune_round), progress_callback(progress, TRIAL_NUMBER)]
    if lender is not None:
        callbacks.append(
            idle_cores.LendIdleCores(tune_round.idle_cores_name, search, num_samples, progress)
        )
    tuner = tune.Tuner(
        _trainable(tune_round.spec(lend)),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=make_scheduler(
                hpo.scheduler, job.k_folds, job.training.epochs, job.direction.mode, race
            ),
            num_samples=num_samples,
            max_concurrent_trials=plan.max_concurrent_trials,
            trial_name_creator=_dirname,
            trial_dirname_creator=_dirname,
            # The next trial reuses a finished trial's process and its cached data and model.
            reuse_actors=reuse_trial_processes(plan.in_process),
        ),
        run_config=tune.RunConfig(
            name=name_of(tune_round.experiment_dir),
            storage_path=parent_of(tune_round.experiment_dir),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            # The last checkpoint holds everything: the fold state and the best fold's model.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=TUNE_VERBOSE if console.verbose() else 0,
        ),
    )
    try:
        return _fit(tuner), search.stop_reason
    finally:
        if lender is not None:
            idle_cores.stop(lender)


def _searcher(job: StudyJob, hpo: HpoConfig, storage: BaseStorage) -> StudySearch:
    """The round's searcher over the variant's study, its sampler seeded per round: a top-up
    round must not replay the first round's suggestions."""
    seed = job.seed + len(storage.get_all_trials(storage.get_study_id_from_name(job.variant)))
    return StudySearch(
        space=DefineSpace(hpo.search_space),
        sampler=make_sampler(hpo.sampler, seed, hpo.search_space),
        storage=storage,
        study_name=job.variant,
        direction=job.direction,
        # With latency as a second objective Optuna gets both values (and no intermediate ones).
        latency=hpo.objective.latency is not None,
        k_folds=job.k_folds,
        budget=Budget(hpo.time_budget_s, hpo.patience, job.direction),
    )


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
        grid: ResultGrid = tuner.fit()
        return grid
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def _callbacks(tune_round: Round) -> list[Any]:
    """Tune's JSON and CSV result files, the retry recorder and the guard on retries."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    label = f"hpo {tune_round.job.backbone.name}"
    return [
        JsonLoggerCallback(),  # type: ignore[no-untyped-call]
        CSVLoggerCallback(),  # type: ignore[no-untyped-call]
        RecordRetries(str(tune_round.failure_log), label, tune_round.plan.max_failures),
        FailuresOnce(),
    ]


def restore_round(tune_round: Round) -> ResultGrid | None:
    """Continue an interrupted round: finished trials stay finished, unfinished ones resume
    from their last fold checkpoint. None when there is nothing restorable."""
    from ray import tune

    place = tune_round.experiment_dir
    if not tune.Tuner.can_restore(place):
        return None
    label = f"hpo {tune_round.job.backbone.name}"
    afresh = "its finished trials stay in the study and its unfinished ones start afresh"
    torn = torn_snapshot(place)
    if torn is not None:
        print(f"{label}: Tune's snapshot {torn} is not JSON (cut off?): not restored; {afresh}")
        return None
    for note in repair_recorded_checkpoints(place):
        print(f"{label}: {note}")
    # A restored round keeps the reuse_actors it started with; its callbacks (FailuresOnce
    # since there is one) come back too, but the guard is wanted here whatever they are.
    tune_failures_once()
    try:
        tuner = tune.Tuner.restore(
            place,
            trainable=_trainable(tune_round.spec()),
            resume_unfinished=True,
            resume_errored=False,
        )
    except OlderSearchState as exc:
        print(f"{label}: {exc}: not restored; {afresh}")
        return None
    return _fit(tuner)


def round_results(
    grid: ResultGrid, where: WorkerStorage, stopped: dict[int, str] | None = None
) -> dict[int, TrialOutcome]:
    """How each trial of the round ended (its last report, checkpoint and error, and why the
    round stopped it: ``stopped``), by Optuna trial number; a checkpoint as a place in
    ``where``."""
    out: dict[int, TrialOutcome] = {}
    path_key = train_checkpoint_key()  # where Ray Train reports a worker group's checkpoint
    for result in grid:  # type: ignore[attr-defined]  # ResultGrid supports iteration
        config = result.config or {}
        if TRIAL_NUMBER not in config:
            continue
        metrics = dict(result.metrics or {})
        # The trial's last checkpoint (its model/ is the best fold's): Tune's own for an
        # in-process trial, the one Ray Train reported for a worker-group trial.
        checkpoint = None
        if result.checkpoint is not None:
            checkpoint = where.located(result.checkpoint.path)
        elif path_key in metrics:
            checkpoint = where.located(metrics[path_key])
        error = None
        if result.error is not None:  # a task error's first line names the task, not why
            error = faults.cause_of(getattr(result.error, "cause", None) or result.error)
        report = TrialReport.from_metrics(metrics)
        number = int(config[TRIAL_NUMBER])
        why = (stopped or {}).get(number)
        out[number] = TrialOutcome(report, checkpoint, error, why)
    return out
