"""The Optuna-Ray bridge: a Ray Tune ``Searcher`` over the variant's Optuna study, on Optuna's
public ask-and-tell API, and the budget that ends a search.

It makes the calls Ray's own Optuna searcher made, in the same order (so a seeded search
suggests the same parameters as before; tests/test_optuna_bridge.py compares the two):
``study.ask()`` and the define-by-run space for a new trial, a finished fold's objective as
an intermediate value at Tune's ``training_iteration``, ``study.tell`` at the trial's end.
Unlike Ray's, it ends PRUNED a trial a scheduler stopped before its last fold (its mean over
fewer folds never competes), FAIL an errored trial even when its result has values, and FAIL
a trial whose values Optuna refuses (NaN) rather than leaving it RUNNING.
"""

from __future__ import annotations

import datetime
import logging
import math
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

from ray_pipeline import monitoring
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.search_space import DefineSpace
from ray_pipeline.hpo.study import FINISHED_STATES, TRIAL_CAP, load_study
from ray_pipeline.hpo.trial_report import TrialReport

if TYPE_CHECKING:
    import optuna
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import TrialState

log = logging.getLogger(__name__)

TRAINING_ITERATION = "training_iteration"
"""The result key Tune fills with a trial's report count (one of its documented auto-filled
result fields): the step of Optuna's intermediate values, as Ray's own Optuna searcher used."""
TRIAL_NUMBER = "optuna_trial_number"
"""Config key carrying the Optuna trial number into the trial driver."""
ENDED: dict[str, monitoring.TrialEvent] = {
    "COMPLETE": "finished",
    "PRUNED": "pruned",
    "FAIL": "failed",
}
"""The monitoring event of each state a trial ends in."""


@dataclass(frozen=True)
class Budget:
    """When the search stops launching trials: ``hpo.time_budget_s`` after this run's first
    trial started, or ``hpo.patience`` trials finished in this run in a row without beating
    the best objective (of the whole study)."""

    time_budget_s: float | None
    patience: int | None
    direction: Direction

    def spent(self, study: Any, started: datetime.datetime) -> str | None:
        """Why no new trial may start in a search whose first trial started at ``started``
        (this run), or None."""
        now = datetime.datetime.now()
        elapsed = (now - started).total_seconds()
        if self.time_budget_s is not None and elapsed >= self.time_budget_s:
            return f"time budget of {self.time_budget_s:g} s reached after {elapsed:.0f} s"
        if self.patience is None:
            return None
        finished = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None
        ]
        best, since = None, 0
        for trial in sorted(finished, key=lambda t: t.datetime_complete):
            value = trial.values[0] if trial.state.name == "COMPLETE" else None
            improved = value is not None and (best is None or self.direction.better(value, best))
            best = value if improved else best
            if trial.datetime_complete >= started:  # an earlier run's trials set the bar only
                since = 0 if improved else since + 1
        if since >= self.patience:
            return f"patience {self.patience}: no better objective in the last {since} trials"
        return None


class StudySearch(Searcher):
    """Tune's searcher over the variant's Optuna study: each new trial is asked of the study
    and carries its Optuna number (``TRIAL_NUMBER``); its end is told to the study (COMPLETE,
    PRUNED when stopped before its last fold, FAIL). Stops launching trials when the budget is
    spent (``stop_reason``)."""

    def __init__(
        self,
        *,
        space: DefineSpace,
        sampler: BaseSampler,
        storage: BaseStorage,
        study_name: str,
        direction: Direction,
        latency: bool,
        k_folds: int,
        budget: Budget,
    ) -> None:
        objective, timed = TrialReport.OBJECTIVE, TrialReport.LATENCY
        metric = [objective, timed] if latency else objective
        mode = [direction.mode, "min"] if latency else direction.mode
        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]  # lists: 2 objectives
        self._space, self._sampler, self._storage = space, sampler, storage
        self._study_name, self._direction, self._latency = study_name, direction, latency
        self._k_folds, self._budget = k_folds, budget
        self._numbers: dict[str, int] = {}
        """Optuna's trial number of each Tune trial id suggested (or restored)."""
        self._completed: set[str] = set()
        self._started: datetime.datetime | None = None
        self.stop_reason: str | None = None
        self._study = self._open()
        self._trials: dict[str, optuna.Trial] = {}
        """The live Optuna trials (not saved: rebuilt from the study when needed)."""

    def _open(self) -> optuna.Study:
        """The study, as Ray's Optuna searcher set it up: this sampler, no pruner (Tune's
        scheduler stops trials), created if missing."""
        from optuna.pruners import NopPruner

        name, direction, latency = self._study_name, self._direction, self._latency
        return load_study(
            self._storage, name, direction, latency, sampler=self._sampler, pruner=NopPruner()
        )

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if trial_id in self._numbers:  # a trial Tune restored: its recorded parameters
            return self._config(trial_id)
        if self._started is None:  # Optuna stamps trials with naive local datetimes
            self._started = datetime.datetime.now()
        reason = self.stop_reason or self._budget.spent(self._study, self._started)
        if reason is not None:
            self.stop_reason = reason
            return Searcher.FINISHED
        cap = self._study.user_attrs.get(TRIAL_CAP)
        if cap is not None and self._taken() >= cap:
            return Searcher.FINISHED  # a restored round of a run that wanted more trials
        trial = self._study.ask()
        self._space(trial)
        self._numbers[trial_id], self._trials[trial_id] = trial.number, trial
        monitoring.trial_event(self._study_name, "started")
        return self._config(trial_id)

    def _taken(self) -> int:
        """Trials that count against ``TRIAL_CAP``: the study's finished ones and this search's
        running ones (a trial a stopped run asked after Tune's last snapshot is not restored:
        it does not count)."""
        states = {t.number: t.state.name for t in self._study.get_trials(deepcopy=False)}
        live = {n for i, n in self._numbers.items() if i not in self._completed}
        finished = sum(state in FINISHED_STATES for state in states.values())
        return finished + sum(states.get(n) == "RUNNING" for n in live)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        report = TrialReport.from_metrics(result)
        if self._latency or report is None or math.isnan(report.score):
            return  # Optuna keeps no intermediate values of two objectives; or no score yet
        if trial_id in self._completed or not self._suggested(trial_id):
            return
        try:
            # The running score (finished folds and, mid-fold, the evaluated epoch): a trial a
            # scheduler or racing stops is PRUNED with its partial mean as its last value.
            self._trial(trial_id).report(report.score, int(result[TRAINING_ITERATION]))
        except UpdateFinishedTrialError:
            # Restored after its driver died between Optuna's record and Tune's: the trial
            # re-reports its finished result, which Optuna already holds.
            log.info("trial %s already finished in the study; result not re-recorded", trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed or not self._suggested(trial_id):
            return  # told before (a restored trial ending again)
        state, values = self._outcome(trial_id, TrialReport.from_metrics(result), error)
        # skip_if_finished: the study already holds the trial's end (told before a restore)
        self._study.tell(self._numbers[trial_id], values, state=state, skip_if_finished=True)
        self._completed.add(trial_id)
        self._trials.pop(trial_id, None)
        monitoring.trial_event(self._study_name, ENDED[state.name])
        self._report_best()

    def _outcome(
        self, trial_id: str, report: TrialReport | None, error: bool
    ) -> tuple[TrialState, list[float] | None]:
        """How the trial ends in the study, and its values when it completed."""
        from optuna.trial import TrialState

        if error:  # even with values: an errored trial never competes
            return TrialState.FAIL, None
        if report is None or report.folds_done < self._k_folds:
            # No report at all (stopped before its first), or a scheduler stopped it after
            # some folds: its mean covers fewer folds, so it must not compete with complete
            # trials as a finished value (Optuna keeps its last intermediate value).
            return TrialState.PRUNED, None
        values = report.values()
        if len(values) != len(self._study.directions) or any(math.isnan(v) for v in values):
            log.warning("trial %s: Optuna refuses the values %s; told FAIL", trial_id, values)
            return TrialState.FAIL, None
        return TrialState.COMPLETE, values

    def _report_best(self) -> None:
        """The best metric so far (the first objective; with latency as the second, the best
        metric on the Pareto front) as a Ray metric."""
        values = [float(t.values[0]) for t in self._study.best_trials if t.values]
        if values:
            monitoring.best_objective(self._study_name, self._direction.best_value(values))

    def _suggested(self, trial_id: str) -> bool:
        """Whether this search suggested (or restored) the trial; warns when not."""
        if trial_id not in self._numbers:
            log.warning("trial %s was never suggested by this search: not told to Optuna", trial_id)
        return trial_id in self._numbers

    def _trial(self, trial_id: str) -> optuna.Trial:
        """The Optuna trial of a Tune trial: the one asked, or (restored) the study's trial of
        its number."""
        trial = self._trials.get(trial_id)
        if trial is None:
            import optuna

            study_id = self._storage.get_study_id_from_name(self._study_name)
            number = self._numbers[trial_id]
            stored = self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
            trial = self._trials[trial_id] = optuna.trial.Trial(self._study, stored)
        return trial

    def _config(self, trial_id: str) -> dict[str, Any]:
        return {**self._trial(trial_id).params, TRIAL_NUMBER: self._numbers[trial_id]}

    # Tune saves the search with every experiment snapshot and restores it with the round.

    def save(self, checkpoint_path: str) -> None:
        """The search's state: plain values, and the sampler (its random state: a restored
        round must not replay the draws it made before)."""
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self._state(), file)

    def restore(self, checkpoint_path: str) -> None:
        """The state ``save`` wrote."""
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        self._numbers = dict(state["numbers"])
        self._completed = set(state["completed"])
        self.stop_reason = state["stop_reason"]
        started = state["started"]
        self._started = None if started is None else datetime.datetime.fromisoformat(started)
        self._sampler = self._study.sampler = state["sampler"]
        self._trials = {}

    def _state(self) -> dict[str, Any]:
        return {
            "numbers": dict(self._numbers),
            "completed": sorted(self._completed),
            "stop_reason": self.stop_reason,
            "started": None if self._started is None else self._started.isoformat(),
            "sampler": self._sampler,
        }

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the experiment (tuner.pkl): the study is opened again from the storage.
        return {k: v for k, v in self.__dict__.items() if k not in ("_study", "_trials")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_numbers" not in state:  # pickled by an older version (Ray's Optuna searcher)
            raise OlderSearchState(
                "the round's Tune state holds a searcher of an older ray_pipeline version"
            )
        self.__dict__.update(state)
        self._study = self._open()
        self._trials = {}


class OlderSearchState(Exception):
    """A Tune round's searcher was pickled by an older version of this package: the round
    cannot be restored (its finished trials are in the study all the same)."""
