"""Which variants a benchmark covers and whether their benchmark is up to date: the rules the
benchmark stage, selection and the report share (the actor fan-out is in ``stage``).

Scope (``benchmark.benchmarking.benchmark_strategy``): the best trial of every complete HPO
variant of every backbone (``best_per_variant``), or of each backbone's latest complete
variant (``latest_only``); with latency as a second HPO objective, every trial on those
variants' Pareto fronts. A benchmark is current while it measured that trial (same
``trial_key_hash``) with the configured settings (same ``settings_hash``).
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
class BenchmarkTarget:
    """A trial to benchmark (a selection candidate): the best trial of a complete HPO variant,
    or with latency as a second objective any trial on its Pareto front, with its kept model,
    the benchmark on disk and whether it is current."""

    variant: Variant
    hpo: HpoResult
    trial: TrialRecord
    model: Path
    """The trial's best-fold model: ``<variant>/best``, or ``<variant>/pareto/trial_<n>``."""
    benchmark_file: Path
    """``<variant>/benchmark.json`` for the best trial, else ``benchmarks/trial_<n>.json``."""
    benchmark: BenchmarkResult | None
    """The trial's benchmark file (current or not), if written."""
    stale: str | None
    """Why the trial needs a (new) benchmark; None when ``benchmark`` is current."""

    @property
    def hpo_file(self) -> Path:
        return self.variant.files.hpo_result

    @property
    def current(self) -> BenchmarkResult | None:
        """The benchmark, when it is current."""
        return self.benchmark if self.stale is None else None


def assess(
    variant: Variant,
    hpo: HpoResult,
    settings: BenchmarkSettings,
    trial: TrialRecord | None = None,
) -> BenchmarkTarget:
    """``trial`` of ``variant`` (default: its best) with its benchmark and why it is stale:
    current while it measured that trial (same ``trial_key_hash``) with ``settings``."""
    best = hpo.best
    assert best is not None
    trial = trial or best
    files = variant.files
    if trial.number == best.number:
        path, model = files.benchmark, Path(hpo.best_checkpoint or files.best)
    else:
        path, model = files.trial_benchmark(trial.number), files.pareto_model(trial.number)
    found = read_json(path, BenchmarkResult) if path.is_file() else None
    stale: str | None = None
    if found is None:
        stale = "no benchmark yet"
    elif found.trial.trial_key_hash != trial.trial_key_hash:
        stale = f"benchmark measured trial {found.trial.number}, the best is now {trial.number}"
    elif found.settings_hash != benchmark_settings_hash(settings):
        stale = "benchmark settings changed"
    return BenchmarkTarget(variant, hpo, trial, model, path, found, stale)


def variants_in_scope(config: PipelineConfig) -> tuple[list[BenchmarkTarget], list[str]]:
    """The trials the strategy covers (each variant's best and, with latency as a second
    objective, the rest of its Pareto front), and a note on each variant left out."""
    settings = config.benchmark.benchmarking
    latest_only = settings.benchmark_strategy == "latest_only"
    chosen: list[BenchmarkTarget] = []
    notes: list[str] = []
    for backbone in config.model.backbones:
        usable: list[list[BenchmarkTarget]] = []
        for variant in backbone_variants(config, "hpo", backbone.name):
            hpo = read_hpo(variant.files) if variant.usable else None
            if hpo is None:
                notes.append(f"{variant.name}: {variant.record.status}, not a candidate")
            elif hpo.best is None or hpo.best_checkpoint is None:
                notes.append(f"{variant.name}: no best trial with a kept checkpoint")
            else:
                by_number = {t.number: t for t in hpo.trials}
                others = [
                    by_number[n]
                    for n in hpo.pareto
                    if n != hpo.best.number and variant.files.pareto_model(n).is_dir()
                ]
                usable.append(
                    [
                        assess(variant, hpo, settings),
                        *(assess(variant, hpo, settings, t) for t in others),
                    ]
                )
        for targets in usable[-1:] if latest_only else usable:
            chosen.extend(targets)
    return chosen, notes
