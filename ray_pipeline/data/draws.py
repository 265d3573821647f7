"""Seeded draws of rows: the folds of k-fold cross-validation and a held-out share, stratified
by label where asked.

They are the rows scikit-learn's ``KFold`` / ``StratifiedKFold`` (``shuffle=True``) and
``train_test_split`` give for the same seed: the same draws from NumPy's ``RandomState`` in the
same order (``tests/test_sklearn_parity.py`` compares them on random inputs), so splits made
before this module existed are made again the same. In NumPy alone: importing scikit-learn's
``model_selection`` cost every driver, trial process and refit worker 0.4-0.65 CPU-seconds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Rows = NDArray[np.intp]
"""Row positions, ascending."""
Folds = NDArray[np.intp]
"""A fold number per row."""


def fold_of_each_row(n: int, strata: Sequence[str] | None, k: int, seed: int) -> Folds:
    """The fold (``0 .. k-1``) whose validation part each of ``n`` rows is in: rows shuffled
    and dealt into ``k`` folds of near-equal size (the first ``n % k`` one row larger), or, with
    ``strata`` (a label per row), each label's rows spread evenly over the folds. ValueError
    unless ``2 <= k <= n`` and some label has ``k`` rows; a label with fewer is dealt to fewer
    folds (``splits.check_foldable`` refuses such data before a run starts)."""
    if not 2 <= k <= n:
        raise ValueError(f"{k} folds of {n} rows: need 2 <= k <= rows")
    rng = np.random.RandomState(seed)
    folds = np.empty(n, dtype=np.intp)
    if strata is None:
        order = np.arange(n)
        rng.shuffle(order)
        sizes = np.full(k, n // k)
        sizes[: n % k] += 1
        folds[order] = np.repeat(np.arange(k), sizes)
        return folds
    labels = np.asarray(strata)
    if labels.shape != (n,):
        raise ValueError(f"{labels.shape[0]} labels for {n} rows")
    # Labels numbered in order of first appearance, as StratifiedKFold numbers them.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    _, by_appearance = np.unique(first, return_inverse=True)
    encoded = by_appearance[inverse]
    classes = len(first)
    if np.all(k > np.bincount(encoded)):
        raise ValueError(f"{k} folds, but no label has {k} rows")
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::k], minlength=classes) for i in range(k)])
    for label in range(classes):
        dealt = np.arange(k).repeat(allocation[:, label])
        rng.shuffle(dealt)
        folds[encoded == label] = dealt
    return folds


def held_out(
    n: int, strata: Sequence[str] | None, size: int | float, seed: int
) -> tuple[Rows, Rows]:
    """(kept, taken): ``size`` of ``n`` rows taken (a count, or a share rounded up), at random
    or, with ``strata``, in proportion to each label's rows. ValueError when that cannot be
    done: ``size`` out of range, or (stratified) a label with one row, or fewer rows kept or
    taken than there are labels."""
    if isinstance(size, numbers.Integral):
        if not 0 < size < n:
            raise ValueError(f"taking {size} of {n} rows")
        n_taken = int(size)
    else:
        if not 0 < size < 1:
            raise ValueError(f"taking a share of {size} of the rows")
        n_taken = math.ceil(size * n)
    n_kept = n - n_taken
    if n_kept == 0:
        raise ValueError(f"taking {size} of {n} rows keeps none")
    if strata is not None and len(strata) != n:
        raise ValueError(f"{len(strata)} labels for {n} rows")
    rng = np.random.RandomState(seed)
    if strata is None:
        order = rng.permutation(n)
        return np.sort(order[n_taken:]), np.sort(order[:n_taken])
    labels, inverse, counts = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"labels with one row: {labels[counts < 2].tolist()}")
    if min(n_kept, n_taken) < len(labels):
        raise ValueError(f"{len(labels)} labels, but {n_kept} rows kept and {n_taken} taken")
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    kept_of = _apportioned(counts, n_kept, rng)
    taken_of = _apportioned(counts - kept_of, n_taken, rng)
    kept: list[int] = []
    taken: list[int] = []
    for rows, n_k, n_t in zip(members, kept_of, taken_of, strict=True):
        drawn = rows[rng.permutation(len(rows))]
        kept.extend(drawn[:n_k])
        taken.extend(drawn[n_k : n_k + n_t])
    return np.sort(np.asarray(kept, dtype=np.intp)), np.sort(np.asarray(taken, dtype=np.intp))


def _apportioned(
    counts: NDArray[np.int64], draws: int, rng: np.random.RandomState
) -> NDArray[np.intp]:
    """``draws`` split over the labels in proportion to ``counts``: each label's share rounded
    down, the rows left over going to the largest remainders (ties drawn at random)."""
    continuous = counts / counts.sum() * draws
    floored: NDArray[np.float64] = np.floor(continuous)
    missing = int(draws - floored.sum())
    if missing > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), missing)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            missing -= now
            if missing == 0:
                break
    return floored.astype(np.intp)
