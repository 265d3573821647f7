"""The final-training stage: source trial -> run.mode -> final variant -> Ray Train -> export.

The source is the selection's winner, or ``final_training.source`` (a variant, and a trial or
its best). The refit starts from the backbone's weights with the trial's hyperparameters (the
training settings recorded in its HPO variant) on all training data. The variant
``final/<backbone>/final_<backbone>[_vN]`` is keyed by the source trial, the settings and the
data, so reuse and resume only ever continue the same refit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray_pipeline import faults, tracking
from ray_pipeline.artifacts import read_json
from ray_pipeline.data.splits import load_splits
from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.final.export import METRICS_FILE, export
from ray_pipeline.final.results import FinalJob, FinalMetrics, FinalState, SourceTrial
from ray_pipeline.final.worker import MODEL_DIR, STATE_FILE, TEST_PREFIX, train_final
from ray_pipeline.hpo.results import HpoResult, TrialRecord
from ray_pipeline.hpo.stage import HPO_FILE
from ray_pipeline.identity import final_key, stable_hash
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.resources import TrialPlan, cluster_nodes, plan_trials, scaling_config
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import BackboneConfig, PipelineConfig, TrainingParams
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import (
    Variant,
    base_name_for,
    experiment_variants,
    resolve_variant,
    set_status,
)

CHECKPOINTS_DIR = "checkpoints"


def check_final(config: PipelineConfig, stages: Sequence[str]) -> TrialPlan:
    """Input problems, before anything is written: data, tracking, resources, and (run
    without the stages that produce it) the source trial."""
    load_splits(config.data)
    tracking.check_tracking(config)
    plan = plan_trials(config.resources, cluster_nodes())
    if "hpo" not in stages and "select" not in stages:
        resolve_source(config)
    return plan


def _hpo_variant(config: PipelineConfig, name: str) -> Variant:
    existing = experiment_variants(config, "hpo")
    names = ", ".join(v.name for v in existing) or "none"
    for variant in existing:
        if variant.name == name:
            return variant
    raise ConfigError.at(
        "final_training.source.variant",
        f"no HPO variant {name!r} in this experiment (existing: {names})",
    )


def _trial(hpo: HpoResult, number: int | None, where: str) -> TrialRecord:
    if number is None:
        if hpo.best is None:
            raise ConfigError.at(where, f"{hpo.variant} has no finished trial")
        return hpo.best
    for trial in hpo.trials:
        if trial.number == number and trial.state == "COMPLETE":
            return trial
    done = [t.number for t in hpo.trials if t.state == "COMPLETE"]
    raise ConfigError.at(where, f"{hpo.variant} has no complete trial {number} (complete: {done})")


def resolve_source(config: PipelineConfig) -> tuple[SourceTrial, Variant]:
    """The trial to refit and its HPO variant; ConfigError when it cannot be found."""
    layout = OutputsLayout(config.outputs_root, config.experiment.name)
    wanted = config.final_training.source
    selection: SelectionResult | None = None
    if wanted.variant is not None:
        variant, number, where = _hpo_variant(config, wanted.variant), wanted.trial, "trial"
    else:
        if not layout.selection_file.is_file():
            raise ConfigError.at(
                "final_training.source",
                f"no selection yet ({layout.selection_file} missing): run `ray-pipeline select` "
                "(or `ray-pipeline run`), or name a trial with final_training.source.variant",
            )
        selection = read_json(layout.selection_file, SelectionResult)
        variant = _hpo_variant(config, selection.winner.variant)
        number, where = selection.winner.trial, "variant"
    hpo_file = variant.path / HPO_FILE
    if not variant.complete or not hpo_file.is_file():
        raise ConfigError.at(
            f"final_training.source.{where}", f"{variant.name} is {variant.record.status}"
        )
    hpo = read_json(hpo_file, HpoResult)
    trial = _trial(hpo, number, f"final_training.source.{where}")
    source = SourceTrial(
        variant=variant.name,
        backbone=variant.record.backbone,
        trial=trial.number,
        trial_key_hash=trial.trial_key_hash,
        study_key_hash=hpo.study_key_hash,
        params=trial.params,
        objective=trial.objective_mean,
        metric=hpo.metric,
        chosen_by="selection" if selection is not None else "config",
        selection_cache_key=selection.cache_key if selection else None,
        selection_run_id=selection.mlflow_run_id if selection else None,
        benchmark_run_id=selection.winner.benchmark_run_id if selection else None,
    )
    return source, variant


def _training(config: PipelineConfig, source: SourceTrial, hpo_variant: Variant) -> TrainingParams:
    """The settings the trial trained with (as its variant recorded them), with its
    hyperparameters, and ``final_training.epochs`` when set."""
    recorded = hpo_variant.record.study_key["hpo"]["training"]
    params = TrainingParams.model_validate({**recorded, **source.params})
    epochs = config.final_training.epochs
    return params.model_copy(update={"epochs": epochs}) if epochs is not None else params


def _backbone(config: PipelineConfig, name: str) -> BackboneConfig:
    for backbone in config.model.backbones:
        if backbone.name == name:
            return backbone
    raise ConfigError.at(
        "model.backbones", f"the source trial's backbone {name!r} is not configured"
    )


def run_final(config: PipelineConfig, plan: TrialPlan) -> FinalMetrics:
    """Refit, evaluate and export (or reuse a complete final variant)."""
    source, hpo_variant = resolve_source(config)
    backbone = _backbone(config, source.backbone)
    training = _training(config, source, hpo_variant)
    key = final_key(config, source.trial_key_hash, training.model_dump(mode="json"))
    layout = OutputsLayout(config.outputs_root, config.experiment.name)
    decision = resolve_variant(
        layout.stage_dir("final", backbone.name),
        base_name_for(config, "final", backbone.name),
        "final",
        backbone.name,
        key,
        get_run_mode(config.final_training),
    )
    variant = decision.variant
    print(
        f"final {backbone.name}: {decision.action} {variant.name} <- {source.variant} trial "
        f"{source.trial} ({source.chosen_by}); {training.epochs} epoch(s)"
    )
    if decision.action == "reuse":
        metrics = read_json(variant.path / METRICS_FILE, FinalMetrics)
        _print_summary(metrics, variant.path)
        return metrics
    run = tracking.open_final_run(config, variant.name, source, stable_hash(key))
    try:
        metrics = _train_and_export(config, plan, variant, source, backbone, training, run, key)
    except BaseException as exc:
        set_status(variant, "failed")
        if run is not None:
            tracking.end(run, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    set_status(variant, "complete")
    if run is not None:
        tracking.end(run)
    _print_summary(metrics, variant.path)
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
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer

    started = datetime.now(timezone.utc)
    failure_log = variant.path / faults.FAILURE_LOG
    job = FinalJob(
        variant=variant.name,
        backbone=backbone,
        data=config.data,
        task=config.data.task,
        training=training,
        seed=config.hpo.seed,
        attempt=started.isoformat(timespec="seconds"),
    )
    trainer = TorchTrainer(
        train_final,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=scaling_config(plan),
        run_config=RunConfig(
            name=CHECKPOINTS_DIR,
            storage_path=str(variant.path),
            checkpoint_config=CheckpointConfig(num_to_keep=config.final_training.keep_checkpoints),
            # A lost worker or node: the worker group restarts from the last epoch checkpoint.
            failure_config=faults.train_failure_config(plan.max_failures),
            callbacks=[
                faults.train_failure_callback(
                    failure_log,
                    None,
                    f"final {variant.name}",
                    f"Ray Train retries from the last epoch checkpoint "
                    f"(resources.max_failures={plan.max_failures})",
                )
            ],
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None or not result.metrics:
        raise PipelineError(f"final {variant.name}: training reported no checkpoint")
    splits = load_splits(config.data)
    start = int(result.metrics["start_epoch"])
    test = {
        k[len(TEST_PREFIX) :]: float(v)
        for k, v in result.metrics.items()
        if k.startswith(TEST_PREFIX)
    }
    metrics = FinalMetrics(
        variant=variant.name,
        source=source,
        task=config.data.task,
        test_metrics=test,
        train_examples=len(splits.train),
        test_examples=len(splits.test),
        epochs=[],
        resumed_from_epoch=start or None,
        failures=[f.cause for f in faults.read_failures(failure_log)],
        workers=plan.workers,
        seconds=(datetime.now(timezone.utc) - started).total_seconds(),
    )
    with result.checkpoint.as_directory() as directory:
        state = FinalState.model_validate_json((Path(directory) / STATE_FILE).read_text())
        metrics = metrics.model_copy(update={"epochs": state.epochs})
        export(config, variant, Path(directory) / MODEL_DIR, metrics, training, key, run)
    return metrics


def _print_summary(metrics: FinalMetrics, path: Path) -> None:
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.test_metrics.items())
    print(f"final {metrics.variant}: test ({metrics.test_examples} examples): {scores}")
    print(f"final {metrics.variant}: model exported to {path / MODEL_DIR}")
