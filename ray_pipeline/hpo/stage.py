"""The HPO stage: for each backbone, run.mode -> variant -> Tune rounds -> ``hpo.json``.

The variant's Optuna study is the record of which trials finished. Reusing a complete variant
runs nothing unless ``num_samples`` grew (then only the missing trials run, and the sampler
learns from the finished ones); resuming restores the interrupted Tune round (finished trials
are not re-run, unfinished ones continue after their last fold) and then tops up.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ray_pipeline import faults, tracking
from ray_pipeline.artifacts import write_json
from ray_pipeline.data.splits import check_foldable, load_splits
from ray_pipeline.errors import PipelineError
from ray_pipeline.hpo.jobs import StudyJob
from ray_pipeline.hpo.keep import keep_best, pareto_front
from ray_pipeline.hpo.results import (
    CHECKPOINT_KEY,
    ENQUEUED_FROM,
    FoldState,
    HpoResult,
    TrialRecord,
    read_hpo,
)
from ray_pipeline.hpo.search_space import fit_point
from ray_pipeline.hpo.study import (
    best_so_far,
    count_finished,
    fail_running,
    load_study,
    study_storage,
)
from ray_pipeline.identity import study_key, trial_key_hash
from ray_pipeline.paths import OutputsLayout, in_round_order
from ray_pipeline.resources import TrialPlan, cluster_nodes, plan_trials
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import BackboneConfig, DataConfig, PipelineConfig
from ray_pipeline.storage import WorkerStorage, children, join
from ray_pipeline.tracking import RunRef
from ray_pipeline.variants import (
    Decision,
    Variant,
    VariantStatus,
    backbone_variants,
    plan_variant,
    resolve_variant,
    set_status,
    stage_place,
)


def check_hpo(config: PipelineConfig) -> TrialPlan:
    """Everything that can be wrong with the input, checked before anything is written: the
    data, tracking, resources, and what run.mode would do with every backbone's variants (a
    study changed under reuse fails now, not after the other backbones trained)."""
    check_search_data(config)
    tracking.check_tracking(config)
    for backbone in config.model.backbones:
        plan_variant(
            *stage_place(config, "hpo", backbone.name),
            study_key(config, backbone),
            get_run_mode(config.hpo),
            auto_resume=config.hpo.checkpoint.auto_resume,
        )
    return plan_trials(config.resources, cluster_nodes())


def check_search_data(config: PipelineConfig) -> None:
    """Refuse (exit 2) training data the search cannot split into ``hpo.k_folds`` folds of
    every label (a single label is refused when the data is read)."""
    check_foldable(load_splits(search_data(config)).train, config.hpo.k_folds)


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
        k_folds=hpo.k_folds,
        seed=hpo.seed,
        metric=hpo.objective.metric,
        direction=hpo.objective.direction,
        # A scheduler compares trials on every epoch's validation score.
        report_every_epoch=hpo.report_every_epoch or hpo.scheduler.type != "none",
        every_epoch=hpo.checkpoint.every_epoch,
        latency=hpo.objective.latency,
    )


def _run_backbone(config: PipelineConfig, backbone: BackboneConfig, plan: TrialPlan) -> HpoResult:
    layout = OutputsLayout.of(config)
    key = study_key(config, backbone)
    decision = resolve_variant(
        *stage_place(config, "hpo", backbone.name),
        "hpo",
        backbone.name,
        key,
        get_run_mode(config.hpo),
        auto_resume=config.hpo.checkpoint.auto_resume,
    )
    variant, hpo = decision.variant, config.hpo
    files = variant.files
    if decision.action == "create":
        WorkerStorage.of(config).clear(files.path)
    storage = study_storage(files, variant.name, hpo.checkpoint)
    study = load_study(
        storage, variant.name, hpo.objective.direction, hpo.objective.latency is not None
    )
    if not study.get_trials(deepcopy=False):
        _enqueue_starts(config, backbone, variant, study)
    previous = _previous(variant)
    parent = tracking.open_variant_run(
        config, "hpo", backbone.name, variant.name, variant.record.study_key_hash
    )
    if parent is not None and decision.action == "resume":
        tracking.end_open_runs(parent)  # runs a stopped process left RUNNING -> KILLED
    try:
        job = _job(config, backbone, variant.name, variant.record.study_key_hash, parent)
        outcomes, stop_reason = _run_rounds(config, job, decision, storage, study, plan)
        result = _collect(config, backbone, variant, study, outcomes, previous, stop_reason)
        if _done(result):  # unfinished trials still need their checkpoints
            where = WorkerStorage.of(config)
            result = keep_best(result, variant, hpo.checkpoint.save_only_best, where)
        write_json(files.hpo_result, result)
    except BaseException as exc:
        set_status(variant, "failed")
        if parent is not None:
            status: tracking.EndStatus = (
                "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            )
            if status == "KILLED":  # trials still RUNNING in the study were cut off, not failed
                cut_off = [t.number for t in study.get_trials() if t.state.name == "RUNNING"]
                tracking.end_trial_runs(parent, cut_off, status)
            tracking.end_open_runs(parent, status)
            tracking.end(parent, status)
        raise
    complete = _done(result)
    if hpo.max_train_examples is not None:
        everything = len(load_splits(config.data).train)
        print(
            f"hpo {backbone.name}: searched on {result.train_examples} of {everything} training "
            "examples (hpo.max_train_examples); final training refits on all of them"
        )
    if parent is not None:
        ended: tracking.EndStatus = "FINISHED" if complete else "FAILED"
        _track_variant(parent, result, layout.resolved_config, files.hpo_result, ended)
    if not complete:
        set_status(variant, "failed")
        errors = [f"trial {n}: {o['error']}" for n, o in sorted(outcomes.items()) if "error" in o]
        raise PipelineError(
            f"hpo {backbone.name}: only {result.finished} of {hpo.num_samples} trials finished in "
            f"{variant.name}; " + ("; ".join(errors[:3]) or "see the Tune output above")
        )
    final_status: VariantStatus = "complete" if result.finished >= hpo.num_samples else "stopped"
    set_status(variant, final_status)
    _print_summary(result, final_status)
    return result


def _done(result: HpoResult) -> bool:
    """Every trial finished, or a budget stopped the search with a best trial to show (a
    later run continues up to ``num_samples``)."""
    stopped = result.stop_reason is not None and result.best is not None
    return result.finished >= result.num_samples or stopped


def _enqueue_starts(
    config: PipelineConfig, backbone: BackboneConfig, variant: Variant, study: Any
) -> None:
    """A new variant's first trials: the best ``hpo.warm_start`` parameter sets of the latest
    earlier variant of this backbone (fitted to the current space), then ``hpo.enqueue``."""
    hpo, label = config.hpo, f"hpo {backbone.name}"
    starts: list[tuple[dict[str, Any], str]] = []
    if hpo.warm_start:
        earlier = [
            found
            for v in backbone_variants(config, "hpo", backbone.name)
            if v.path != variant.path and (found := read_hpo(v.files)) is not None
        ]
        if not earlier:
            print(f"{label}: warm_start: no earlier variant with results; starting cold")
        else:
            source = earlier[-1]
            complete = [
                t
                for t in source.trials
                if t.state == "COMPLETE"
                and t.objective_mean is not None
                and not math.isnan(t.objective_mean)
            ]
            ranked = source.direction.ranked(complete, key=lambda t: t.objective_mean or 0.0)
            for trial in ranked[: hpo.warm_start]:
                point, notes = fit_point(hpo.search_space, trial.params)
                origin = trial.label
                print(
                    f"{label}: warm start from {origin}: {point}" + "".join(f"; {n}" for n in notes)
                )
                starts.append((point, origin))
    for index, point in enumerate(hpo.enqueue):
        starts.append((point, f"hpo.enqueue[{index}]"))
    for point, origin in starts:
        study.enqueue_trial(point, user_attrs={ENQUEUED_FROM: origin})


def _run_rounds(
    config: PipelineConfig,
    job: StudyJob,
    decision: Decision,
    storage: Any,
    study: Any,
    plan: TrialPlan,
) -> tuple[dict[int, dict[str, Any]], str | None]:
    """Restore an interrupted round (when resuming), then run the trials still missing.
    Returns each trial's last reported metrics, by trial number, and why the search stopped
    launching trials before ``num_samples`` (a budget), if it did."""
    from ray_pipeline.hpo import tuning  # imports ray.tune: not for validate/status/report

    variant, hpo, backbone = decision.variant, config.hpo, job.backbone
    files = variant.files
    outcomes: dict[int, dict[str, Any]] = {}
    stop_reason = None
    where = WorkerStorage.of(config)
    tune_dir, train_dir = where.place(files.tune_dir), where.place(files.train_dir)
    rounds = in_round_order(children(tune_dir))
    if decision.action == "resume" and rounds:
        print(f"hpo {backbone.name}: resuming {variant.name} ({rounds[-1]})")
        last = join(tune_dir, rounds[-1])
        grid = tuning.restore_round(last, job, plan, train_dir, files.failures)
        outcomes |= tuning.round_results(grid, where) if grid is not None else {}
    stale = fail_running(study)
    if stale:
        print(f"hpo {backbone.name}: trial(s) {stale} left running by a stopped run marked FAIL")
    finished = count_finished(study)
    missing = max(hpo.num_samples - finished, 0)
    print(
        f"hpo {backbone.name}: {decision.action} {variant.name}; "
        f"{finished} of {hpo.num_samples} trials finished, running {missing}"
    )
    if missing:
        set_status(variant, "running")
        grid, stop_reason = tuning.run_round(
            experiment_dir=where.place(files.round_dir(len(rounds) + 1)),
            study_name=variant.name,
            storage=storage,
            hpo=hpo,
            job=job,
            plan=plan,
            num_samples=missing,
            train_dir=train_dir,
            failure_log=files.failures,
            done_before=finished,
            best=best_so_far(study),
        )
        outcomes |= tuning.round_results(grid, where)
        fail_running(study)
        if stop_reason is not None:
            print(
                f"hpo {backbone.name}: {stop_reason}; no new trials launched, running ones "
                f"finished ({count_finished(study)} of {hpo.num_samples} trials); a later run "
                "continues up to num_samples"
            )
    return outcomes, stop_reason


def _track_variant(
    parent: RunRef,
    result: HpoResult,
    config_file: Path,
    hpo_file: Path,
    status: tracking.EndStatus,
) -> None:
    """Close the variant's run with ``status`` (FAILED: trials are missing): the best trial
    marked, results attached."""
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
            tracking.note_retries(parent, trial.number, trial.failures, trial.resumes)
    for path in (config_file, hpo_file):
        if path.is_file():
            tracking.log_artifact(parent, str(path))
    tracking.end(parent, status)


def _previous(variant: Variant) -> dict[int, TrialRecord]:
    found = read_hpo(variant.files)
    return {t.number: t for t in found.trials} if found is not None else {}


def _collect(
    config: PipelineConfig,
    backbone: BackboneConfig,
    variant: Variant,
    study: Any,
    outcomes: dict[int, dict[str, Any]],
    previous: dict[int, TrialRecord],
    stop_reason: str | None = None,
) -> HpoResult:
    study_hash = variant.record.study_key_hash
    failures: dict[int, list[str]] = {}
    for failure in faults.read_failures(variant.files.failures):
        failures.setdefault(failure.trial if failure.trial is not None else -1, []).append(
            f"{failure.source}: {failure.cause}"
        )
    trials = []
    for frozen in study.get_trials(deepcopy=False):
        outcome = outcomes.get(frozen.number)
        old = previous.get(frozen.number)
        checkpoint = old.checkpoint if old is not None else None
        if outcome is not None and "fold_state" in outcome:
            state = FoldState.model_validate_json(outcome["fold_state"])
            checkpoint = outcome.get(CHECKPOINT_KEY, checkpoint)
        elif old is not None:
            state = FoldState(folds=old.folds, best_fold=old.best_fold, resumes=old.resumes)
        else:
            state = FoldState()
        values = [f.objective for f in state.folds]
        params = dict(frozen.params)
        epochs = outcome.get("global_step") if outcome is not None else None
        if epochs is None and old is not None:
            epochs = old.epochs_trained
        trials.append(
            TrialRecord(
                variant=variant.name,
                backbone=backbone.name,
                number=frozen.number,
                state=frozen.state.name,
                params=params,
                training=config.hpo.training.with_params(params),
                seed=config.hpo.seed,
                metric=config.hpo.objective.metric,
                objective_mean=statistics.fmean(values) if values else None,
                objective_std=statistics.pstdev(values) if values else None,
                folds=state.folds,
                best_fold=state.best_fold,
                study_key_hash=study_hash,
                trial_key_hash=trial_key_hash(study_hash, params),
                checkpoint=checkpoint,
                resumes=state.resumes,
                failures=failures.get(frozen.number, []),
                epochs_trained=None if epochs is None else int(epochs),
                latency_ms=state.folds[0].latency_ms if state.folds else None,
                enqueued_from=frozen.user_attrs.get(ENQUEUED_FROM),
            )
        )
    complete = [t for t in trials if t.state == "COMPLETE" and t.objective_mean is not None]
    best = config.hpo.objective.direction.best(complete, key=lambda t: t.objective_mean or 0.0)
    front = pareto_front(complete, config.hpo.objective.direction)
    if config.hpo.objective.latency is None:
        front = []
    return HpoResult(
        variant=variant.name,
        backbone=backbone.name,
        study_key_hash=study_hash,
        metric=config.hpo.objective.metric,
        direction=config.hpo.objective.direction,
        num_samples=config.hpo.num_samples,
        k_folds=config.hpo.k_folds,
        trials=trials,
        best=best,
        best_checkpoint=None,
        stop_reason=stop_reason,
        pareto=front,
        train_examples=len(load_splits(search_data(config)).train),
    )


def _print_summary(result: HpoResult, status: str) -> None:
    print(f"hpo {result.backbone}: {result.variant} {status} ({result.finished} trials)")
    for t in result.trials:
        mean = "-" if t.objective_mean is None else f"{t.objective_mean:.4f}"
        std = "" if t.objective_std is None else f" ± {t.objective_std:.4f}"
        folds = ", ".join(f"{f.objective:.3f}" for f in t.folds)
        mark = "  <- best" if result.best is not None and t.number == result.best.number else ""
        if t.latency_ms is not None:
            mark = (
                f"  p95 {t.latency_ms:.1f} ms"
                + (" (Pareto)" if t.number in result.pareto else "")
                + mark
            )
        if t.resumes:
            mark += f"  (retried: resumed at {', '.join(t.resumes)})"
        print(f"  trial {t.number:>3} {t.state:<8} {result.metric} {mean}{std}  [{folds}]{mark}")
