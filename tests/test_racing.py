"""Fold racing (``hpo.racing``): the rule (an indifference-zone race against the incumbent on
the same folds and epochs), the scheduler that applies it after folds and evaluated epochs, and
real searches on a local Ray cluster where a hopeless trial stops after its first fold, or after
the first epoch of its first fold, ends PRUNED with the reason recorded, and is never the best."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.racing import InFold, Race, Z, losing, stopping_gap
from ray_pipeline.hpo.results import EpochPoint, FoldResult, FoldState, HpoResult
from ray_pipeline.hpo.schedulers import make_scheduler
from ray_pipeline.hpo.search import TRIAL_NUMBER
from ray_pipeline.hpo.trial_report import TrialReport
from ray_pipeline.schema import SchedulerConfig
from tests.builders import fold_result, trial_report
from tests.conftest import MakeExp

INCUMBENT = [0.80, 0.76, 0.78]  # mean 0.78, fold spread 0.0163
SIGMA = 0.016330
CURVES: list[list[float | None]] = [[0.70, 0.75, 0.80], [0.70, 0.74, 0.76], [0.72, 0.76, 0.78]]
"""The incumbent's validation score after each epoch of each fold (the last: the fold's)."""


def test_the_stopping_gap_is_how_far_the_mean_can_still_move_less_the_margin() -> None:
    # One fold of three: the 3-fold mean can still move sigma * sqrt(2/3) (one sd).
    assert stopping_gap(SIGMA, 1, 3) == pytest.approx(SIGMA * (Z * math.sqrt(2 / 3) - 1))
    assert stopping_gap(SIGMA, 1, 3, margin=0.0) == pytest.approx(Z * SIGMA * math.sqrt(2 / 3))
    assert stopping_gap(SIGMA, 1, 3, margin=1.0) == 0.0  # never below level with it
    # More evidence, less room: after two folds of three it cannot end sigma ahead from behind.
    assert stopping_gap(SIGMA, 2, 3) == 0.0
    assert stopping_gap(SIGMA, 2, 3, margin=0.0) == pytest.approx(Z * SIGMA / math.sqrt(6))
    # One epoch of three of the first fold is a third of a fold's evidence: more room.
    assert stopping_gap(SIGMA, 1 / 3, 3) > stopping_gap(SIGMA, 2 / 3, 3) > stopping_gap(SIGMA, 1, 3)
    assert stopping_gap(SIGMA, 3, 3, margin=0.0) == 0.0  # the last fold: nothing left to move
    assert stopping_gap(0.0, 1, 3, margin=0.0) == 0.0
    assert stopping_gap(SIGMA, 0, 3) == math.inf  # no evidence: never stopped


def test_a_trial_unlikely_to_end_a_fold_std_ahead_loses_and_one_that_may_does_not() -> None:
    up = Direction.MAXIMIZE
    reason = losing(up, [0.60], INCUMBENT, 3)
    assert reason is not None and "0.2000 worse than the incumbent's 0.8000" in reason
    assert reason.startswith("racing: 0.6000 over its first 1 of 3 folds")
    assert losing(up, [0.797], INCUMBENT, 3) is None  # within the room left after one fold
    # 0.01 behind after one fold: under 5% chance to end a fold std ahead; with margin 0 (only
    # beating it at all counts) it may still, and goes on.
    assert losing(up, [0.79], INCUMBENT, 3) is not None
    assert losing(up, [0.79], INCUMBENT, 3, margin=0.0) is None
    assert losing(up, [0.77], INCUMBENT, 3, margin=0.0) is not None
    assert losing(up, [0.90], INCUMBENT, 3) is None  # ahead: it goes on
    assert losing(up, [0.80], INCUMBENT, 3, margin=1.0) is None  # level: never stopped
    assert losing(up, [0.79, 0.765], INCUMBENT, 3) is not None  # behind after two folds
    assert losing(up, [0.70, 0.95], INCUMBENT, 3) is None  # a paired mean ahead of 0.78
    assert losing(up, [0.60], None, 3) is None  # no incumbent yet
    assert losing(up, [], INCUMBENT, 3) is None  # no fold finished, no epoch evaluated
    assert losing(up, [0.5, 0.5, 0.5], INCUMBENT, 3) is None  # every fold done: nothing to save
    assert losing(up, [math.nan], INCUMBENT, 3) is None  # no score (a DDP rank other than 0)
    down = Direction.MINIMIZE  # a loss: lower is better, the gap turns around
    assert losing(down, [0.60], INCUMBENT, 3) is None
    assert losing(down, [0.95], INCUMBENT, 3) is not None


def test_inside_a_fold_a_trial_is_compared_at_the_same_epoch_of_the_incumbents_fold() -> None:
    up = Direction.MAXIMIZE
    # After the first epoch of fold 0: 0.40 against the incumbent's 0.70 after that epoch.
    reason = losing(up, [], INCUMBENT, 3, inside=InFold(1, 3, 0.40), curves=CURVES)
    assert reason is not None and reason.startswith("racing: 0.4000 after epoch 1 of 3 of fold 0")
    assert "0.3000 worse than the incumbent's 0.7000" in reason
    # A third of a fold's evidence leaves more room than a whole fold: 0.02 behind goes on.
    assert losing(up, [], INCUMBENT, 3, inside=InFold(1, 3, 0.68), curves=CURVES) is None
    assert losing(up, [0.78], INCUMBENT, 3) is not None  # the same gap at a fold's end stops
    # Fold 1, epoch 2: the fold in progress counts for the 2/3 of it trained: the running
    # mean (0.80 + 2/3 0.70) / (5/3) = 0.76 against (0.80 + 2/3 0.74) / (5/3) = 0.776.
    reason = losing(up, [0.80], INCUMBENT, 3, inside=InFold(2, 3, 0.70), curves=CURVES)
    assert reason is not None and "first 1 of 3 folds and epoch 2 of 3 of fold 1" in reason
    assert "racing: 0.7600" in reason and "incumbent's 0.7760" in reason
    # An early epoch's shortfall does not outweigh a finished fold ahead: 0.83 on fold 0 (the
    # incumbent's 0.80) and 0.62 after fold 1's first epoch (theirs 0.70) is ahead, weighted
    # (+0.03 - 0.08 / 3); counted as a whole fold, the epoch would stop it.
    assert losing(up, [0.83], INCUMBENT, 3, inside=InFold(1, 3, 0.62), curves=CURVES) is None
    # No comparable point: no curves, another epoch count, an epoch it did not evaluate, a
    # fold's last epoch (judged with the fold), no score.
    assert losing(up, [], INCUMBENT, 3, inside=InFold(1, 3, 0.1)) is None
    assert losing(up, [], INCUMBENT, 3, inside=InFold(1, 5, 0.1), curves=CURVES) is None
    unevaluated: list[list[float | None]] = [[None, None, 0.80], *CURVES[1:]]
    assert losing(up, [], INCUMBENT, 3, inside=InFold(1, 3, 0.1), curves=unevaluated) is None
    assert losing(up, [], INCUMBENT, 3, inside=InFold(3, 3, 0.1), curves=CURVES) is None
    assert losing(up, [], INCUMBENT, 3, inside=InFold(1, 3, math.nan), curves=CURVES) is None


def test_the_incumbent_is_the_best_complete_trial_and_only_complete_trials_count() -> None:
    race = Race(Direction.MAXIMIZE, 3)
    race.completed([0.9, 0.9])  # stopped after two folds: never the incumbent
    race.completed([0.9, 0.9, math.nan])  # no score: never the incumbent
    assert race.incumbent is None
    race.completed([0.70, 0.70, 0.70])
    race.completed(INCUMBENT, CURVES)
    race.completed([0.75, 0.75, 0.75])
    assert race.incumbent == INCUMBENT and race.curves == CURVES
    assert race.judge(4, [0.6]) is not None and 4 in race.stopped
    assert race.judge(5, [0.85]) is None and 5 not in race.stopped
    assert race.judge(6, [], InFold(1, 3, 0.3)) is not None and 6 in race.stopped
    race.completed([0.90, 0.90, 0.90])  # recorded without curves: fold ends only
    assert race.curves is None and race.judge(7, [], InFold(1, 3, 0.3)) is None


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


def _fold_with_curve(fold: int, curve: list[float | None]) -> FoldResult:
    """Finished ``fold`` whose validation score after each epoch was ``curve``."""
    points = [EpochPoint(epoch=e + 1, train_loss=0.5, validation=v) for e, v in enumerate(curve)]
    last = curve[-1]
    assert last is not None
    return fold_result(fold, last).model_copy(update={"history": points})


@pytest.mark.parametrize("kind", ["none", "asha"])
def test_the_scheduler_races_a_trial_inside_a_fold_at_its_evaluated_epochs(kind: str) -> None:
    from ray.tune.schedulers import TrialScheduler

    race = Race(Direction.MAXIMIZE, 3)
    config = SchedulerConfig.model_validate({"type": kind, "grace_period": 9})
    scheduler = make_scheduler(config, k_folds=3, epochs=3, mode="max", race=race)
    trials = [_Trial(n) for n in range(5)]
    trials[4].config["epochs"] = 5  # a searched epoch count: no same point in the incumbent's
    for trial in trials:
        scheduler.on_trial_add(None, trial)

    def report(trial: _Trial, epoch: int, score: float | None) -> str:
        """``trial`` after 0-based ``epoch`` of fold 0, its validation ``score`` (None: the
        epoch was not evaluated)."""
        state = FoldState()
        result = TrialReport.of(
            state, step=epoch + 1, fold=0, epoch=epoch, train_loss=0.1, epoch_objective=score
        ).to_metrics()
        return str(scheduler.on_trial_result(None, trial, result | {"time_total_s": epoch + 1}))

    leader, hopeless, challenger, unevaluated, longer = trials
    state = FoldState(folds=[_fold_with_curve(k, c) for k, c in enumerate(CURVES)])
    last = TrialReport.of(state, step=9, fold=2, epoch=2, train_loss=0.1, fold_metrics={})
    assert report(leader, 0, 0.70) == TrialScheduler.CONTINUE  # no incumbent yet
    finished = last.to_metrics() | {"time_total_s": 9}
    assert scheduler.on_trial_result(None, leader, finished) == TrialScheduler.CONTINUE
    assert race.incumbent == INCUMBENT and race.curves == CURVES
    assert report(hopeless, 0, 0.35) == TrialScheduler.STOP  # after its very first epoch
    assert race.stopped[1].startswith("racing: 0.3500 after epoch 1 of 3 of fold 0")
    assert report(challenger, 0, 0.72) == TrialScheduler.CONTINUE  # ahead of 0.70
    assert report(challenger, 1, 0.74) == TrialScheduler.CONTINUE  # within reach of 0.75
    assert report(unevaluated, 0, None) == TrialScheduler.CONTINUE  # nothing to compare
    assert report(longer, 0, 0.35) == TrialScheduler.CONTINUE  # judged at fold ends only
    assert list(race.stopped) == [1]


def test_racing_needs_cross_validation(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    assert main(["validate", "--config", path, "hpo.racing=true", "hpo.evaluation=holdout"]) == 2
    assert "racing: stops a trial between cross-validation folds" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [1, 2])
def test_a_hopeless_trial_stops_after_its_first_fold_and_is_never_the_best(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, epochs: int
) -> None:
    # One trial at a time, so the hopeless one runs after a good one has finished every fold.
    # With 2 epochs a fold and every epoch evaluated, it stops inside its first fold.
    args = ["hpo", "--config", str(smoke_experiment()), "hpo.racing=true", "hpo.k_folds=3"]
    args += [f"hpo.training.epochs={epochs}", "hpo.num_samples=2", "hpo.sampler=random"]
    args += [f"hpo.report_every_epoch={epochs > 1}".lower()]
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
    # One fold of one epoch, or the first epoch of the first of 2: never three folds.
    assert (hopeless.state, len(hopeless.folds)) == ("PRUNED", 1 if epochs == 1 else 0), hopeless
    assert hopeless.epochs_trained == 1
    assert hopeless.stopped_by is not None and hopeless.stopped_by.startswith("racing: ")
    # Compared with the good trial at the same point: its fold 0, or its fold 0's first epoch.
    at = good.folds[0].history[0].validation if epochs > 1 else good.folds[0].objective
    assert at is not None and f"incumbent's {at:.4f}" in hopeless.stopped_by
    assert result.best is not None and result.best.number == good.number
