"""Fold racing (``hpo.racing``): stop a cross-validated trial, between folds or inside one, once
it is unlikely to end meaningfully better than the incumbent.

Every trial of a variant is scored on the same folds (they follow from ``hpo.seed``), so two
trials' scores pair up: after a fold, or after an epoch inside one when the epoch was evaluated
(``hpo.report_every_epoch``, any scheduler, ``hpo.fold_score: best``), a trial's running mean
(its finished folds, and the fold in progress at that epoch weighted by the share of it
trained) is compared with the incumbent's
(the best trial that finished every fold, this round's or an earlier one's) at the same folds
and epoch; inside a fold only when the incumbent's fold has as many epochs and was evaluated
at that one.

The rule is an indifference-zone race. Take ``sigma``, the incumbent's fold standard deviation,
as the noise of one fold's score, and ``n`` the folds' worth of evidence (finished folds, plus
the epochs trained of the fold in progress as a fraction of it). Given the paired difference so
far, the trial's final ``k``-fold mean can still move by ``sigma * sqrt((k - n) / (n * k))``
(one standard deviation; a normal model with a flat prior on the true difference). The trial
stops when it is behind the incumbent by more than ``Z`` of those minus the ``margin`` (default
``sigma``): it then has under a 5% chance of ending more than ``margin`` ahead. Differences
smaller than the margin are not worth the remaining folds (so, under that model, a trial racing
stopped would rarely have ended more than the margin better than the best one found). A trial
ahead of the incumbent (or level) is never stopped, and the incumbent has finished every fold,
so it is never raced; a stopped trial is told to Optuna as PRUNED (its mean over fewer folds
never competes with complete trials) and its record says why (``TrialRecord.stopped_by``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from ray_pipeline.direction import Direction

CONFIDENCE = 0.95
"""A trial stops once its chance to end more than the margin ahead of the incumbent is below
1 - CONFIDENCE."""
Z = NormalDist().inv_cdf(CONFIDENCE)
"""The one-sided normal quantile of ``CONFIDENCE`` (1.645)."""

Curve = list[float | None]
"""A fold's validation score after each epoch, the first epoch first (None: not evaluated)."""


@dataclass(frozen=True)
class InFold:
    """Where a trial is inside the fold it trains, and how that fold scores there."""

    epochs_done: int
    """Epochs of the fold trained (1-based: 1 after its first epoch)."""
    epochs: int
    """The fold's epochs."""
    score: float
    """Its validation score after ``epochs_done`` epochs."""


@dataclass
class Race:
    """The racing state of one Tune round: the incumbent's fold scores (and curves), and why each
    trial it stopped was stopped."""

    direction: Direction
    k_folds: int
    margin: float | None = None
    """The indifference zone (in the metric, on the k-fold mean): how much better than the
    incumbent a trial must still be able to end to be worth its remaining folds. None: the
    incumbent's fold standard deviation."""
    incumbent: list[float] | None = None
    """The best complete trial's fold scores, fold 0 first (None: none has finished yet)."""
    curves: list[Curve] | None = None
    """The incumbent's validation curve of every fold (None: not known, e.g. recorded by an
    earlier run; trials are then raced at fold ends only)."""
    stopped: dict[int, str] = field(default_factory=dict)
    """Why each trial racing stopped was stopped, by trial number."""

    def completed(
        self, folds: Sequence[float], curves: Sequence[Sequence[float | None]] | None = None
    ) -> None:
        """A trial finished every fold with these scores (and these validation ``curves``, one
        per fold): the incumbent if it is better."""
        if len(folds) < self.k_folds or any(math.isnan(v) for v in folds):
            return
        if self.incumbent is None or self.direction.better(
            statistics.fmean(folds), statistics.fmean(self.incumbent)
        ):
            self.incumbent = list(folds)
            self.curves = None if curves is None else [list(c) for c in curves]

    def judge(self, number: int, folds: list[float], inside: InFold | None = None) -> str | None:
        """Why trial ``number``, whose finished folds scored ``folds`` (and which is ``inside``
        its next fold, when it reports mid-fold), stops now (None: it goes on). Only a trial
        with epochs left to train is judged."""
        reason = losing(
            self.direction,
            folds,
            self.incumbent,
            self.k_folds,
            self.margin,
            inside=inside,
            curves=self.curves,
        )
        if reason is not None:
            self.stopped[number] = reason
        return reason


def stopping_gap(sigma: float, evidence: float, k_folds: int, margin: float | None = None) -> float:
    """How far (>= 0) a trial with ``evidence`` folds' worth of scores may be behind the
    incumbent, whose fold standard deviation is ``sigma``, on the same folds before it stops:
    ``Z`` standard deviations of how far its ``k_folds`` mean can still move, less the
    ``margin`` (default ``sigma``). Without evidence, any distance."""
    if evidence <= 0:
        return math.inf
    zone = sigma if margin is None else margin
    spread = sigma * math.sqrt(max(k_folds - evidence, 0.0) / (evidence * k_folds))
    return max(0.0, Z * spread - zone)


def losing(
    direction: Direction,
    folds: list[float],
    incumbent: list[float] | None,
    k_folds: int,
    margin: float | None = None,
    *,
    inside: InFold | None = None,
    curves: Sequence[Sequence[float | None]] | None = None,
) -> str | None:
    """Why a trial whose finished folds scored ``folds`` (and which is ``inside`` its next
    fold, when judged mid-fold) is unlikely to end more than ``margin`` ahead of the
    ``incumbent`` (its fold scores, and its ``curves`` for a mid-fold comparison). None when it
    may, is ahead, has nothing left to train or no score to compare, or there is no
    incumbent."""
    done = len(folds)
    if incumbent is None or done >= k_folds:
        return None
    ours, theirs = list(folds), incumbent[:done]
    weights = [1.0] * done
    if inside is not None:
        if not 0 < inside.epochs_done < inside.epochs or curves is None or len(curves) <= done:
            return None  # a fold's last epoch is its end, judged with the fold
        curve = curves[done]
        # Only the same epoch of a fold as long as the incumbent's, evaluated, is the same point.
        at = curve[inside.epochs_done - 1] if len(curve) == inside.epochs else None
        if at is None:
            return None
        ours.append(inside.score)
        theirs.append(at)
        # The fold in progress counts for the share of it trained: an early epoch's score is
        # weak evidence, and must not outweigh a finished fold.
        weights.append(inside.epochs_done / inside.epochs)
    if not ours:
        return None  # no fold finished, no epoch evaluated: nothing to compare
    evidence = sum(weights)
    sigma = statistics.pstdev(incumbent)
    bound = stopping_gap(sigma, evidence, k_folds, margin)
    mine = sum(w * v for w, v in zip(weights, ours, strict=True)) / evidence
    best = sum(w * v for w, v in zip(weights, theirs, strict=True)) / evidence
    gap = direction.oriented(best) - direction.oriented(mine)
    if math.isnan(gap) or gap <= bound:
        return None
    where = f"over its first {done} of {k_folds} folds"
    if inside is not None:
        epoch = f"epoch {inside.epochs_done} of {inside.epochs} of fold {done}"
        where = f"after {epoch}" if done == 0 else f"{where} and {epoch}"
    zone = sigma if margin is None else margin
    return (
        f"racing: {mine:.4f} {where}, {gap:.4f} worse than the incumbent's {best:.4f} at the "
        f"same point (stops beyond {bound:.4f}: under {1 - CONFIDENCE:.0%} chance to end more "
        f"than {zone:.4f} ahead; incumbent's fold std {sigma:.4f})"
    )
