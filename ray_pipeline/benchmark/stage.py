"""The benchmark stage: which variants need a benchmark, and a Ray actor pool that measures them.

Scope (``benchmark_all_variants`` + ``benchmark_strategy``): the best trial of every complete
HPO variant of every backbone (``best_per_variant``), or of each backbone's latest complete
variant (``latest_only``). A variant in scope is benchmarked when it has no ``benchmark.json``,
when its benchmark measured another trial (another ``trial_key_hash``) or used other settings,
or when run.mode is ``force_new``. Each result is written atomically as soon as it arrives.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_pipeline import monitoring, tracking
from ray_pipeline.artifacts import read_json, write_json
from ray_pipeline.benchmark.results import BenchmarkJob, BenchmarkResult
from ray_pipeline.data.encode import Row, encode
from ray_pipeline.data.examples import Examples
from ray_pipeline.data.splits import load_splits, read_labelled_file, take
from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.hpo.stage import HPO_FILE
from ray_pipeline.identity import benchmark_key, stable_hash
from ray_pipeline.resources import Node, cluster_nodes
from ray_pipeline.run_mode import benchmark_run_mode
from ray_pipeline.schema import BenchmarkSettings, PipelineConfig
from ray_pipeline.variants import Variant, backbone_variants


@dataclass(frozen=True)
class VariantBest:
    """A complete HPO variant and its best trial: a benchmark target and selection candidate."""

    variant: Variant
    hpo: HpoResult
    benchmark_file: Path

    @property
    def hpo_file(self) -> Path:
        return self.variant.path / HPO_FILE


@dataclass(frozen=True)
class ActorPlan:
    """How many benchmark actors fit at once, and what each reserves."""

    slots: int
    cpus: float
    gpus: float


@dataclass(frozen=True)
class BenchmarkInputs:
    """What ``check_benchmark`` prepared: actor resources and the examples to time / score."""

    actors: ActorPlan
    timing: Examples
    test: Examples | None


def variants_in_scope(config: PipelineConfig) -> tuple[list[VariantBest], list[str]]:
    """The variants whose best trial the strategy covers, and a note on each one left out."""
    settings = config.benchmark.benchmarking
    latest_only = (
        not settings.benchmark_all_variants or settings.benchmark_strategy == "latest_only"
    )
    chosen: list[VariantBest] = []
    notes: list[str] = []
    for backbone in config.model.backbones:
        usable: list[VariantBest] = []
        for variant in backbone_variants(config, "hpo", backbone.name):
            hpo_file = variant.path / HPO_FILE
            if not variant.complete or not hpo_file.is_file():
                notes.append(f"{variant.name}: {variant.record.status}, not a candidate")
                continue
            hpo = read_json(hpo_file, HpoResult)
            if hpo.best is None or hpo.best_checkpoint is None:
                notes.append(f"{variant.name}: no best trial with a kept checkpoint")
                continue
            usable.append(
                VariantBest(variant, hpo, variant.path / config.benchmark.output.filename)
            )
        chosen.extend(usable[-1:] if latest_only else usable)
    return chosen, notes


def settings_hash(settings: BenchmarkSettings) -> str:
    return stable_hash(benchmark_key(settings))


def stale_reason(target: VariantBest, current: BenchmarkResult | None, settings: str) -> str | None:
    """Why ``target`` needs a (new) benchmark, or None when ``current`` still holds."""
    best = target.hpo.best
    assert best is not None
    if current is None:
        return "no benchmark yet"
    if current.trial_key_hash != best.trial_key_hash:
        return f"benchmark measured trial {current.trial}, the best is now trial {best.number}"
    if current.settings_hash != settings:
        return "benchmark settings changed"
    return None


def read_benchmark(target: VariantBest) -> BenchmarkResult | None:
    path = target.benchmark_file
    return read_json(path, BenchmarkResult) if path.is_file() else None


def plan_actors(settings: BenchmarkSettings, nodes: list[Node]) -> ActorPlan:
    """One actor per device slot: a GPU each on CUDA, ``cpus_per_actor`` CPUs each otherwise."""
    gpus = sum(math.floor(n.gpus) for n in nodes)
    if settings.device == "cuda" or (settings.device is None and gpus > 0):
        if gpus == 0:
            raise ConfigError.at(
                "benchmark.benchmarking.device",
                "cuda was asked for, but the Ray cluster has no GPUs; set device: cpu or null",
            )
        return ActorPlan(slots=gpus, cpus=0.0, gpus=1.0)
    need = settings.cpus_per_actor
    slots = sum(math.floor(n.cpus / need + 1e-9) for n in nodes)
    if slots == 0:
        largest = max((n.cpus for n in nodes), default=0.0)
        raise ConfigError.at(
            "benchmark.benchmarking.cpus_per_actor",
            f"{need:g} CPUs per actor, but the largest node has {largest:g}; lower it",
        )
    return ActorPlan(slots=slots, cpus=need, gpus=0.0)


def check_benchmark(config: PipelineConfig) -> BenchmarkInputs:
    """Input problems (test file, labels, resources, tracking), before anything is written."""
    settings = config.benchmark.benchmarking
    splits = load_splits(config.data)
    test = None
    if settings.test_data is not None:
        test = read_labelled_file(
            config.data, settings.test_data, "benchmark.benchmarking.test_data", splits.labels
        )
    tracking.check_tracking(config)
    timing = take(splits.train, max(settings.batch_sizes), config.data.seed)
    return BenchmarkInputs(plan_actors(settings, cluster_nodes()), timing, test)


def encode_for_checkpoint(
    checkpoint: Path, examples: Examples, max_length: int
) -> tuple[list[Row], list[str]]:
    """Rows encoded with the checkpoint's own tokenizer and label ids; its labels by id."""
    from transformers import AutoConfig, AutoTokenizer

    model_config = AutoConfig.from_pretrained(str(checkpoint))
    labels = [model_config.id2label[i] for i in range(len(model_config.id2label))]
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    label2id = {label: i for i, label in enumerate(labels)}
    return encode(tokenizer, examples, label2id, max_length), labels


def _job(
    config: PipelineConfig, target: VariantBest, inputs: BenchmarkInputs, threads: int
) -> BenchmarkJob:
    settings = config.benchmark.benchmarking
    best, checkpoint = target.hpo.best, Path(target.hpo.best_checkpoint or "")
    assert best is not None
    timing_rows, labels = encode_for_checkpoint(checkpoint, inputs.timing, settings.max_length)
    test_rows = None
    if inputs.test is not None:
        test_rows = encode_for_checkpoint(checkpoint, inputs.test, config.hpo.training.max_length)[
            0
        ]
    return BenchmarkJob(
        variant=target.variant.name,
        backbone=target.hpo.backbone,
        trial=best.number,
        trial_key_hash=best.trial_key_hash,
        study_key_hash=target.hpo.study_key_hash,
        checkpoint=checkpoint,
        task=config.data.task,
        settings=settings,
        settings_hash=settings_hash(settings),
        threads=threads,
        timing_rows=timing_rows,
        test_rows=test_rows,
        labels=labels,
    )


def run_benchmark(config: PipelineConfig, inputs: BenchmarkInputs) -> list[BenchmarkResult]:
    """Benchmark every variant in scope that needs it; return the benchmark of every variant
    in scope (measured now or kept)."""
    mode = benchmark_run_mode(config.benchmark, config.hpo)
    targets, notes = variants_in_scope(config)
    current = {t.variant.name: read_benchmark(t) for t in targets}
    wanted = settings_hash(config.benchmark.benchmarking)
    todo: list[tuple[VariantBest, str]] = []
    for target in targets:
        reason = stale_reason(target, current[target.variant.name], wanted)
        if mode == "force_new":
            reason = "run.mode force_new"
        if reason is not None:
            todo.append((target, reason))
    for note in notes:
        print(f"benchmark: skipping {note}")
    print(
        f"benchmark: {len(targets)} variant(s) in scope, {len(todo)} to benchmark, "
        f"{len(targets) - len(todo)} up to date ({mode})"
    )
    for target, reason in todo:
        print(f"  {target.variant.name} trial {_best_number(target)}: {reason}")
    if todo:
        measured = _fan_out(config, inputs, todo)
        current.update({r.variant: r for r in measured})
    return [r for t in targets if (r := current[t.variant.name]) is not None]


def _best_number(target: VariantBest) -> int:
    assert target.hpo.best is not None
    return target.hpo.best.number


def _fan_out(
    config: PipelineConfig, inputs: BenchmarkInputs, todo: list[tuple[VariantBest, str]]
) -> list[BenchmarkResult]:
    """Measure ``todo`` on a pool of actors, writing each benchmark.json as it arrives."""
    import ray
    from ray.util import ActorPool

    from ray_pipeline.benchmark.actor import BenchmarkActor

    plan = inputs.actors
    threads = max(1, int(plan.cpus))
    count = min(plan.slots, len(todo))
    print(f"benchmark: {count} actor(s) ({plan.cpus:g} CPU, {plan.gpus:g} GPU each)")
    by_variant = {t.variant.name: t for t, _ in todo}
    # Readable, unique names in the Ray dashboard (two pipelines may benchmark at once).
    prefix = f"benchmark-{config.experiment.name}-{os.getpid()}"
    retries = config.resources.max_failures  # a lost actor restarts; its job runs again
    actors = [
        BenchmarkActor.options(  # type: ignore[attr-defined]
            name=f"{prefix}-{i}",
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            max_restarts=retries,
            max_task_retries=retries,
        ).remote()
        for i in range(count)
    ]
    results, failures = [], []
    try:
        pool = ActorPool(actors)
        for target, _ in todo:
            job = _job(config, target, inputs, threads)
            pool.submit(lambda actor, j: actor.run.remote(j), job.model_dump(mode="json"))
        while pool.has_next():  # type: ignore[no-untyped-call]
            try:
                result = BenchmarkResult.model_validate(pool.get_next_unordered())
            except ray.exceptions.RayError as exc:
                failures.append(str(exc).splitlines()[0])
                continue
            result = _record(config, by_variant[result.variant], result)
            for stats in result.latency:  # from the driver: it outlives the actors
                monitoring.benchmark_p95(result.variant, stats.batch_size, stats.p95_ms)
            results.append(result)
            _print_result(result)
    finally:
        for actor in actors:
            ray.kill(actor)
    if failures:
        raise PipelineError(
            f"benchmark: {len(failures)} of {len(todo)} benchmark(s) failed (the others were "
            f"written): {'; '.join(failures[:3])}"
        )
    return results


def _record(
    config: PipelineConfig, target: VariantBest, result: BenchmarkResult
) -> BenchmarkResult:
    """Log ``result`` to MLflow, then write it (with its run id) into the variant."""
    run = tracking.open_benchmark_run(
        config,
        result.variant,
        result.backbone,
        result.trial,
        result.trial_key_hash,
        result.study_key_hash,
    )
    if run is not None:
        result = result.model_copy(update={"mlflow_run_id": run.run_id})
    write_json(target.benchmark_file, result)
    if run is not None:
        tracking.log(run, metrics=_metrics(result), params={"device": result.device})
        tracking.log_artifact(run, str(target.benchmark_file))
        tracking.end(run)
    return result


def _metrics(result: BenchmarkResult) -> dict[str, Any]:
    numbers: dict[str, Any] = {"parameters": result.parameters, "size_mb": result.size_mb}
    for s in result.latency:
        for name in ("mean_ms", "p50_ms", "p95_ms", "p95_ms_per_example", "throughput"):
            numbers[f"{name}_b{s.batch_size}"] = getattr(s, name)
    for name, value in (result.test_metrics or {}).items():
        numbers[f"test_{name}"] = value
    return numbers


def _print_result(result: BenchmarkResult) -> None:
    timings = ", ".join(
        f"batch {s.batch_size}: p50 {s.p50_ms:.1f} ms p95 {s.p95_ms:.1f} ms "
        f"({s.throughput:.0f} ex/s)"
        for s in result.latency
    )
    test = ""
    if result.test_metrics:
        test = " | test " + ", ".join(f"{k} {v:.3f}" for k, v in result.test_metrics.items())
    print(
        f"benchmark {result.variant} trial {result.trial} on {result.device}: {timings}; "
        f"{result.parameters / 1e6:.1f}M params, {result.size_mb:.1f} MB{test}"
    )
