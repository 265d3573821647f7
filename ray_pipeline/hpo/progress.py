"""HPO progress on the console, in place of Ray Tune's trial tables: a line when a trial starts
and when it ends, and a status line with an ETA at most every ``console.STATUS_EVERY_S``::

    hpo minilm: 3/8 trials done, 2 running (trial 4 fold 2/3 epoch 1/2, trial 5 fold 1/3
    epoch 0/2), best macro_f1 0.7698 (trial 2), ETA 6 min

The ETA is measured: seconds per epoch of a trial (its wall time, set-up included, over the
epochs it has trained, every fold counted) times the epochs still to train, over the trials
that run at once. ``SearchProgress`` holds the arithmetic (no Ray); ``progress_callback`` feeds
it from Ray Tune on the driver.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray_pipeline.console import STATUS_EVERY_S, duration
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.hpo.trial_report import TrialReport


@dataclass
class _Trial:
    started: float
    epochs: int
    """Epochs the trial trains over all its folds."""
    done: int = 0
    """Epochs trained so far, over all folds (the report's ``global_step``)."""
    seconds: float = 0.0
    """Wall time from its start to its last report."""


@dataclass
class SearchProgress:
    """The state of one round of trials, as their reports arrive."""

    label: str
    """``hpo <backbone>``."""
    total: int
    """Trials the variant wants (num_samples), those finished in earlier rounds included."""
    done_before: int
    k_folds: int
    epochs: int
    """Epochs per fold (``hpo.training.epochs``; a trial that searches it says its own)."""
    metric: str
    direction: Direction
    parallel: int
    """Trials that run at once (``max_concurrent_trials``)."""
    best: tuple[float, int] | None = None
    """Best objective so far and its trial (None: none yet, or two objectives)."""
    clock: Callable[[], float] = time.monotonic
    running: dict[int, _Trial] = field(default_factory=dict)
    finished: int = 0
    spent: list[tuple[float, int]] = field(default_factory=list)
    """(seconds, epochs) of each trial that ended."""
    last_status: float | None = None
    cores: tuple[int, int] | None = None
    """Threads the running trials train with, and the cluster's CPUs (when trials are lent
    idle cores: hpo/idle_cores.py)."""

    def started(self, number: int, epochs: int | None = None) -> None:
        per_fold = epochs or self.epochs
        self.running[number] = _Trial(self.clock(), per_fold * self.k_folds)

    def reported(self, number: int, global_step: int) -> None:
        trial = self.running.get(number)
        if trial is not None:
            trial.done = max(trial.done, int(global_step))
            trial.seconds = self.clock() - trial.started

    def ended(self, number: int, report: TrialReport | None) -> str:
        """The trial's line: its objective over its folds, or that it was stopped early."""
        trial = self.running.pop(number, None)
        self.finished += 1
        seconds = self.clock() - trial.started if trial is not None else math.nan
        if trial is not None and trial.done:
            self.spent.append((seconds, trial.done))
        folds = report.folds_done if report is not None else 0
        took = duration(seconds)
        if report is None or folds < self.k_folds or not report.finished:
            trained = trial.done if trial is not None else 0
            total = trial.epochs if trial is not None else self.k_folds * self.epochs
            return (
                f"{self.label}: trial {number} stopped after {trained} of {total} epochs "
                f"({folds} of {self.k_folds} folds) in {took}"
            )
        self._better(report.objective, number)
        best = f"; best {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""
        return (
            f"{self.label}: trial {number} done in {took}: {self.metric} {report.objective:.4f} "
            f"± {report.objective_std:.4f}{best}"
        )

    def failed(self, number: int) -> None:
        """A trial that errored with no retries left (its cause is printed elsewhere)."""
        if self.running.pop(number, None) is not None:
            self.finished += 1

    def _better(self, value: float, number: int) -> None:
        if self.best is None or self.direction.better(value, self.best[0]):
            self.best = (value, number)

    def eta_seconds(self) -> float | None:
        """Seconds until the round ends, from the measured seconds per trial epoch (None
        before any epoch was measured)."""
        samples = self.spent + [(t.seconds, t.done) for t in self.running.values() if t.done]
        seconds, epochs = sum(s for s, _ in samples), sum(e for _, e in samples)
        if epochs == 0:
            return None
        per_trial = self.k_folds * self.epochs
        waiting = max(self.total - self.done_before - self.finished - len(self.running), 0)
        left = waiting * per_trial + sum(t.epochs - t.done for t in self.running.values())
        at_once = max(min(self.parallel, len(self.running) + waiting), 1)
        return left * (seconds / epochs) / at_once

    def status(self) -> str:
        """``hpo b: 3/8 trials done, 2 running (trial 4 fold 2/3 epoch 1/2, ...), best ...``."""
        shown = [self._where(n, t) for n, t in sorted(self.running.items())]
        parts = [f"{self.done_before + self.finished}/{self.total} trials done"]
        if shown:
            parts.append(f"{len(shown)} running ({', '.join(shown)})")
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best[0]:.4f} (trial {self.best[1]})")
        if self.cores is not None and shown:
            parts.append(f"{min(self.cores[0], self.cores[1])}/{self.cores[1]} cores training")
        eta = self.eta_seconds()
        parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA after the first epoch")
        return f"{self.label}: {', '.join(parts)}"

    def _where(self, number: int, trial: _Trial) -> str:
        per_fold = max(trial.epochs // self.k_folds, 1)
        fold, epoch = divmod(trial.done, per_fold)
        if fold >= self.k_folds:
            return f"trial {number} evaluating"
        return f"trial {number} fold {fold + 1}/{self.k_folds} epoch {epoch}/{per_fold}"

    def tick(self) -> str | None:
        """The status line when one is due (every ``STATUS_EVERY_S`` while trials run)."""
        now = self.clock()
        if not self.running:
            return None
        if self.last_status is not None and now - self.last_status < STATUS_EVERY_S:
            return None
        self.last_status = now
        return self.status()


def describe_params(config: dict[str, Any], skip: str) -> str:
    """A trial's hyperparameters for its start line: ``learning_rate 0.00018, max_length 64``."""
    shown = []
    for name, value in sorted(config.items()):
        if name == skip:
            continue
        shown.append(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(shown)


def progress_callback(progress: SearchProgress, number_key: str) -> Any:
    """A Ray Tune callback that prints ``progress`` (the trial's Optuna number is
    ``config[number_key]``)."""
    from ray.tune import Callback

    def number(trial: Any) -> int:
        return int(trial.config.get(number_key, -1))

    class Progress(Callback):
        def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            epochs = trial.config.get("epochs")
            progress.started(number(trial), int(epochs) if epochs else None)
            params = describe_params(trial.config, number_key)
            print(f"{progress.label}: trial {number(trial)} started ({params})", flush=True)

        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            report = TrialReport.from_metrics(result)
            if report is not None:
                progress.reported(number(trial), report.global_step)

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            report = TrialReport.from_metrics(trial.last_result)
            print(progress.ended(number(trial), report), flush=True)

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            progress.failed(number(trial))

        def on_step_end(self, iteration: int, trials: Any, **info: Any) -> None:
            line = progress.tick()
            if line is not None:
                print(line, flush=True)

    return Progress()


def summary(result: HpoResult, status: str) -> str:
    """A finished variant's lines: every trial with its objective, folds and marks (the best,
    the Pareto front, retries, racing)."""
    lines = [f"hpo {result.backbone}: {result.variant} {status} ({result.finished} trials)"]
    for t in result.trials:
        mean = "-" if t.objective_mean is None else f"{t.objective_mean:.4f}"
        std = "" if t.objective_std is None else f" ± {t.objective_std:.4f}"
        folds = ", ".join(f"{f.objective:.3f}" for f in t.folds)
        mark = "  <- best" if result.best is not None and t.number == result.best.number else ""
        if t.latency_ms is not None:
            pareto = " (Pareto)" if t.number in result.pareto else ""
            mark = f"  p95 {t.latency_ms:.1f} ms{pareto}{mark}"
        if t.resumes:
            mark += f"  (retried: resumed at {', '.join(t.resumes)})"
        if t.stopped_by:
            mark += f"  (stopped by {t.stopped_by})"
        lines.append(
            f"  trial {t.number:>3} {t.state:<8} {result.metric} {mean}{std}  [{folds}]{mark}"
        )
    return "\n".join(lines)
