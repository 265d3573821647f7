"""Which variants a benchmark covers and whether their benchmark is up to date: the rules the
benchmark stage, selection and the report share (the actor fan-out is in ``stage``).

Scope (``benchmark.benchmarking.benchmark_strategy``): the best trial of every complete HPO
variant of every backbone (``best_per_variant``), or of each backbone's latest complete
variant (``latest_only``). A variant's ``benchmark.json`` is current while it measured the
variant's best trial (same ``trial_key_hash``) with the configured settings (same
``settings_hash``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray_pipeline.artifacts import read_json
from ray_pipeline.benchmark.results import BenchmarkResult
from ray_pipeline.hpo.results import HpoResult, TrialRecord, read_hpo
from ray_pipeline.identity import benchmark_settings_hash
from ray_pipeline.schema import BenchmarkSettings, PipelineConfig
from ray_pipeline.variants import Variant, backbone_variants


@dataclass(frozen=True)
class VariantBest:
    """A complete HPO variant and its best trial (a benchmark target and selection candidate),
    with the benchmark on disk and whether it is current."""

    variant: Variant
    hpo: HpoResult
    benchmark: BenchmarkResult | None
    """The variant's ``benchmark.json`` (current or not), if written."""
    stale: str | None
    """Why the variant needs a (new) benchmark; None when ``benchmark`` is current."""

    @property
    def best(self) -> TrialRecord:
        assert self.hpo.best is not None  # assess() is given variants with one
        return self.hpo.best

    @property
    def model(self) -> Path:
        """The best trial's best-fold model (``<variant>/best``)."""
        assert self.hpo.best_checkpoint is not None
        return Path(self.hpo.best_checkpoint)

    @property
    def hpo_file(self) -> Path:
        return self.variant.files.hpo_result

    @property
    def benchmark_file(self) -> Path:
        return self.variant.files.benchmark

    @property
    def current(self) -> BenchmarkResult | None:
        """The benchmark, when it is current."""
        return self.benchmark if self.stale is None else None


def assess(variant: Variant, hpo: HpoResult, settings: BenchmarkSettings) -> VariantBest:
    """``variant`` (whose ``hpo`` has a best trial) with its benchmark and why it is stale:
    current while it measured the best trial (same ``trial_key_hash``) with ``settings``."""
    path = variant.files.benchmark
    found = read_json(path, BenchmarkResult) if path.is_file() else None
    best = hpo.best
    assert best is not None
    stale: str | None = None
    if found is None:
        stale = "no benchmark yet"
    elif found.trial.trial_key_hash != best.trial_key_hash:
        stale = f"benchmark measured trial {found.trial.number}, the best is now {best.number}"
    elif found.settings_hash != benchmark_settings_hash(settings):
        stale = "benchmark settings changed"
    return VariantBest(variant, hpo, found, stale)


def variants_in_scope(config: PipelineConfig) -> tuple[list[VariantBest], list[str]]:
    """The variants whose best trial the strategy covers, and a note on each one left out."""
    settings = config.benchmark.benchmarking
    latest_only = settings.benchmark_strategy == "latest_only"
    chosen: list[VariantBest] = []
    notes: list[str] = []
    for backbone in config.model.backbones:
        usable: list[VariantBest] = []
        for variant in backbone_variants(config, "hpo", backbone.name):
            hpo = read_hpo(variant.files) if variant.usable else None
            if hpo is None:
                notes.append(f"{variant.name}: {variant.record.status}, not a candidate")
            elif hpo.best is None or hpo.best_checkpoint is None:
                notes.append(f"{variant.name}: no best trial with a kept checkpoint")
            else:
                usable.append(assess(variant, hpo, settings))
        chosen.extend(usable[-1:] if latest_only else usable)
    return chosen, notes
