"""Identity of studies and trials: the one place hashes are computed.

``study_key_hash`` covers what defines a study (data, backbone, search space, fixed
training settings, CV, seed, sampler, objective); ``num_samples`` and the scheduler are left out
so a study can grow or be scheduled differently and still be the same study.
``trial_key_hash`` adds one trial's hyperparameters. Hashes are SHA-256 over canonical
JSON, stable across processes, machines and Python versions (never ``hash()``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ray_pipeline.schema import (
    RESOLVED_SAMPLER_OPTIONS,
    BackboneConfig,
    BenchmarkSettings,
    PipelineConfig,
    SamplerConfig,
    TrainingParams,
)

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def stable_hash(value: Any) -> str:
    """SHA-256 hex digest of ``canonical_json(value)``."""
    return hashlib.sha256(canonical_json(value).encode("ascii")).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _data_identity(config: PipelineConfig) -> dict[str, Any]:
    # Files are identified by content, not location, so moving a checkout or running on
    # another node keeps the same study; a file not present yet is identified by its name.
    data = config.data.model_dump(mode="json")
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(config.data, key)
        if path is not None:
            data[key] = {"name": path.name, "sha256": file_digest(path) if path.is_file() else None}
    return data


def backbone_identity(backbone: BackboneConfig) -> dict[str, Any]:
    """What identifies a backbone in a study key (a local path by its directory name)."""
    ident = backbone.model_dump(mode="json", exclude={"path"})
    if backbone.path is not None:
        ident["path"] = backbone.path.name
    return ident


KEYED_WHEN_SET = (
    "lr_schedule",
    "label_smoothing",
    "dropout",
    "classifier_dropout",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "eval_batch_size",
    "cpu_dropout_masks",
)
"""Training settings added after studies were first keyed: in a key only when they differ from
their default, so a variant keyed before they existed keeps its key and stays reusable."""


def training_identity(training: TrainingParams) -> dict[str, Any]:
    """Training settings as keys hold them (``KEYED_WHEN_SET`` left out at their defaults)."""
    values = training.model_dump(mode="json")
    defaults = TrainingParams().model_dump(mode="json")
    return {k: v for k, v in values.items() if k not in KEYED_WHEN_SET or v != defaults[k]}


def study_key(config: PipelineConfig, backbone: BackboneConfig) -> dict[str, Any]:
    """The canonical description of one backbone's study, keyed like the config."""
    hpo = config.hpo
    return {
        "data": _data_identity(config),
        "backbone": backbone_identity(backbone),
        "hpo": {
            # A condition is keyed only where set: spaces keyed before conditions existed
            # keep their key.
            "search_space": {
                k: v.model_dump(mode="json", exclude=None if v.when else {"when"})
                for k, v in hpo.search_space.items()
            },
            "training": training_identity(hpo.training),
            "k_folds": hpo.k_folds,
            "seed": hpo.seed,
            "sampler": sampler_identity(hpo.sampler),
            "objective": hpo.objective.model_dump(
                mode="json", exclude=None if hpo.objective.latency else {"latency"}
            ),
            # Keyed only where set: studies keyed before it existed keep their key.
            **({"max_train_examples": hpo.max_train_examples} if hpo.max_train_examples else {}),
            **_evaluation_identity(config),
            # Keyed only where set: studies scored on the last epoch keep their key.
            **({"fold_score": hpo.fold_score} if hpo.fold_score != "last" else {}),
        },
    }


def _evaluation_identity(config: PipelineConfig) -> dict[str, Any]:
    """How trials are scored, keyed only for holdout (cross-validated studies, keyed before
    holdout existed, keep their key); the carved-out fraction only when it is what scores."""
    hpo = config.hpo
    if hpo.evaluation != "holdout":
        return {}
    carved = {} if config.data.has_validation else {"holdout_fraction": hpo.holdout_fraction}
    return {"evaluation": "holdout", **carved}


def sampler_identity(sampler: SamplerConfig) -> Any:
    """The sampler in a study key: its name alone while its options are their defaults (so
    studies keyed before the options existed keep their key), else every setting, an option at
    the value the schema resolves a null to keyed as null (as keys held it before the schema
    resolved it)."""
    defaults = SamplerConfig(type=sampler.type)
    if sampler == defaults:
        return sampler.type
    keyed = sampler.model_dump(mode="json")
    for name in RESOLVED_SAMPLER_OPTIONS:
        if keyed[name] == getattr(defaults, name):
            keyed[name] = None
    return keyed


def same_study(stored: dict[str, Any], key: dict[str, Any]) -> bool:
    """Whether a variant keyed ``stored`` is the study ``key`` describes: the same key, or one
    that differs only in how an older version keyed a sampler option written out at its
    default (``{type: tpe, n_startup_trials: 10}`` was keyed with the option; now the schema
    resolves a null to 10, and both are keyed by the name)."""
    return stable_hash(_sampler_normalised(stored)) == stable_hash(_sampler_normalised(key))


def _sampler_normalised(key: dict[str, Any]) -> dict[str, Any]:
    hpo = key.get("hpo")
    if not isinstance(hpo, dict) or not isinstance(hpo.get("sampler"), dict):
        return key
    sampler: dict[str, Any] = hpo["sampler"]
    try:
        resolved = SamplerConfig.model_validate({k: v for k, v in sampler.items() if v is not None})
    except ValueError:  # a key of a sampler option this version does not know: as it is
        return key
    return {**key, "hpo": {**hpo, "sampler": sampler_identity(resolved)}}


def trial_key_hash(study_hash: str, params: dict[str, Any]) -> str:
    """Hash of a study hash plus one trial's hyperparameters."""
    return stable_hash({"study_key_hash": study_hash, "params": params})


def data_fingerprint(config: PipelineConfig) -> str:
    """Hash of the dataset's definition and file contents (for lineage)."""
    return stable_hash(_data_identity(config))


def final_key(
    config: PipelineConfig, trial_key_hash: str, training: TrainingParams
) -> dict[str, Any]:
    """What defines a final-training variant: the trial it refits, the settings it trains
    with, and the data (a different winner or changed data needs ``force_new``)."""
    with_validation = config.final_training.data == "train_and_validation"
    return {
        "trial_key_hash": trial_key_hash,
        "training": training_identity(training),
        "data": _data_identity(config),
        # Keyed only where set: refits keyed before it existed keep their key.
        **({"refit_data": "train_and_validation"} if with_validation else {}),
    }


def benchmark_key(settings: BenchmarkSettings) -> dict[str, Any]:
    """What makes two benchmarks comparable: the timing settings and the test file's content
    (not which variants get benchmarked)."""
    key = settings.model_dump(mode="json", exclude={"benchmark_strategy"})
    test = settings.test_data
    key["test_data"] = None if test is None else file_digest(test) if test.is_file() else test.name
    return key


def benchmark_settings_hash(settings: BenchmarkSettings) -> str:
    """Hash of ``benchmark_key``: two benchmarks with equal hashes are comparable."""
    return stable_hash(benchmark_key(settings))


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two JSON-like values differ, with old and new values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where} (added: {canonical_json(new[key])})")
            elif key not in new:
                out.append(f"{where} (removed, was {canonical_json(old[key])})")
            else:
                out.extend(changed_keys(old[key], new[key], where))
        return out
    if canonical_json(old) == canonical_json(new):
        return []
    return [f"{prefix or '(root)'} ({canonical_json(old)} -> {canonical_json(new)})"]
