"""One-worker trials share a reused Tune trial process, also when a scheduler stops a trial:
the stopped trial's training thread ends at its report, so the process is reset cleanly and
trains the next trial (Ray Tune's reuse_actors with function trainables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import MakeExp, this_cluster

pytestmark = pytest.mark.slow


def test_asha_stops_trials_and_one_reused_process_trains_them_all(
    ray_with_state_api: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    from ray.util.state import list_actors

    # Pinned trials, one at a time, so ASHA's decisions (rungs at epochs 1, 2 and 4 of 6; a
    # trial stops when its score is below the median of those recorded at the rung) hold by
    # construction on any machine: a hopeless learning rate (3e-2 and more wreck the tiny
    # pre-trained model) against a good one, and a point against its own repeat (the same
    # training: equal scores, up to the CPU's rounding, far from the good-hopeless gap).
    # 0 hopeless: nothing recorded yet, it runs to the end. 1 good: above 0 at every rung.
    # 2 hopeless again: below the median of 0 and 1 at epoch 1 (mid-fold), stopped there.
    # 3 good again: above the median of 0, 1 and 2, then of 0 and 1: it trains every fold, in
    # the process the stopped trial 2 left.
    hopeless, good = (
        "{learning_rate: 0.09, weight_decay: 0.0}",
        "{learning_rate: 0.003, weight_decay: 0.0}",
    )
    args = ["hpo", "--config", str(smoke_experiment()), "hpo.num_samples=4", "hpo.k_folds=3"]
    args += ["hpo.training.epochs=2", "tracking.enabled=false"]
    args += [f"hpo.enqueue=[{hopeless}, {good}, {hopeless}, {good}]"]
    args += ["hpo.scheduler.type=asha", "hpo.scheduler.grace_period=1"]
    args += ["resources.max_concurrent_trials=1"]  # one trial at a time: every trial can reuse
    assert main(args) == 0

    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    result = read_json(variant / "hpo.json", HpoResult)
    trials = result.trials
    states = [(t.state, t.epochs_trained) for t in trials]
    rates = [t.params["learning_rate"] for t in trials]
    assert rates == [0.09, 0.003, 0.09, 0.003], rates  # the pinned points, in order
    # Each trial's scores at every epoch (fold after fold), to show a failure's comparisons.
    curves = [[p.validation for f in t.folds for p in f.history] for t in trials]
    expected = [("COMPLETE", 6), ("COMPLETE", 6), ("PRUNED", 1), ("COMPLETE", 6)]
    assert states == expected, (states, curves)
    assert trials[2].folds == []  # stopped inside its first fold: no finished fold counts
    assert all(len(t.folds) == 3 for t in trials if t.state == "COMPLETE")
    best = result.best
    assert best is not None and best.number in (1, 3), best  # good; a stopped one never wins
    trial_processes = [
        a
        for a in list_actors(this_cluster(), detail=True)
        if a.class_name.split(".")[-1] == "ImplicitFunc"
    ]
    assert len(trial_processes) == 1, trial_processes  # four trials, one process
