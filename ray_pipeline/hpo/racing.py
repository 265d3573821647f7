"""Fold racing (``hpo.racing``): stop a cross-validated trial between folds once its finished
folds are clearly worse than the incumbent's on the same folds.

Every trial of a variant is scored on the same folds (they follow from ``hpo.seed``), so two
trials' fold scores pair up. After a trial's fold ``f`` finishes, it is compared with the
incumbent (the best trial that finished every fold, this round's or an earlier one's) on folds
``0..f``: it is stopped when its mean over them is worse than the incumbent's mean over the
same folds by more than ``margin``, by default the incumbent's own fold standard deviation (a
difference the incumbent's fold-to-fold variation cannot explain). The incumbent itself has
finished every fold, so it is never raced; a trial that beats it continues and may become the
next incumbent. A stopped trial is told to Optuna as PRUNED (its mean over fewer folds never
competes with complete trials) and its record says why (``TrialRecord.stopped_by``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ray_pipeline.direction import Direction


@dataclass
class Race:
    """The racing state of one Tune round: the incumbent's fold scores, and why each trial it
    stopped was stopped."""

    direction: Direction
    k_folds: int
    margin: float | None = None
    """How much worse (in the metric, on average over the compared folds) is clearly worse;
    None: the incumbent's fold standard deviation."""
    incumbent: list[float] | None = None
    """The best complete trial's fold scores, fold 0 first (None: none has finished yet)."""
    stopped: dict[int, str] = field(default_factory=dict)
    """Why each trial racing stopped was stopped, by trial number."""

    def completed(self, folds: list[float]) -> None:
        """A trial finished every fold with these scores: the incumbent if it is better."""
        if len(folds) < self.k_folds:
            return
        if self.incumbent is None or self.direction.better(
            statistics.fmean(folds), statistics.fmean(self.incumbent)
        ):
            self.incumbent = list(folds)

    def judge(self, number: int, folds: list[float]) -> str | None:
        """Why trial ``number``, whose first folds scored ``folds``, stops now (None: it goes
        on). Only a trial with folds left to train is judged."""
        reason = losing(self.direction, folds, self.incumbent, self.k_folds, self.margin)
        if reason is not None:
            self.stopped[number] = reason
        return reason


def losing(
    direction: Direction,
    folds: list[float],
    incumbent: list[float] | None,
    k_folds: int,
    margin: float | None = None,
) -> str | None:
    """Why a trial whose first folds scored ``folds`` is clearly worse than the ``incumbent``
    on the same folds (None when it is not, has no fold or no fold left, or there is no
    incumbent)."""
    n = len(folds)
    if incumbent is None or not 0 < n < k_folds:
        return None
    theirs, ours = statistics.fmean(incumbent[:n]), statistics.fmean(folds)
    bound = statistics.pstdev(incumbent) if margin is None else margin
    gap = direction.oriented(theirs) - direction.oriented(ours)
    if gap <= bound:
        return None
    return (
        f"racing: {ours:.4f} over its first {n} of {k_folds} folds, {gap:.4f} worse than the "
        f"incumbent's {theirs:.4f} on the same folds (margin {bound:.4f})"
    )
