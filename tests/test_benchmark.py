"""The benchmark stage on a real 2-CPU Ray cluster, then selection over its results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.artifacts import read_json, write_json
from ray_pipeline.benchmark.results import BenchmarkResult
from ray_pipeline.benchmark.scope import variants_in_scope
from ray_pipeline.benchmark.stage import ActorPlan, plan_actors
from ray_pipeline.cli import main
from ray_pipeline.errors import ConfigError
from ray_pipeline.hpo.results import HpoResult, TrialRecord
from ray_pipeline.identity import benchmark_settings_hash
from ray_pipeline.loading import load_config
from ray_pipeline.paths import VariantFiles
from ray_pipeline.resources import Node
from ray_pipeline.schema import BenchmarkSettings, PipelineConfig
from ray_pipeline.selection import SelectionResult
from ray_pipeline.timing import LatencyStats
from ray_pipeline.variants import set_status
from tests.builders import add_hpo_variant
from tests.conftest import CONFIG_DIR, MakeExp
from tests.run_outputs import embedded_store, mlflow_runs


def _random_bert(name: str, hidden: int) -> dict[str, Any]:
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
    }
    return {"name": name, "random": {"model_type": "bert", "config": config}}


TWO_BACKBONES = {"backbones": [_random_bert("tiny-a", 32), _random_bert("tiny-b", 64)]}


def _benchmarks(outputs: Path) -> dict[str, BenchmarkResult]:
    found = sorted(outputs.glob("t/hpo/*/*/benchmark.json"))
    return {p.parent.name: read_json(p, BenchmarkResult) for p in found}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_benchmark_fan_out_completeness_and_cached_selection(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_file = CONFIG_DIR / "data" / "tiny_reviews" / "test.csv"
    path = smoke_experiment(
        model=TWO_BACKBONES,
        benchmark={
            "benchmarking": {
                "batch_sizes": [1, 4],
                "iterations": 4,
                "warmup_iterations": 1,
                "max_length": 16,
                "test_data": str(test_file),
            }
        },
    )
    config = load_config(path)
    outputs = tmp_path / "outputs"
    add_hpo_variant(config, "tiny-a", 0.60, trial=0)
    add_hpo_variant(config, "tiny-a", 0.80, trial=2)  # hpo_tiny-a_v2, the best overall
    add_hpo_variant(config, "tiny-b", 0.70, trial=1)

    assert main(["benchmark", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 trial(s) in scope, 3 to benchmark" in out
    first = _benchmarks(outputs)
    assert sorted(first) == ["hpo_tiny-a", "hpo_tiny-a_v2", "hpo_tiny-b"]
    assert len({b.actor_id for b in first.values()}) == 2  # two actors on 2 CPUs, in parallel
    for name, bench in first.items():
        hpo = read_json(
            VariantFiles(outputs / "t" / "hpo" / bench.trial.backbone / name).hpo_result, HpoResult
        )
        assert bench.trial == hpo.best  # the variant's best trial, as HPO recorded it
        assert [s.batch_size for s in bench.latency] == [1, 4]
        assert all(0 < s.p50_ms <= s.p95_ms for s in bench.latency)
        assert bench.test_metrics is not None and 0 <= bench.test_metrics["accuracy"] <= 1
    assert first["hpo_tiny-b"].parameters > first["hpo_tiny-a"].parameters
    assert [first[v].trial.number for v in sorted(first)] == [0, 2, 1]  # not the first trial

    assert main(["benchmark", "--config", str(path)]) == 0
    assert "3 trial(s) in scope, 0 to benchmark" in capsys.readouterr().out
    assert _benchmarks(outputs) == first  # nothing rewritten

    add_hpo_variant(config, "tiny-b", 0.50, trial=0)  # hpo_tiny-b_v2
    assert main(["benchmark", "--config", str(path)]) == 0
    assert "4 trial(s) in scope, 1 to benchmark" in capsys.readouterr().out
    second = _benchmarks(outputs)
    assert {k: v for k, v in second.items() if k != "hpo_tiny-b_v2"} == first

    # A variant that is not complete (here failed, with the best score of all) is not a
    # candidate, and selection says so instead of dropping it without a word.
    set_status(add_hpo_variant(config, "tiny-a", 0.95, trial=0), "failed")  # hpo_tiny-a_v3
    assert main(["select", "--config", str(path)]) == 0
    selection_file = outputs / "t" / "selection" / "selection.json"
    chosen = read_json(selection_file, SelectionResult)
    assert (chosen.winner.variant, chosen.winner.trial.number) == ("hpo_tiny-a_v2", 2)
    assert len(chosen.candidates) == 4 and "wins with macro_f1 0.8000" in chosen.reasoning
    assert chosen.skipped == ["hpo_tiny-a_v3: failed, not a candidate"]
    assert "select: skipped hpo_tiny-a_v3: failed, not a candidate" in capsys.readouterr().out

    assert main(["select", "--config", str(path)]) == 0
    assert "inputs unchanged, reusing" in capsys.readouterr().out
    assert read_json(selection_file, SelectionResult) == chosen

    (outputs / "t" / "hpo" / "tiny-b" / "hpo_tiny-b" / "benchmark.json").unlink()
    assert main(["benchmark", "--config", str(path)]) == 0
    assert "1 to benchmark" in capsys.readouterr().out
    assert main(["select", "--config", str(path)]) == 0
    assert "inputs changed since the cached selection" in capsys.readouterr().out
    again = read_json(selection_file, SelectionResult)
    assert again.cache_key != chosen.cache_key and again.winner.variant == "hpo_tiny-a_v2"

    runs = mlflow_runs(embedded_store(outputs, "t"), "t")
    benchmark_runs = [r for r in runs if r.data.tags.get("ray_pipeline.kind") == "benchmark"]
    assert len(benchmark_runs) == 4  # the re-benchmarked variant's trial kept its run
    tags = next(r for r in benchmark_runs if r.info.run_name == "benchmark_hpo_tiny-a_v2").data.tags
    assert tags["ray_pipeline.trial_key_hash"] == first["hpo_tiny-a_v2"].trial.trial_key_hash
    assert tags["ray_pipeline.trial"] == "2"
    selection_runs = [r for r in runs if r.data.tags.get("ray_pipeline.kind") == "selection"]
    assert {r.info.run_id for r in selection_runs} == {chosen.mlflow_run_id, again.mlflow_run_id}

    # selection force_new selects again although its inputs are unchanged.
    assert main(["select", "--config", str(path), "selection.run.mode=force_new"]) == 0
    out = capsys.readouterr().out
    assert "reusing" not in out and f"select: wrote {selection_file}" in out
    assert read_json(selection_file, SelectionResult).cache_key == again.cache_key

    # An inherited resume_if_incomplete acts as reuse_if_exists: nothing to measure.
    assert main(["benchmark", "--config", str(path), "hpo.run.mode=resume_if_incomplete"]) == 0
    assert "4 trial(s) in scope, 0 to benchmark, 4 up to date (reuse_if_exists)" in (
        capsys.readouterr().out
    )
    # latest_only: each backbone's latest variant; changed settings make its benchmark stale.
    latest = ["benchmark.benchmarking.benchmark_strategy=latest_only"]
    before = _benchmarks(outputs)
    assert main(["benchmark", "--config", str(path), *latest]) == 0
    assert "2 trial(s) in scope, 0 to benchmark" in capsys.readouterr().out
    latest += ["benchmark.benchmarking.iterations=3"]
    assert main(["benchmark", "--config", str(path), *latest]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s) in scope, 2 to benchmark" in out
    assert out.count(": benchmark settings changed") == 2
    remeasured = _benchmarks(outputs)
    changed = {k for k in remeasured if remeasured[k] != before[k]}
    assert changed == {"hpo_tiny-a_v2", "hpo_tiny-b_v2"}  # the latest variant of each backbone
    # force_new measures again what is up to date.
    assert main(["benchmark", "--config", str(path), *latest, "benchmark.run.mode=force_new"]) == 0
    out = capsys.readouterr().out
    assert "2 to benchmark, 0 up to date (force_new)" in out
    assert out.count(": run.mode force_new") == 2
    forced_benchmarks = _benchmarks(outputs)
    changed = {k for k in forced_benchmarks if forced_benchmarks[k] != remeasured[k]}
    assert changed == {"hpo_tiny-a_v2", "hpo_tiny-b_v2"}  # measured again (new timings)
    assert forced_benchmarks["hpo_tiny-a"] == remeasured["hpo_tiny-a"]


# `select` needs no Ray: this one stays in the quick run.
def test_select_alone_without_benchmarks_exits_2_and_writes_nothing(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment()
    add_hpo_variant(load_config(path), "tiny-bert", 0.5)
    assert main(["select", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "hpo_tiny-bert (no benchmark yet)" in err and "ray-pipeline benchmark" in err
    assert not (tmp_path / "outputs" / "t" / "selection").exists()
    assert not (tmp_path / "outputs" / "t" / "config.resolved.yaml").exists()


def test_actors_take_a_gpu_each_where_torch_can_use_the_gpus() -> None:
    default, cuda = BenchmarkSettings(), BenchmarkSettings(device="cuda")
    assert plan_actors(default, [Node(cpus=4, gpus=2)]) == ActorPlan(slots=2, cpus=0.0, gpus=1.0)
    # GPUs declared to Ray that torch cannot use (a CPU build of torch, CUDA hidden): CPUs.
    unusable = [Node(cpus=4, gpus=2, cuda=False)]
    assert plan_actors(default, unusable) == ActorPlan(slots=4, cpus=1.0, gpus=0.0)
    with pytest.raises(ConfigError, match=r"torch cannot use the Ray cluster's 2 GPU\(s\)"):
        plan_actors(cuda, unusable)
    with pytest.raises(ConfigError, match="cuda was asked for, but the Ray cluster has no GPUs"):
        plan_actors(cuda, [Node(cpus=4, gpus=0)])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")  # `benchmark` checks run on Ray: keep it managed
def test_benchmark_device_cuda_without_gpus_exits_2(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment(benchmark={"benchmarking": {"device": "cuda"}})
    assert main(["benchmark", "--config", str(path)]) == 2
    assert "benchmark.benchmarking.device" in capsys.readouterr().err


def _measured(config: PipelineConfig, trial: TrialRecord, checkpoint: Path) -> BenchmarkResult:
    """A benchmark of ``trial`` as an actor would have written it, at the config's settings."""
    timing = LatencyStats(
        batch_size=1,
        iterations=4,
        mean_ms=2.0,
        p50_ms=2.0,
        p95_ms=2.5,
        mean_ms_per_example=2.0,
        p50_ms_per_example=2.0,
        p95_ms_per_example=2.5,
        throughput=500.0,
    )
    return BenchmarkResult(
        trial=trial,
        checkpoint=str(checkpoint),
        settings_hash=benchmark_settings_hash(config.benchmark.benchmarking),
        device="cpu",
        precision="fp32",
        threads=1,
        max_length=16,
        latency=[timing],
        parameters=1000,
        size_mb=0.1,
        host="h",
        pid=1,
        actor_id="a",
        started_at="2026-12-03T00:00:00+00:00",
        seconds=1.0,
    )


def test_a_benchmark_of_a_trial_that_is_no_longer_the_best_is_stale(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment(benchmark={"benchmarking": {"batch_sizes": [1]}})
    config = load_config(path)
    variant = add_hpo_variant(config, "tiny-bert", 0.8, trial=0)
    hpo = read_json(variant.files.hpo_result, HpoResult)
    assert hpo.best is not None and hpo.best.number == 0
    write_json(variant.files.benchmark, _measured(config, hpo.best, variant.files.best))
    (target,), _ = variants_in_scope(config)
    assert target.current is not None and target.stale is None  # it measured the best

    # A top-up made trial 1 the best: the benchmark of trial 0 is no longer the variant's.
    best = next(t for t in hpo.trials if t.number == 1)
    best = best.model_copy(update={"objective_mean": 0.9, "checkpoint": str(variant.files.best)})
    trials = [best if t.number == 1 else t for t in hpo.trials]
    write_json(variant.files.hpo_result, hpo.model_copy(update={"trials": trials, "best": best}))
    (target,), _ = variants_in_scope(config)
    assert target.current is None
    assert target.stale == "benchmark measured trial 0, the best is now 1"
    # Selection refuses to pair the new best with the old trial's latency.
    assert main(["select", "--config", str(path)]) == 2
    assert (
        "hpo_tiny-bert (benchmark measured trial 0, the best is now 1)" in capsys.readouterr().err
    )
