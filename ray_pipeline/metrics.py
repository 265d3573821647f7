"""Task metrics: accuracy and F1 for classification (scikit-learn's definitions, in NumPy:
``tests/test_sklearn_parity.py`` checks them against it), seqeval (entity level) for NER, and the
records of per-class scores and of a confusion matrix (final training's ``metrics.json``).

The names each task reports are ``schema.TASK_METRICS``; objectives are checked against them
when the config is validated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ray_pipeline.artifacts import Record
from ray_pipeline.schema import TASK_METRICS, Task

FloatArray = NDArray[np.float64]


def _label_counts(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per label of ``labels``: (examples rightly predicted as it, predicted as it, of it)."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((3, len(labels)))
    for g, p in zip(gold, predicted, strict=True):
        if p in index:
            counts[1, index[p]] += 1
        if g in index:
            counts[2, index[g]] += 1
            counts[0, index[g]] += g == p
    return counts[0], counts[1], counts[2]


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """Elementwise, 0 where the denominator is (scikit-learn's ``zero_division=0``)."""
    out = np.zeros_like(numerator)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def classification_metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro / micro / weighted F1 over one label per example (over the labels
    that occur in either; a label never predicted scores F1 0)."""
    labels = sorted(set(gold) | set(predicted))
    hits, guessed, actual = _label_counts(gold, predicted, labels)
    f1 = _ratio(2 * hits, guessed + actual)
    # Over all the labels that occur, micro F1 is the accuracy; computed as scikit-learn does.
    micro = _ratio(2 * hits.sum(keepdims=True), (guessed.sum() + actual.sum()).reshape(1))
    return {
        "accuracy": float(np.average(np.asarray(gold) == np.asarray(predicted))),
        "macro_f1": float(np.average(f1)),
        "micro_f1": float(micro[0]),
        "weighted_f1": float(np.average(f1, weights=actual)),
    }


def entity_metrics(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, IOB tags) plus token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold_lists = [list(s) for s in gold]
    pred_lists = [list(s) for s in predicted]
    tokens = [
        (g, p) for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True)
    ]
    return {
        "entity_f1": float(f1_score(gold_lists, pred_lists, zero_division=0)),
        "entity_precision": float(precision_score(gold_lists, pred_lists, zero_division=0)),
        "entity_recall": float(recall_score(gold_lists, pred_lists, zero_division=0)),
        "token_accuracy": sum(g == p for g, p in tokens) / max(len(tokens), 1),
    }


def compute_metrics(
    task: Task, gold: Sequence[object], predicted: Sequence[object]
) -> dict[str, float]:
    """The metrics of ``task`` (exactly the names in ``TASK_METRICS[task]``)."""
    if task == "sequence_classification":
        result = classification_metrics([str(g) for g in gold], [str(p) for p in predicted])
    else:
        result = entity_metrics(gold, predicted)  # type: ignore[arg-type]
    assert tuple(result) == TASK_METRICS[task]
    return result


BASELINE_METRIC: dict[Task, str] = {
    "sequence_classification": "accuracy",
    "token_classification": "token_accuracy",
}
"""The metric that the majority-class rate is the baseline of."""


def majority_rate(train_counts: Counter[str], test_counts: Counter[str]) -> tuple[str, float]:
    """The training data's most frequent label (ties: the first in sorted order) and the
    share of test labels it is: the accuracy (token accuracy for NER) of a model that
    always predicts it. A trained model should beat it."""
    label = min(train_counts, key=lambda k: (-train_counts[k], k))
    return label, test_counts[label] / max(sum(test_counts.values()), 1)


class ClassScores(Record):
    """Precision, recall and F1 of one class (classification) or entity type (NER)."""

    precision: float
    recall: float
    f1: float
    support: int
    """Examples (entities for NER) of this class."""


class Confusion(Record):
    """The confusion matrix of a classifier: ``counts[i][j]`` examples of ``labels[i]``
    predicted as ``labels[j]``."""

    labels: list[str]
    counts: list[list[int]]


def class_scores(
    task: Task, gold: Sequence[object], predicted: Sequence[object], labels: Sequence[str]
) -> dict[str, ClassScores]:
    """Precision, recall, F1 and support per class: every one of ``labels`` in their order
    (sequence classification), or per entity type that the gold or predicted tags hold
    (token classification, seqeval; its micro / macro / weighted averages left out)."""
    if task == "sequence_classification":
        hits, guessed, actual = _label_counts(
            [str(g) for g in gold], [str(p) for p in predicted], labels
        )
        precision, recall = _ratio(hits, guessed), _ratio(hits, actual)
        f1 = _ratio(2 * hits, guessed + actual)
        rows = zip(labels, precision, recall, f1, actual, strict=True)
        return {
            label: ClassScores(precision=float(p), recall=float(r), f1=float(f), support=int(s))
            for label, p, r, f, s in rows
        }
    from seqeval.metrics import classification_report

    report = classification_report(
        [list(s) for s in gold],  # type: ignore[call-overload]
        [list(s) for s in predicted],  # type: ignore[call-overload]
        output_dict=True,
        zero_division=0,
    )
    return {
        entity: ClassScores(
            precision=float(row["precision"]),
            recall=float(row["recall"]),
            f1=float(row["f1-score"]),
            support=int(row["support"]),
        )
        for entity, row in report.items()
        if not entity.endswith(" avg")
    }


def confusion(
    gold: Sequence[object], predicted: Sequence[object], labels: Sequence[str]
) -> Confusion:
    """The confusion matrix of one label per example: ``counts[i][j]`` examples of
    ``labels[i]`` predicted as ``labels[j]``."""
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        counts[index[str(g)]][index[str(p)]] += 1
    return Confusion(labels=list(labels), counts=counts)
