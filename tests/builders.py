"""Builders of pipeline outputs for stage tests: an HPO variant as the HPO stage leaves it
(variant.json, hpo.json, best/ with a saved random-init model and tokenizer), without running
a search. Each stage's own tests run the stage itself on real Ray."""

from __future__ import annotations

from ray_pipeline.artifacts import write_json
from ray_pipeline.data.splits import load_splits
from ray_pipeline.hpo.results import FoldResult, HpoResult, TrialRecord
from ray_pipeline.hpo.stage import BEST_DIR, HPO_FILE
from ray_pipeline.identity import stable_hash, study_key, trial_key_hash
from ray_pipeline.models import build_model, load_tokenizer
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.variants import Variant, base_name_for, create_variant, set_status


def add_hpo_variant(
    config: PipelineConfig, backbone_name: str, objective: float, trial: int = 0
) -> Variant:
    """A new complete HPO variant of ``backbone_name`` whose best trial ``trial`` scored
    ``objective`` (the config's metric) on both of two folds."""
    layout = OutputsLayout(config.outputs_root, config.experiment.name)
    backbone = next(b for b in config.model.backbones if b.name == backbone_name)
    key = study_key(config, backbone)
    variant = create_variant(
        layout.stage_dir("hpo", backbone_name),
        base_name_for(config, "hpo", backbone_name),
        "hpo",
        backbone_name,
        key,
    )
    labels = load_splits(config.data).labels
    best_dir = variant.path / BEST_DIR
    build_model(backbone, config.data.task, labels, seed=trial).save_pretrained(best_dir)
    load_tokenizer(backbone).save_pretrained(best_dir)
    metric = config.hpo.objective.metric
    folds = [
        FoldResult(
            fold=k,
            objective=objective,
            metrics={metric: objective, "accuracy": objective},
            train_loss=0.5,
            train_examples=20,
            validation_examples=20,
            seconds=1.0,
            train_step_seconds=0.5,
            workers=1,
        )
        for k in range(2)
    ]
    params = {"learning_rate": 1e-4 * (trial + 1)}
    study_hash = stable_hash(key)
    record = TrialRecord(
        number=trial,
        state="COMPLETE",
        params=params,
        objective_mean=objective,
        objective_std=0.0,
        folds=folds,
        trial_key_hash=trial_key_hash(study_hash, params),
        best_fold=0,
        checkpoint=str(best_dir),
    )
    result = HpoResult(
        variant=variant.name,
        backbone=backbone_name,
        study_key_hash=study_hash,
        metric=metric,
        direction=config.hpo.objective.direction,
        num_samples=1,
        k_folds=2,
        trials=[record],
        best=record,
        best_checkpoint=str(best_dir),
    )
    write_json(variant.path / HPO_FILE, result)
    return set_status(variant, "complete")
