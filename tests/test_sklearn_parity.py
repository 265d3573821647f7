"""The seeded draws (ray_pipeline.data.draws) and the classification scores
(ray_pipeline.metrics) in NumPy alone, against scikit-learn, the reference they reproduce: for
any rows, labels and seed, the same folds as ``KFold`` / ``StratifiedKFold`` (``shuffle=True``),
the same held-out rows as ``train_test_split``, the same errors, and the same scores as
``sklearn.metrics``, bit for bit. So splits and scores made before the package stopped
importing scikit-learn are made again the same."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from ray_pipeline.data.draws import fold_of_each_row, held_out
from ray_pipeline.metrics import class_scores, classification_metrics

T = TypeVar("T")
EXAMPLES = settings(max_examples=300, deadline=None, database=None, derandomize=True)
"""The same 300 examples every run (CI cannot fail by chance); no example database written
into the checkout."""
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def _rows(draw: st.DrawFn) -> tuple[int, tuple[str, ...] | None]:
    """A row count and, most of the time, a label per row (1 to 6 labels, some rare)."""
    n = draw(st.integers(min_value=2, max_value=60))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        return n, None
    alphabet = "abcdef"[: draw(st.integers(min_value=1, max_value=6))]
    labels = draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n))
    return n, tuple(labels)


def _outcome(make: Callable[[], T]) -> T | str:
    """What ``make`` returns, or "ValueError" when it raises one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # StratifiedKFold: a label rarer than k
            return make()
    except ValueError:
        return "ValueError"


@EXAMPLES
@given(rows=_rows(), k=st.integers(min_value=2, max_value=7), seed=SEEDS)
def test_folds_are_scikit_learns(
    rows: tuple[int, tuple[str, ...] | None], k: int, seed: int
) -> None:
    n, strata = rows
    positions = np.arange(n)

    def reference() -> list[tuple[list[int], list[int]]]:
        if strata is None:
            splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(positions)
        else:
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            splits = cv.split(positions, strata)
        return [(list(fit), list(val)) for fit, val in splits]

    def ours() -> list[tuple[list[int], list[int]]]:
        folds = fold_of_each_row(n, strata, k, seed)
        return [
            (list(np.flatnonzero(folds != f)), list(np.flatnonzero(folds == f))) for f in range(k)
        ]

    assert _outcome(ours) == _outcome(reference)


@EXAMPLES
@given(
    rows=_rows(),
    share=st.floats(min_value=0.01, max_value=0.99),
    count=st.integers(min_value=1, max_value=60),
    as_count=st.booleans(),
    seed=SEEDS,
)
def test_held_out_rows_are_train_test_splits(
    rows: tuple[int, tuple[str, ...] | None],
    share: float,
    count: int,
    as_count: bool,
    seed: int,
) -> None:
    n, strata = rows
    size: int | float = count if as_count else share

    def reference() -> tuple[list[int], list[int]]:
        kept, taken = train_test_split(
            np.arange(n), test_size=size, random_state=seed, stratify=strata
        )
        return sorted(kept), sorted(taken)

    def ours() -> tuple[list[int], list[int]]:
        kept, taken = held_out(n, strata, size, seed)
        return list(kept), list(taken)

    assert _outcome(ours) == _outcome(reference)


@st.composite
def _predictions(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Gold labels and predictions, about half of them right."""
    alphabet = "abcdef"[: draw(st.integers(min_value=1, max_value=6))]
    gold = draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=40))
    wrong = draw(st.lists(st.sampled_from(alphabet), min_size=len(gold), max_size=len(gold)))
    keep = draw(st.lists(st.booleans(), min_size=len(gold), max_size=len(gold)))
    return gold, [g if k else w for g, w, k in zip(gold, wrong, keep, strict=True)]


@EXAMPLES
@given(predictions=_predictions())
def test_classification_scores_are_sklearns(predictions: tuple[list[str], list[str]]) -> None:
    gold, predicted = predictions
    labels = sorted(set(gold) | set(predicted))

    def f1(average: str) -> Any:
        return f1_score(gold, predicted, labels=labels, average=average, zero_division=0)

    assert classification_metrics(gold, predicted) == {
        "accuracy": accuracy_score(gold, predicted),
        "macro_f1": f1("macro"),
        "micro_f1": f1("micro"),
        "weighted_f1": f1("weighted"),
    }


@EXAMPLES
@given(
    predictions=_predictions(),
    asked=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
)
def test_per_class_scores_are_sklearns(
    predictions: tuple[list[str], list[str]], asked: Sequence[str]
) -> None:
    """Every asked label in its order, those that occur nowhere too (all zero)."""
    gold, predicted = predictions
    scores = class_scores("sequence_classification", gold, predicted, asked)
    reference = precision_recall_fscore_support(
        gold, predicted, labels=list(asked), zero_division=0
    )
    assert list(scores) == list(asked)
    for name, column in zip(("precision", "recall", "f1", "support"), reference, strict=True):
        assert [getattr(s, name) for s in scores.values()] == list(column), name
