"""One-worker trials share a reused Tune trial process, also when a scheduler stops a trial:
the stopped trial's training thread ends at its report, so the process is reset cleanly and
trains the next trial (Ray Tune's reuse_actors with function trainables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import MakeExp

pytestmark = pytest.mark.slow


def test_asha_stops_trials_and_one_reused_process_trains_them_all(
    ray_with_state_api: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    from ray.util.state import list_actors

    # The smoke search space: learning rates from good to hopeless (3e-2 and more wreck the
    # tiny pre-trained model), so trials differ after two folds and ASHA has something to cut.
    args = ["hpo", "--config", str(smoke_experiment()), "hpo.num_samples=6", "hpo.k_folds=3"]
    args += ["hpo.training.epochs=2", "hpo.sampler=random", "tracking.enabled=false"]
    args += ["hpo.scheduler.type=asha", "hpo.scheduler.grace_period=2"]
    args += ["resources.max_concurrent_trials=1"]  # one trial at a time: every trial can reuse
    assert main(args) == 0

    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    trials = read_json(variant / "hpo.json", HpoResult).trials
    states = [t.state for t in trials]
    pruned = [t.number for t in trials if t.state == "PRUNED"]
    assert pruned and all(len(trials[n].folds) == 2 for n in pruned), states
    # A trial after a stopped one still trains all its folds in the same process.
    assert any(t.state == "COMPLETE" and t.number > pruned[0] for t in trials), states
    assert all(len(t.folds) == 3 for t in trials if t.state == "COMPLETE")
    trial_processes = [
        a for a in list_actors(detail=True) if a.class_name.split(".")[-1] == "ImplicitFunc"
    ]
    assert len(trial_processes) == 1, trial_processes  # six trials, one process
