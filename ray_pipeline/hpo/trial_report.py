"""What a trial reports to Ray Tune after every epoch (``TrialReport``), and how a trial of a
round ended (``TrialOutcome``).

``TrialReport`` is the only owner of the keys that Tune, its schedulers, the searcher, the
progress lines and the HPO stage read from a trial's results (``to_metrics`` /
``from_metrics``); the fold loop's ``FoldState`` rides in it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ray_pipeline.artifacts import Record
from ray_pipeline.hpo.results import FoldResult, FoldState


class TrialReport(Record):
    """What a trial reports to Ray Tune after every epoch (and at the end of every fold).

    Trials are compared on ``score`` at equal ``global_step`` (the same fold and epoch), so
    schedulers are fair across trials; the searcher tells Optuna ``objective`` (with
    ``latency_ms`` as the second objective); the driver rebuilds the trial from
    ``fold_state``. ``to_metrics`` / ``from_metrics`` are the only code that spells the keys.
    """

    global_step: int
    """Epochs trained over all folds, this one included (``fold * epochs + epoch + 1``)."""
    fold: int
    epoch: int
    """0-based, within the fold."""
    train_loss: float
    folds_done: int
    objective: float
    """Mean over the finished folds only (NaN until the first fold finished)."""
    objective_std: float
    """Their spread (0 until a fold finished)."""
    score: float
    """The running score schedulers compare: the finished folds' objectives and, inside a
    fold, the fold's validation score after this epoch, averaged (NaN when neither exists)."""
    fold_state: FoldState
    latency_ms: float | None = None
    """With ``hpo.objective.latency``: the second objective (NaN until fold 0 finished);
    None without it."""
    epoch_objective: float | None = None
    """The fold's validation score after this epoch, when it was evaluated mid-fold."""
    fold_metrics: dict[str, float] | None = None
    """At the end of a fold: every metric of the fold just finished."""

    STEP: ClassVar[str] = "global_step"
    """The key of the time axis schedulers compare trials on."""
    SCORE: ClassVar[str] = "score"
    """The key of the score schedulers compare."""
    OBJECTIVE: ClassVar[str] = "objective"
    """The key of what Optuna is told (the first objective)."""
    LATENCY: ClassVar[str] = "latency_ms"
    """The key of the second objective (``hpo.objective.latency``)."""
    _JSON: ClassVar[tuple[str, ...]] = ("fold_state", "fold_metrics")
    """Structured values, reported as JSON text: Tune keeps a trial's results flat."""

    @classmethod
    def of(
        cls,
        state: FoldState,
        *,
        step: int,
        fold: int,
        epoch: int,
        train_loss: float,
        epoch_objective: float | None = None,
        latency: bool = False,
        fold_metrics: dict[str, float] | None = None,
    ) -> TrialReport:
        """The report of ``state`` after 0-based ``epoch`` of ``fold`` (``step`` epochs
        trained); ``epoch_objective`` when the epoch was evaluated mid-fold, ``latency`` when
        latency is the second objective."""
        objective, spread = state.objective or (math.nan, 0.0)
        running = [f.objective for f in state.folds]
        if epoch_objective is not None:
            running.append(epoch_objective)
        timed = state.latency_ms
        return cls(
            global_step=step,
            fold=fold,
            epoch=epoch,
            train_loss=train_loss,
            folds_done=len(state.folds),
            objective=objective,
            objective_std=spread,
            score=statistics.fmean(running) if running else math.nan,
            fold_state=state,
            latency_ms=(math.nan if timed is None else timed) if latency else None,
            epoch_objective=epoch_objective,
            fold_metrics=fold_metrics,
        )

    def to_metrics(self) -> dict[str, Any]:
        """The report as Tune takes it: flat, structured values as JSON text."""
        flat = self.model_dump(exclude=set(self._JSON), exclude_none=True)
        flat["fold_state"] = self.fold_state.model_dump_json()
        if self.fold_metrics is not None:
            flat["fold_metrics"] = json.dumps(self.fold_metrics)
        return flat

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any] | None) -> TrialReport | None:
        """The report inside a Tune result (Tune's own keys ignored); None when the result
        holds none (a trial that failed before its first report)."""
        if not metrics or "fold_state" not in metrics:
            return None
        values = {k: metrics[k] for k in cls.model_fields if k in metrics}
        for key in cls._JSON:
            if isinstance(values.get(key), str):
                values[key] = json.loads(values[key])
        return cls.model_validate(values)

    @property
    def finished(self) -> bool:
        """Whether the trial has finished a fold (so has an objective to tell Optuna)."""
        return self.folds_done > 0 and not math.isnan(self.objective)

    def values(self) -> list[float]:
        """What Optuna is told: the objective, then the latency when it is the second one."""
        return [self.objective] + ([] if self.latency_ms is None else [self.latency_ms])


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial of a Tune round ended, as the driver reads it from the round's results."""

    report: TrialReport | None
    """Its last report (None: it failed before reporting)."""
    checkpoint: str | None = None
    """Its last checkpoint, a place (its ``model/`` is the best fold's)."""
    error: str | None = None
    """Why it failed for good, when it did."""
    stopped_by: str | None = None
    """Why the round stopped it before its last fold, when a rule of ours did (racing)."""


def trial_run_metrics(state: FoldState) -> dict[str, float]:
    """A trial's result as its MLflow run records it, under the report's names: its finished
    folds, and the objective with its spread once a fold finished."""
    out = {"folds_done": float(len(state.folds))}
    if state.objective is not None:
        out["objective"], out["objective_std"] = state.objective
    return out


def fold_run_metrics(result: FoldResult) -> dict[str, float]:
    """A fold's numbers as its MLflow run records them: its objective (as the report names
    it), seconds, every metric and, for fold 0 with a latency objective, its latency."""
    latency = {} if result.latency_ms is None else {TrialReport.LATENCY: result.latency_ms}
    return {"objective": result.objective, "seconds": result.seconds, **result.metrics, **latency}
