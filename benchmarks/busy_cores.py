"""Busy cores: how much of an HPO run's wall time its CPUs spend training, without and with
idle cores lent to the trials of the search's tail (``resources.lend_idle_cores``), in one
command.

The demo's HPO stage (``config/experiment/demo.yaml``: MiniLM on 800 fine-food reviews, one
CPU per trial, 2 trials at once on a 2-CPU local Ray cluster) runs twice through
``ray-pipeline hpo``, each time into its own temporary outputs: first with
``resources.lend_idle_cores=false`` (the baseline: every trial keeps its one core), then with
the default (true). ``--trials`` changes ``hpo.num_samples``: an odd number leaves one trial
alone in the tail.

Busy core-seconds are read from ``hpo.json``: each fold's wall time (its epochs and its
evaluation) times the torch threads its epochs trained with (the mean over its epochs). The
busy fraction is that over the run's wall time (the whole ``ray-pipeline hpo`` command, data
and model loading included) times the cluster's CPUs. Prints both runs and the ratio of their
wall times; ``--json FILE`` writes ``{"busy_off", "busy_on", "seconds_off", "seconds_on",
"time_ratio", "best_off", "best_on", "trials", "cpus"}``.

    python benchmarks/busy_cores.py [--trials 4] [--json FILE]

Needs the demo data and model (``make demo-data``, the demo extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "experiment" / "demo.yaml"
CPUS = 2


def _search(lend: bool, trials: int, outputs: Path) -> dict[str, Any]:
    """One HPO run of the demo study; its wall time, busy fraction and best objective."""
    from ray_pipeline.artifacts import read_json
    from ray_pipeline.cli import main
    from ray_pipeline.hpo.results import HpoResult

    overrides = [
        f"outputs_root={outputs}",
        f"hpo.num_samples={trials}",
        "tracking.enabled=false",
        f"resources.lend_idle_cores={str(lend).lower()}",
    ]
    start = time.perf_counter()
    if main(["hpo", "--config", str(DEMO), *overrides]) != 0:
        raise SystemExit(f"the search with lend_idle_cores={lend} failed")
    seconds = time.perf_counter() - start
    variant = outputs / "demo" / "hpo" / "minilm" / "hpo_minilm"
    result = read_json(variant / "hpo.json", HpoResult)
    busy = 0.0
    for trial in result.trials:
        for fold in trial.folds:
            threads = [p.threads for p in fold.history if p.threads is not None]
            busy += fold.seconds * (statistics.fmean(threads) if threads else 1.0)
    best = result.best
    return {
        "seconds": seconds,
        "busy": busy / (seconds * CPUS),
        "best": best.objective_mean if best is not None else None,
        "lent_epochs": sum(
            1
            for t in result.trials
            for f in t.folds
            for p in f.history
            if p.threads is not None and p.threads > 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=CPUS, include_dashboard=False)
    try:
        runs = {}
        for lend in (False, True):
            with tempfile.TemporaryDirectory(prefix="ray_pipeline_busy_") as outputs:
                runs[lend] = _search(lend, args.trials, Path(outputs))
    finally:
        ray.shutdown()
    off, on = runs[False], runs[True]
    for name, run in (("lend off", off), ("lend on", on)):
        print(
            f"{name}: {run['seconds']:.0f} s, cores busy {run['busy']:.1%} of the wall time, "
            f"{run['lent_epochs']} epoch(s) on lent cores, best {run['best']:.4f}"
        )
    print(f"on/off: {on['seconds'] / off['seconds']:.2f}x the wall time")
    if args.json:
        figures = {
            "busy_off": off["busy"],
            "busy_on": on["busy"],
            "seconds_off": off["seconds"],
            "seconds_on": on["seconds"],
            "time_ratio": on["seconds"] / off["seconds"],
            "best_off": off["best"],
            "best_on": on["best"],
            "trials": args.trials,
            "cpus": CPUS,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
