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
from pathlib import Path
from typing import Any

from ray_pipeline import faults, tracking
from ray_pipeline.artifacts import read_json
from ray_pipeline.cluster import ctrl_c_unwinds
from ray_pipeline.data.splits import load_splits
from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.final.export import export
from ray_pipeline.final.results import FinalJob, FinalMetrics, FinalState, SourceTrial
from ray_pipeline.final.worker import TEST_PREFIX, train_final
from ray_pipeline.hpo.results import HpoResult, TrialRecord, read_hpo
from ray_pipeline.identity import backbone_identity, changed_keys, final_key, stable_hash
from ray_pipeline.metrics import BASELINE_METRIC, majority_rate
from ray_pipeline.naming import variant_number
from ray_pipeline.paths import CHECKPOINT_MODEL, FINAL_STATE, OutputsLayout
from ray_pipeline.resources import TrialPlan, cluster_nodes, plan_trials, scaling_config
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import BackboneConfig, PipelineConfig, TrainingParams
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import (
    Variant,
    base_name_for,
    experiment_variants,
    plan_variant,
    resolve_variant,
    set_status,
    stage_place,
)


def check_final(config: PipelineConfig, stages: Sequence[str]) -> TrialPlan:
    """Input problems, before anything is written: data, tracking, resources, a source
    variant that cannot exist, and (run without the stages that produce it) the source trial
    and what run.mode would do with the final variant."""
    load_splits(config.data)
    tracking.check_tracking(config)
    plan = plan_trials(config.resources, cluster_nodes())
    _check_source_name(config)
    from_selection = config.final_training.source.variant is None
    if "hpo" not in stages and not (from_selection and "select" in stages):
        source = resolve_source(config)
        plan_variant(
            *stage_place(config, "final", source.trial.backbone),
            _final_key(config, source),
            get_run_mode(config.final_training),
        )
    return plan


def _check_source_name(config: PipelineConfig) -> None:
    """``final_training.source.variant`` names an HPO variant of a configured backbone (it
    may not exist yet when this run's HPO stage creates it)."""
    wanted = config.final_training.source.variant
    if wanted is None:
        return
    bases = [base_name_for(config, "hpo", b.name) for b in config.model.backbones]
    if not any(variant_number(base, wanted) is not None for base in bases):
        existing = ", ".join(v.name for v in experiment_variants(config, "hpo")) or "none yet"
        raise ConfigError.at(
            "final_training.source.variant",
            f"{wanted!r} is not an HPO variant of a configured backbone (names: "
            f"{', '.join(f'{b}, {b}_v2, ...' for b in bases)}; existing: {existing})",
        )


def _hpo_variant(config: PipelineConfig, name: str, where: str) -> Variant:
    existing = experiment_variants(config, "hpo")
    names = ", ".join(v.name for v in existing) or "none"
    for variant in existing:
        if variant.name == name:
            return variant
    raise ConfigError.at(where, f"no HPO variant {name!r} in this experiment (existing: {names})")


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


def resolve_source(config: PipelineConfig) -> SourceTrial:
    """The trial to refit; ConfigError when it cannot be found."""
    layout = OutputsLayout.of(config)
    wanted = config.final_training.source
    selection: SelectionResult | None = None
    if wanted.variant is not None:
        where = "final_training.source.variant"
        variant, number = _hpo_variant(config, wanted.variant, where), wanted.trial
        where = "final_training.source.trial" if number is not None else where
    else:
        if not layout.selection_file.is_file():
            raise ConfigError.at(
                "final_training.source",
                f"no selection yet ({layout.selection_file} missing): run `ray-pipeline select` "
                "(or `ray-pipeline run`), or name a trial with final_training.source.variant",
            )
        selection = read_json(layout.selection_file, SelectionResult)
        where = f"final_training.source (the winner in {layout.selection_file})"
        variant = _hpo_variant(config, selection.winner.variant, where)
        number = selection.winner.trial.number
    hpo = read_hpo(variant.files) if variant.complete else None
    if hpo is None:
        raise ConfigError.at(where, f"{variant.name} is {variant.record.status}")
    _check_backbone(config, variant)
    source = SourceTrial(
        trial=_trial(hpo, number, where),
        chosen_by="selection" if selection is not None else "config",
        selection_cache_key=selection.cache_key if selection else None,
        selection_run_id=selection.mlflow_run_id if selection else None,
        benchmark_run_id=selection.winner.benchmark_run_id if selection else None,
    )
    return source


def _training(config: PipelineConfig, source: SourceTrial) -> TrainingParams:
    """The settings the trial trained with, and ``final_training.epochs`` when set."""
    epochs = config.final_training.epochs
    trained = source.trial.training
    return trained.model_copy(update={"epochs": epochs}) if epochs is not None else trained


def _final_key(config: PipelineConfig, source: SourceTrial) -> dict[str, Any]:
    training = _training(config, source).model_dump(mode="json")
    return final_key(config, source.trial.trial_key_hash, training)


def _backbone(config: PipelineConfig, name: str) -> BackboneConfig:
    for backbone in config.model.backbones:
        if backbone.name == name:
            return backbone
    raise ConfigError.at(
        "model.backbones", f"the source trial's backbone {name!r} is not configured"
    )


def _check_backbone(config: PipelineConfig, hpo_variant: Variant) -> None:
    """The refit starts from the weights the trial started from: the configured backbone of
    that name must still be the one the HPO variant searched."""
    name = hpo_variant.record.backbone
    searched = hpo_variant.record.study_key["backbone"]
    if backbone_identity(_backbone(config, name)) != searched:
        changes = "; ".join(changed_keys(searched, backbone_identity(_backbone(config, name))))
        raise ConfigError.at(
            "model.backbones",
            f"backbone {name!r} changed since {hpo_variant.name} searched it ({changes}); "
            "restore it, or run HPO for the new backbone",
        )


def run_final(config: PipelineConfig, plan: TrialPlan) -> FinalMetrics:
    """Refit, evaluate and export (or reuse a complete final variant)."""
    source = resolve_source(config)
    backbone = _backbone(config, source.trial.backbone)
    training = _training(config, source)
    key = _final_key(config, source)
    decision = resolve_variant(
        *stage_place(config, "final", backbone.name),
        "final",
        backbone.name,
        key,
        get_run_mode(config.final_training),
    )
    variant = decision.variant
    print(
        f"final {backbone.name}: {decision.action} {variant.name} <- {source.trial.label} "
        f"({source.chosen_by}); {training.epochs} epoch(s)"
    )
    if decision.action == "reuse":
        metrics = read_json(variant.files.metrics, FinalMetrics)
        _print_summary(metrics, variant)
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
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer

    started = datetime.now(timezone.utc)
    failure_log = variant.files.failures
    job = FinalJob(
        variant=variant.name,
        backbone=backbone,
        data=config.data,
        task=config.data.task,
        training=training,
        seed=source.trial.seed,
        attempt=started.isoformat(timespec="seconds"),
    )
    trainer = TorchTrainer(
        train_final,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=scaling_config(plan),
        run_config=RunConfig(
            name=variant.files.checkpoints_name,
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
    with ctrl_c_unwinds():  # Ray Train's own SIGINT handler would make Ctrl-C exit 1
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
    majority, rate = majority_rate(splits.train.label_counts(), splits.test.label_counts())
    metrics = FinalMetrics(
        variant=variant.name,
        source=source,
        task=config.data.task,
        test_metrics=test,
        train_examples=len(splits.train),
        test_examples=len(splits.test),
        majority_label=majority,
        majority_rate=rate,
        epochs=[],
        resumed_from_epoch=start or None,
        failures=[f.cause for f in faults.read_failures(failure_log)],
        workers=plan.workers,
        seconds=(datetime.now(timezone.utc) - started).total_seconds(),
    )
    with result.checkpoint.as_directory() as directory:
        state = FinalState.model_validate_json((Path(directory) / FINAL_STATE).read_text())
        metrics = metrics.model_copy(update={"epochs": state.epochs})
        export(config, variant, Path(directory) / CHECKPOINT_MODEL, metrics, training, key, run)
    return metrics


def _print_summary(metrics: FinalMetrics, variant: Variant) -> None:
    baseline = BASELINE_METRIC[metrics.task]

    def score(name: str, value: float) -> str:
        if name == baseline and metrics.majority_rate is not None:
            return f"{name} {value:.4f} (majority class {metrics.majority_rate:.4f})"
        return f"{name} {value:.4f}"

    scores = ", ".join(score(k, v) for k, v in metrics.test_metrics.items())
    print(f"final {metrics.variant}: test ({metrics.test_examples} examples): {scores}")
    print(f"final {metrics.variant}: model exported to {variant.files.model}")
