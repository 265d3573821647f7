"""Final training on the whole machine: the demo's refit with its default resources against one
worker with one thread, in one command. ``--before`` adds the refit as it ran before it had
resources of its own (a Ray Train worker group of one worker with one thread: ~20 s to start),
``--ddp`` one DDP worker per core. ``--gpu`` (on a machine with a GPU) compares the default, one
worker per GPU, against the refit on every CPU core of the machine instead.

The source is the winner of an existing demo run (``make demo`` first): its HPO variant's
records are copied into a temporary outputs root, and each way refits that trial there from the
backbone's weights (MLflow off, nothing written to the demo's outputs). Every way runs on the
same local Ray cluster, one after the other. Prints each way's wall time (``ray-pipeline train``
as a user runs it: planning, the refit, evaluation and export), its test metrics and the
ratio to the baseline; ``--json FILE`` writes them too.

    python benchmarks/final_scale.py [--outputs DIR] [--before] [--ddp] [--gpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "experiment" / "demo.yaml"
ONE_THREAD = ["final_training.resources.workers=1", "final_training.resources.cpus_per_worker=1"]
WAYS: dict[str, list[str]] = {
    "baseline (1 worker, 1 thread)": ONE_THREAD,
    "before (Ray Train group, 1 worker, 1 thread)": [*ONE_THREAD, "resources.trial_backend=train"],
    "default": [],
    "ddp (1 worker per core, 1 thread each)": [
        "final_training.resources.cpus_per_worker=1",
    ],
}
GPU_WAYS: dict[str, list[str]] = {
    "cpu (1 worker, every core)": ["final_training.resources.gpus_per_worker=0"],
    "default on a GPU (1 worker per GPU)": [],
}


def _source(demo_outputs: Path, into: Path) -> list[str]:
    """Copy the winning HPO variant's records into ``into``; the overrides that name it."""
    from ray_pipeline.artifacts import read_json
    from ray_pipeline.selection import SelectionResult

    selection_file = demo_outputs / "selection" / "selection.json"
    if not selection_file.is_file():
        sys.exit(f"{selection_file} is missing: run `make demo` first (or pass --outputs)")
    winner = read_json(selection_file, SelectionResult).winner
    backbone = winner.trial.backbone
    variant = demo_outputs / "hpo" / backbone / winner.variant
    target = into / demo_outputs.name / "hpo" / backbone / winner.variant
    target.mkdir(parents=True)
    for name in ("variant.json", "hpo.json"):
        shutil.copy2(variant / name, target / name)
    return [
        f"final_training.source.variant={winner.variant}",
        f"final_training.source.trial={winner.trial.number}",
    ]


def _refit(outputs: Path, source: list[str], extra: list[str]) -> dict[str, Any]:
    import ray_pipeline
    from ray_pipeline.artifacts import read_json
    from ray_pipeline.final.results import FinalMetrics
    from ray_pipeline.variants import experiment_variants

    overrides = [f"outputs_root={outputs}", "tracking.enabled=false", *source, *extra]
    overrides.append("final_training.run.mode=force_new")
    start = time.perf_counter()
    ray_pipeline.run(DEMO, stages=["final"], overrides=overrides)
    wall = time.perf_counter() - start
    config = ray_pipeline.load_config(DEMO, overrides)
    latest = experiment_variants(config, "final")[-1]
    metrics = read_json(latest.files.metrics, FinalMetrics)
    return {
        "wall_s": round(wall, 1),
        "test_metrics": metrics.test_metrics,
        "refit": metrics.refit.model_dump() if metrics.refit else None,
        "epoch_s": [round(e.seconds, 1) for e in metrics.epochs],
    }


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, default=REPO / "outputs" / "demo")
    parser.add_argument("--ddp", action="store_true", help="also time 1 DDP worker per core")
    parser.add_argument(
        "--before", action="store_true", help="also time the refit as it ran before (Ray Train)"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="the default on a GPU against every CPU core instead"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    wanted = {"ddp": args.ddp, "before": args.before}
    table = GPU_WAYS if args.gpu else WAYS
    ways = [w for w in table if wanted.get(w.split()[0], True)]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="final_scale-") as tmp:
        outputs = Path(tmp)
        source = _source(args.outputs.resolve(), outputs)
        ray.init()
        try:
            for way in ways:
                print(f"--- {way}", flush=True)
                results[way] = _refit(outputs, source, table[way])
        finally:
            ray.shutdown()
    base = results[ways[0]]["wall_s"]
    print(f"\n{'way':42} {'wall s':>8} {'ratio':>6}  test metrics")
    for way, got in results.items():
        scores = ", ".join(f"{k} {v:.4f}" for k, v in got["test_metrics"].items())
        got["ratio"] = round(got["wall_s"] / base, 3)
        print(f"{way:42} {got['wall_s']:8.1f} {got['ratio']:6.3f}  {scores}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
