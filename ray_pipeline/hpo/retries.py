"""A Tune round's failed trial attempts: each recorded once (``RecordRetries``), and a lost
reused trial process counted as one failure, not two (``FailuresOnce``,
``reuse_trial_processes``; the guard is ``internals.tune_failures_once``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from ray_pipeline import faults
from ray_pipeline.hpo.search import TRIAL_NUMBER
from ray_pipeline.internals import trial_failures, tune_failures_once

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class RecordRetries(Callback):
    """Prints and records (``failures.jsonl``) each failed trial attempt with its cause."""

    def __init__(self, failure_log: str, label: str, max_failures: int) -> None:
        self.failure_log, self.label, self.max_failures = failure_log, label, max_failures

    def _record(self, trial: Trial, outcome: str) -> None:
        number = int(trial.config.get(TRIAL_NUMBER, -1))
        cause = faults.last_tune_error(trial.error_file)
        print(f"{self.label}: trial {number} failed ({cause}); {outcome}")
        faults.record_failure(Path(self.failure_log), number, "tune", cause)

    def on_trial_recover(self, iteration: int, trials: Any, trial: Trial, **info: Any) -> None:
        attempt, most = trial_failures(trial), self.max_failures
        retry = f"a retry (of {most})" if attempt is None else f"retry {attempt} of {most}"
        self._record(trial, f"{retry} from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: Any, trial: Trial, **info: Any) -> None:
        self._record(trial, f"no retries left (resources.max_failures={self.max_failures})")


def reuse_trial_processes(in_process: bool) -> bool:
    """Whether a round's trials reuse a finished trial's process (Tune's ``reuse_actors``): the
    one-worker trials that run ``in_process``, where Tune handles the loss of a reused process
    once (the guard, put in place here for a controller in this process). Else, or without
    the guard (warned once), each trial starts a fresh process."""
    return in_process and tune_failures_once()


class FailuresOnce(Callback):
    """Puts the guard in place where Tune's controller runs, before it starts a trial: with Ray
    Client, not in this process (which decided ``reuse_trial_processes`` with the same Ray)."""

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        tune_failures_once()
