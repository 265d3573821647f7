"""The final-training stage: source trial -> run.mode -> final variant -> Ray Train -> export.

The source is the selection's winner, or ``final_training.source`` (a variant, and a trial or
its best). The refit starts from the backbone's weights with the settings and seed the trial
trained with (its ``TrialRecord``) on all training data. The variant
``final/<backbone>/final_<backbone>[_vN]`` is keyed by the source trial, the settings and the
data, so reuse and resume only ever continue the same refit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ray_pipeline import faults, run_tree, tracking
from ray_pipeline.artifacts import read_json
from ray_pipeline.cluster import ctrl_c_unwinds
from ray_pipeline.data.splits import load_splits
from ray_pipeline.errors import PipelineError
from ray_pipeline.final.export import export
from ray_pipeline.final.results import (
    FinalJob,
    FinalMetrics,
    FinalState,
    Refit,
    SourceTrial,
    refit_epochs,
)
from ray_pipeline.final.source import backbone_of, check_source_name, resolve_source
from ray_pipeline.final.worker import epoch_checkpoints, read_state, train_in_task, train_on_worker
from ray_pipeline.identity import final_key, stable_hash
from ray_pipeline.layout_names import CHECKPOINT_MODEL
from ray_pipeline.metrics import BASELINE_METRIC, majority_rate
from ray_pipeline.resources import (
    TrialPlan,
    cluster_nodes,
    plan_final,
    scaling_config,
    threads_for,
)
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import BackboneConfig, PipelineConfig, TrainingParams
from ray_pipeline.storage import WorkerStorage, join, local_copy
from ray_pipeline.training import per_worker_batch
from ray_pipeline.variants import (
    Decision,
    Variant,
    plan_variant,
    resolve_variant,
    set_status,
    stage_place,
)


def check_final(config: PipelineConfig, stages: Sequence[str]) -> TrialPlan:
    """Input problems, before anything is written: data, resources, a source variant that
    cannot exist, and (run without the stages that produce it) the source trial and what
    run.mode would do with the final variant (tracking: ``pipeline.check_inputs``)."""
    load_splits(config.data)
    plan = plan_final(config.final_training.resources, config.resources, cluster_nodes())
    check_source_name(config)
    from_selection = config.final_training.source.variant is None
    if "hpo" not in stages and not (from_selection and "select" in stages):
        source = resolve_source(config)
        plan_variant(
            *stage_place(config, "final", source.trial.backbone),
            _final_key(config, source),
            get_run_mode(config.final_training),
        )
    return plan


def _training(config: PipelineConfig, source: SourceTrial) -> TrainingParams:
    """The settings the trial trained with, for ``refit_epochs``."""
    epochs, _ = refit_epochs(config, source.trial)
    return source.trial.training.model_copy(update={"epochs": epochs})


def _final_key(config: PipelineConfig, source: SourceTrial) -> dict[str, Any]:
    return final_key(config, source.trial.trial_key_hash, _training(config, source))


def run_final(config: PipelineConfig, plan: TrialPlan) -> FinalMetrics:
    """Refit, evaluate and export (or reuse a complete final variant)."""
    source = resolve_source(config)
    backbone = backbone_of(config, source.trial.backbone)
    training = _training(config, source)
    key = _final_key(config, source)
    with resolve_variant(
        *stage_place(config, "final", backbone.name),
        "final",
        backbone.name,
        key,
        get_run_mode(config.final_training),
    ) as decision:
        return _run_variant(config, plan, source, backbone, training, key, decision)


def _run_variant(
    config: PipelineConfig,
    plan: TrialPlan,
    source: SourceTrial,
    backbone: BackboneConfig,
    training: TrainingParams,
    key: dict[str, Any],
    decision: Decision,
) -> FinalMetrics:
    """Refit into (or reuse) the variant ``decision`` names, whose lease this run holds."""
    variant = decision.variant
    if decision.action == "create":
        WorkerStorage.of(config).clear(variant.files.path)
    print(
        f"final {backbone.name}: {decision.action} {variant.name} <- {source.trial.label} "
        f"({source.chosen_by}); {training.epochs} epoch(s): {refit_epochs(config, source.trial)[1]}"
    )
    if decision.action == "reuse":
        metrics = read_json(variant.files.metrics, FinalMetrics)
        _print_summary(metrics, variant)
        return metrics
    origin, chosen = source.trial.origin(), source.choice()
    opened = run_tree.open_final_run(config, variant.name, origin, stable_hash(key), chosen)
    try:
        with tracking.tracked(opened) as run:
            metrics = _train_and_export(config, plan, variant, source, backbone, training, run, key)
    except BaseException:
        set_status(variant, "failed")
        raise
    set_status(variant, "complete")
    _print_summary(metrics, variant)
    return metrics


def _train_and_export(
    config: PipelineConfig,
    plan: TrialPlan,
    variant: Variant,
    source: SourceTrial,
    backbone: BackboneConfig,
    training: TrainingParams,
    run: tracking.RunRef | None,
    key: dict[str, Any],
) -> FinalMetrics:
    started = datetime.now(timezone.utc)
    refit = _refit_of(plan, training)
    where = WorkerStorage.of(config)
    job = FinalJob(
        variant=variant.name,
        checkpoints=where.place(variant.files.checkpoints),
        keep_checkpoints=config.final_training.keep_checkpoints,
        batch_size_per_worker=refit.batch_size_per_worker,
        backbone=backbone,
        data=config.data,
        task=config.data.task,
        training=training,
        seed=source.trial.seed,
        with_validation=config.final_training.data == "train_and_validation",
        attempt=started.isoformat(timespec="seconds"),
    )
    before = epoch_checkpoints(job.checkpoints)
    start = read_state(before[-1]).next_epoch if before else 0
    print(
        f"final {variant.name}: {refit.workers} worker(s) x {refit.threads_per_worker} "
        f"thread(s) on {refit.device} ({_BACKENDS[refit.backend]}), "
        f"batch {refit.batch_size_per_worker} per worker = {refit.effective_batch_size} per step"
    )
    if plan.in_process:
        _run_task(plan, job, variant)
    else:
        _run_worker_group(plan, job, variant, where)
    found = epoch_checkpoints(job.checkpoints)
    state = read_state(found[-1]) if found else FinalState()
    if state.test_metrics is None:
        raise PipelineError(f"final {variant.name}: training ended without a tested checkpoint")
    metrics = _metrics_of(config, variant, source, state, refit, (start, started))
    with local_copy(join(found[-1], CHECKPOINT_MODEL)) as model:
        export(config, variant, model, metrics, training, key, run)
    return metrics


def _metrics_of(
    config: PipelineConfig,
    variant: Variant,
    source: SourceTrial,
    state: FinalState,
    refit: Refit,
    attempt: tuple[int, datetime],
) -> FinalMetrics:
    """``metrics.json`` of a refit whose last epoch checkpoint holds ``state`` (tested); this
    attempt started at epoch ``attempt[0]``, at the time ``attempt[1]``."""
    assert state.test_metrics is not None
    start, started = attempt
    with_validation = config.final_training.data == "train_and_validation"
    splits = load_splits(config.data)
    majority, rate = majority_rate(splits.train.label_counts(), splits.test.label_counts())
    return FinalMetrics(
        variant=variant.name,
        source=source,
        task=config.data.task,
        test_metrics=state.test_metrics,
        per_class=state.per_class,
        confusion=state.confusion,
        train_examples=len(splits.refit_rows(with_validation)),
        test_examples=len(splits.test),
        data="train_and_validation" if with_validation else "train",
        validation_examples=len(splits.validation or ()) if with_validation else 0,
        majority_label=majority,
        majority_rate=rate,
        epochs=state.epochs,
        resumed_from_epoch=state.resumed_from_epoch or start or None,
        failures=[f.cause for f in faults.read_failures(variant.files.failures)],
        refit=refit,
        seconds=(datetime.now(timezone.utc) - started).total_seconds(),
    )


_BACKENDS = {"task": "one Ray task", "train": "a Ray Train DDP worker group"}


def _refit_of(plan: TrialPlan, training: TrainingParams) -> Refit:
    per_worker = per_worker_batch(training.batch_size, plan.workers)
    return Refit(
        workers=plan.workers,
        cpus_per_worker=plan.cpus_per_worker,
        gpus_per_worker=plan.gpus_per_worker,
        threads_per_worker=threads_for(plan.cpus_per_worker),
        device="cuda" if plan.use_gpu else "cpu",
        backend="task" if plan.in_process else "train",
        batch_size_per_worker=per_worker,
        effective_batch_size=per_worker * plan.workers * training.gradient_accumulation_steps,
    )


def _run_task(plan: TrialPlan, job: FinalJob, variant: Variant) -> None:
    """One worker: the epoch loop in one Ray task (seconds to start, where a worker group takes
    ~20 s). A failed attempt (its process or node lost, or an error) is recorded and retried
    up to resources.max_failures times, each resuming after the last epoch checkpoint."""
    import ray

    task = ray.remote(train_in_task).options(
        num_cpus=plan.cpus_per_worker,
        num_gpus=plan.gpus_per_worker,
        max_retries=0,
        name=f"final {variant.name}",
    )
    for attempt in range(plan.max_failures + 1):
        ref = task.remote(job.model_dump(mode="json"))
        try:
            ray.get(ref)  # the worker prints its steps and epochs, with an ETA
            return
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayError as exc:
            cause = faults.cause_of(
                exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
            )
            faults.record_failure(variant.files.failures, None, "task", cause)
            if attempt == plan.max_failures:
                raise PipelineError(
                    f"final {variant.name}: failed after {attempt + 1} attempt(s): {cause}"
                ) from exc
            print(
                f"final {variant.name}: attempt {attempt + 1} failed ({cause}); retrying from "
                f"the last epoch checkpoint (resources.max_failures={plan.max_failures})"
            )


def _run_worker_group(
    plan: TrialPlan, job: FinalJob, variant: Variant, where: WorkerStorage
) -> None:
    """Several workers: a Ray Train DDP worker group, restarted by Ray Train after a lost
    worker or node; every restart resumes after the last epoch checkpoint."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    train_dir = variant.files.train_dir
    trainer = TorchTrainer(
        train_on_worker,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=scaling_config(plan),
        run_config=RunConfig(
            name=train_dir.name,
            storage_path=where.place(train_dir.parent),
            failure_config=faults.train_failure_config(plan.max_failures),
            callbacks=[
                faults.train_failure_callback(
                    variant.files.failures,
                    None,
                    f"final {variant.name}",
                    f"Ray Train retries from the last epoch checkpoint "
                    f"(resources.max_failures={plan.max_failures})",
                )
            ],
        ),
    )
    with ctrl_c_unwinds():  # Ray Train's own SIGINT handler would make Ctrl-C exit 1
        trainer.fit()


def _print_summary(metrics: FinalMetrics, variant: Variant) -> None:
    baseline = BASELINE_METRIC[metrics.task]

    def score(name: str, value: float) -> str:
        if name == baseline and metrics.majority_rate is not None:
            return f"{name} {value:.4f} (majority class {metrics.majority_rate:.4f})"
        return f"{name} {value:.4f}"

    scores = ", ".join(score(k, v) for k, v in metrics.test_metrics.items())
    print(f"final {metrics.variant}: test ({metrics.test_examples} examples): {scores}")
    print(f"final {metrics.variant}: model exported to {variant.files.model}")
