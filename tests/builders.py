"""Builders of pipeline outputs for stage tests: an HPO variant as the HPO stage leaves it
(variant.json, hpo.json, best/ with a saved random-init model and tokenizer), without running
a search. Each stage's own tests run the stage itself on real Ray."""

from __future__ import annotations

from ray_pipeline.artifacts import write_json
from ray_pipeline.data.splits import load_splits
from ray_pipeline.hpo.results import FoldResult, FoldState, HpoResult, TrialRecord
from ray_pipeline.hpo.trial_report import TrialReport
from ray_pipeline.identity import stable_hash, study_key, trial_key_hash
from ray_pipeline.models import build_model, load_tokenizer
from ray_pipeline.schema import PipelineConfig, TrainingParams
from ray_pipeline.variants import Variant, create_variant, set_status, stage_place


def fold_result(fold: int, score: float, metric: str = "macro_f1") -> FoldResult:
    """A finished fold that scored ``score`` (as ``metric`` and as accuracy)."""
    return FoldResult(
        fold=fold,
        objective=score,
        metrics={metric: score, "accuracy": score},
        train_loss=0.5,
        train_examples=80,
        validation_examples=80,
        seconds=1.0,
        train_step_seconds=0.5,
        workers=1,
    )


def trial_record(
    number: int,
    objective: float,
    *,
    variant: str = "hpo_x",
    std: float = 0.0,
    latency_ms: float | None = None,
    checkpoint: str | None = None,
) -> TrialRecord:
    """A complete trial ``number`` of ``variant`` (``hpo_<backbone>``) that scored ``objective``
    (macro_f1) with no fold records: for the pure logic over trials (Pareto fronts, selection)."""
    return TrialRecord(
        variant=variant,
        backbone=variant.split("_")[1],
        number=number,
        state="COMPLETE",
        params={},
        training=TrainingParams(),
        seed=0,
        metric="macro_f1",
        objective_mean=objective,
        objective_std=std,
        folds=[],
        study_key_hash=f"s-{variant}",
        trial_key_hash=f"t-{variant}-{number}",
        latency_ms=latency_ms,
        checkpoint=checkpoint,
    )


def add_hpo_variant(
    config: PipelineConfig, backbone_name: str, objective: float, trial: int = 0
) -> Variant:
    """A new complete HPO variant of ``backbone_name`` with three or more complete trials of
    distinct scores, whose best is trial ``trial``: it scored ``objective`` (the config's
    metric) on both of two folds; every other trial ``n`` scored ``objective - 0.01 * (n+1)``
    (so a reader that takes the first or the last trial instead of the best is caught)."""
    backbone = next(b for b in config.model.backbones if b.name == backbone_name)
    key = study_key(config, backbone)
    variant = create_variant(*stage_place(config, "hpo", backbone_name), "hpo", backbone_name, key)
    labels = load_splits(config.data).labels
    best_dir = variant.files.best
    build_model(backbone, config.data.task, labels, seed=trial).save_pretrained(best_dir)
    load_tokenizer(backbone).save_pretrained(best_dir)
    metric, study_hash = config.hpo.objective.metric, stable_hash(key)

    def record(number: int, score: float) -> TrialRecord:
        folds = [fold_result(k, score, metric) for k in range(2)]
        params = {"learning_rate": 1e-4 * (number + 1)}
        return TrialRecord(
            variant=variant.name,
            backbone=backbone_name,
            number=number,
            state="COMPLETE",
            params=params,
            training=config.hpo.training.with_params(params),
            seed=config.hpo.seed,
            metric=metric,
            objective_mean=score,
            objective_std=0.0,
            folds=folds,
            best_fold=0,
            study_key_hash=study_hash,
            trial_key_hash=trial_key_hash(study_hash, params),
            checkpoint=str(best_dir) if number == trial else None,
        )

    sign = config.hpo.objective.direction.sign
    trials = [
        record(n, objective if n == trial else objective - sign * 0.01 * (n + 1))
        for n in range(max(trial + 1, 3))
    ]
    result = HpoResult(
        variant=variant.name,
        backbone=backbone_name,
        study_key_hash=study_hash,
        metric=metric,
        direction=config.hpo.objective.direction,
        num_samples=len(trials),
        k_folds=2,
        trials=trials,
        best=trials[trial],
        best_checkpoint=str(best_dir),
    )
    write_json(variant.files.hpo_result, result)
    return set_status(variant, "complete")


def trial_report(
    folds: list[float], *, step: int | None = None, score: float | None = None
) -> TrialReport:
    """A trial's report after its folds scored ``folds`` (fold 0 first), at ``step`` (default:
    one epoch per fold) with the running ``score`` (default: the folds' mean)."""
    state = FoldState(folds=[fold_result(k, v) for k, v in enumerate(folds)])
    report = TrialReport.of(
        state,
        step=len(folds) if step is None else step,
        fold=max(len(folds) - 1, 0),
        epoch=0,
        train_loss=0.1,
    )
    return report if score is None else report.model_copy(update={"score": score})
