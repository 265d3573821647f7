"""Fold racing (``hpo.racing``): the rule, the scheduler that applies it between folds, and a
real search on a local Ray cluster where a hopeless trial stops after its first fold, ends
PRUNED with the reason recorded, and is never the best."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.racing import Race, losing
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.hpo.schedulers import make_scheduler
from ray_pipeline.hpo.search import TRIAL_NUMBER
from ray_pipeline.schema import SchedulerConfig
from tests.builders import trial_report
from tests.conftest import MakeExp

INCUMBENT = [0.80, 0.76, 0.78]  # mean 0.78, fold spread 0.0163


def test_a_trial_clearly_worse_on_the_same_folds_loses_and_a_close_one_does_not() -> None:
    up = Direction.MAXIMIZE
    reason = losing(up, [0.60], INCUMBENT, 3)
    assert reason is not None and "0.2000 worse than the incumbent's 0.8000" in reason
    assert losing(up, [0.79], INCUMBENT, 3) is None  # within the incumbent's fold spread
    assert losing(up, [0.90], INCUMBENT, 3) is None  # better: it goes on
    assert losing(up, [0.60, 0.70], INCUMBENT, 3) is not None  # compared on folds 0 and 1
    assert losing(up, [0.70, 0.95], INCUMBENT, 3) is None  # a paired mean within the margin
    assert losing(up, [0.60], None, 3) is None  # no incumbent yet
    assert losing(up, [0.5, 0.5, 0.5], INCUMBENT, 3) is None  # every fold done: nothing to save
    assert losing(up, [0.77], INCUMBENT, 3, margin=0.0) is not None  # a margin of one's own
    down = Direction.MINIMIZE  # a loss: lower is better, the gap turns around
    assert losing(down, [0.60], INCUMBENT, 3) is None
    assert losing(down, [0.95], INCUMBENT, 3) is not None


def test_the_incumbent_is_the_best_complete_trial_and_only_complete_trials_count() -> None:
    race = Race(Direction.MAXIMIZE, 3)
    race.completed([0.9, 0.9])  # stopped after two folds: never the incumbent
    assert race.incumbent is None
    race.completed([0.70, 0.70, 0.70])
    race.completed(INCUMBENT)
    race.completed([0.75, 0.75, 0.75])
    assert race.incumbent == INCUMBENT
    assert race.judge(4, [0.6]) is not None and 4 in race.stopped
    assert race.judge(5, [0.85]) is None and 5 not in race.stopped


class _Trial:
    """What Ray Tune's schedulers read of a trial (pure logic: no trial runs)."""

    def __init__(self, number: int) -> None:
        self.trial_id = f"t{number}"
        self.config = {TRIAL_NUMBER: number}


@pytest.mark.parametrize("kind", ["none", "asha"])
def test_the_scheduler_stops_a_losing_trial_after_a_fold_and_never_a_leader(kind: str) -> None:
    from ray.tune.schedulers import TrialScheduler

    race = Race(Direction.MAXIMIZE, 3)
    config = SchedulerConfig.model_validate({"type": kind, "grace_period": 3})
    scheduler = make_scheduler(config, k_folds=3, epochs=1, mode="max", race=race)
    trials = [_Trial(n) for n in range(3)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)

    def report(trial: _Trial, folds: list[float]) -> str:
        result: dict[str, Any] = trial_report(folds).to_metrics()
        result |= {"fold_metrics": '{"macro_f1": 0.0}', "time_total_s": len(folds)}
        return str(scheduler.on_trial_result(None, trial, result))

    leader, hopeless, challenger = trials
    for folds in ([0.80], [0.80, 0.76]):
        assert report(leader, folds) == TrialScheduler.CONTINUE  # no incumbent yet
    assert report(leader, INCUMBENT) == TrialScheduler.CONTINUE  # its last fold
    assert race.incumbent == INCUMBENT
    assert report(hopeless, [0.55]) == TrialScheduler.STOP
    assert list(race.stopped) == [1]
    assert report(challenger, [0.83]) == TrialScheduler.CONTINUE  # ahead of the incumbent
    assert report(challenger, [0.83, 0.81]) == TrialScheduler.CONTINUE


def test_racing_needs_cross_validation(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    assert main(["validate", "--config", path, "hpo.racing=true", "hpo.evaluation=holdout"]) == 2
    assert "racing: stops a trial between cross-validation folds" in capsys.readouterr().err


@pytest.mark.slow
def test_a_hopeless_trial_stops_after_its_first_fold_and_is_never_the_best(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    # One trial at a time, so the hopeless one runs after a good one has finished every fold.
    args = ["hpo", "--config", str(smoke_experiment()), "hpo.racing=true", "hpo.k_folds=3"]
    args += ["hpo.training.epochs=1", "hpo.num_samples=2", "hpo.sampler=random"]
    args += ["tracking.enabled=false", "resources.max_concurrent_trials=1"]
    args += [
        "hpo.enqueue=[{learning_rate: 0.003, weight_decay: 0.0}, "
        "{learning_rate: 0.09, weight_decay: 0.0}]"
    ]
    assert main(args) == 0
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    result = read_json(variant / "hpo.json", HpoResult)
    good, hopeless = result.trials
    assert (good.state, len(good.folds), good.stopped_by) == ("COMPLETE", 3, None)
    assert (hopeless.state, len(hopeless.folds)) == ("PRUNED", 1), hopeless
    assert hopeless.epochs_trained == 1  # one fold of one epoch, not three
    assert hopeless.stopped_by is not None and hopeless.stopped_by.startswith("racing: ")
    assert f"incumbent's {good.folds[0].objective:.4f}" in hopeless.stopped_by
    assert result.best is not None and result.best.number == good.number
