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

    # The smoke search space: learning rates from good to hopeless (3e-2 and more wreck the
    # tiny pre-trained model), so trials differ from their first epoch and ASHA, comparing
    # them after any epoch (rungs at epochs 1, 2 and 4 of 6), has something to cut.
    args = ["hpo", "--config", str(smoke_experiment()), "hpo.num_samples=6", "hpo.k_folds=3"]
    args += ["hpo.training.epochs=2", "hpo.sampler=random", "tracking.enabled=false"]
    args += ["hpo.scheduler.type=asha", "hpo.scheduler.grace_period=1"]
    args += ["resources.max_concurrent_trials=1"]  # one trial at a time: every trial can reuse
    assert main(args) == 0

    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    trials = read_json(variant / "hpo.json", HpoResult).trials
    states = [(t.state, t.epochs_trained) for t in trials]
    pruned = [t for t in trials if t.state == "PRUNED"]
    assert pruned, states
    for trial in pruned:  # stopped after some epoch; its objective covers finished folds only
        assert trial.epochs_trained is not None and trial.epochs_trained < 6, states
        assert len(trial.folds) == trial.epochs_trained // 2, states
    assert any(t.epochs_trained % 2 for t in pruned if t.epochs_trained), states  # mid-fold
    # A trial after a stopped one still trains all its folds in the same process.
    assert any(t.state == "COMPLETE" and t.number > pruned[0].number for t in trials), states
    assert all(len(t.folds) == 3 and t.epochs_trained == 6 for t in trials if t.state == "COMPLETE")
    best = read_json(variant / "hpo.json", HpoResult).best
    assert best is not None and best.state == "COMPLETE"  # a stopped trial never wins
    trial_processes = [
        a
        for a in list_actors(this_cluster(), detail=True)
        if a.class_name.split(".")[-1] == "ImplicitFunc"
    ]
    assert len(trial_processes) == 1, trial_processes  # six trials, one process
