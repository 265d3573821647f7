"""The HPO stage: for each backbone, run.mode -> variant -> Tune rounds -> ``hpo.json``.

The variant's Optuna study is the record of which trials finished. Reusing a complete variant
runs nothing unless ``num_samples`` grew (then only the missing trials run, and the sampler
learns from the finished ones); resuming restores the interrupted Tune round (finished trials
are not re-run, unfinished ones continue after their last fold) and then tops up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_pipeline import run_tree, tracking
from ray_pipeline.data.splits import check_foldable, load_splits
from ray_pipeline.errors import PipelineError
from ray_pipeline.hpo.collect import collect, previous_trials
from ray_pipeline.hpo.jobs import StudyJob
from ray_pipeline.hpo.keep import keep_best
from ray_pipeline.hpo.progress import SearchProgress, summary
from ray_pipeline.hpo.racing import Race
from ray_pipeline.hpo.results import (
    HpoResult,
    TrialRecord,
    read_hpo,
    write_hpo,
)
from ray_pipeline.hpo.starts import enqueue_starts
from ray_pipeline.hpo.study import (
    FINISHED_STATES,
    TRIAL_CAP,
    best_so_far,
    check_study_holds,
    count_finished,
    fail_running,
    open_study,
)
from ray_pipeline.hpo.trial_report import TrialOutcome
from ray_pipeline.identity import stable_hash, study_key
from ray_pipeline.paths import OutputsLayout, in_round_order
from ray_pipeline.resources import TrialPlan, cluster_nodes, plan_trials
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import BackboneConfig, DataConfig, PipelineConfig
from ray_pipeline.storage import WorkerStorage, children, join
from ray_pipeline.tracking import RunRef
from ray_pipeline.variants import (
    Decision,
    VariantStatus,
    backbone_variants,
    plan_variant,
    resolve_variant,
    set_status,
    stage_place,
)


def check_hpo(config: PipelineConfig) -> TrialPlan:
    """What can be wrong with the input beyond ``pipeline.check_inputs`` (which checks the
    search's data and tracking), checked before anything is written: resources, and what
    run.mode would do with every backbone's variants (a study changed under reuse fails now,
    not after the other backbones trained)."""
    for backbone in config.model.backbones:
        plan_variant(
            *stage_place(config, "hpo", backbone.name),
            study_key(config, backbone),
            get_run_mode(config.hpo),
            auto_resume=config.hpo.checkpoint.auto_resume,
        )
    return plan_trials(config.resources, cluster_nodes())


def check_search_data(config: PipelineConfig) -> None:
    """Refuse (exit 2) data the search cannot score trials on: with cv, training data it
    cannot split into ``hpo.k_folds`` folds of every label; with holdout, a validation split
    with labels the training data lacks (a single label is refused when the data is read)."""
    splits = load_splits(search_data(config))
    if config.hpo.evaluation != "holdout":
        check_foldable(splits.train, config.hpo.k_folds)
    elif splits.validation is None:
        check_foldable(splits.train, 2)  # a held-out part and a part to train on


def check_studies(config: PipelineConfig) -> None:
    """The variant each backbone's run.mode would continue keeps its finished trials in the
    study ``hpo.checkpoint`` points at (``study.check_study_holds``)."""
    mode = get_run_mode(config.hpo)
    if mode == "force_new":
        return
    for backbone in config.model.backbones:
        variants = backbone_variants(config, "hpo", backbone.name)
        latest = variants[-1] if variants else None
        if latest is None or (mode == "resume_if_incomplete" and latest.complete):
            continue
        if latest.record.study_key_hash != stable_hash(study_key(config, backbone)):
            continue  # another study: plan_variant refuses it, naming the changed keys
        found = read_hpo(latest.files)
        finished = sum(t.state in FINISHED_STATES for t in found.trials) if found else 0
        if finished:
            check_study_holds(latest.files, latest.name, config.hpo.checkpoint, finished)


def search_data(config: PipelineConfig) -> DataConfig:
    """The data the search trains and validates on: ``data``, its training rows capped at
    ``hpo.max_train_examples`` (a stratified, seeded subset) when that is set."""
    cap, current = config.hpo.max_train_examples, config.data.max_train_examples
    if cap is None or (current is not None and current <= cap):
        return config.data
    return config.data.model_copy(update={"max_train_examples": cap})


def run_hpo(config: PipelineConfig, plan: TrialPlan) -> list[HpoResult]:
    """Search every backbone; return each variant's result."""
    return [_run_backbone(config, backbone, plan) for backbone in config.model.backbones]


def _job(
    config: PipelineConfig,
    backbone: BackboneConfig,
    variant: str,
    study_key_hash: str,
    parent_run: RunRef | None,
) -> StudyJob:
    hpo = config.hpo
    return StudyJob(
        variant=variant,
        study_key_hash=study_key_hash,
        parent_run=parent_run,
        data=search_data(config),
        backbone=backbone,
        task=config.data.task,
        training=hpo.training,
        k_folds=hpo.folds,
        holdout=None if hpo.evaluation != "holdout" else hpo.holdout_fraction,
        seed=hpo.seed,
        metric=hpo.objective.metric,
        direction=hpo.objective.direction,
        # A scheduler and fold racing compare trials on every epoch's validation score.
        report_every_epoch=(
            hpo.report_every_epoch or hpo.scheduler.type != "none" or hpo.racing.enabled
        ),
        fold_score=hpo.fold_score,
        every_epoch=hpo.checkpoint.every_epoch,
        latency=hpo.objective.latency,
    )


def _run_backbone(config: PipelineConfig, backbone: BackboneConfig, plan: TrialPlan) -> HpoResult:
    with resolve_variant(
        *stage_place(config, "hpo", backbone.name),
        "hpo",
        backbone.name,
        study_key(config, backbone),
        get_run_mode(config.hpo),
        auto_resume=config.hpo.checkpoint.auto_resume,
    ) as decision:
        return _run_variant(config, backbone, plan, decision)


def _run_variant(
    config: PipelineConfig, backbone: BackboneConfig, plan: TrialPlan, decision: Decision
) -> HpoResult:
    """Run (or reuse) the variant ``decision`` names, whose lease this run holds."""
    variant, hpo = decision.variant, config.hpo
    if decision.action == "create":
        WorkerStorage.of(config).clear(variant.files.path)
    latency = hpo.objective.latency is not None
    storage, study = open_study(
        variant.files, variant.name, hpo.checkpoint, hpo.objective.direction, latency
    )
    if not study.get_trials(deepcopy=False):
        enqueue_starts(config, backbone, variant, study)
    parent = run_tree.open_variant_run(
        config, "hpo", backbone.name, variant.name, variant.record.study_key_hash
    )
    if parent is not None and decision.action == "resume":
        tracking.end_open_runs(parent)  # runs a stopped process left RUNNING -> KILLED
    job = _job(config, backbone, variant.name, variant.record.study_key_hash, parent)
    try:
        with tracking.tracked(parent, children=True):
            result = _search(config, job, decision, storage, study, plan)
    except BaseException:
        # A complete or stopped variant whose top-up was cut off keeps its finished trials and
        # its hpo.json: it stays as usable as it was (a later run tops it up again).
        before = variant.record.status
        set_status(variant, before if before in ("complete", "stopped") else "failed")
        raise
    status: VariantStatus = "complete" if result.finished >= hpo.num_samples else "stopped"
    set_status(variant, status)
    print(summary(result, status))
    return result


def _search(
    config: PipelineConfig,
    job: StudyJob,
    decision: Decision,
    storage: Any,
    study: Any,
    plan: TrialPlan,
) -> HpoResult:
    """Run the variant's missing trials and write ``hpo.json``; the variant's run (when
    tracking) gets the results. Raises PipelineError when trials are missing at the end."""
    variant, hpo, label = decision.variant, config.hpo, f"hpo {job.backbone.name}"
    previous = previous_trials(variant)
    try:
        outcomes, stop_reason = _run_rounds(config, job, decision, storage, study, plan)
    except KeyboardInterrupt:
        # Trials still RUNNING in the study were cut off, not failed: their runs end KILLED
        # whatever their own process ended them as.
        if job.parent_run is not None:
            cut_off = [t.number for t in study.get_trials() if t.state.name == "RUNNING"]
            run_tree.end_trial_runs(job.parent_run, cut_off, "KILLED")
        raise
    result = collect(config, job, variant, study, outcomes, previous, stop_reason)
    if _done(result):  # unfinished trials still need their checkpoints
        where = WorkerStorage.of(config)
        result = keep_best(result, variant, hpo.checkpoint.save_only_best, where)
    write_hpo(variant.files, result)
    if hpo.max_train_examples is not None:
        everything = len(load_splits(config.data).train)
        print(
            f"{label}: searched on {result.train_examples} of {everything} training "
            "examples (hpo.max_train_examples); final training refits on all of them"
        )
    if job.parent_run is not None:
        resolved = OutputsLayout.of(config).resolved_config
        _track_variant(job.parent_run, result, resolved, variant.files.hpo_result)
    if not _done(result):
        errors = [f"trial {n}: {o.error}" for n, o in sorted(outcomes.items()) if o.error]
        raise PipelineError(
            f"{label}: only {result.finished} of {hpo.num_samples} trials finished in "
            f"{variant.name}; " + ("; ".join(errors[:3]) or "see the Tune output above")
        )
    return result


def _done(result: HpoResult) -> bool:
    """Every trial finished, or a budget stopped the search with a best trial to show (a
    later run continues up to ``num_samples``)."""
    stopped = result.stop_reason is not None and result.best is not None
    return result.finished >= result.num_samples or stopped


def _run_rounds(
    config: PipelineConfig,
    job: StudyJob,
    decision: Decision,
    storage: Any,
    study: Any,
    plan: TrialPlan,
) -> tuple[dict[int, TrialOutcome], str | None]:
    """Restore an interrupted round (when resuming), then run the trials still missing.
    Returns how each trial of those rounds ended, by trial number, and why the search stopped
    launching trials before ``num_samples`` (a budget), if it did."""
    from ray_pipeline.hpo import tuning  # imports ray.tune: not for validate/status/report

    variant, hpo, label = decision.variant, config.hpo, f"hpo {job.backbone.name}"
    files, where = variant.files, WorkerStorage.of(config)
    tune_dir, train_dir = where.place(files.tune_dir), where.place(files.train_dir)

    def tune_round(name: str) -> tuning.Round:
        return tuning.Round(job, plan, join(tune_dir, name), train_dir, files.failures)

    outcomes: dict[int, TrialOutcome] = {}
    rounds = in_round_order(children(tune_dir))
    study.set_user_attr(TRIAL_CAP, hpo.num_samples)  # this run's, also for a restored round
    if decision.action == "resume" and rounds:
        print(f"{label}: resuming {variant.name} ({rounds[-1]})")
        done = count_finished(study)
        if done >= hpo.num_samples:
            print(
                f"{label}: {done} trial(s) finished reach hpo.num_samples {hpo.num_samples}: a "
                "restored round launches no new trial"
            )
        grid = tuning.restore_round(tune_round(rounds[-1]))
        outcomes |= tuning.round_results(grid, where) if grid is not None else {}
    stale = fail_running(study)
    if stale:
        print(f"{label}: trial(s) {stale} left running by a stopped run marked FAIL")
    finished = count_finished(study)
    missing = max(hpo.num_samples - finished, 0)
    print(
        f"{label}: {decision.action} {variant.name}; "
        f"{finished} of {hpo.num_samples} trials finished, running {missing}"
    )
    if not missing:
        return outcomes, None
    set_status(variant, "running")
    progress = _progress(config, job, plan, study, finished, missing)
    next_round = tune_round(files.round_dir(len(rounds) + 1).name)
    race = _race(config, job, previous_trials(variant), outcomes)
    grid, stop_reason = tuning.run_round(next_round, hpo, storage, missing, progress, race)
    outcomes |= tuning.round_results(grid, where, race.stopped if race else {})
    fail_running(study)
    if stop_reason is not None:
        print(
            f"{label}: {stop_reason}; no new trials launched, running ones finished "
            f"({count_finished(study)} of {hpo.num_samples} trials); a later run continues up "
            "to num_samples"
        )
    return outcomes, stop_reason


def _race(
    config: PipelineConfig,
    job: StudyJob,
    previous: dict[int, TrialRecord],
    restored: dict[int, TrialOutcome],
) -> Race | None:
    """The round's fold racing (``hpo.racing``), its incumbent the best trial that earlier runs
    (``hpo.json``) or the round restored before completed; None without racing."""
    racing = config.hpo.racing
    if not racing.enabled or job.k_folds < 2:
        return None
    race = Race(job.direction, job.k_folds, racing.margin)
    finished = [t.folds for t in previous.values() if t.state == "COMPLETE"]
    finished += [o.report.fold_state.folds for o in restored.values() if o.report is not None]
    for folds in finished:  # only trials with every fold count
        race.completed(
            [f.objective for f in folds], [[p.validation for p in f.history] for f in folds]
        )
    return race


def _progress(
    config: PipelineConfig, job: StudyJob, plan: TrialPlan, study: Any, done: int, missing: int
) -> SearchProgress:
    """The console progress of a round that runs ``missing`` trials after ``done``."""
    return SearchProgress(
        label=f"hpo {job.backbone.name}",
        total=done + missing,
        done_before=done,
        k_folds=job.k_folds,
        epochs=job.training.epochs,
        metric=job.metric,
        direction=job.direction,
        parallel=plan.max_concurrent_trials,
        best=None if config.hpo.objective.latency else best_so_far(study),
    )


def _track_variant(parent: RunRef, result: HpoResult, config_file: Path, hpo_file: Path) -> None:
    """The variant's results on its run: the best trial marked, the files attached, and the
    trials a scheduler stopped mid-fold ended (KILLED); ``tracked`` ends the run itself."""
    tracking.end_open_runs(parent)  # trials a scheduler stopped mid-fold
    if result.best is not None and result.best.objective_mean is not None:
        tracking.log(
            parent,
            metrics={
                f"best_{result.metric}": result.best.objective_mean,
                f"best_{result.metric}_std": result.best.objective_std or 0.0,
                "trials_finished": result.finished,
            },
        )
        tracking.set_tags(
            parent, best_trial=result.best.number, best_trial_key_hash=result.best.trial_key_hash
        )
    for trial in result.trials:
        if trial.resumes or trial.failures:
            run_tree.note_retries(parent, trial.number, trial.failures, trial.resumes)
    for path in (config_file, hpo_file):
        if path.is_file():
            tracking.log_artifact(parent, str(path))
