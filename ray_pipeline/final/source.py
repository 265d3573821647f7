"""The trial the final stage refits (``SourceTrial``): the selection's winner, or
``final_training.source`` (an HPO variant, and a trial or its best). Every way it cannot be
found is a ``ConfigError`` naming the key, found before anything is written.
"""

from __future__ import annotations

from ray_pipeline.artifacts import read_json
from ray_pipeline.errors import ConfigError
from ray_pipeline.final.results import SourceTrial
from ray_pipeline.hpo.results import HpoResult, TrialRecord, read_hpo
from ray_pipeline.identity import backbone_identity, changed_keys
from ray_pipeline.naming import variant_number
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.schema import BackboneConfig, PipelineConfig
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import Variant, base_name_for, experiment_variants


def check_source_name(config: PipelineConfig) -> None:
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
    hpo = read_hpo(variant.files) if variant.usable else None
    if hpo is None:
        raise ConfigError.at(where, f"{variant.name} is {variant.record.status}")
    _checkbackbone_of(config, variant)
    source = SourceTrial(
        trial=_trial(hpo, number, where),
        chosen_by="selection" if selection is not None else "config",
        selection_cache_key=selection.cache_key if selection else None,
        selection_run_id=selection.mlflow_run_id if selection else None,
        benchmark_run_id=selection.winner.benchmark_run_id if selection else None,
    )
    return source


def backbone_of(config: PipelineConfig, name: str) -> BackboneConfig:
    for backbone in config.model.backbones:
        if backbone.name == name:
            return backbone
    raise ConfigError.at(
        "model.backbones", f"the source trial's backbone {name!r} is not configured"
    )


def _checkbackbone_of(config: PipelineConfig, hpo_variant: Variant) -> None:
    """The refit starts from the weights the trial started from: the configured backbone of
    that name must still be the one the HPO variant searched."""
    name = hpo_variant.record.backbone
    searched = hpo_variant.record.study_key["backbone"]
    if backbone_identity(backbone_of(config, name)) != searched:
        changes = "; ".join(changed_keys(searched, backbone_identity(backbone_of(config, name))))
        raise ConfigError.at(
            "model.backbones",
            f"backbone {name!r} changed since {hpo_variant.name} searched it ({changes}); "
            "restore it, or run HPO for the new backbone",
        )
