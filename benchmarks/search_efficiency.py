"""Search efficiency: the same search without and with epoch-level early stopping, in one command.

The smoke study (the tests' tiny pre-trained BERT on 160 reviews; learning rates from good to
hopeless, 1e-4 to 1e-1 on a log scale) runs twice through ``ray-pipeline hpo`` on a local Ray
cluster, each time into its own temporary outputs: 12 trials x 3 folds x 3 epochs, the random
sampler with one seed (so both runs try the same 12 parameter sets, in the same order), and
``hpo.scheduler.type`` ``none``, then ``asha`` (grace period 1 epoch, reduction factor 3).

Prints, per run, the fold-epochs trained (``epochs_trained`` of every trial in ``hpo.json``),
the best objective and the wall time, and the ratios; ``--json FILE`` writes
``{"epochs_trained_none", "epochs_trained_asha", "best_none", "best_asha", "std_best_none",
"epoch_ratio", ...}``, where ``std_best_none`` is the fold standard deviation of the best
trial of ``none``.

    python benchmarks/search_efficiency.py [--trials 12] [--folds 3] [--epochs 3]
        [--reduction-factor 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "config" / "experiment" / "smoke.yaml"


def _search(scheduler: str, args: argparse.Namespace, outputs: Path) -> dict[str, Any]:
    """One HPO run of the smoke study with ``scheduler``; its figures from ``hpo.json``."""
    from ray_pipeline.artifacts import read_json
    from ray_pipeline.cli import main
    from ray_pipeline.hpo.results import HpoResult

    overrides = [
        f"outputs_root={outputs}",
        f"hpo.num_samples={args.trials}",
        f"hpo.k_folds={args.folds}",
        f"hpo.training.epochs={args.epochs}",
        "hpo.sampler=random",
        "tracking.enabled=false",
        f"hpo.scheduler.type={scheduler}",
        "hpo.scheduler.grace_period=1",
        f"hpo.scheduler.reduction_factor={args.reduction_factor}",
    ]
    start = time.perf_counter()
    if main(["hpo", "--config", str(SMOKE), *overrides]) != 0:
        raise SystemExit(f"the {scheduler} search failed")
    seconds = time.perf_counter() - start
    hpo_json = outputs / "smoke" / "hpo" / "tiny-bert" / "hpo_tiny-bert" / "hpo.json"
    result = read_json(hpo_json, HpoResult)
    best = result.best
    assert best is not None and best.objective_mean is not None
    return {
        "epochs_trained": sum(t.epochs_trained or 0 for t in result.trials),
        "best": best.objective_mean,
        "std_best": best.objective_std or 0.0,
        "best_trial": best.number,
        "pruned": sum(t.state == "PRUNED" for t in result.trials),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        runs = {}
        for scheduler in ("none", "asha"):
            with tempfile.TemporaryDirectory(prefix="ray_pipeline_search_") as outputs:
                runs[scheduler] = _search(scheduler, args, Path(outputs))
    finally:
        ray.shutdown()
    none, asha = runs["none"], runs["asha"]
    figures = {
        "epochs_trained_none": none["epochs_trained"],
        "epochs_trained_asha": asha["epochs_trained"],
        "best_none": none["best"],
        "best_asha": asha["best"],
        "std_best_none": none["std_best"],
        "epoch_ratio": asha["epochs_trained"] / none["epochs_trained"],
        "best_gap_in_std": (none["best"] - asha["best"]) / none["std_best"]
        if none["std_best"]
        else None,
        "pruned_asha": asha["pruned"],
        "seconds_none": none["seconds"],
        "seconds_asha": asha["seconds"],
        "trials": args.trials,
        "folds": args.folds,
        "epochs": args.epochs,
    }
    for name, run in runs.items():
        print(
            f"{name:>4}: {run['epochs_trained']} fold-epochs, best {run['best']:.4f} "
            f"± {run['std_best']:.4f} (trial {run['best_trial']}), {run['pruned']} pruned, "
            f"{run['seconds']:.0f} s"
        )
    print(
        f"asha/none: {figures['epoch_ratio']:.2f}x the fold-epochs, "
        f"{asha['seconds'] / none['seconds']:.2f}x the time; best {asha['best']:.4f} vs "
        f"{none['best']:.4f} (none's fold std {none['std_best']:.4f})"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
