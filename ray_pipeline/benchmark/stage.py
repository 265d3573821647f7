"""The benchmark stage: a Ray actor pool that measures the variants in scope (``scope``).

A variant in scope is benchmarked when its ``benchmark.json`` is missing or not current (it
measured another trial or used other settings), or when run.mode is ``force_new``. Each
result is written atomically as soon as it arrives.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_pipeline import monitoring, run_tree, tracking
from ray_pipeline.artifacts import write_json
from ray_pipeline.benchmark.results import BenchmarkJob, BenchmarkResult
from ray_pipeline.benchmark.scope import BenchmarkTarget, variants_in_scope
from ray_pipeline.console import STATUS_EVERY_S, duration
from ray_pipeline.data.encode import Row, encode
from ray_pipeline.data.examples import Examples
from ray_pipeline.data.splits import load_splits, read_labelled_file, take
from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.hpo.results import TrialRecord
from ray_pipeline.identity import benchmark_settings_hash
from ray_pipeline.lease import holding
from ray_pipeline.resources import Node, cluster_nodes, threads_for
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import BenchmarkSettings, PipelineConfig
from ray_pipeline.storage import WorkerStorage, copy


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


def plan_actors(settings: BenchmarkSettings, nodes: list[Node]) -> ActorPlan:
    """One actor per device slot: a GPU each on CUDA, ``cpus_per_actor`` CPUs each otherwise.
    CUDA counts the GPUs torch can use (``Node.cuda``): ``device`` null is CUDA where it can."""
    gpus = sum(math.floor(n.cuda_gpus) for n in nodes)
    if settings.device == "cuda" or (settings.device is None and gpus > 0):
        if gpus == 0:
            declared = sum(math.floor(n.gpus) for n in nodes)
            raise ConfigError.at(
                "benchmark.benchmarking.device",
                f"cuda was asked for, but torch cannot use the Ray cluster's {declared} GPU(s) "
                "(torch is built without CUDA, or sees no CUDA device on this node); set "
                "device: cpu or null"
                if declared
                else "cuda was asked for, but the Ray cluster has no GPUs; set device: cpu or null",
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
    """Input problems (test file, labels, resources), before anything is written (tracking:
    ``pipeline.check_inputs``)."""
    settings = config.benchmark.benchmarking
    splits = load_splits(config.data)
    test = None
    if settings.test_data is not None:
        test = read_labelled_file(
            config.data, settings.test_data, "benchmark.benchmarking.test_data", splits.labels
        )
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
    config: PipelineConfig, target: BenchmarkTarget, inputs: BenchmarkInputs, threads: int
) -> BenchmarkJob:
    settings = config.benchmark.benchmarking
    checkpoint = target.model
    trained = target.trial.training
    max_length = settings.max_length or trained.max_length
    timing_rows, labels = encode_for_checkpoint(checkpoint, inputs.timing, max_length)
    test_rows = None
    if inputs.test is not None:
        test_rows = encode_for_checkpoint(checkpoint, inputs.test, trained.max_length)[0]
    return BenchmarkJob(
        trial=target.trial,
        checkpoint=checkpoint,
        source=_shared(config, checkpoint),
        task=config.data.task,
        settings=settings,
        settings_hash=benchmark_settings_hash(settings),
        threads=threads,
        timing_rows=timing_rows,
        test_rows=test_rows,
        labels=labels,
        precision=settings.precision or trained.precision,
        max_length=max_length,
    )


def _shared(config: PipelineConfig, checkpoint: Path) -> str:
    """Where actors on any node load ``checkpoint``: itself, or a copy under ``storage.uri``
    uploaded now (whatever an earlier, perhaps interrupted, upload left there is replaced)."""
    place = WorkerStorage.of(config).place(checkpoint)
    if place != str(checkpoint):
        copy(str(checkpoint), place)
    return place


def _key(trial: TrialRecord) -> tuple[str, int]:
    return trial.variant, trial.number


def run_benchmark(config: PipelineConfig, inputs: BenchmarkInputs) -> list[BenchmarkResult]:
    """Benchmark every variant in scope that needs it, holding the leases of the variants it
    writes to (``lease.holding``: exit 2 naming the holder when another run works on one);
    return the benchmark of every variant in scope (measured now or kept)."""
    mode = get_run_mode(config.benchmark)  # the schema resolved a null to HPO's
    targets, notes = variants_in_scope(config)
    todo = _todo(targets, mode)
    written = {t.variant.path: t.variant for t, _ in todo}
    with holding([(v.files.lease, v.name) for _, v in sorted(written.items())]):
        if written:  # planned again under the leases: a run that held one may have changed it
            targets, notes = variants_in_scope(config)
            todo = _todo(targets, mode)
            if not {t.variant.path for t, _ in todo} <= written.keys():
                raise PipelineError("benchmark: other runs changed the HPO variants; try again")
        current = {_key(t.trial): t.current for t in targets}
        for note in notes:
            print(f"benchmark: skipping {note}")
        print(
            f"benchmark: {len(targets)} trial(s) in scope, {len(todo)} to benchmark, "
            f"{len(targets) - len(todo)} up to date ({mode})"
        )
        for target, reason in todo:
            print(f"  {target.trial.label}: {reason}")
        if todo:
            measured = _fan_out(config, inputs, todo)
            current.update({_key(r.trial): r for r in measured})
    return [r for t in targets if (r := current[_key(t.trial)]) is not None]


def _todo(targets: list[BenchmarkTarget], mode: str) -> list[tuple[BenchmarkTarget, str]]:
    """The targets to measure, each with why."""
    todo: list[tuple[BenchmarkTarget, str]] = []
    for target in targets:
        reason = "run.mode force_new" if mode == "force_new" else target.stale
        if reason is not None:
            todo.append((target, reason))
    return todo


def _fan_out(
    config: PipelineConfig, inputs: BenchmarkInputs, todo: list[tuple[BenchmarkTarget, str]]
) -> list[BenchmarkResult]:
    """Measure ``todo`` on a pool of actors, writing each benchmark.json as it arrives."""
    import ray
    from ray.util import ActorPool

    from ray_pipeline.benchmark.actor import BenchmarkActor

    plan = inputs.actors
    threads = threads_for(plan.cpus)
    count = min(plan.slots, len(todo))
    print(f"benchmark: {count} actor(s) ({plan.cpus:g} CPU, {plan.gpus:g} GPU each)")
    by_trial = {_key(t.trial): t for t, _ in todo}
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
    results: list[BenchmarkResult] = []
    failures: list[str] = []
    try:
        pool = ActorPool(actors)
        for target, _ in todo:
            job = _job(config, target, inputs, threads)
            pool.submit(lambda actor, j: actor.run.remote(j), job.model_dump(mode="json"))
        started, took = time.monotonic(), list[float]()
        while pool.has_next():  # type: ignore[no-untyped-call]
            try:
                got = pool.get_next_unordered(timeout=STATUS_EVERY_S)
            except TimeoutError:
                print(_status(len(todo), len(results) + len(failures), count, started, took))
                continue
            except ray.exceptions.RayError as exc:
                failures.append(str(exc).splitlines()[0])
                continue
            took.append(time.monotonic() - started)
            result = BenchmarkResult.model_validate(got)
            result = _record(config, by_trial[_key(result.trial)], result)
            for stats in result.latency:  # from the driver: it outlives the actors
                monitoring.benchmark_p95(result.trial.variant, stats.batch_size, stats.p95_ms)
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


def _status(total: int, done: int, actors: int, started: float, took: list[float]) -> str:
    """``benchmark: 1/3 done, 2 measuring, 1 min so far, ETA 2 min``. ``took``: seconds from
    the start to each finished benchmark; the ETA is the benchmarks left at that pace."""
    elapsed = time.monotonic() - started
    running = min(actors, total - done)
    line = f"benchmark: {done}/{total} done, {running} measuring, {duration(elapsed)} so far"
    if not took:
        return f"{line}, ETA after the first benchmark"
    pace = max(took) / len(took)  # seconds per benchmark, the actors together
    return f"{line}, ETA {duration(max((total - done) * pace - (elapsed - max(took)), 0.0))}"


def _record(
    config: PipelineConfig, target: BenchmarkTarget, result: BenchmarkResult
) -> BenchmarkResult:
    """Write ``result`` (with its MLflow run's id) into the variant and log it to that run."""
    opened = run_tree.open_benchmark_run(
        config, result.trial.origin(), result.device, result.precision
    )
    with tracking.tracked(opened) as run:
        if run is not None:
            result = result.model_copy(update={"mlflow_run_id": run.run_id})
        target.benchmark_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(target.benchmark_file, result)
        if run is not None:
            tracking.log(
                run,
                metrics=_metrics(result),
                params={"device": result.device, "precision": result.precision},
            )
            tracking.log_artifact(run, str(target.benchmark_file))
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
        f"benchmark {result.trial.label} on {result.device} ({result.precision}): {timings}; "
        f"{result.parameters / 1e6:.1f}M params, {result.size_mb:.1f} MB{test}"
    )
