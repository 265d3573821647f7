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
from ray_pipeline.identity import benchmark_key, stable_hash
from ray_pipeline.schema import BenchmarkSettings, PipelineConfig
from ray_pipeline.variants import Variant, backbone_variants


@dataclass(frozen=True)
class VariantBest:
    """A complete HPO variant and its best trial: a benchmark target and selection candidate."""

    variant: Variant
    hpo: HpoResult

    @property
    def best(self) -> TrialRecord:
        assert self.hpo.best is not None  # variants_in_scope keeps only variants with one
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


def variants_in_scope(config: PipelineConfig) -> tuple[list[VariantBest], list[str]]:
    """The variants whose best trial the strategy covers, and a note on each one left out."""
    latest_only = config.benchmark.benchmarking.benchmark_strategy == "latest_only"
    chosen: list[VariantBest] = []
    notes: list[str] = []
    for backbone in config.model.backbones:
        usable: list[VariantBest] = []
        for variant in backbone_variants(config, "hpo", backbone.name):
            hpo = read_hpo(variant.files) if variant.complete else None
            if hpo is None:
                notes.append(f"{variant.name}: {variant.record.status}, not a candidate")
            elif hpo.best is None or hpo.best_checkpoint is None:
                notes.append(f"{variant.name}: no best trial with a kept checkpoint")
            else:
                usable.append(VariantBest(variant, hpo))
        chosen.extend(usable[-1:] if latest_only else usable)
    return chosen, notes


def settings_hash(settings: BenchmarkSettings) -> str:
    """What makes two benchmarks comparable (``identity.benchmark_key``), hashed."""
    return stable_hash(benchmark_key(settings))


def read_benchmark(target: VariantBest) -> BenchmarkResult | None:
    """The variant's ``benchmark.json``, if written (current or not)."""
    path = target.benchmark_file
    return read_json(path, BenchmarkResult) if path.is_file() else None


def stale_reason(target: VariantBest, current: BenchmarkResult | None, settings: str) -> str | None:
    """Why ``target`` needs a (new) benchmark, or None when ``current`` still holds."""
    best = target.best
    if current is None:
        return "no benchmark yet"
    if current.trial.trial_key_hash != best.trial_key_hash:
        return (
            f"benchmark measured trial {current.trial.number}, the best is now trial {best.number}"
        )
    if current.settings_hash != settings:
        return "benchmark settings changed"
    return None


def current_benchmark(target: VariantBest, settings: BenchmarkSettings) -> BenchmarkResult | None:
    """The variant's benchmark when it is current for its best trial and ``settings``."""
    found = read_benchmark(target)
    return found if stale_reason(target, found, settings_hash(settings)) is None else None
