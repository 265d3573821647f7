"""Ray Tune's early-stopping schedulers for ``hpo.scheduler`` (docs/hpo.md): trials are compared
on their running ``score`` at equal epoch counts (``global_step``, over all folds): the keys of
a ``TrialReport``."""

from __future__ import annotations

from typing import Any

from ray_pipeline.hpo.racing import InFold, Race
from ray_pipeline.hpo.search import TRIAL_NUMBER
from ray_pipeline.hpo.trial_report import TrialReport
from ray_pipeline.schema import SchedulerConfig


def _let_finished_trials_end(base: type) -> type:
    """``base`` (a Ray Tune scheduler class) that never stops a trial whose every fold has
    finished: that report is its last, and it ends by itself. ASHA stops a trial that reaches
    ``max_t`` there, killing its process while a DDP trial's worker group is still shutting
    down (suspected to leave the group's CPUs reserved: the next stage once waited for them).
    With a ``race`` (``hpo.racing``), a trial the scheduler lets go on is raced after every
    fold and, when the epoch was evaluated, after every epoch inside one; the scheduler sees
    every result first (an ASHA rung records a trial that racing then stops)."""
    from ray.tune.schedulers import TrialScheduler

    class LetFinishedTrialsEnd(base):  # type: ignore[misc]
        def __init__(
            self,
            *args: Any,
            k_folds: int,
            epochs: int = 1,
            race: Race | None = None,
            **kwargs: Any,
        ):
            super().__init__(*args, **kwargs)
            self._k_folds, self._epochs, self._race = k_folds, epochs, race

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            decision = str(super().on_trial_result(tune_controller, trial, result))
            report = TrialReport.from_metrics(result)
            if report is None:
                return decision
            folds = report.fold_state.folds
            if report.folds_done >= self._k_folds:
                if self._race is not None:
                    curves = [[p.validation for p in f.history] for f in folds]
                    self._race.completed([f.objective for f in folds], curves)
                return str(TrialScheduler.CONTINUE)
            if self._race is None or decision != TrialScheduler.CONTINUE:
                return decision
            number = int(trial.config.get(TRIAL_NUMBER, -1))
            inside = self._inside(trial, report)
            if self._race.judge(number, [f.objective for f in folds], inside) is not None:
                return str(TrialScheduler.STOP)
            return decision

        def _inside(self, trial: Any, report: TrialReport) -> InFold | None:
            """Where the trial is inside the fold it trains, when it reports mid-fold with an
            evaluated epoch (None at a fold's end, or when the epoch was not evaluated)."""
            if report.fold_metrics is not None or report.epoch_objective is None:
                return None
            epochs = int(trial.config.get("epochs", self._epochs))  # ``epochs`` may be searched
            return InFold(report.epoch + 1, epochs, report.epoch_objective)

    return LetFinishedTrialsEnd


def _never_pause() -> type:
    """Ray Tune's MedianStoppingRule that continues a trial it cannot judge yet (too few other
    trials reached its epoch): Ray's own pauses it whenever another trial is pending, which
    checkpoints, stops and later restores the trial (for a DDP trial, its whole worker group).
    The hook it overrides is private: where Ray no longer has it, Ray's own rule (warned once)."""
    from ray.tune.schedulers import MedianStoppingRule, TrialScheduler

    from ray_pipeline.internals import median_rule_hook

    base = _let_finished_trials_end(MedianStoppingRule)
    hook = median_rule_hook()
    if hook is None:
        return base

    def continue_anyway(self: Any, tune_controller: Any, trial: Any, time: float) -> str:
        return str(TrialScheduler.CONTINUE)

    return type("NeverPause", (base,), {hook: continue_anyway})


def make_scheduler(
    config: SchedulerConfig, k_folds: int, epochs: int, mode: str, race: Race | None = None
) -> Any:
    """Ray Tune's scheduler for ``hpo.scheduler``: it may stop a trial after any of its
    ``k_folds`` x ``epochs`` epochs but the last, comparing trials' running ``score`` at equal
    epoch counts; with a ``race`` (``hpo.racing``), also after a fold or an evaluated epoch at
    which it is unlikely to end meaningfully better than the incumbent."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    total = k_folds * epochs
    grace = min(config.grace_period, total)
    metric, time_attr = TrialReport.SCORE, TrialReport.STEP
    if config.type == "median":
        return _never_pause()(
            time_attr=time_attr,
            metric=metric,
            mode=mode,
            grace_period=grace,
            min_samples_required=config.min_samples_required,
            k_folds=k_folds,
            epochs=epochs,
            race=race,
        )
    if config.type in ("asha", "hyperband"):
        return _let_finished_trials_end(AsyncHyperBandScheduler)(
            time_attr=time_attr,
            metric=metric,
            mode=mode,
            max_t=total,
            grace_period=grace,
            reduction_factor=config.reduction_factor,
            brackets=1 if config.type == "asha" else config.brackets,
            k_folds=k_folds,
            epochs=epochs,
            race=race,
        )
    if race is not None:
        return _let_finished_trials_end(FIFOScheduler)(k_folds=k_folds, epochs=epochs, race=race)
    return FIFOScheduler()  # type: ignore[no-untyped-call]
