"""Console progress: the HPO status line and its ETA (pure arithmetic, a fake clock), and the
duration format every stage's ETA uses."""

from __future__ import annotations

import pytest

from ray_pipeline.console import STATUS_EVERY_S, duration
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.progress import SearchProgress, describe_params
from tests.builders import trial_report


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(
    clock: Clock,
    *,
    total: int = 4,
    done_before: int = 0,
    parallel: int = 2,
    direction: str = "maximize",
) -> SearchProgress:
    return SearchProgress(
        label="hpo minilm",
        total=total,
        done_before=done_before,
        k_folds=3,
        epochs=2,
        metric="macro_f1",
        direction=Direction(direction),
        parallel=parallel,
        clock=clock,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "1 s"),
        (44.6, "45 s"),
        (59.4, "59 s"),
        (59.6, "1 min"),
        (90, "2 min"),
        (3599, "1 h"),
        (3900, "1 h 5 min"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_duration_of_nothing_known() -> None:
    assert duration(float("nan")) == "unknown"
    assert duration(-1) == "unknown"


def test_status_names_each_running_trials_fold_and_epoch() -> None:
    clock = Clock()
    progress = _progress(clock)
    progress.started(0)
    progress.started(1)
    assert progress.status() == (
        "hpo minilm: 0/4 trials done, 2 running (trial 0 fold 1/3 epoch 0/2, "
        "trial 1 fold 1/3 epoch 0/2), ETA after the first epoch"
    )
    clock.now += 30
    progress.reported(0, 3)  # fold 1 and fold 2's first epoch trained
    progress.reported(1, 6)  # every fold trained: evaluating the last
    line = progress.status()
    assert "trial 0 fold 2/3 epoch 1/2" in line
    assert "trial 1 evaluating" in line


def test_eta_from_measured_seconds_per_epoch() -> None:
    clock = Clock()
    progress = _progress(clock, total=4, parallel=2)
    progress.started(0)
    progress.started(1)
    clock.now += 20
    progress.reported(0, 4)  # 5 s per epoch
    progress.reported(1, 1)  # 20 s per epoch: 40 s for 5 epochs = 8 s per epoch overall
    # Left: trial 0 has 2 epochs, trial 1 has 5, two trials waiting with 6 each = 19 epochs,
    # at 8 s each, 2 trials at a time.
    assert progress.eta_seconds() == pytest.approx(19 * 8 / 2)
    assert progress.status().endswith("ETA 1 min")


def test_eta_counts_finished_trials_and_earlier_rounds() -> None:
    clock = Clock()
    progress = _progress(clock, total=5, done_before=3, parallel=2)
    progress.started(3)
    clock.now += 60
    progress.reported(3, 6)
    progress.ended(3, trial_report([0.69, 0.7, 0.71]))
    progress.started(4)
    # One trial left (6 epochs) at 10 s an epoch; only one can run.
    assert progress.eta_seconds() == pytest.approx(60)
    assert progress.status().startswith("hpo minilm: 4/5 trials done, 1 running (trial 4 ")


@pytest.mark.parametrize(
    ("direction", "winner"), [("maximize", 1), ("minimize", 0)], ids=["maximize", "minimize"]
)
def test_best_follows_the_direction(direction: str, winner: int) -> None:
    clock = Clock()
    progress = _progress(clock, direction=direction)
    values = {0: 0.61, 1: 0.74, 2: 0.68}
    lines = []
    for number, value in values.items():
        progress.started(number)
        progress.reported(number, 6)
        lines.append(progress.ended(number, trial_report([value - 0.02, value, value + 0.02])))
    assert progress.best is not None
    assert progress.best[1] == winner and progress.best[0] == pytest.approx(values[winner])
    assert lines[1].startswith("hpo minilm: trial 1 done in ")
    assert "macro_f1 0.7400 ± 0.0163" in lines[1]  # the folds' population spread
    assert lines[2].endswith(f"best {values[winner]:.4f} (trial {winner})")


def test_a_trial_the_scheduler_stopped_says_so() -> None:
    clock = Clock()
    progress = _progress(clock)
    progress.started(2)
    clock.now += 100
    progress.reported(2, 2)
    line = progress.ended(2, trial_report([], step=2))
    assert line == "hpo minilm: trial 2 stopped after 2 of 6 epochs (0 of 3 folds) in 2 min"
    assert progress.best is None


def test_status_line_at_most_every_interval_while_trials_run() -> None:
    clock = Clock()
    progress = _progress(clock)
    assert progress.tick() is None  # nothing running
    progress.started(0)
    assert progress.tick() is not None
    clock.now += STATUS_EVERY_S - 1
    assert progress.tick() is None
    clock.now += 1
    assert progress.tick() is not None


def test_searched_epochs_change_a_trials_length() -> None:
    clock = Clock()
    progress = _progress(clock)
    progress.started(0, epochs=4)
    progress.reported(0, 5)
    assert "trial 0 fold 2/3 epoch 1/4" in progress.status()


def test_describe_params_leaves_out_the_trial_number() -> None:
    config = {"learning_rate": 0.000182722, "max_length": 64, "optuna_trial_number": 3}
    assert describe_params(config, "optuna_trial_number") == "learning_rate 0.000183, max_length 64"


def test_benchmark_status_line() -> None:
    import time

    from ray_pipeline.benchmark.stage import _status

    started = time.monotonic() - 100
    assert _status(3, 0, 2, started, []) == (
        "benchmark: 0/3 done, 2 measuring, 2 min so far, ETA after the first benchmark"
    )
    # Two finished 40 s and 60 s in (30 s a benchmark, both actors together), 40 s ago:
    # three left take 90 s at that pace, less the 40 s already spent on them.
    line = _status(5, 2, 2, started, [40.0, 60.0])
    assert line == "benchmark: 2/5 done, 2 measuring, 2 min so far, ETA 50 s"
    # One left, overdue: no negative ETA.
    assert _status(3, 2, 2, started, [40.0, 60.0]).endswith(", 1 measuring, 2 min so far, ETA 1 s")


def test_refit_step_lines_after_the_first_step_then_every_interval() -> None:
    from ray_pipeline.final.worker import StepProgress

    clock = Clock()
    steps = StepProgress("final_m", epochs=3, steps_per_epoch=50, clock=clock)
    assert steps.line(1) is None  # the first step starts the clock
    clock.now += 2.0
    # One more step in 2 s; 48 left in epoch 1 and 100 in epochs 2 and 3.
    assert steps.line(2) == "final final_m: epoch 1/3 step 2/50, ETA 5 min"
    clock.now += STATUS_EVERY_S - 1
    assert steps.line(20) is None
    clock.now += 1
    line = steps.line(21)  # 20 steps in 2 + 30 s: 1.6 s a step, 129 steps left
    assert line == "final final_m: epoch 1/3 step 21/50, ETA 3 min"
    steps.epoch, steps.done_before = 2, 100  # the last epoch, after two of them
    clock.now = clock.now + STATUS_EVERY_S
    # 123 steps since the clock started, in 62 s: 0.504 s a step, 26 left.
    assert steps.line(24) == "final final_m: epoch 3/3 step 24/50, ETA 13 s"
