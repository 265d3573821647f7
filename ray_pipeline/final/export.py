"""Export: the final model as ``transformers.pipeline`` loads it, with its card and lineage.

``final/<backbone>/<variant>/``::

    model/         config.json (id2label / label2id), weights, tokenizer, README.md (model card)
    metrics.json   test metrics, epochs, resume point
    lineage.json   source trial, hashes, data fingerprint, MLflow run ids, package versions
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray_pipeline import run_tree, tracking
from ray_pipeline.artifacts import write_json, write_text_atomic
from ray_pipeline.final.results import FinalMetrics, Lineage, refit_epochs
from ray_pipeline.identity import data_fingerprint, stable_hash
from ray_pipeline.layout_names import MODEL_CARD
from ray_pipeline.paths import OutputsLayout, VariantFiles, staging_for
from ray_pipeline.schema import PipelineConfig, TrainingParams
from ray_pipeline.variants import Variant

PIPELINE_TASKS = {
    "sequence_classification": "text-classification",
    "token_classification": "token-classification",
}
"""Our task -> the ``transformers.pipeline`` task that loads the exported model."""
_PACKAGES = ("ray_pipeline", "ray", "torch", "transformers", "optuna", "mlflow", "pydantic")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def export(
    config: PipelineConfig,
    variant: Variant,
    checkpoint_model: Path,
    metrics: FinalMetrics,
    training: TrainingParams,
    key: dict[str, Any],
    run: tracking.RunRef | None,
) -> Path:
    """Write model/ (atomically: assembled aside, then renamed), metrics.json, lineage.json;
    log them to ``run`` and register the model when configured. Returns the model directory."""
    from transformers import AutoConfig

    labels_by_id = AutoConfig.from_pretrained(str(checkpoint_model)).id2label
    labels = [labels_by_id[i] for i in range(len(labels_by_id))]
    source = metrics.source
    lineage = Lineage(
        final_variant=variant.name,
        final_key_hash=stable_hash(key),
        source=source,
        training=training,
        refit=metrics.refit,
        data=metrics.data,
        epochs_from=refit_epochs(config, source.trial)[1],
        rows={
            "train": metrics.train_examples - metrics.validation_examples,
            "validation": metrics.validation_examples,
            "test": metrics.test_examples,
        },
        data_fingerprint=data_fingerprint(config),
        labels=labels,
        mlflow={
            "hpo_run_id": run_tree.hpo_run_id(config, source.trial.variant),
            "benchmark_run_id": source.benchmark_run_id,
            "selection_run_id": source.selection_run_id,
            "final_run_id": run.run_id if run is not None else None,
        },
        packages=package_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    files = variant.files
    model_dir, staging = files.model, staging_for(files.model)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint_model, staging)
    write_text_atomic(staging / MODEL_CARD, model_card(config, metrics, lineage, files))
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    write_json(files.metrics, metrics)
    write_json(files.lineage, lineage)
    if run is not None:
        _track(config, run, variant, metrics, model_dir)
    return model_dir


def _track(
    config: PipelineConfig,
    run: tracking.RunRef,
    variant: Variant,
    metrics: FinalMetrics,
    model_dir: Path,
) -> None:
    # The learning curves, step = epoch number (1-based, as on HPO fold runs).
    curves = {"train_loss", "learning_rate", "step_seconds"}
    tracking.log_history(run, {r.epoch + 1: r.model_dump(include=curves) for r in metrics.epochs})
    tracking.log(run, metrics={f"test_{k}": v for k, v in metrics.test_metrics.items()})
    for path in (variant.files.metrics, variant.files.lineage):
        tracking.log_artifact(run, str(path))
    if config.final_training.register_model:
        name = f"{config.experiment.name}-{variant.record.backbone}"
        version = tracking.register_model(run, model_dir, name)
        print(f"final {variant.name}: registered in MLflow as {name} version {version}")


def model_card(
    config: PipelineConfig, metrics: FinalMetrics, lineage: Lineage, files: VariantFiles
) -> str:
    """The exported model's README.md: what it is, how good, how it was chosen, how to use it."""
    source, trial, refit = metrics.source, metrics.source.trial, metrics.refit
    task = PIPELINE_TASKS[metrics.task]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.test_metrics.items())
    params = ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "(none searched)"
    layout = OutputsLayout.of(config)
    chosen = (
        f"the winner of best-model selection (`{layout.selection_file.relative_to(layout.root)}`)"
        if source.chosen_by == "selection"
        else "named in `final_training.source`"
    )
    objective = "-" if trial.objective_mean is None else f"{trial.objective_mean:.4f}"
    ran = (
        ""
        if refit is None
        else (
            f" with {refit.workers} worker(s) x {refit.threads_per_worker} thread(s) on "
            f"{refit.device}, batch {refit.effective_batch_size} per step"
        )
    )
    return f"""---
pipeline_tag: {task}
library_name: transformers
---
# {config.experiment.name} / {metrics.variant}

A `{metrics.task}` model fine-tuned from backbone `{trial.backbone}` by ray_pipeline.
Labels: {", ".join(lineage.labels)}.

## Test metrics ({metrics.test_examples} held-out examples)

| metric | value |
|---|---|
{rows}

## How it was chosen

HPO variant `{trial.variant}`, trial {trial.number} ({trial.metric} {objective} in
cross-validation), {chosen}; hyperparameters: {params}. Refit on all
{metrics.train_examples} training examples for {len(metrics.epochs)} epoch(s){ran}.
Lineage (hashes, MLflow run ids, package versions):
`{os.path.relpath(files.lineage, files.model)}`.

## Use

```python
from transformers import pipeline

classifier = pipeline("{task}", model="path/to/this/directory")
print(classifier("..."))
```
"""
