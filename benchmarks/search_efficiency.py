"""Search efficiency: the same search without and with early stopping, in one command.

The smoke study (the tests' tiny pre-trained BERT on 160 reviews; learning rates from good to
hopeless, 1e-4 to 1e-1 on a log scale) runs four times through ``ray-pipeline hpo`` on a local
Ray cluster, each time into its own temporary outputs: 12 trials x 3 folds x 3 epochs, the
random sampler with one seed (so every run tries the same 12 parameter sets, in the same
order), and ``hpo.scheduler.type`` ``none``, then ``asha`` (grace period 1 epoch, reduction
factor 3), then fold racing alone (``hpo.racing``: a trial stops, after a fold or after an
epoch inside one, once it is so far behind the best complete trial on the same folds and epoch
that it has under a 5% chance to end more than that trial's fold standard deviation ahead of
it), then ``asha`` with racing.

The racing runs set ``hpo.report_every_epoch`` (ASHA turns it on by itself), so that racing
compares trials inside a fold too: every epoch but a fold's last is then evaluated on the
fold's validation rows, which costs wall time (not fold-epochs: training is unchanged, and so
are the fold scores). ``none`` evaluates a fold once, at its end; the wall times show the
overhead.

Prints, per run, the fold-epochs trained (``epochs_trained`` of every trial in ``hpo.json``),
the best objective with its fold standard deviation, the trials stopped and the wall time, and
per early-stopping run its ratios to ``none`` and whether it meets issue 34's bar (at most half
the fold-epochs, best objective within one fold standard deviation of ``none``'s best trial).
``--json FILE`` writes ``{"epochs_trained_none", "epochs_trained_asha", "best_none",
"best_asha", "std_best_none", "epoch_ratio", "epochs_trained_racing", "epoch_ratio_racing",
"best_racing", ...}``, where ``std_best_none`` is the fold standard deviation of the best
trial of ``none`` and each ratio is a run's fold-epochs over ``none``'s.

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


RUNS = {"none": ("none", False), "asha": ("asha", False), "racing": ("none", True)}
RUNS["asha_racing"] = ("asha", True)
"""Each run's name: its scheduler and whether it races (a racing run evaluates every epoch)."""


def _search(name: str, args: argparse.Namespace, outputs: Path) -> dict[str, Any]:
    """One HPO run of the smoke study as ``RUNS[name]`` says; its figures from ``hpo.json``."""
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
        f"hpo.scheduler.type={RUNS[name][0]}",
        f"hpo.racing={str(RUNS[name][1]).lower()}",
        f"hpo.report_every_epoch={str(RUNS[name][1]).lower()}",
        "hpo.scheduler.grace_period=1",
        f"hpo.scheduler.reduction_factor={args.reduction_factor}",
    ]
    start = time.perf_counter()
    if main(["hpo", "--config", str(SMOKE), *overrides]) != 0:
        raise SystemExit(f"the {name} search failed")
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
        "raced": sum(t.stopped_by is not None for t in result.trials),
        "seconds": seconds,
    }


def _meets(run: dict[str, Any], none: dict[str, Any]) -> bool:
    """Issue 34's bar: at most half ``none``'s fold-epochs, at a best objective within the fold
    standard deviation of ``none``'s best trial (the smoke study maximises)."""
    return bool(
        run["epochs_trained"] <= none["epochs_trained"] / 2
        and none["best"] - run["best"] <= none["std_best"]
    )


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
        for name in RUNS:
            with tempfile.TemporaryDirectory(prefix="ray_pipeline_search_") as outputs:
                runs[name] = _search(name, args, Path(outputs))
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
        "meets_34_asha": _meets(asha, none),
        "seconds_none": none["seconds"],
        "seconds_asha": asha["seconds"],
        "trials": args.trials,
        "folds": args.folds,
        "epochs": args.epochs,
    }
    for name in ("racing", "asha_racing"):
        run = runs[name]
        figures[f"epochs_trained_{name}"] = run["epochs_trained"]
        figures[f"epoch_ratio_{name}"] = run["epochs_trained"] / none["epochs_trained"]
        figures[f"best_{name}"] = run["best"]
        figures[f"pruned_{name}"] = run["pruned"]
        figures[f"raced_{name}"] = run["raced"]
        figures[f"meets_34_{name}"] = _meets(run, none)
        figures[f"seconds_{name}"] = run["seconds"]
        figures[f"best_gap_in_std_{name}"] = (
            (none["best"] - run["best"]) / none["std_best"] if none["std_best"] else None
        )
    for name, run in runs.items():
        print(
            f"{name:>4}: {run['epochs_trained']} fold-epochs, best {run['best']:.4f} "
            f"± {run['std_best']:.4f} (trial {run['best_trial']}), {run['pruned']} pruned "
            f"({run['raced']} by racing), {run['seconds']:.0f} s"
        )
    for name in ("asha", "racing", "asha_racing"):
        run = runs[name]
        print(
            f"{name}/none: {run['epochs_trained'] / none['epochs_trained']:.2f}x the "
            f"fold-epochs, {run['seconds'] / none['seconds']:.2f}x the time; best "
            f"{run['best']:.4f} vs {none['best']:.4f} (none's fold std {none['std_best']:.4f})"
            f"; issue 34's bar {'met' if _meets(run, none) else 'not met'}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
